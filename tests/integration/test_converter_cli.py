"""The conversion tool end to end: real export, real ONNX Runtime, the real Triton binary."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from converters.loading import import_model_class
from scripts.verify import verify_model
from tests.helpers import REPO_ROOT, SEED_IO_CONFIG, batch_and_rows, infer, run_converter, seed_command, wait_models_ready


@pytest.fixture(scope="module")
def published(small_deberta, tmp_path_factory):
    """The seed README's command, run as written (script form), on a small random DeBERTa."""
    work = tmp_path_factory.mktemp("seed")
    repo = work / "triton_models"
    result = run_converter(seed_command(small_deberta.ckpt, small_deberta.script, work, repo), script_form=True)
    assert result.returncode == 0, result.stderr
    return work, repo, result


def test_seed_command_publishes_onnx_config_manifest_and_golden(published):
    work, repo, result = published
    model_dir = repo / "deberta_large"
    assert (work / "model.onnx").is_file()
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "golden.npz", "manifest.json"]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "model.py", "model_support.py"]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["model"] == "deberta_large" and manifest["serve_backend"] == "python_onnx"
    assert len(manifest["sources"]["checkpoint"]) == 64 and manifest["versions"]["torch"]
    assert manifest["profile"]["input_ids"] == [[1, 128], [8, 128], [8, 128]]
    assert "max abs error" in result.stderr
    assert not (repo / "deberta_large_trt").exists()  # the Triton name is exactly --model-name


def test_generate_trt_with_tensorrt_for_rtx_writes_the_engine_at_engine_path(published):
    """Only TensorRT for RTX here (the test extra), no GPU: the engine is built at --engine-path,
    the GPU-only read-back is skipped with one line, the manifest names the TensorRT, and the ONNX
    is what the repository serves."""
    from converters.tensorrt_backend import installed_tensorrt

    work, repo, result = published
    install = installed_tensorrt()
    assert install is not None and install.rtx, "the test extra installs TensorRT for RTX"
    engine = json.loads((repo / "deberta_large" / "manifest.json").read_text())["engine"]
    assert (work / "model.plan").stat().st_size == engine["bytes"] > 0 and engine["path"] == str(work / "model.plan")
    assert engine["tensorrt"] == install.label and engine["precision"] == "fp16" and engine["strongly_typed"]
    assert engine["served"] is False and not (repo / "deberta_large" / "1" / "model.plan").exists()
    skipped = [line for line in result.stderr.splitlines() if "reading the engine back and running it" in line]
    assert len(skipped) == 1 and "skipped" in skipped[0]
    assert f"{install.label} is installed here, not NVIDIA's TensorRT" in result.stderr
    assert "Traceback" not in result.stderr


def test_serving_a_tensorrt_plan_with_only_tensorrt_for_rtx_is_refused(small_deberta, tmp_path):
    args = seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, tmp_path / "repo") + [
        "--serve-backend", "tensorrt_plan"]
    result = run_converter(args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--serve-backend tensorrt_plan needs NVIDIA's TensorRT; only TensorRT for RTX" in result.stderr
    assert not (tmp_path / "repo").exists() and not (tmp_path / "model.plan").exists()


def test_triton_serves_the_published_model_and_matches_pytorch(published, small_deberta, triton_server):
    _, repo, _ = published
    server = triton_server(repo)
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url)
    wait_models_ready(client, ["deberta_large"])
    model = import_model_class(small_deberta.script, "SmallDeberta")()
    model.load_state_dict(torch.load(small_deberta.ckpt, weights_only=True))
    model.eval()
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 1000, size=(3, 128)).astype(np.int64)
    mask = np.ones((3, 128), dtype=np.float32)
    mask[1, 60:] = 0
    served = infer(client, "deberta_large", {"input_ids": ids, "input_mask": mask}, ["output"])["output"]
    with torch.inference_mode():
        expected = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert served.shape == (3, 1)
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=1e-3)
    verification = verify_model(client, repo / "deberta_large")
    assert verification.ok, verification.detail

    # A bad request gets Triton's error, and the model keeps serving.
    with pytest.raises(Exception, match="input_ids"):
        infer(client, "deberta_large", {"input_ids": ids.astype(np.float32), "input_mask": mask}, ["output"])
    with pytest.raises(Exception, match="batch"):
        infer(client, "deberta_large", {"input_ids": np.zeros((9, 128), np.int64), "input_mask": np.ones((9, 128), np.float32)}, ["output"])
    assert verify_model(client, repo / "deberta_large").ok


def test_dynamic_batching_merges_concurrent_requests(small_deberta, tmp_path, triton_server):
    repo = tmp_path / "repo"
    args = seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, repo) + ["--max-queue-delay", "50000"]
    assert run_converter(args).returncode == 0
    server = triton_server(repo)
    import tritonclient.http as http

    client = http.InferenceServerClient(server.http_url, concurrency=16)
    wait_models_ready(client, ["deberta_large"])
    ids, mask = http.InferInput("input_ids", [1, 128], "INT64"), http.InferInput("input_mask", [1, 128], "FP32")
    ids.set_data_from_numpy(np.ones((1, 128), np.int64))
    mask.set_data_from_numpy(np.ones((1, 128), np.float32))
    pending = [client.async_infer("deberta_large", [ids, mask]) for _ in range(32)]
    assert all(p.get_result().as_numpy("output").shape == (1, 1) for p in pending)
    deadline = time.monotonic() + 30  # Triton counts a request a moment after its response is sent
    while (stats := client.get_inference_statistics("deberta_large")["model_stats"][0])["inference_count"] < 32:
        assert time.monotonic() < deadline, f"Triton counted {stats['inference_count']} of 32 requests"
        time.sleep(0.1)
    assert stats["inference_count"] == 32
    assert stats["execution_count"] < 32  # requests were merged into batches


def test_rerun_with_identical_inputs_does_no_work(published, small_deberta):
    work, repo, _ = published
    config = repo / "deberta_large" / "config.pbtxt"
    before = config.stat().st_mtime_ns
    result = run_converter(seed_command(small_deberta.ckpt, small_deberta.script, work, repo))
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stderr and "exporting" not in result.stderr
    assert config.stat().st_mtime_ns == before


def test_changed_settings_rebuild(published, small_deberta, tmp_path):
    work, repo, _ = published
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    args = seed_command(small_deberta.ckpt, small_deberta.script, work, copy) + ["--max-batch-size", "16"]
    result = run_converter(args)
    assert result.returncode == 0, result.stderr
    assert "max_batch_size: 16" in (copy / "deberta_large" / "config.pbtxt").read_text()


def test_without_overwrite_the_existing_onnx_is_kept(small_deberta, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    args = [a for a in seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, tmp_path / "repo") if a != "--overwrite"]
    result = run_converter(args)
    assert "kept the existing" in result.stderr
    assert result.returncode == 1 and "onnx" in result.stderr.lower()  # an empty file is not a model
    assert not (tmp_path / "repo" / "deberta_large").exists()


def test_generate_trt_alone_without_onnx_says_so(small_deberta, tmp_path):
    args = ["--ckpt-path", str(small_deberta.ckpt), "--engine-path", str(tmp_path / "m.plan"), "--generate-trt",
            "--model-class-name", "SmallDeberta", "--model-io-config", SEED_IO_CONFIG, "--model-name", "m",
            "--model-script-path", str(small_deberta.script), "--onnx-path", str(tmp_path / "missing.onnx"),
            "--triton-repo", str(tmp_path / "repo")]
    result = run_converter(args)
    assert result.returncode == 1
    assert "--onnx-path" in result.stderr and "--generate-onnx" in result.stderr
    assert "Traceback" not in result.stderr


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


@pytest.mark.parametrize("edit, fragment", [
    (lambda a, t: _replace(a, "--model-io-config", '{"inputs": ['), "--model-io-config is not valid JSON"),
    (lambda a, t: _replace(a, "--ckpt-path", str(t / "nope.pt")), "--ckpt-path"),
    (lambda a, t: _replace(a, "--model-class-name", "DebertaHuge"), "--model-class-name DebertaHuge is not a class"),
    (lambda a, t: _replace(a, "--triton-inputs", "input_ids,input_mask,pixels"), "--triton-inputs names pixels"),
    (lambda a, t: _replace(a, "--triton-inputs", "input_ids"), "leaves out input_mask"),
    (lambda a, t: _replace(a, "--triton-inputs", "input_ids,input_mask,input_token_type_ids"), "does not use"),
    (lambda a, t: a + ["--preferred-batch-sizes", "1,4,16"], "--preferred-batch-sizes 16"),
    (lambda a, t: a + ["--memory-pool-limit", "lots"], "--memory-pool-limit"),
    (lambda a, t: a + ["--use-int8"], "--use-int8 needs calibration"),
    (lambda a, t: a + ["--device", "cuda"], "--device cuda"),
])
def test_bad_input_is_one_clear_line_and_publishes_nothing(small_deberta, tmp_path, edit, fragment):
    repo = tmp_path / "repo"
    args = edit(seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, repo), tmp_path)
    result = run_converter(args)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (repo / "deberta_large").exists()


def test_state_dict_mismatch_names_missing_and_unexpected_keys(small_deberta, tmp_path):
    state = torch.load(small_deberta.ckpt, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["head.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    result = run_converter(seed_command(bad, small_deberta.script, tmp_path, tmp_path / "repo"))
    assert result.returncode == 1
    assert "missing keys head.bias" in result.stderr and "unexpected keys extra.weight" in result.stderr


def test_corrupt_or_non_state_dict_checkpoints_are_refused(small_deberta, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    result = run_converter(seed_command(corrupt, small_deberta.script, tmp_path, tmp_path / "repo"))
    assert result.returncode == 1 and "not a readable state_dict checkpoint" in result.stderr
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    result = run_converter(seed_command(listing, small_deberta.script, tmp_path, tmp_path / "repo"))
    assert result.returncode == 1 and "holds no state_dict" in result.stderr


def test_wrapped_and_data_parallel_checkpoints_load(small_deberta, tmp_path):
    state = torch.load(small_deberta.ckpt, weights_only=True)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": torch.tensor(3)}, wrapped)
    args = seed_command(wrapped, small_deberta.script, tmp_path, tmp_path / "repo")
    args += ["--memory-pool-limit", "1 << 32", "--preferred-batch-sizes", "2,8", "--max-queue-delay", "200",
             "--instance-count", "2", "--warmup", "--max-batch-size", "8", "--device", "cpu"]
    result = run_converter(args)
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "repo/deberta_large/config.pbtxt").read_text()
    assert "preferred_batch_size: 2\n  preferred_batch_size: 8" in config
    assert "max_queue_delay_microseconds: 200" in config and "count: 2" in config and "model_warmup" in config
    manifest = json.loads((tmp_path / "repo/deberta_large/manifest.json").read_text())
    assert manifest["settings"]["memory_pool_limit"] == 1 << 32


def test_default_input_size_works(small_deberta, tmp_path):
    args = seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, tmp_path / "repo")
    at = args.index("--input-size")
    del args[at:at + 3]
    result = run_converter(args)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "repo/deberta_large/manifest.json").read_text())
    assert manifest["profile"]["input_ids"][1] == [8, 128]  # opt batch = max batch


def test_script_named_like_an_installed_module(tmp_path):
    script = tmp_path / "onnx.py"
    script.write_text("import torch\nclass Tiny(torch.nn.Module):\n    def forward(self, x):\n        return x * 2\n")
    cls = import_model_class(script, "Tiny")
    import onnx

    assert hasattr(onnx, "load")  # the real package, not the script
    assert str(tmp_path) not in __import__("sys").path
    assert cls()(torch.ones(1)).item() == 2.0


def test_fp16_onnx_for_strongly_typed_tensorrt_keeps_accuracy(published, small_deberta, tmp_path):
    """The TensorRT 11 precision path, run in ONNX Runtime: fp16 graph, LayerNorm/Softmax in fp32."""
    import onnx

    from converters.batching import BatchPlan
    from converters.check import compare, run_onnx
    from converters.export import convert_to_fp16, make_sample, run_torch
    from converters.io_config import parse_io_config
    from converters.loading import build_model
    from converters.precision import FP32_ONNX_OPS, TOLERANCES

    work, _, _ = published
    fp16_path = convert_to_fp16(work / "model.onnx", tmp_path / "model.fp16.onnx", FP32_ONNX_OPS)
    graph = onnx.load(str(fp16_path))
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.graph.initializer)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # contract unchanged
    io = parse_io_config(SEED_IO_CONFIG)
    plan = BatchPlan.create(8, (8, 128), None)
    sample = make_sample(io, plan)
    model = build_model(small_deberta.script, "SmallDeberta", small_deberta.ckpt)
    check = compare(run_torch(model, io, sample), run_onnx(fp16_path, sample), TOLERANCES["fp16"])
    assert check.ok, check.report()


def test_generate_onnx_alone_writes_only_the_onnx(small_deberta, tmp_path):
    args = [a for a in seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, tmp_path / "repo")
            if a not in ("--generate-trt", "--generate-triton-config")]
    result = run_converter(args)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.onnx").is_file() and not (tmp_path / "repo").exists()
    assert "max abs error" in result.stderr  # checked even when nothing is published


def test_python_torch_backend_serves_torchscript_that_matches(small_deberta, tmp_path, triton_server):
    import tritonclient.grpc as grpc

    repo = tmp_path / "repo"
    result = run_converter(seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, repo)
                           + ["--serve-backend", "python_torch"])
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (repo / "deberta_large/1").iterdir()) == ["model.pt", "model.py", "model_support.py"]
    config = (repo / "deberta_large/config.pbtxt").read_text()
    assert 'key: "precision"' in config and "KIND_CPU" in config
    server = triton_server(repo)
    client = grpc.InferenceServerClient(server.grpc_url)
    wait_models_ready(client, ["deberta_large"])
    verification = verify_model(client, repo / "deberta_large")
    assert verification.ok, verification.detail
    client.close()


def test_python_compiled_backend_serves_buckets_that_match(small_deberta, tmp_path, triton_server):
    """The exported program, compiled per bucket by the builder (cache published), loads in Triton
    from that cache, answers its golden inputs, and a batch of 3 (padded to bucket 4) answers as
    each row sent alone (padded to bucket 2)."""
    import tritonclient.http as http

    repo = tmp_path / "repo"
    result = run_converter(seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, repo)
                           + ["--serve-backend", "python_compiled", "--max-batch-size", "8"])
    assert result.returncode == 0, result.stderr
    assert "compiled 3 bucket shapes" in result.stderr and "a padded batch against the exported program" in result.stderr
    version = repo / "deberta_large/1"
    assert sorted(p.name for p in version.iterdir()) == ["compile_cache", "model.pt2", "model.py", "model_support.py"]
    assert any((version / "compile_cache").rglob("*")), "the builder's Inductor cache was not published"
    config = (repo / "deberta_large/config.pbtxt").read_text()
    assert 'key: "precision"' in config and "sequence_buckets" not in config  # fixed 128 tokens: batch buckets only
    manifest = json.loads((repo / "deberta_large/manifest.json").read_text())
    assert manifest["serve_backend"] == "python_compiled"
    # A fresh process (as Triton's stub is) loads from the builder's cache: every compile a hit. The
    # builder's fp32 reference once left a matmul setting that is part of Inductor's cache key
    # changed, and every load compiled again.
    environment = {k: v for k, v in os.environ.items()  # Inductor's caches as they are by default
                   if k not in ("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "TORCHINDUCTOR_FX_GRAPH_CACHE",
                                "TORCHINDUCTOR_AUTOGRAD_CACHE")}
    load = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks/compiled_load_probe.py"),
                           str(repo / "deberta_large")], capture_output=True, text=True, timeout=300, env=environment)
    assert load.returncode == 0, load.stderr
    counters = json.loads(load.stdout.strip().splitlines()[-1])["cache_counters"]
    assert counters.get("fxgraph_cache_hit", 0) >= 1 and counters.get("autograd_cache_hit", 0) >= 1, counters
    assert not {"fxgraph_cache_miss", "autograd_cache_miss"} & set(counters), counters

    server = triton_server(repo)
    client = http.InferenceServerClient(server.http_url)
    wait_models_ready(client, ["deberta_large"], timeout=180)
    verification = verify_model(client, repo / "deberta_large")
    assert verification.ok, verification.detail
    rng = np.random.default_rng(5)
    feeds = {"input_ids": rng.integers(0, 1000, (3, 128)).astype(np.int64),
             "input_mask": np.ones((3, 128), np.float32)}
    batch, rows = batch_and_rows(client, "deberta_large", feeds, "output")
    np.testing.assert_allclose(batch, rows, atol=1e-4, rtol=1e-3)
    assert np.ptp(batch) > 0  # three different answers, not one broadcast row
    client.close()

    # The bench's raw paths of a compiled model on the CPU: eager (its FLOPs counted) and compiled.
    from scripts.bench.raw import RawModel, raw_paths

    assert raw_paths(repo / "deberta_large") == ["eager", "compiled"]
    eager = RawModel(repo / "deberta_large", "eager")
    assert eager.kind == "raw eager" and eager.flops_per_item > 2 * 64 * 64 * 128  # at least one 64x64 projection
    np.testing.assert_allclose(eager.run(feeds)["output"], batch, atol=1e-4, rtol=1e-3)

    # `bench --raw-paths eager`: the sweep measures that path alone (no concurrency: no served point).
    from converters.errors import UserError
    from scripts.bench.sweep import sweep

    points = sweep("unused:0", [repo / "deberta_large"], [1, 2], [], 0.2, raw_modes=frozenset({"eager"}))
    assert [(p.kind, p.batch) for p in points] == [("raw eager", 1), ("raw eager", 2)]
    with pytest.raises(UserError, match=r"^--raw-paths graphs leaves deberta_large no raw baseline: this card runs "
                                        r"it as eager,compiled\.$"):
        sweep("unused:0", [repo / "deberta_large"], [1], [], 0.2, raw_modes=frozenset({"graphs"}))


def test_a_kept_engine_and_a_built_one_are_each_recorded_under_their_own_type(small_deberta, tmp_path):
    """Without --overwrite the engine already at --engine-path (8.6) is kept and only the new type's
    (8.9) is built: the manifest lists both files under their own types, timing only the built one."""
    repo = tmp_path / "repo"
    first = seed_command(small_deberta.ckpt, small_deberta.script, tmp_path, repo) + ["--gpu-types", "8.6"]
    assert run_converter(first).returncode == 0
    kept = (tmp_path / "model.plan").read_bytes()
    again = [a for a in first if a != "--overwrite"][:-1] + ["8.6,8.9"]
    result = run_converter(again)
    assert result.returncode == 0, result.stderr
    assert f"kept the existing {tmp_path / 'model.plan'}" in result.stderr
    engine = json.loads((repo / "deberta_large" / "manifest.json").read_text())["engine"]
    assert engine["compute_capabilities"] == ["8.6", "8.9"] and engine["compute_capability"] == "8.9"
    assert engine["engines"]["8.6"] == {"path": str(tmp_path / "model.plan"), "file": "model.plan",
                                        "bytes": len(kept), "seconds": None}
    built = tmp_path / "model.sm89.plan"
    assert engine["engines"]["8.9"]["bytes"] == built.stat().st_size and engine["engines"]["8.9"]["seconds"] >= 0
    assert (tmp_path / "model.plan").read_bytes() == kept
