"""The fp8 build served by the real Triton on the CPU: the program the gate chose layers for loads
through the compiled runner (fp16 around the FP8 GEMMs), answers its golden inputs and answers a
batch as each row alone. The CPU runs the same FP8 ops as Hopper, slowly, so only the check for
FP8 tensor cores is stood in."""
from __future__ import annotations

import json

import numpy as np
import torch


def test_the_fp8_build_serves_through_triton_and_answers_its_golden_inputs(small_deberta, tmp_path, monkeypatch,
                                                                          triton_server):
    import tritonclient.http as http

    import converters.pipeline as pipeline
    from converters.cli import main
    from scripts.verify import verify_model
    from tests.helpers import batch_and_rows, seed_command, wait_models_ready

    monkeypatch.setattr(pipeline, "check_fp8_device", lambda device: None)
    repo = tmp_path / "repo"
    command = [a for a in seed_command(small_deberta.ckpt, small_deberta.script, tmp_path / "work", repo)
               if a != "--generate-trt"]
    assert main(command + ["--use-fp8", "--serve-backend", "python_compiled", "--max-batch-size", "8"]) == 0
    model_dir = repo / "deberta_large"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["precision"] == "fp8" and manifest["accuracy"]["fp8_layers"]
    assert 'string_value: "fp8"' in (model_dir / "config.pbtxt").read_text()
    assert any((model_dir / "1/compile_cache").rglob("*")), "the builder's Inductor cache was not published"
    program = torch.export.load(str(model_dir / "1/model.pt2"))
    assert any(node.target == torch.ops.aten._scaled_mm.default for node in program.graph.nodes)

    server = triton_server(repo)
    client = http.InferenceServerClient(server.http_url)
    try:
        wait_models_ready(client, ["deberta_large"], timeout=180)
        verification = verify_model(client, model_dir)
        assert verification.ok, verification.detail
        rng = np.random.default_rng(7)
        feeds = {"input_ids": rng.integers(0, 1000, (3, 128)).astype(np.int64),
                 "input_mask": np.ones((3, 128), np.float32)}
        batch, rows = batch_and_rows(client, "deberta_large", feeds, "output")
        # activations are scaled per row, so a row's answer does not depend on its batch
        np.testing.assert_allclose(batch, rows, atol=1e-3, rtol=0)
        assert np.ptp(batch) > 0
        with torch.inference_mode():  # the served answer is the published program's, run eagerly
            eager = program.module()(*(torch.from_numpy(v if v.dtype != np.float32 else v.astype(np.float16))
                                       for v in feeds.values()))
        # the same program, compiled: as close as fp16 rounding lets it be, a bound several times
        # tighter than the FP8 error the gate measured against fp32
        assert manifest["accuracy"]["fp8"][0]["fp8_max_abs_error"] > 4 * 2e-3
        np.testing.assert_allclose(batch, eager.float().numpy(), atol=2e-3, rtol=0)
    finally:
        client.close()
