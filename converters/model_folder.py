"""The published model folder: the contract between the builders, Triton, `verify`, `bench`,
`status` and the reports. This module owns its names, its manifest, its golden answers and the
wire types they are sent with; everyone else calls it.

    <repo>/<model>/config.pbtxt     Triton's config (its schema: converters/triton_config.py)
    <repo>/<model>/1/model.*        what Triton loads (engine, ONNX, TorchScript or model.py)
    <repo>/<model>/manifest.json    what it was built from, with what, for which GPU (Manifest)
    <repo>/<model>/golden.npz       inputs and the answers expected for them (Golden)
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CONFIG_FILE = "config.pbtxt"
MANIFEST_FILE = "manifest.json"
GOLDEN_FILE = "golden.npz"
VERSION = "1"
# What verify, status and bench read of a published model (docker mode copies these out).
DESCRIPTION_FILES = (CONFIG_FILE, MANIFEST_FILE, GOLDEN_FILE)

# Triton's config data types as the client protocol spells them.
WIRE_TYPES = {"TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_BF16": "BF16", "TYPE_FP64": "FP64",
              "TYPE_INT64": "INT64", "TYPE_INT32": "INT32", "TYPE_INT16": "INT16", "TYPE_INT8": "INT8",
              "TYPE_UINT8": "UINT8", "TYPE_BOOL": "BOOL", "TYPE_STRING": "BYTES"}

_DEFAULT_TOLERANCE = (1e-4, 1e-3)


def wire_type(data_type: int) -> str:
    """`pb.DataType` value of a config tensor -> the client's type name (FP32, BYTES, ...)."""
    from tritonclient.grpc import model_config_pb2 as pb

    return WIRE_TYPES[pb.DataType.Name(data_type)]


def read_model_config(folder: Path):
    from converters.triton_config import read_config

    return read_config(Path(folder) / CONFIG_FILE)


@dataclass(frozen=True)
class Golden:
    """A few inputs (only those Triton takes) and the answers expected for them, with the
    (absolute, relative) tolerance of the precision the model is served at."""
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    tolerance: tuple[float, float] = _DEFAULT_TOLERANCE

    def to_bytes(self) -> bytes:
        """Plain arrays (text as fixed-width unicode or bytes, no pickles)."""
        arrays = {f"input__{k}": v for k, v in self.inputs.items()}
        arrays.update({f"output__{k}": v for k, v in self.outputs.items()})
        arrays["tolerance"] = np.asarray(self.tolerance, dtype=np.float64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def read(cls, folder: Path) -> "Golden":
        with np.load(Path(folder) / GOLDEN_FILE, allow_pickle=False) as data:
            arrays = dict(data)
        tolerance = tuple(float(x) for x in arrays.pop("tolerance", np.asarray(_DEFAULT_TOLERANCE)))
        return cls({k[len("input__"):]: v for k, v in arrays.items() if k.startswith("input__")},
                   {k[len("output__"):]: v for k, v in arrays.items() if k.startswith("output__")}, tolerance)

    def tiled_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """The inputs with their rows repeated up to `batch` (realistic values at any batch size)."""
        return {name: np.resize(value, (batch,) + value.shape[1:]) for name, value in self.inputs.items()}


@dataclass(frozen=True)
class Manifest:
    model: str
    fingerprint: str  # what decides whether the folder is current (converters/manifest.py)
    serve_backend: str  # a converters/serve_backends.py name, or "python" for a companion model
    precision: str  # what the model computes in as served
    demo: bool
    sources: dict
    versions: dict
    gpu: dict
    built_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    source_paths: dict | None = None
    settings: dict | None = None
    profile: dict | None = None  # input -> [min, opt, max] shapes
    engine: dict | None = None  # the TensorRT build, where one was made (tensorrt_backend.EngineBuild)
    accuracy: dict | None = None  # measured against fp32 where a gate decided the publish (fp8: converters/fp8.py)

    def to_text(self) -> str:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def read(cls, folder: Path) -> "Manifest | None":
        """The folder's manifest; None where it is absent or damaged (which means: rebuild)."""
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (json.JSONDecodeError, TypeError):
            return None


def current_manifest(folder: Path, fingerprint: str) -> Manifest | None:
    """The folder's manifest where it was published from exactly these inputs and settings (and
    has its config), else None."""
    manifest = Manifest.read(folder)
    current = manifest is not None and manifest.fingerprint == fingerprint and (Path(folder) / CONFIG_FILE).is_file()
    return manifest if current else None


def publish(repo: Path, name: str, config_text: str, manifest: Manifest, golden: Golden,
            files: dict[str, Path | bytes | str]) -> Path:
    """Publish `<repo>/<name>/` atomically: `files` are the version folder's content and any extra
    files, by their path inside the model folder (`1/model.onnx`, `tokenizer.json`, ...)."""
    from converters.publish import publish_model_folder

    content: dict[str, Path | bytes | str] = dict(files)
    content[CONFIG_FILE] = config_text
    content[GOLDEN_FILE] = golden.to_bytes()
    content[MANIFEST_FILE] = manifest.to_text()
    return publish_model_folder(repo, name, content)
