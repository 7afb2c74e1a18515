"""Atomic writes: a file appears whole or not at all; a model folder is swapped in by rename.

A failed step leaves the previous good artifact untouched, so Triton (or the next run) never
sees a half-written engine or a model folder without its config.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def publish_model_folder(repo: Path, name: str, files: dict[str, Path | bytes | str]) -> Path:
    """Write `<repo>/<name>/` from `files` (relative path -> source file, bytes or text) atomically.

    The new folder is staged beside the old one and swapped in with two renames; the old one is
    removed only after the new one is in place.
    """
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    target = repo / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".staging", dir=repo))
    try:
        for relative, content in files.items():
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, destination)
            elif isinstance(content, bytes):
                destination.write_bytes(content)
            else:
                destination.write_text(content)
        os.chmod(staging, 0o755)
        retired = None
        if target.exists():
            retired = repo / f".{name}.retired"
            if retired.exists():
                shutil.rmtree(retired)
            os.replace(target, retired)
        os.replace(staging, target)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
