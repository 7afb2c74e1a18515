"""Rasterisation on worker processes. PDFium is not thread-safe (one lock for the whole library),
so threads render one page at a time; separate processes, each with its own PDFium and its own
open documents, render as many pages at once as there are cores. Spawned, not forked: the
parent holds gRPC channels, which a fork does not survive.

A rendered page is 6 to 7 MB of pixels (the page and its fitted copy). Through the process pool's
one result pipe, the parent reads it 64 KB at a time, taking the GIL for each read, while its
other threads call the models: under that load the pipe, not the cores, bounded the rendering. So
the workers write the pixels to a file in a RAM-backed folder (a spool, /dev/shm), and the parent
reads each file in one call and deletes it. Where there is no such folder, or a write fails (the
folder full), the page comes through the pipe as before."""
from __future__ import annotations

import fcntl
import itertools
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.ingest.sources import Document, Page

RAM_FOLDER = Path("/dev/shm")
SPOOL_PREFIX = "ingest-pages-"
LOCK_NAME = ".lock"
PAGE_BYTES = 7 << 20  # a 1280x1024 page and its 1024-wide fitted copy, uint8 RGB, rounded up
_OPEN: dict[Path, Document] = {}  # in a worker: the documents it has opened, by path
_KEEP_OPEN = 8
_SERIAL = itertools.count()  # in a worker: its spool files' numbers


@dataclass
class Spooled:
    """A page whose pixels wait in `file`: the page itself (without them) and their shapes."""
    page: Page
    file: str
    pixels_shape: tuple[int, ...]
    fitted_shape: tuple[int, ...] | None


def _render(path: Path, index: int, spool: str | None = None) -> Page | Spooled:
    doc = _OPEN.get(path)
    if doc is None:
        while len(_OPEN) >= _KEEP_OPEN:
            _OPEN.pop(next(iter(_OPEN))).close()
        doc = _OPEN[path] = Document(path)
    page = doc.page(index).fit_for_elements()  # the resize on the workers' cores, not in Triton's wrapper
    return _spooled(page, spool) if spool else page


def _spooled(page: Page, spool: str) -> Page | Spooled:
    """The page with its pixels written to a file in `spool`; the page itself where that fails."""
    arrays = [np.ascontiguousarray(page.pixels)] + ([np.ascontiguousarray(page.fitted)] if page.fitted is not None else [])
    file = os.path.join(spool, f"{os.getpid()}-{next(_SERIAL)}")
    try:
        with open(file, "wb") as f:
            for array in arrays:
                f.write(memoryview(array).cast("B"))
    except OSError:  # the folder full or gone: through the pipe instead
        try:
            os.unlink(file)
        except OSError:
            pass
        return page
    shapes = (page.pixels.shape, None if page.fitted is None else page.fitted.shape)
    page.pixels, page.fitted = np.zeros((0, 0, 3), np.uint8), None
    return Spooled(page, file, *shapes)


def _received(result: Page | Spooled) -> Page:
    """The page, with its pixels read back (one read) from the spool and the file deleted."""
    if isinstance(result, Page):
        return result
    try:
        data = np.fromfile(result.file, dtype=np.uint8)
    finally:
        try:
            os.unlink(result.file)
        except FileNotFoundError:  # the read failed for the same reason, and says so
            pass
    size = int(np.prod(result.pixels_shape))
    expected = size + (int(np.prod(result.fitted_shape)) if result.fitted_shape else 0)
    if data.size != expected:
        raise OSError(f"{result.file}: {data.size} bytes of page {result.page.number}'s pixels, expected {expected}")
    page = result.page
    page.pixels = data[:size].reshape(result.pixels_shape)
    page.fitted = None if result.fitted_shape is None else data[size:].reshape(result.fitted_shape)
    return page


def _ready() -> int:
    return os.getpid()


def raster_workers() -> int:
    """One process per core, up to 16 (a page renders in tens of milliseconds)."""
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class Spool:
    """This run's folder in the RAM-backed folder, locked (flock) for as long as the run holds it:
    a folder whose lock nobody holds belongs to a run that was killed, and the next run removes it.
    A lock, not a process id, because containers sharing /dev/shm do not share process ids."""

    def __init__(self, folder: str, lock_fd: int):
        self.folder, self._lock_fd = folder, lock_fd

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._lock_fd)


def make_spool(workers: int, ram_folder: Path = RAM_FOLDER) -> Spool | None:
    """A fresh spool in `ram_folder`, or None (pages through the pipe) where there is no such
    folder or it has less room than twice the pages the workers render at once. Spools left by
    killed runs are removed first."""
    try:
        for folder in ram_folder.glob(f"{SPOOL_PREFIX}*"):
            if _abandoned(folder):
                shutil.rmtree(folder, ignore_errors=True)
        if shutil.disk_usage(ram_folder).free < 2 * workers * PAGE_BYTES:
            return None
        folder = tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=ram_folder)
        lock_fd = os.open(os.path.join(folder, LOCK_NAME), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return Spool(folder, lock_fd)
    except OSError:
        return None


def _abandoned(folder: Path) -> bool:
    """No run holds the folder's lock; a folder without one yet counts once it is a minute old (a run
    makes its lock right after the folder)."""
    try:
        lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > 60
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:  # held: a run is using it
        return False
    finally:
        os.close(lock_fd)


class Rasteriser:
    def __init__(self, workers: int | None = None, ram_folder: Path | None = RAM_FOLDER):
        self.workers = workers or raster_workers()
        self.spool = make_spool(self.workers, ram_folder) if ram_folder is not None else None
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def warm(self) -> "Rasteriser":
        """Start every worker process now (each imports PDFium once), without waiting for them."""
        for _ in range(self.workers):
            self.pool.submit(_ready)
        return self

    def page(self, path: Path, index: int) -> Page:
        spool = self.spool.folder if self.spool else None
        return _received(self.pool.submit(_render, path, index, spool).result())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.spool:  # with the pages rendered but never read (a run stopped early)
            self.spool.remove()
