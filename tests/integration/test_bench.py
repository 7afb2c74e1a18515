"""`bench` and `tune` on CPU: a short sweep through the real Triton; the report and plots exist
and agree with each other (no timing is asserted: the figures are printed, not tested)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

from tests.helpers import REPO_ROOT
from tests.integration.test_stack_local import local_stack  # noqa: F401  (the fixture)


def test_bench_report_plots_and_tune(local_stack, tmp_path):  # noqa: F811
    run, root, _ = local_stack
    assert run("up").returncode == 0
    out = root / "bench"
    env_file = root / ".env"

    def stack(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scripts.stack", *args, "--local", "--env-file", str(env_file),
                               "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    result = stack("bench", "e5_small_v2", "--batch-sizes", "1,4,128", "--concurrency", "1,2", "--duration", "0.5")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    served = [p for p in report["points"] if p["kind"] == "served"]
    raw = [p for p in report["points"] if p["kind"] == "raw"]
    assert {(p["batch"], p["concurrency"]) for p in served} == {(1, 1), (1, 2), (4, 1), (4, 2)}  # 128 > max 64
    assert {p["batch"] for p in raw} == {1, 4}
    for point in report["points"]:
        assert point["requests"] > 0 and point["items_per_s"] > 0
        assert point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
    for row in report["summary"]:
        best = max((p for p in served if p["batch"] == row["batch"]), key=lambda p: p["items_per_s"])
        assert row["served_items_per_s"] == best["items_per_s"]
        assert abs(row["served_over_raw"] - best["items_per_s"] / next(p for p in raw if p["batch"] == row["batch"])["items_per_s"]) < 1e-9
    with open(out / "bench.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(report["points"])
    assert (out / "bench_e5_small_v2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    before = env_file.read_text()
    tuned = stack("tune", "--latency-budget-ms", "100000")
    assert tuned.returncode == 0, tuned.stderr
    best = max(served, key=lambda p: p["items_per_s"])["batch"]
    assert f"E5_BATCH_SIZE={best}" in env_file.read_text()
    backups = list(root.glob(".env.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == before
    refused = stack("tune", "--latency-budget-ms", "0.0001")
    assert refused.returncode == 1 and "raise --latency-budget-ms" in refused.stderr
