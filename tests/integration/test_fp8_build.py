"""The converter's fp8 build end to end on the CPU: export, the accuracy gate's choice of layers,
compile and publish (moved from the unit tier: it exports and compiles a real model)."""
import pytest
import torch


def test_the_converters_fp8_build_publishes_the_gates_layers_and_records_them(small_deberta, tmp_path, monkeypatch,
                                                                             caplog):
    """The converter's fp8 path end to end on the CPU, the FP8-tensor-core check stood in (the CPU
    runs the same FP8 ops, slowly) and the error bound tightened to 8 x fp16 so that this small
    model has a kind of layer to keep in fp16 (with 16 x, every layer holds): the manifest records
    the gate's choice, the published program's FP8 GEMMs are exactly the chosen layers, and the log
    names the kept kind."""
    import json
    import logging

    import converters.fp8 as fp8
    import converters.pipeline as pipeline
    from converters.cli import main
    from tests.helpers import seed_command

    monkeypatch.setattr(pipeline, "check_fp8_device", lambda device: None)
    monkeypatch.setattr(fp8, "ERROR_FACTOR", 8.0)
    repo = tmp_path / "repo"
    command = [a for a in seed_command(small_deberta.ckpt, small_deberta.script, tmp_path / "work", repo)
               if a != "--generate-trt"]
    with caplog.at_level(logging.INFO, logger="converters"):
        assert main(command + ["--use-fp8", "--serve-backend", "python_compiled", "--max-batch-size", "8"]) == 0
    messages = [record.getMessage() for record in caplog.records]
    manifest = json.loads((repo / "deberta_large/manifest.json").read_text())
    assert manifest["precision"] == "fp8"
    layers, (measured,) = manifest["accuracy"]["fp8_layers"], manifest["accuracy"]["fp8"]
    kept = manifest["accuracy"]["kept_in_fp16"]
    assert 0 < len(layers) < 12 and kept, (layers, kept)  # 12 quantisable layers: 2 blocks x 6
    assert measured["quantised_layers"] == len(layers) and measured["rows"] == 66
    bound = 8 * max(measured["fp16_max_abs_error"], 1e-3)  # the gate's floor under a tiny fp16 error
    assert measured["fp8_max_abs_error"] <= measured["bound"] == pytest.approx(bound)
    assert not any(name.replace(".0.", ".*.").replace(".1.", ".*.") in kept for name in layers)
    program = torch.export.load(str(repo / "deberta_large/1/model.pt2"))
    gemms = [node for node in program.graph.nodes if node.target == torch.ops.aten._scaled_mm.default]
    owners = sorted(list(node.meta["nn_module_stack"].values())[-1][0] for node in gemms)  # each GEMM's layer
    assert owners == sorted(layers)
    report = next(m for m in messages if m.startswith("fp8 against fp32 (fp16 beside it):"))
    assert all(f"kept in fp16: {group} (alone in fp8: output: max abs error" in report for group in kept)

    # built again with the same inputs: nothing is redone, and the result still names the FP8 layers
    # (the caption build's golden run reads them from it)
    from converters.cli import build_parser, settings_from_args
    again = pipeline.convert(settings_from_args(build_parser().parse_args(
        command + ["--use-fp8", "--serve-backend", "python_compiled", "--max-batch-size", "8"])))
    assert again.up_to_date and again.precision == "fp8" and again.accuracy["fp8_layers"] == layers
