"""Install TensorRT's Python bindings at exactly the version of the image's own TensorRT.

NVIDIA's tritonserver images carry TensorRT's libraries (for the server), not its Python
bindings. An engine built by bindings of another version than the server's libraries would not
load, so the version is read from the image itself (dpkg's record of libnvinfer, else the
library's file name), the bindings wheel of that version alone is installed (the image already
has the libraries), and the import is checked. Where any step cannot be done it stops with one
sentence saying what to do.

    python3 install_tensorrt_bindings.py            # in the image build (INSTALL_TENSORRT=1)
    python3 install_tensorrt_bindings.py --print    # print the requirement only
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

DPKG_PACKAGES = ("libnvinfer10", "libnvinfer11", "libnvinfer-dev", "tensorrt")
LIBRARY_DIRS = ("usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/local/tensorrt/lib", "usr/lib64", "usr/lib")
CUDA_DIRS = ("usr/local/cuda/lib64", "usr/local/cuda/targets/x86_64-linux/lib", "usr/local/cuda/targets/sbsa-linux/lib")


class InstallError(Exception):
    """One sentence for the image build's log."""


def dpkg_version(status_text: str) -> str | None:
    """TensorRT's version from dpkg's status file (e.g. `10.8.0.43-1+cuda12.8` -> `10.8.0.43`)."""
    for block in status_text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", block, flags=re.MULTILINE))
        if fields.get("Package") in DPKG_PACKAGES and "installed" in fields.get("Status", "").split():
            return fields["Version"].split("-")[0].split(":")[-1]
    return None


def library_version(root: Path) -> str | None:
    """TensorRT's version from the library's file name (`libnvinfer.so.10.8.0` -> `10.8.0`)."""
    found = []
    for folder in LIBRARY_DIRS:
        for path in (root / folder).glob("libnvinfer.so.*.*.*"):
            match = re.fullmatch(r"libnvinfer\.so\.(\d+\.\d+\.\d+(?:\.\d+)?)", path.name)
            if match:
                found.append(tuple(int(p) for p in match.group(1).split(".")))
    return ".".join(map(str, max(found))) if found else None


def cuda_major(environ: dict, root: Path) -> str | None:
    """CUDA's major version: NVIDIA's images set CUDA_VERSION; else the runtime library's name."""
    if environ.get("CUDA_VERSION"):
        return environ["CUDA_VERSION"].split(".")[0]
    for folder in CUDA_DIRS + LIBRARY_DIRS:
        for path in sorted((root / folder).glob("libcudart.so.*")):
            match = re.fullmatch(r"libcudart\.so\.(\d+)(\..*)?", path.name)
            if match:
                return match.group(1)
    return None


def requirement(root: Path, environ: dict) -> tuple[str, str]:
    """(pip requirement, TensorRT version) for this image."""
    status = root / "var/lib/dpkg/status"
    version = (dpkg_version(status.read_text(errors="replace")) if status.is_file() else None) or library_version(root)
    if version is None:
        raise InstallError(f"INSTALL_TENSORRT=1 but the base image has no TensorRT (no libnvinfer package or "
                           f"libnvinfer.so.X.Y.Z under {', '.join('/' + d for d in LIBRARY_DIRS)}); set TRITON_BASE_IMAGE "
                           "to NVIDIA's tritonserver image.")
    cuda = cuda_major(environ, root)
    if cuda is None:
        raise InstallError("INSTALL_TENSORRT=1 but the base image's CUDA version is unknown (no CUDA_VERSION, no "
                           "libcudart); set TRITON_BASE_IMAGE to NVIDIA's tritonserver image.")
    pin = f"=={version}" if version.count(".") >= 3 else f"=={version}.*"
    return f"tensorrt-cu{cuda}-bindings{pin}", version


def install(spec: str, version: str, pip_args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *pip_args, spec])
    if done.returncode != 0:
        raise InstallError(f"pip could not install {spec} (TensorRT {version} is what the base image carries); make "
                           "that wheel reachable (an index or docker/wheels/) or choose a base image whose TensorRT has one.")
    probe = subprocess.run([sys.executable, "-c", "import tensorrt_bindings; print(tensorrt_bindings.__version__)"],
                           capture_output=True, text=True)
    imported = probe.stdout.strip()
    if probe.returncode != 0 or not (imported + ".").startswith(version + "."):
        said = imported or (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise InstallError(f"the installed TensorRT bindings do not match the image's TensorRT {version} ({said}).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="the image's root (tests use a folder)")
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the requirement, install nothing")
    args, pip_args = parser.parse_known_args(argv)  # the rest goes to pip install (e.g. --find-links /wheels)
    try:
        spec, version = requirement(args.root, dict(os.environ))
        print(spec)
        if not args.print_only:
            install(spec, version, pip_args)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
