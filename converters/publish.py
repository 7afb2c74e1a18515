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


_RENAME_EXCHANGE = 2  # renameat2(2): swap two paths atomically (Linux 3.15+)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step; False where the system or file system cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _recover(repo: Path, name: str) -> None:
    """Undo what a publish killed part-way left: put back a retired folder that never got its
    replacement, and remove stale staging folders."""
    target, retired = repo / name, repo / f".{name}.retired"
    if retired.exists() and not target.exists():
        os.replace(retired, target)
    for stale in repo.glob(f".{name}.*.staging"):
        shutil.rmtree(stale, ignore_errors=True)
    if retired.exists():
        shutil.rmtree(retired, ignore_errors=True)


def publish_model_folder(repo: Path, name: str, files: dict[str, Path | bytes | str]) -> Path:
    """Write `<repo>/<name>/` from `files` (relative path -> source file, bytes or text) atomically.

    The new folder is staged beside the old one (a hidden name) and swapped in with one atomic
    exchange, so at every instant `<name>` is the whole old folder or the whole new one, even if
    the process is killed. Where the file system cannot exchange, two renames are used and a
    later publish puts back a retired folder a kill left without its replacement.
    """
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    _recover(repo, name)
    target = repo / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".staging", dir=repo))
    try:
        for relative, content in files.items():
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path) and content.is_dir():
                shutil.copytree(content, destination)
            elif isinstance(content, Path):
                shutil.copyfile(content, destination)
            elif isinstance(content, bytes):
                destination.write_bytes(content)
            else:
                destination.write_text(content)
        os.chmod(staging, 0o755)
        if target.exists() and _exchange(staging, target):
            pass  # `staging` now holds the old folder, removed below
        else:
            if target.exists():
                os.replace(target, repo / f".{name}.retired")
            os.replace(staging, target)
            shutil.rmtree(repo / f".{name}.retired", ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
