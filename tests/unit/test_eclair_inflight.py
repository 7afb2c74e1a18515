"""In-flight batching of ECLAIR pages (triton_models/eclair/inflight.py) over the real slot decoder,
on CPU in fp32: a short request is answered before a long one sent with it, each with the text
`generate` gives its pages; a cancelled request frees its slots; a failing step fails what is in
flight and the scheduler goes on."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from triton_models.eclair.inflight import CANCEL_ASKS_PER_STEP, InflightBatcher, Job


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    from triton_models.eclair.build import make_demo_checkpoint
    from triton_models.eclair.runtime import EclairRuntime

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = make_demo_checkpoint(tmp_path_factory.mktemp("eclair"))
    graph = EclairRuntime(folder, generator="graph", max_new_tokens=24, slots=4)
    yield graph, lambda limit: EclairRuntime(folder, generator="pytorch", max_new_tokens=limit)
    torch.set_num_threads(threads)


def _pages(count: int, seed: int) -> np.ndarray:
    from triton_models.eclair.pages import pad_page

    rng = np.random.default_rng(seed)
    return np.stack([pad_page(rng.integers(0, 256, (1100, 850, 3), dtype=np.uint8))[0] for _ in range(count)])


def _batcher(runtime) -> InflightBatcher:
    decoder = runtime.generator.reserve(runtime.max_new_tokens, runtime.ids)
    return InflightBatcher(runtime, decoder, decoder.slots, runtime.ids.start)


def _run(batcher: InflightBatcher, steps: int = 500) -> None:
    for _ in range(steps):
        if not batcher.iterate():
            return
    raise AssertionError("the scheduler did not finish")


class FrozenClock:
    """The scheduler's `time`, with a monotonic clock that moves only when a test moves it: a
    quiet spell and a burst measured by it do not depend on how loaded the test machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name):
        return getattr(time, name)


def _serve_one(graph, decoder, slots: int, page_seed: int, limit: int, report_every_s: float,
               quiet: FrozenClock | None = None, quiet_s: float = 0.0) -> tuple[list, list]:
    """One request through a started scheduler thread (after `quiet_s` idle on the `quiet` clock):
    its answers and the report lines written by the time it is answered and reported, or 30 s."""
    lines, answered = [], []
    serving = InflightBatcher(graph, decoder, slots, graph.ids.start, report=lines.append,
                              report_every_s=report_every_s, idle_report_s=0.0).start()
    if quiet is not None:
        time.sleep(0.2)  # the scheduler is idle, waiting for work
        quiet.now += quiet_s
    serving.submit(Job(_pages(1, page_seed), lambda texts, error: answered.append(texts), limit=limit))
    for _ in range(600):
        if answered and lines:
            break
        time.sleep(0.05)
    serving.stop()
    return answered, lines


def test_a_short_request_is_answered_first_with_the_text_generate_gives(runtimes):
    graph, reference = runtimes
    batcher = _batcher(graph)
    answered = []
    long_pages, short_pages = _pages(2, 1), _pages(1, 2)
    batcher.submit(Job(long_pages, lambda texts, error: answered.append(("long", texts, error))))
    batcher.submit(Job(short_pages, lambda texts, error: answered.append(("short", texts, error)), limit=3))
    _run(batcher)
    assert [name for name, _, _ in answered] == ["short", "long"]
    assert all(error is None for _, _, error in answered)
    assert answered[0][1] == reference(3)(short_pages)
    assert answered[1][1] == reference(24)(long_pages)
    assert all(slot is None for slot in batcher.slots)


def test_more_pages_than_slots_wait_for_a_free_slot_and_keep_their_order(runtimes):
    graph, reference = runtimes
    batcher = _batcher(graph)
    answered = []
    pages = _pages(6, 3)  # 6 pages, 4 slots
    batcher.submit(Job(pages, lambda texts, error: answered.append(texts), limit=5))
    _run(batcher)
    assert answered == [reference(5)(pages)]


def test_a_cancelled_request_frees_its_slots_and_the_others_go_on(runtimes):
    graph, reference = runtimes
    batcher = _batcher(graph)
    batcher.cancel_check_s = 0  # every iteration asks
    cancelled, answered = [False], []
    batcher.submit(Job(_pages(3, 4), lambda texts, error: answered.append(("gone", texts)), lambda: cancelled[0]))
    kept = _pages(1, 5)
    batcher.submit(Job(kept, lambda texts, error: answered.append(("kept", texts)), limit=8))
    for _ in range(3):
        batcher.iterate()
    assert sum(slot is not None for slot in batcher.slots) == 4
    cancelled[0] = True
    for _ in range(2):  # a round of asks: one request an iteration
        batcher.iterate()
    assert [slot.job.limit for slot in batcher.slots if slot is not None] == [8]  # only the kept page decodes
    _run(batcher)
    assert answered == [("kept", reference(8)(kept))]


def test_requests_are_asked_whether_cancelled_at_most_once_per_interval(runtimes):
    """Triton's is_cancelled() is a round trip to the server: not one per request per step."""
    graph, _ = runtimes
    batcher = _batcher(graph)
    batcher.cancel_check_s = 3600.0
    asked = []
    batcher.submit(Job(_pages(2, 7), lambda texts, error: None, lambda: asked.append(1) or False, limit=6))
    for _ in range(4):
        batcher.iterate()
    assert len(asked) == 1
    batcher.cancel_check_s = 0
    batcher.iterate()
    assert len(asked) == 2


def test_a_round_of_cancellation_asks_is_spread_over_iterations(runtimes):
    """Asking every request in one iteration would stall the GPU for that step: a few per iteration."""
    graph, _ = runtimes
    batcher = _batcher(graph)
    batcher.cancel_check_s = 3600.0
    asked = []
    for index in range(5):
        batcher.submit(Job(_pages(1, 10 + index), lambda texts, error: None,
                           lambda index=index: asked.append(index) or False, limit=8))
    per_iteration = []
    for _ in range(8):
        batcher.iterate()
        per_iteration.append(len(asked) - sum(per_iteration))
    assert max(per_iteration) == CANCEL_ASKS_PER_STEP and sorted(asked) == list(range(5)), per_iteration  # each once


def test_queued_pages_counts_what_is_submitted_and_not_admitted(runtimes):
    """What the served model reads before pinning a request's pages (not behind a long queue)."""
    graph, _ = runtimes
    batcher = _batcher(graph)
    batcher.submit(Job(_pages(3, 20), lambda texts, error: None, limit=4))
    batcher.submit(Job(_pages(2, 21), lambda texts, error: None, limit=4))
    assert batcher.queued_pages() == 5
    batcher.iterate()
    assert batcher.queued_pages() == 5 - batcher.decoder.slots


def test_a_failing_step_fails_the_requests_in_flight_and_the_next_one_is_served(runtimes):
    graph, reference = runtimes
    batcher = _batcher(graph)
    answered = []
    real_launch = batcher.decoder.launch
    batcher.decoder.launch = lambda active: (_ for _ in ()).throw(RuntimeError("CUDA error: an illegal memory access"))
    try:
        batcher.submit(Job(_pages(1, 6), lambda texts, error: answered.append(error)))
        batcher.iterate()
    finally:
        batcher.decoder.launch = real_launch
    assert answered == ["ECLAIR failed: CUDA error: an illegal memory access"]
    assert all(slot is None for slot in batcher.slots) and not batcher.jobs
    page = _pages(1, 7)
    batcher.submit(Job(page, lambda texts, error: answered.append(texts), limit=4))
    _run(batcher)
    assert answered[-1] == reference(4)(page)


def test_the_scheduler_accounts_for_its_time_and_the_serving_thread_reports_it(runtimes):
    graph, _ = runtimes
    batcher = _batcher(graph)
    batcher.submit(Job(_pages(2, 5), lambda texts, error: time.sleep(0.02), limit=4))  # a response sent
    _run(batcher)
    times = batcher.times
    assert times.answer_s >= 0.02
    assert times.steps >= 4  # 4 tokens a page, and the step launched past the last one
    parts = times.gpu_wait_s + times.pixels_s + times.admit_s + times.cancel_s + times.answer_s
    assert times.pixels_s > 0 and times.admit_s > 0 and times.answer_s > 0 and 0 < parts <= times.busy_s
    assert times.summary().startswith(f"{times.steps} steps in ")

    answered, lines = _serve_one(graph, batcher.decoder, batcher.decoder.slots, 6, 3, report_every_s=3600.0)
    assert answered and lines and "ms per step" in lines[0], (answered, lines)  # reported once idle, within the hour


def test_a_burst_after_a_quiet_spell_is_reported_whole_not_at_its_first_step(runtimes, monkeypatch):
    """The minute-while-busy report counts from the burst's start: after a quiet spell longer than it,
    the burst's first step is not reported alone (a bench's warm-up and timed run stay apart)."""
    from triton_models.eclair import inflight

    graph, _ = runtimes
    clock = FrozenClock()  # the burst takes no time on it: never a minute into the burst
    monkeypatch.setattr(inflight, "time", clock)
    answered, lines = _serve_one(graph, _batcher(graph).decoder, 4, 8, 6, report_every_s=4.0,
                                 quiet=clock, quiet_s=4.2)  # quiet, longer than report_every_s
    assert answered and lines, (answered, lines)
    assert int(lines[0].split()[0]) >= 6, lines  # every step of the burst (6 tokens) in its one line


def test_a_last_request_dropped_as_cancelled_is_busy_time_in_the_report(runtimes):
    """Its cancellation check is counted in cancel_s; the report's host work (busy minus the parts) stays >= 0."""
    graph, _ = runtimes
    batcher = _batcher(graph)
    batcher.cancel_check_s = 0
    answered = []

    def cancelled():
        time.sleep(0.01)  # a round trip to the server
        return True

    batcher.submit(Job(_pages(1, 5), lambda texts, error: answered.append(error), cancelled))
    assert not batcher.iterate()  # the only request was dropped: nothing left to do
    times = batcher.times
    assert times.cancel_s >= 0.01 and times.cancel_s <= times.busy_s
    assert all(slot is None for slot in batcher.slots) and not batcher.jobs
    assert answered == []  # a request whose client has gone is not answered
