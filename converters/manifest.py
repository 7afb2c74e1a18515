"""The manifest beside each published model: what it was built from, with what, for which GPU.

It makes a publish self-describing and lets a re-run with identical inputs do nothing, while
an engine built for another GPU or TensorRT version is rebuilt, never loaded blindly.
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from converters.model_folder import Manifest
from converters.serve_backends import serves_engine

_TOOLS = ("torch", "onnx", "onnxruntime", "transformers")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tool_versions() -> dict[str, str | None]:
    """Package versions, and TensorRT's from the imported module itself: its distribution is
    `tensorrt-cu12`, `tensorrt-cu12-bindings` or `tensorrt-rtx-cu12`, never plain `tensorrt`."""
    from converters.tensorrt_backend import installed_tensorrt

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for tool in _TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = None
    install = installed_tensorrt()
    versions["tensorrt"] = install.version if install else None
    versions["tensorrt_module"] = install.module if install else None
    return versions


@functools.cache
def visible_gpus() -> tuple:
    """Every GPU this process sees, as `VisibleGpu`s (empty without CUDA)."""
    from converters.engine_targets import VisibleGpu

    try:
        import torch

        if torch.cuda.is_available():
            return tuple(VisibleGpu(i, torch.cuda.get_device_name(i), "{}.{}".format(*torch.cuda.get_device_capability(i)))
                         for i in range(torch.cuda.device_count()))
    except Exception:  # a broken CUDA install must not stop a CPU build
        pass
    return ()


def gpu_identity() -> dict[str, str | None]:
    """Name and compute capability of GPU 0, or Nones on a machine without one (asked once per process)."""
    gpus = visible_gpus()
    return {"name": gpus[0].name if gpus else None, "compute_capability": gpus[0].compute_capability if gpus else None}


def converters_source_sha256() -> str:
    """The converters' own code: a fix there must rebuild what it built."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(sources: dict[str, str], settings: dict, versions: dict, gpu: dict, serve_backend: str,
                engine_types: list[str] | None = None) -> str:
    """What decides whether the published artifacts are current. Engines depend on TensorRT (also
    one built beside an ONNX that is served, `generate_trt`) and on the GPU types they are built
    for (`engine_types`; the builder's GPU where not given); ONNX artifacts on neither."""
    relevant_versions = {k: versions.get(k) for k in ("torch", "onnx")}
    key = {"sources": sources, "settings": settings, "versions": relevant_versions, "serve_backend": serve_backend,
           "converters": converters_source_sha256()}
    if serves_engine(serve_backend) or settings.get("generate_trt"):
        key["tensorrt"] = [versions.get("tensorrt_module"), versions.get("tensorrt")]
    if serves_engine(serve_backend) or (settings.get("generate_trt") and engine_types):
        builder_gpu = [gpu["compute_capability"]] if gpu.get("compute_capability") else []
        key["compute_capabilities"] = list(engine_types) if engine_types else builder_gpu
    return text_sha256(json.dumps(key, sort_keys=True))


@dataclass(frozen=True)
class Compatibility:
    ok: bool
    reason: str = ""


def engine_compatibility(manifest: Manifest, tensorrt: str | None, compute_capabilities: list[str]) -> Compatibility:
    """May GPUs of these types load the engines the manifest describes (one per type built)?"""
    from converters.engine_targets import built_types

    if not serves_engine(manifest.serve_backend):
        return Compatibility(True)
    built_trt = manifest.versions.get("tensorrt")
    if tensorrt is not None and built_trt and built_trt.split(".")[:2] != tensorrt.split(".")[:2]:
        return Compatibility(False, f"built with TensorRT {built_trt}, this host has {tensorrt}")
    built = built_types(manifest.engine, manifest.gpu)
    missing = [cc for cc in compute_capabilities if built and cc not in built]
    if missing:
        return Compatibility(False, f"built for compute capability {', '.join(built)}, and GPUs of "
                                    f"{', '.join(missing)} must serve it")
    return Compatibility(True)
