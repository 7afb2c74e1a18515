"""The repository the TensorRT-LLM overlay's build-eclair writes beside its engines: the `eclair`
contract of the PyTorch runtime, a manifest and golden answers, loaded by the real Triton with the
PyTorch generator standing in behind the TensorRT-LLM seam (TensorRT-LLM cannot be installed here)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from converters.triton_config import read_config
from scripts.verify import verify_model
from tests.helpers import REPO_ROOT, infer, wait_models_ready



@pytest.fixture(scope="module")
def overlay(tmp_path_factory):
    """The overlay's publish step on a demo checkpoint, and the main stack's `eclair` to compare."""
    from triton_models.build import main as build_main
    from triton_models.eclair.build import make_demo_checkpoint
    from triton_models.eclair.trtllm import REPOSITORY, plan, publish_repository

    root = tmp_path_factory.mktemp("eclair_overlay")
    checkpoint = make_demo_checkpoint(root / "checkpoints")
    # ECLAIR_MODEL_DIR is relative to the repository root, as .env must give it
    model_dir = Path("build") / "test-eclair-overlay" / root.name
    engines = REPO_ROOT / model_dir
    result = plan(checkpoint, batch_size=2, max_new_tokens=64)  # ECLAIR_BATCH_SIZE=2; the demo's token limit
    publish_repository(checkpoint, engines, result, generator="pytorch", device="cpu")
    main_repo = root / "main_repo"
    assert build_main(["eclair", "--repo", str(main_repo), "--work-dir", str(root / "work"),
                       "--checkpoint", str(checkpoint), "--max-batch-size", "2", "--option", "max_new_tokens=64"]) == 0
    yield engines / REPOSITORY, main_repo, model_dir
    shutil.rmtree(engines)


def test_the_overlay_publishes_the_eclair_contract_with_manifest_and_golden(overlay):
    repository, main_repo, _ = overlay
    served, main = read_config(repository / "eclair" / "config.pbtxt"), read_config(main_repo / "eclair" / "config.pbtxt")
    assert [(i.name, i.data_type, list(i.dims)) for i in served.input] == [(i.name, i.data_type, list(i.dims)) for i in main.input]
    assert [(o.name, o.data_type, list(o.dims)) for o in served.output] == [(o.name, o.data_type, list(o.dims)) for o in main.output]
    assert served.max_batch_size == 2 and served.parameters["max_new_tokens"].string_value == "64"
    assert served.parameters["generator"].string_value == "pytorch"
    manifest = json.loads((repository / "eclair" / "manifest.json").read_text())
    assert manifest["model"] == "eclair" and (repository / "eclair" / "golden.npz").is_file()
    golden = np.load(repository / "eclair" / "golden.npz", allow_pickle=True)
    main_golden = np.load(main_repo / "eclair" / "golden.npz", allow_pickle=True)
    # the same page, the same greedy text: the two publishes share pre-processing, limits and text
    assert [k for k in golden.files] == [k for k in main_golden.files]
    assert all(np.array_equal(golden[k], main_golden[k]) for k in golden.files)


def test_triton_loads_the_overlay_repository_and_it_answers_the_golden_page(overlay, triton_server):
    import tritonclient.http as http

    repository, _, _ = overlay
    server = triton_server(repository)
    client = http.InferenceServerClient(server.http_url, network_timeout=120)
    wait_models_ready(client, ["eclair"], timeout=180)
    result = verify_model(client, repository / "eclair")
    assert result.ok, result.detail
    golden = np.load(repository / "eclair" / "golden.npz", allow_pickle=True)
    page = [golden[k] for k in golden.files if "image" in k][0]
    texts = infer(client, "eclair", {"image": np.concatenate([page, page])}, ["text"])["text"]
    assert texts.shape == (2,) and texts[0] == texts[1]  # a batch of two answers each page
    client.close()


def test_the_tensorrt_llm_generator_without_tensorrt_llm_fails_in_one_sentence_and_publishes_nothing(tmp_path):
    from triton_models.eclair.build import make_demo_checkpoint
    from triton_models.eclair.trtllm import REPOSITORY, plan, publish_repository

    checkpoint = make_demo_checkpoint(tmp_path / "checkpoints")
    from converters.errors import UserError

    engines = tmp_path / "engines"
    engines.mkdir()
    result = plan(checkpoint, 2, max_new_tokens=8)
    with pytest.raises(UserError, match="engines are missing .*visual_encoder.plan.*decoder"):
        publish_repository(checkpoint, engines, result, generator="tensorrt_llm")
    (engines / "visual_encoder.plan").write_bytes(b"not an engine")
    (engines / "decoder").mkdir()
    (engines / "decoder" / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="needs TensorRT-LLM"):
        publish_repository(checkpoint, engines, result, generator="tensorrt_llm")
    assert not (engines / REPOSITORY / "eclair").exists()


def test_stack_verify_checks_the_overlays_eclair_like_the_others(overlay, triton_server, tmp_path):
    """What `stack up`/`status` do for ECLAIR_RUNTIME=tensorrt_llm after the overlay's commands: the
    golden page from $ECLAIR_MODEL_DIR/repository/eclair, sent to triton-eclair's HTTP port (here the
    real Triton of the local mode on that repository)."""
    from scripts.stack_settings import load_settings
    from scripts.stacks.eclair_overlay import EclairOverlay

    repository, _, model_dir = overlay
    server = triton_server(repository)
    port = server.http_url.rsplit(":", 1)[1]
    settings = load_settings(None, REPO_ROOT, {"ECLAIR_MODEL_DIR": f"./{model_dir}", "ECLAIR_HTTP_PORT": port})
    row, ok = EclairOverlay(settings).verify(timeout_s=180)
    assert ok and (row.model, row.ready, row.verified, row.batch) == ("eclair", "yes", "yes", "2")
    elsewhere = load_settings(None, REPO_ROOT, {"ECLAIR_MODEL_DIR": f"./{model_dir}/nothing", "ECLAIR_HTTP_PORT": port})
    row, ok = EclairOverlay(elsewhere).verify(timeout_s=1)
    assert not ok and "does not exist" in row.verified
