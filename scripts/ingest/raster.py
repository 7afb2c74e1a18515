"""Rasterisation on worker processes. PDFium is not thread-safe (one lock for the whole library),
so threads render one page at a time; separate processes, each with its own PDFium and its own
open documents, render as many pages at once as there are cores. Spawned, not forked: the
parent holds gRPC channels, which a fork does not survive."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from scripts.ingest.sources import Document, Page

_OPEN: dict[Path, Document] = {}  # in a worker: the documents it has opened, by path
_KEEP_OPEN = 8


def _render(path: Path, index: int) -> Page:
    doc = _OPEN.get(path)
    if doc is None:
        while len(_OPEN) >= _KEEP_OPEN:
            _OPEN.pop(next(iter(_OPEN))).close()
        doc = _OPEN[path] = Document(path)
    return doc.page(index).fit_for_elements()  # the resize on the workers' cores, not in Triton's wrapper


def _ready() -> int:
    return os.getpid()


def raster_workers() -> int:
    """One process per core, up to 16 (a page renders in tens of milliseconds)."""
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class Rasteriser:
    def __init__(self, workers: int | None = None):
        self.workers = workers or raster_workers()
        self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def warm(self) -> "Rasteriser":
        """Start every worker process now (each imports PDFium once), without waiting for them."""
        for _ in range(self.workers):
            self.pool.submit(_ready)
        return self

    def page(self, path: Path, index: int) -> Page:
        return self.pool.submit(_render, path, index).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
