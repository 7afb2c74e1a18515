"""In-flight batching of ECLAIR pages over the decoder's slots (graph_decoder.SlotDecoder).

Pages from every request share the slots. Each scheduler iteration:
  1. drops what was cancelled (its slots are free at once), asking each request at most every
     CANCEL_CHECK_S and at most CANCEL_ASKS_PER_STEP requests per iteration;
  2. admits waiting pages into the free slots, lowest first (one encoder pass for those pages,
     then their cross-attention K/V);
  3. launches one decoder step over the occupied slots (one CUDA graph replay on a GPU);
  4. reads the previous step's tokens while that one runs, hands back each page that reached EOS
     or the token limit, and answers a request as soon as its own pages are all done, in order.
A finished page's slot therefore runs one extra (ignored) step before a waiting page takes it;
in exchange the GPU never idles while Python reads tokens and admits pages.
So a short page never waits for a long one, and a finished page's slot takes a waiting page at
the next step, as TensorRT-LLM's in-flight batcher does. Triton's python backend answers through
each request's response sender from this thread (eclair_model.py); the scheduler itself knows
nothing of Triton, so it runs and is tested without it.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(eq=False)  # compared by identity: a job is removed from the list it is in
class Job:
    """One request: its pages, and how to answer it."""
    pages: np.ndarray  # uint8 [B, H, W, 3]: an array, or a pinned tensor (runtime.staged)
    on_done: Callable[[list[str] | None, str | None], None]  # (texts, error)
    is_cancelled: Callable[[], bool] = lambda: False
    limit: int | None = None  # new tokens per page at most (the request's max_new_tokens); None: the model's
    tokens: list = field(default_factory=list)  # per page: token ids once done, else None
    waiting: list = field(default_factory=list)  # page indexes not yet admitted
    answered: bool = False

    def __post_init__(self) -> None:
        self.tokens = [None] * len(self.pages)
        self.waiting = list(range(len(self.pages)))


# Triton's `is_cancelled()` is a round trip to the server process (python backend pb_cancel.cc),
# 0.2 ms on an H200 host: asked of every request at every step it would cost more host time than a
# step, and asked of every request in one iteration it stalls the GPU for that step. Asked once
# per request every 50 ms, it cost 0.12-0.24 ms a step (a sixth of the step) with 32 requests
# held. So each request is asked once per CANCEL_CHECK_S, one request per iteration (round robin),
# while the step runs: a request whose client has gone frees its slots within about half a second.
CANCEL_CHECK_S = 0.5
CANCEL_ASKS_PER_STEP = 1
# A report is written once a minute into a busy spell, and when the scheduler goes idle if the last
# was this long ago (a burst shorter than a minute is reported too, whole).
IDLE_REPORT_S = 10.0
# An idle scheduler waits this long for a request before it looks at its report again.
IDLE_WAIT_S = 0.5


@dataclass
class SchedulerTimes:
    """Where the scheduler thread's time went, to tell a host-bound server from a GPU-bound one: on a
    GPU, `gpu_wait_s` is the time it sat waiting for a step it had launched (the GPU was the bound);
    the rest of `busy_s` is host work, with pages turned into pixel values and their admission
    (encoder and cross K/V queued, and any copy that waits on the GPU) counted apart, and so is
    answering (the texts detokenised and handed to the request's sender: in Triton, a response sent)."""
    steps: int = 0
    busy_s: float = 0.0  # iterations with work in flight
    gpu_wait_s: float = 0.0  # reading a launched step's tokens (on a GPU: waiting for it)
    pixels_s: float = 0.0  # runtime.pixel_values of the admitted pages
    admit_s: float = 0.0  # decoder.encode and decoder.admit
    cancel_s: float = 0.0  # asking Triton whether requests were cancelled
    answer_s: float = 0.0  # runtime.texts and each done request's on_done

    def summary(self) -> str:
        if not self.steps:
            return "no steps"
        per_step = lambda seconds: f"{seconds / self.steps * 1e3:.2f}"  # noqa: E731
        other = self.busy_s - self.gpu_wait_s - self.pixels_s - self.admit_s - self.cancel_s - self.answer_s
        return (f"{self.steps} steps in {self.busy_s:.2f} s busy, ms per step: {per_step(self.gpu_wait_s)} waiting "
                f"for the step, {per_step(self.pixels_s)} pixel values, {per_step(self.admit_s)} admission, "
                f"{per_step(self.cancel_s)} cancellation checks, {per_step(self.answer_s)} answering, "
                f"{per_step(other)} other host work")


@dataclass(eq=False)
class Slot:
    job: Job
    page: int
    tokens: list


class InflightBatcher:
    """`runtime`: what turns pixels and tokens into model inputs and text (runtime.EclairRuntime's
    `pixel_values` and `texts`); `decoder`: a SlotDecoder with `slots` slots."""

    def __init__(self, runtime, decoder, slots: int, start_token: int, cancel_check_s: float = CANCEL_CHECK_S,
                 report: Callable[[str], None] | None = None, report_every_s: float = 60.0,
                 idle_report_s: float = IDLE_REPORT_S) -> None:
        self.runtime, self.decoder, self.start_token = runtime, decoder, start_token
        self.report, self.report_every_s, self.idle_report_s = report, report_every_s, idle_report_s
        self.cancel_check_s, self._cancel_checked = cancel_check_s, float("-inf")
        self._to_ask: list[Job] = []  # this round's requests not yet asked whether cancelled
        self.slots: list[Slot | None] = [None] * slots
        self.jobs: list[Job] = []  # admitted or waiting, in arrival order
        self.incoming: queue.Queue[Job] = queue.Queue()
        self._stop = threading.Event()
        self.pending: tuple | None = None  # the launched step not yet read, and the slots it ran
        self._thread: threading.Thread | None = None
        self.times = SchedulerTimes()

    # --- called from Triton's execute() ------------------------------------------------------
    def submit(self, job: Job) -> None:
        self.incoming.put(job)

    def queued_pages(self) -> int:
        """Pages submitted and not yet admitted (read from Triton's thread: a snapshot)."""
        return (sum(len(job.waiting) for job in list(self.jobs))
                + sum(len(job.pages) for job in list(self.incoming.queue) if job is not None))

    def start(self) -> "InflightBatcher":
        self._thread = threading.Thread(target=self._serve, name="eclair-inflight", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.incoming.put(None)  # wake an idle loop
        if self._thread is not None:
            self._thread.join(timeout_s)

    # --- the scheduler ------------------------------------------------------------------------
    def _serve(self) -> None:
        reported = burst_started = time.monotonic()
        was_busy = False
        while not self._stop.is_set():
            busy = self.iterate(block=True)
            now = time.monotonic()
            if busy and not was_busy:
                burst_started = now
            was_busy = busy
            # while busy, a minute into the burst (not since the last report, which a quiet hour makes
            # due at a burst's first step); once idle, when the last report is idle_report_s old
            due = (now - max(reported, burst_started) >= self.report_every_s if busy
                   else now - reported >= min(self.report_every_s, self.idle_report_s))
            if self.report and self.times.steps and due:
                try:
                    self.report(self.times.summary())
                except Exception:  # noqa: BLE001 - a report that cannot be written never stops the serving
                    pass
                self.times, reported = SchedulerTimes(), time.monotonic()

    def _take_incoming(self, block: bool) -> None:
        idle = not self.jobs and self.pending is None
        try:
            job = self.incoming.get(block=block and idle, timeout=IDLE_WAIT_S if block and idle else None)
        except queue.Empty:
            return
        while job is not None or not self.incoming.empty():
            if job is not None:
                self.jobs.append(job)
            try:
                job = self.incoming.get_nowait()
            except queue.Empty:
                break

    def iterate(self, block: bool = False) -> bool:
        """One scheduler iteration; False when there was nothing to do."""
        self._take_incoming(block)
        started, had_jobs = time.perf_counter(), bool(self.jobs)
        self._drop_cancelled()
        if not self.jobs and self.pending is None:
            if had_jobs:  # the last request, dropped as cancelled: its check (in cancel_s) was busy time
                self.times.busy_s += time.perf_counter() - started
            return False
        try:
            self._admit()
            active = self._active()
            launched = (self.decoder.launch(active), list(self.slots[:active])) if active else None
            if self.pending is not None:  # read step k while step k + 1 runs: the GPU never waits on Python
                self._collect(*self.pending)
            self.pending = launched
            if launched is not None:
                self.times.steps += 1
        except Exception as exc:  # a failed step fails what is in flight, never the thread
            self.pending = None
            self._fail_all(f"ECLAIR failed: {exc}")
        self.times.busy_s += time.perf_counter() - started
        return True

    def _active(self) -> int:
        occupied = [i for i, slot in enumerate(self.slots) if slot is not None]
        return occupied[-1] + 1 if occupied else 0

    def _drop_cancelled(self) -> None:
        if not self._to_ask:
            if time.monotonic() - self._cancel_checked < self.cancel_check_s:
                return
            self._cancel_checked, self._to_ask = time.monotonic(), list(self.jobs)
        started = time.perf_counter()
        asking, self._to_ask = self._to_ask[:CANCEL_ASKS_PER_STEP], self._to_ask[CANCEL_ASKS_PER_STEP:]
        for job in asking:
            if job in self.jobs and job.is_cancelled():  # answered since the round began: not asked
                self._free(job)
                self.jobs.remove(job)
        self.times.cancel_s += time.perf_counter() - started  # one clock for every SchedulerTimes part

    def _free(self, job: Job) -> None:
        for index, slot in enumerate(self.slots):
            if slot is not None and slot.job is job:
                self.slots[index] = None
                self.decoder.release(index)

    def _admit(self) -> None:
        free = [i for i, slot in enumerate(self.slots) if slot is None]
        chosen: list[tuple[int, Job, int]] = []
        for job in self.jobs:
            while job.waiting and len(chosen) < len(free):
                chosen.append((free[len(chosen)], job, job.waiting.pop(0)))
        if not chosen:
            return
        chosen.sort(key=lambda entry: -1 if entry[1].limit is None else entry[1].limit)  # a slice per limit
        started = time.perf_counter()
        pixels = self.runtime.pixel_values([job.pages[page] for _, job, page in chosen])
        encoding = time.perf_counter()
        states = self.decoder.encode(pixels)
        start = 0
        for limit, group in itertools.groupby(chosen, key=lambda entry: entry[1].limit):
            slots = [slot for slot, _, _ in group]  # one admit per token limit, over a slice of the states
            self.decoder.admit(slots, states[start:start + len(slots)], limit)
            start += len(slots)
        self.times.pixels_s += encoding - started
        self.times.admit_s += time.perf_counter() - encoding
        for slot, job, page in chosen:
            self.slots[slot] = Slot(job, page, [self.start_token])

    def _collect(self, launched, ran: list[Slot | None]) -> None:
        """A step's tokens for the pages it ran; a page finished, cancelled or replaced since it was
        launched is skipped (its slot decoded pad)."""
        started = time.perf_counter()
        tokens, finished = self.decoder.collect(launched)
        self.times.gpu_wait_s += time.perf_counter() - started
        for index, slot in enumerate(ran):
            if slot is None or slot is not self.slots[index]:
                continue
            slot.tokens.append(int(tokens[index]))
            if finished[index]:
                slot.job.tokens[slot.page] = slot.tokens
                self.slots[index] = None
                self.decoder.release(index)
                self._answer_if_done(slot.job)

    def _answer_if_done(self, job: Job) -> None:
        if job.answered or any(t is None for t in job.tokens):
            return
        job.answered = True
        self.jobs.remove(job)
        started = time.perf_counter()
        job.on_done(self.runtime.texts(job.tokens), None)
        self.times.answer_s += time.perf_counter() - started

    def _fail_all(self, message: str) -> None:
        for job in self.jobs:
            self._free(job)
            if not job.answered:
                job.answered = True
                job.on_done(None, message)
        self.jobs.clear()
