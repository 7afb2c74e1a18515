"""docker/install_tensorrt_bindings.py: the builder image's TensorRT bindings follow the base
image's own TensorRT, or the image build stops with one sentence."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "install_tensorrt_bindings.py"

DPKG_STATUS = """Package: libc6
Status: install ok installed
Version: 2.39-0ubuntu8

Package: libnvinfer10
Status: install ok installed
Architecture: amd64
Version: 10.8.0.43-1+cuda12.8
"""


def _run(root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--print"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def _touch(root: Path, relative: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_dpkg_record_gives_the_exact_version(tmp_path):
    _touch(tmp_path, "var/lib/dpkg/status")
    (tmp_path / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    done = _run(tmp_path, {"CUDA_VERSION": "12.8.0.038"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tensorrt-cu12-bindings==10.8.0.43"


def test_library_file_name_gives_the_release_when_dpkg_has_no_record(tmp_path):
    _touch(tmp_path, "usr/lib/x86_64-linux-gnu/libnvinfer.so.10")
    _touch(tmp_path, "usr/lib/x86_64-linux-gnu/libnvinfer.so.10.8.0")
    _touch(tmp_path, "usr/local/cuda/lib64/libcudart.so.13")
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "tensorrt-cu13-bindings==10.8.0.*"


def test_a_base_image_without_tensorrt_stops_with_one_sentence(tmp_path):
    done = _run(tmp_path, {"CUDA_VERSION": "12.8.0"})
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: INSTALL_TENSORRT=1 but the base image has no TensorRT")
    assert "TRITON_BASE_IMAGE" in lines[0] and "Traceback" not in done.stderr


def test_unknown_cuda_stops_with_one_sentence(tmp_path):
    _touch(tmp_path, "usr/lib/x86_64-linux-gnu/libnvinfer.so.10.8.0")
    done = _run(tmp_path)
    assert done.returncode == 1 and "CUDA version is unknown" in done.stderr
