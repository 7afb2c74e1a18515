"""`bench` and `tune` on CPU: a short sweep through the real Triton; the report and plots exist
and agree with each other (no timing is asserted: the figures are printed, not tested)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert report["meta"]["sequence_length"] == 128
    assert report["meta"]["host"].endswith(f", {os.cpu_count()} cores")  # the host's CPU, beside the device
    served = [p for p in report["points"] if p["kind"] == "served"]
    raw = [p for p in report["points"] if p["kind"] == "raw"]
    assert {(p["batch"], p["concurrency"]) for p in served} == {(1, 1), (1, 2), (4, 1), (4, 2)}  # 128 > max 64
    assert {p["batch"] for p in raw} == {1, 4}
    for point in report["points"]:
        assert point["requests"] > 0 and point["items_per_s"] > 0
        # every point names its input shapes: E5's variable axis at the default 128 tokens
        assert point["input_shapes"] == {"input_ids": [point["batch"], 128], "attention_mask": [point["batch"], 128]}
        assert point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
    for point in served:  # Triton's own timings of the same window: parts of a whole, within the client's
        assert 0 < point["server_compute_ms"] and 0 <= point["server_queue_ms"]
        assert point["server_queue_ms"] + point["server_compute_ms"] <= point["server_ms"] * 1.001
        # Triton's "success" time ends when it releases the response, which may follow the client's
        # receipt by a fraction of a millisecond (0.1 ms over p99 seen with 2 requests on 2 busy cores)
        assert point["server_ms"] <= point["p99_ms"] + 1.0
    assert all(p["server_ms"] is None for p in raw)
    for row in report["summary"]:
        best = max((p for p in served if p["batch"] == row["batch"]), key=lambda p: p["items_per_s"])
        assert row["served_items_per_s"] == best["items_per_s"]
        assert abs(row["served_over_raw"] - best["items_per_s"] / next(p for p in raw if p["batch"] == row["batch"])["items_per_s"]) < 1e-9
        single = next(p for p in served if p["batch"] == row["batch"] and p["concurrency"] == 1)
        assert abs(row["transport_ms"] - (single["p50_ms"] - single["server_ms"])) < 1e-9
        assert row["backend_overhead_ms"] is not None
    with open(out / "bench.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(report["points"])
    assert (out / "bench_e5_small_v2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same sweep with inputs in system shared memory: same report, no region left behind.
    shm = stack("bench", "e5_small_v2", "--batch-sizes", "1,4", "--concurrency", "1,2", "--duration", "0.3",
                "--shared-memory", "system", "--no-raw")
    assert shm.returncode == 0, shm.stderr
    shm_report = json.loads((out / "bench.json").read_text())
    assert shm_report["meta"]["shared_memory"] == "system"
    assert {(p["batch"], p["concurrency"]) for p in shm_report["points"]} == {(1, 1), (1, 2), (4, 1), (4, 2)}
    assert all(p["requests"] > 0 for p in shm_report["points"])
    assert not list(Path("/dev/shm").glob("bench_*"))
    (out / "bench.json").write_text(json.dumps(report))  # tune below reads the first report
    _shared_memory_inputs_give_the_same_answer(root)

    before = env_file.read_text()
    tuned = stack("tune", "--latency-budget-ms", "100000")
    assert tuned.returncode == 0, tuned.stderr
    best = max(served, key=lambda p: p["items_per_s"])["batch"]
    assert f"E5_BATCH_SIZE={best}" in env_file.read_text()
    backups = list(root.glob(".env.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == before
    refused = stack("tune", "--latency-budget-ms", "0.0001")
    assert refused.returncode == 1 and "raise --latency-budget-ms" in refused.stderr


def _shared_memory_inputs_give_the_same_answer(root: Path) -> None:
    import numpy as np
    import tritonclient.grpc as grpc

    from converters.model_folder import Golden
    from scripts.bench.load import input_tensors, release
    from scripts.stack_settings import load_settings

    settings = load_settings(root / ".env", REPO_ROOT)
    model_dir = Path(settings["LOCAL_REPOSITORY"]) / "e5_small_v2"
    client = grpc.InferenceServerClient(f"127.0.0.1:{settings['TRITON_GRPC_PORT']}")
    feeds = Golden.read(model_dir).tiled_inputs(3)
    wire = {"input_ids": "INT64", "attention_mask": "INT64"}
    plain, _ = input_tensors(client, feeds, wire, None)
    shared, handle = input_tensors(client, feeds, wire, "bench_test_region")
    try:
        expected = client.infer("e5_small_v2", plain).as_numpy("embedding")
        got = client.infer("e5_small_v2", shared).as_numpy("embedding")
    finally:
        release(client, "bench_test_region", handle)
    assert expected.shape == (3, 384) and np.array_equal(expected, got)
