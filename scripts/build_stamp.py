"""Whether a local builder needs to run at all. Starting one costs seconds (it imports torch)
just for the builder to find its manifest current, so after each successful build the local
stack records a stamp of everything the build was given; the next `up` skips the builder when
the stamp is unchanged. What it covers: the builder's command line (every setting from .env),
the checkpoint's files by name, size and modification time, the project's build code, the
installed packages and their versions, the GPUs nvidia-smi lists, and the published manifests
themselves (a folder replaced or deleted since changes the stamp). `stack build` always runs the
builders, which then decide by their manifests' content fingerprints."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from converters.model_folder import MANIFEST_FILE

ROOT = Path(__file__).resolve().parents[1]
BUILD_CODE = ("converters", "triton_models")


def _files_by_stat(path: Path) -> list:
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    if path.is_dir():
        return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                for p in sorted(path.rglob("*")) if p.is_file()]
    return [["missing", str(path)]]


def _build_code_sha256() -> str:
    digest = hashlib.sha256()
    for folder in BUILD_CODE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _packages() -> list[str]:
    return sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]})


def _manifest(folder: Path) -> str | None:
    path = Path(folder) / MANIFEST_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def environment_key(gpus: str | None) -> str:
    """What every builder of one `up` shares (build code, packages, GPUs): read once per `up`."""
    parts = {"code": _build_code_sha256(), "packages": _packages(), "gpus": gpus}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def build_stamp(command: list[str], checkpoint: Path | None, published: list[Path], environment: str) -> str:
    """One hash of everything a builder run depends on (see the module's docstring);
    `environment` is `environment_key(...)`."""
    parts = {"command": command, "checkpoint": _files_by_stat(checkpoint) if checkpoint else "demo",
             "environment": environment, "manifests": {str(folder): _manifest(folder) for folder in published}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def is_current(stamp_file: Path, stamp: str) -> bool:
    """The last successful build had exactly these inputs, and every model folder it published is there."""
    return stamp_file.is_file() and stamp_file.read_text().strip() == stamp
