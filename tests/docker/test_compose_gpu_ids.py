"""GPU ids reach Compose as lists: `TRITON_GPU_IDS=0,1` reserves GPUs 0 and 1 for Triton, not one
GPU named "0,1". Checked with the real `docker compose config` (no engine or GPU needed)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from scripts.gpus import builder_gpu_ids, parse_gpus
from scripts.stack_settings import load_settings
from scripts.stacks.compose import gpu_ids_override
from tests.helpers import REPO_ROOT
from triton_models.registry import MODELS



def _compose_config(tmp_path, overrides: dict[str, str], with_override: bool, builder_ids: str | None = None) -> dict:
    if shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode:
        pytest.skip("no Docker Compose v2 CLI here; .ci/run installs it")
    settings = load_settings(None, REPO_ROOT, {"COMPOSE_FILE": "docker-compose.yaml:docker-compose.gpu.yaml",
                                               "TRITON_BASE_IMAGE": "nvcr.io/nvidia/tritonserver:25.01-py3", **overrides})
    env = {**os.environ, **settings.compose_environment()}
    if with_override:
        path = tmp_path / "gpu-ids.yaml"
        path.write_text(gpu_ids_override(settings, builder_ids))
        env["COMPOSE_FILE"] += f":{path}"
    done = subprocess.run(["docker", "compose", "config"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)["services"]


def _device_ids(service: dict) -> list[list[str]]:
    return [d["device_ids"] for d in service["deploy"]["resources"]["reservations"]["devices"]]


def test_the_override_makes_gpu_ids_lists_for_every_gpu_service(tmp_path):
    services = _compose_config(tmp_path, {"TRITON_GPU_IDS": "0,1", "BUILDER_GPU_ID": "1"}, with_override=True)
    assert _device_ids(services["triton"]) == [["0", "1"]]
    for spec in MODELS:
        assert _device_ids(services[spec.compose_service]) == [["1"]]


def test_builders_see_one_gpu_of_each_type_triton_serves_from(tmp_path):
    """On a mixed host the builders get BUILDER_GPU_ID and a GPU of each further type (chosen by
    scripts.gpus.builder_gpu_ids from nvidia-smi's rows), and build one engine per type."""
    gpus = parse_gpus("0, NVIDIA H100 80GB HBM3, 9.0\n1, NVIDIA H100 80GB HBM3, 9.0\n2, NVIDIA A100-SXM4-80GB, 8.0\n")
    builders = builder_gpu_ids(gpus, "1", "0,1,2")
    services = _compose_config(tmp_path, {"TRITON_GPU_IDS": "0,1,2", "BUILDER_GPU_ID": "1"}, with_override=True,
                               builder_ids=builders)
    assert _device_ids(services["triton"]) == [["0", "1", "2"]]
    for spec in MODELS:
        assert _device_ids(services[spec.compose_service]) == [["1", "2"]]


def test_without_it_compose_passes_one_string(tmp_path):
    """Why the override exists: plain interpolation gives Docker the single id "0,1"."""
    services = _compose_config(tmp_path, {"TRITON_GPU_IDS": "0,1"}, with_override=False)
    assert _device_ids(services["triton"]) == [["0,1"]]


def test_a_model_on_gpus_of_its_own_gets_their_cuda_ordinals_in_the_triton_container(tmp_path):
    """ECLAIR_GPU_IDS=3 with TRITON_GPU_IDS=3,2: the Triton container sees GPUs 2 and 3 and, with
    CUDA_DEVICE_ORDER=PCI_BUS_ID, numbers them 0 and 1 in nvidia-smi's order, whatever order the
    setting lists them in; so build-eclair gets GPUS=1 (its instances' devices). Builders without
    ids of their own get no GPUS, and every builder keeps its environment from the compose files."""
    services = _compose_config(tmp_path, {"TRITON_GPU_IDS": "3,2", "BUILDER_GPU_ID": "2", "ECLAIR_GPU_IDS": "3",
                                          "E5_GPU_IDS": "2,3"}, with_override=True)
    assert _device_ids(services["triton"]) == [["3", "2"]]
    assert services["triton"]["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    eclair, e5 = services["build-eclair"]["environment"], services["build-e5"]["environment"]
    assert (eclair["GPUS"], e5["GPUS"]) == ("1", "0,1")
    assert eclair["DEVICE"] == "cuda" and eclair["MAX_BATCH_SIZE"] == "16"  # merged, not replaced
    assert eclair["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and "GPUS" not in services["build-yolox"]["environment"]
