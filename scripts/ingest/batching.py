"""Client-side batching across pages: each page has a few chunks to embed, and one call per page
makes many small calls whose fixed cost (gRPC, the text model's python step, its call to the core)
outweighs the few rows they carry. `CallBatcher` joins the items of every page in flight into calls
of up to the model's max batch, sent as soon as one of its calls in flight returns: while the model
is busy, pages queue and the next call is fuller; while it is idle, a page's items go at once.
`GroupGate` holds the pages bound for OCR briefly, so that ECLAIR's decoder takes them together.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future
from typing import Callable

import numpy as np


class CallBatcher:
    """`submit(items)` gives futures of `call`'s answers (rows, one per item, in order) for `items`,
    at most `batch` a future; `call` runs on `stage` (ingest.pipeline.Stage) with at most `slots`
    calls in flight. When a call that carried several pages fails and `isolate(error)` holds (the
    input, not the server, is at fault), each page is sent again alone, so that a bad input fails only
    its own page; otherwise the call's pages fail together. Once a call is cancelled or the stage
    refuses one (it is shutting down), every waiting page fails."""

    def __init__(self, call: Callable[[list], np.ndarray], stage, batch: int, slots: int,
                 isolate: Callable[[BaseException], bool] = lambda error: True):
        if batch < 1 or slots < 1:
            raise ValueError(f"batch and slots must be at least 1, got {batch} and {slots}")
        self._call, self._stage, self.batch, self._free, self._isolate = call, stage, batch, slots, isolate
        self._pending: list[tuple[list, Future]] = []  # (items of one part of a page, its future)
        self._alone: list[tuple[list, Future]] = []  # parts of a failed call, each sent again on its own
        self._closed: BaseException | None = None  # why no call is sent any more
        self._lock = threading.Lock()

    def submit(self, items: list) -> list[Future]:
        parts = [(items[i:i + self.batch], Future()) for i in range(0, len(items), self.batch)]
        for _, future in parts:
            future.set_running_or_notify_cancel()  # not cancellable: only this class completes it
        with self._lock:
            self._pending.extend(parts)
        self._send()
        return [future for _, future in parts]

    def _send(self) -> None:
        """Send what waits while a slot is free: a part to retry alone first, else whole parts, in
        order, up to `batch` items."""
        while True:
            with self._lock:
                if self._closed is not None:
                    refused = self._take_waiting()
                    break
                if not self._free or not (self._pending or self._alone):
                    return
                if self._alone:
                    taken = [self._alone.pop(0)]
                else:
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
                with self._lock:
                    self._closed = exc
                    self._free += 1
                _fail(taken, exc)
                continue
            call.add_done_callback(lambda done, taken=taken: self._answer(taken, done))
        _fail(refused, self._closed)

    def _take_waiting(self) -> list[tuple[list, Future]]:
        """Every part not yet sent, removed (under the lock)."""
        waiting = self._alone + self._pending
        self._alone, self._pending = [], []
        return waiting

    def _answer(self, taken: list[tuple[list, Future]], done: Future) -> None:
        if done.cancelled():  # the stage is shutting down (and may hold its pool's lock): send nothing more
            with self._lock:
                self._closed = self._closed or CancelledError()
                self._free += 1
                waiting = self._take_waiting()
            _fail(taken + waiting, CancelledError())
            return
        try:
            error, rows = done.exception(), None
            if error is None:
                rows = done.result()
                expected = sum(len(part) for part, _ in taken)
                if len(rows) != expected:
                    error = RuntimeError(f"the model answered {len(rows)} rows for {expected} items")
            if error is not None and len(taken) > 1 and self._isolate(error):
                with self._lock:  # each page again on its own: only the one at fault fails
                    self._alone.extend(taken)
            elif error is not None:
                _fail(taken, error)
            else:
                start = 0
                for part, future in taken:
                    future.set_result(rows[start:start + len(part)])
                    start += len(part)
        except BaseException as exc:  # whatever went wrong, no page is left waiting for this call
            _fail([part for part in taken if not part[1].done()], exc)
        finally:
            with self._lock:
                self._free += 1
            self._send()


def _fail(parts: list[tuple[list, Future]], error: BaseException) -> None:
    for _, future in parts:
        future.set_exception(error)


class GroupGate:
    """Holds the pages bound for ECLAIR so that they reach its decoder together. Its decoder steps
    once per new token for every page in flight, and a step costs nearly the same for 2 pages as for
    64 (it reads all its weights each time): pages sent as they trickle in keep it stepping all run
    long with two or three aboard (ingest run 12: 6.7x the steps of the same pages sent together).

    Every page is first `expect`ed (counted as undecided). A page then either `join`s (it needs the
    model: it waits here) or is `decided` (it does not, or it failed before knowing). The pages
    waiting go together once `size` of them are here, once the first has waited `hold_s`, or once no
    undecided page is left that could still join them, so the run's last pages never wait the clock."""

    def __init__(self, size: int, hold_s: float):
        if size < 1 or not hold_s >= 0:  # (not >= also refuses NaN)
            raise ValueError(f"size must be at least 1 and hold_s at least 0, got {size} and {hold_s}")
        self.size, self.hold_s = size, hold_s
        self._cond = threading.Condition()
        self._undecided = 0  # pages expected that have neither joined nor been decided
        self._waiting = 0  # pages in the open group
        self._opened = 0.0  # time.monotonic() of the open group's first page
        self._group = 0  # the open group's number; it changes when the group goes
        self._closed = False  # the run is ending: nothing waits any more
        self.groups: list[int] = []  # each released group's size, for the report
        self.released_by: list[str] = []  # why each went: full, no page left, held (hold_s ran out), closed

    def expect(self, pages: int) -> None:
        with self._cond:
            self._undecided += pages

    def decided(self) -> None:
        """One expected page will not join."""
        with self._cond:
            self._undecided -= 1
            if self._waiting and self._undecided <= 0:
                self._release("no page left")

    def join(self) -> None:
        """One expected page needs the model: returns when its group goes."""
        with self._cond:
            self._undecided -= 1
            if self._closed:
                return
            if not self._waiting:
                self._opened = time.monotonic()
            self._waiting += 1
            group = self._group
            while self._group == group:
                left = self._opened + self.hold_s - time.monotonic()
                why = ("full" if self._waiting >= self.size else "no page left" if self._undecided <= 0
                       else "closed" if self._closed else "held" if left <= 0 else "")
                if why:
                    self._release(why)
                    break
                self._cond.wait(min(left, threading.TIMEOUT_MAX))

    def close(self) -> None:
        """The run is ending (a server gone, an interrupt): the pages waiting go now, and no page
        waits from here on, whatever pages are still counted as undecided."""
        with self._cond:
            self._closed = True
            if self._waiting:
                self._release("closed")

    def _release(self, why: str) -> None:
        self.groups.append(self._waiting)
        self.released_by.append(why)
        self._group, self._waiting = self._group + 1, 0
        self._cond.notify_all()
