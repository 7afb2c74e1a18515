"""Client-side batching across pages: each page has a few chunks to embed, and one call per page
makes many small calls whose fixed cost (gRPC, the text model's python step, its call to the core)
outweighs the few rows they carry. `CallBatcher` joins the items of every page in flight into calls
of up to the model's max batch, sent as soon as one of its calls in flight returns: while the model
is busy, pages queue and the next call is fuller; while it is idle, a page's items go at once.
"""
from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future
from typing import Callable

import numpy as np


class CallBatcher:
    """`submit(items)` gives futures of `call`'s answers (rows, one per item, in order) for `items`,
    at most `batch` a future; `call` runs on `stage` (ingest.pipeline.Stage) with at most `slots`
    calls in flight. A failed call fails the futures of every page it carried, and no other."""

    def __init__(self, call: Callable[[list], np.ndarray], stage, batch: int, slots: int):
        if batch < 1 or slots < 1:
            raise ValueError(f"batch and slots must be at least 1, got {batch} and {slots}")
        self._call, self._stage, self.batch, self._free = call, stage, batch, slots
        self._pending: list[tuple[list, Future]] = []  # (items of one part of a page, its future)
        self._lock = threading.Lock()

    def submit(self, items: list) -> list[Future]:
        parts = [(items[i:i + self.batch], Future()) for i in range(0, len(items), self.batch)]
        with self._lock:
            self._pending.extend(parts)
        self._send()
        return [future for _, future in parts]

    def _send(self) -> None:
        """Send what is pending while a slot is free: whole parts, in order, up to `batch` items."""
        while True:
            with self._lock:
                if not self._free or not self._pending:
                    return
                taken, count = [], 0
                while self._pending and count + len(self._pending[0][0]) <= self.batch:
                    part = self._pending.pop(0)
                    taken.append(part)
                    count += len(part[0])
                self._free -= 1
            items = [item for part, _ in taken for item in part]
            try:
                call = self._stage.submit(self._call, items, items=len(items))
            except RuntimeError as exc:  # the stage was shut down: the run is ending
                call = Future()
                call.set_exception(exc)
            call.add_done_callback(lambda done, taken=taken: self._answer(taken, done))

    def _answer(self, taken: list[tuple[list, Future]], done: Future) -> None:
        error = CancelledError() if done.cancelled() else done.exception()
        rows = None if error is not None else done.result()
        start = 0
        for part, future in taken:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(rows[start:start + len(part)])
            start += len(part)
        with self._lock:
            self._free += 1
        self._send()
