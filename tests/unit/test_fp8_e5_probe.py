"""benchmarks/fp8_e5_probe.py on CPU: the E5 core as served, its linear layers quantised the two ways
the probe times on a GPU, each compared with fp32 by the gate's measure (min cosine per row)."""
import re
import sys

from benchmarks import fp8_e5_probe


def test_cpu_run_prints_each_ways_min_cosine_to_fp32(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fp8_e5_probe.py", "--device", "cpu"])
    fp8_e5_probe.main()
    printed = capsys.readouterr().out
    assert "no timing on CPU" in printed and "items/s (exported" not in printed
    cosines = dict(re.findall(r"^(fp32|fp8 [^:]+): min cosine to fp32 ([0-9.]+)", printed, re.M))
    assert set(cosines) == {"fp32", "fp8 row-wise, converters/fp8.py", "fp8 per-tensor, static input scales"}
    assert float(cosines["fp32"]) == 1.0
    # FP8 moves the embeddings (3 mantissa bits), but not far: random weights stay near the 0.999 bound
    assert all(0.99 < float(cosines[way]) < 1.0 for way in cosines if way != "fp32")
