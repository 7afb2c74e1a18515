"""The GPU benchmark scripts (benchmarks/*.sh) run only on GPU machines, where a shell slip costs a
whole run: they parse, and the shared .env writer leaves its caller's variables alone."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT as ROOT

SCRIPTS = sorted((ROOT / "benchmarks").glob("*.sh"))


def test_the_gpu_scripts_are_found():
    assert {"gpu_env.sh", "gpu_eclair.sh", "gpu_fp8.sh", "gpu_compiled.sh"} <= {s.name for s in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_gpu_script_parses(script: Path):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_write_gpu_env_writes_the_checkpoints_found_and_keeps_the_callers_variables(tmp_path: Path):
    (tmp_path / "checkpoints" / "caption").mkdir(parents=True)
    env = tmp_path / "gpu.env"
    shell = (f". benchmarks/gpu_env.sh; key=caption_classification; pair=mine; "
             f"PRECISION=fp8 CAPTION_GPU_IDS=0 write_gpu_env {env} {tmp_path} caption_classification 0 /np1; "
             'echo "$key $pair"')
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], cwd=ROOT, check=True, capture_output=True, text=True)
    assert done.stdout.split() == ["caption_classification", "mine"]
    lines = env.read_text().splitlines()
    assert "MODELS=caption_classification" in lines and "PRECISION=fp8" in lines
    assert "CAPTION_CHECKPOINT=caption" in lines and not any(line.startswith("E5_CHECKPOINT=") for line in lines)
    assert "CAPTION_GPU_IDS=0" in lines and "LOCAL_MODEL_PYTHONPATH=/np1" in lines
