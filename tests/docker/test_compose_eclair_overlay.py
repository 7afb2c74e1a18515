"""The original README's three ECLAIR commands, rendered by the real `docker compose config` with the
.env keys they take (no engine, GPU or TensorRT-LLM image needed):
  docker compose -f third_party/eclair_triton/docker-compose.yaml build triton-trt-llm
  docker compose -f third_party/eclair_triton/docker-compose.yaml up build-eclair
  docker compose -f docker-compose.yaml -f third_party/eclair_triton/docker-compose.yaml up triton-eclair"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scripts.stack_settings import load_settings
from tests.helpers import REPO_ROOT

OVERLAY = "third_party/eclair_triton/docker-compose.yaml"


@pytest.fixture
def folders(tmp_path):
    """Checkpoint and model folders given, as .env must give them, relative to the repository root."""
    relative = Path("build") / "test-eclair-overlay" / tmp_path.name
    (REPO_ROOT / relative / "checkpoints" / "eclair-ckpt").mkdir(parents=True)
    (REPO_ROOT / relative / "checkpoints" / "eclair-ckpt" / "config.json").write_text("{}")
    yield relative
    shutil.rmtree(REPO_ROOT / relative)


def _config(folders: Path, files: list[str], *extra: str) -> dict:
    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        pytest.skip("no Docker Compose v2 CLI here; .ci/run installs it")
    settings = load_settings(None, REPO_ROOT, {  # the same validation `stack` applies
        "TRTLLM_BASE_IMAGE": "nvcr.io/nvidia/tritonserver:25.01-trtllm-python-py3", "ECLAIR_BATCH_SIZE": "4",
        "ECLAIR_CHECKPOINT_DIR": f"./{folders}/checkpoints", "ECLAIR_CHECKPOINT_NAME": "eclair-ckpt",
        "ECLAIR_MODEL_DIR": f"./{folders}/models"})
    env = {**os.environ, **settings.compose_environment()}
    env.pop("COMPOSE_FILE")
    command = ["docker", "compose", *[a for f in files for a in ("-f", f)], *extra, "config"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def test_the_first_two_commands_build_the_image_and_the_engines_with_the_env_settings(folders):
    services = _config(folders, [OVERLAY], "--profile", "image")
    image = services["triton-trt-llm"]["build"]
    assert image["context"] == str(REPO_ROOT) and image["target"] == "builder"
    assert image["args"]["BASE_IMAGE"] == "nvcr.io/nvidia/tritonserver:25.01-trtllm-python-py3"
    build = services["build-eclair"]
    assert build["entrypoint"] == ["python3", "-m", "triton_models.eclair.trtllm", "build"]
    assert build["command"][:3] == ["/checkpoints/eclair-ckpt", "--batch-size", "4"]
    mounts = {v["target"]: v["source"] for v in build["volumes"] if v["type"] == "bind"}
    assert mounts == {"/checkpoints": str(REPO_ROOT / folders / "checkpoints"), "/engines": str(REPO_ROOT / folders / "models")}


def test_the_third_command_serves_the_repository_build_eclair_writes(folders):
    from triton_models.eclair.trtllm import REPOSITORY

    services = _config(folders, ["docker-compose.yaml", OVERLAY])
    serve = services["triton-eclair"]
    assert f"--model-repository=/engines/{REPOSITORY}" in serve["command"]
    mounts = {v["target"]: v["source"] for v in serve["volumes"] if v["type"] == "bind"}
    assert mounts == {"/engines": str(REPO_ROOT / folders / "models")}
    assert serve["ports"][0]["target"] == 8000


def test_overlay_settings_compose_cannot_use_are_named_before_it_runs(folders, tmp_path):
    from converters.errors import UserError

    with pytest.raises(UserError, match="ECLAIR_CHECKPOINT_NAME=nope names no checkpoint"):
        load_settings(None, REPO_ROOT, {"ECLAIR_CHECKPOINT_DIR": f"./{folders}/checkpoints", "ECLAIR_CHECKPOINT_NAME": "nope"})
    with pytest.raises(UserError, match="ECLAIR_MODEL_DIR=/.* must be relative to the repository root"):
        load_settings(None, REPO_ROOT, {"ECLAIR_MODEL_DIR": str(tmp_path)})
