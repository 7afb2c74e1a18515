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

import itertools
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.ingest.sources import Document, Page

RAM_FOLDER = Path("/dev/shm")
SPOOL_PREFIX = "ingest-pages-"
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


def _opened(path: Path) -> Document:
    doc = _OPEN.get(path)
    if doc is None:
        while len(_OPEN) >= _KEEP_OPEN:
            _OPEN.pop(next(iter(_OPEN))).close()
        doc = _OPEN[path] = Document(path)
    return doc


def _render(path: Path, index: int, spool: str | None = None) -> Page | Spooled:
    page = _opened(path).page(index).fit_for_elements()  # the resize on the workers' cores, not in Triton's wrapper
    return _spooled(page, spool) if spool else page


def _with_text(path: Path, indices: list[int]) -> list[bool]:
    doc = _opened(path)
    return [doc.has_text(i) for i in indices]


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
        os.unlink(result.file)
    size = int(np.prod(result.pixels_shape))
    page = result.page
    page.pixels = data[:size].reshape(result.pixels_shape)
    page.fitted = None if result.fitted_shape is None else data[size:].reshape(result.fitted_shape)
    return page


def _ready() -> int:
    return os.getpid()


def raster_workers() -> int:
    """One process per core, up to 16 (a page renders in tens of milliseconds)."""
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def make_spool(workers: int, ram_folder: Path = RAM_FOLDER) -> str | None:
    """A fresh folder for this run's pages in `ram_folder`, or None (pages through the pipe) where
    there is no such folder or it has less room than twice the pages the workers render at once.
    Folders left by runs whose process is gone (killed) are removed first."""
    try:
        for stale in ram_folder.glob(f"{SPOOL_PREFIX}*"):
            pid = stale.name[len(SPOOL_PREFIX):].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        if shutil.disk_usage(ram_folder).free < 2 * workers * PAGE_BYTES:
            return None
        return tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=ram_folder)
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
        return _received(self.pool.submit(_render, path, index, self.spool).result())

    def with_text(self, path: Path, pages: int) -> list[bool]:
        """Which of the document's pages have a text layer, read on all the workers at once."""
        chunks = [list(range(pages))[start::self.workers] for start in range(min(self.workers, pages))]
        flags = [False] * pages
        for chunk, future in [(chunk, self.pool.submit(_with_text, path, chunk)) for chunk in chunks]:
            for index, flag in zip(chunk, future.result()):
                flags[index] = flag
        return flags

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.spool:  # pages rendered but never read (a run stopped early)
            shutil.rmtree(self.spool, ignore_errors=True)
