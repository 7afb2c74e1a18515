"""The ingest pipeline's embedding calls: the chunks of every page waiting join in calls of up to
the model's max batch (scripts/ingest/batching.py)."""
import threading
from concurrent.futures import CancelledError

import numpy as np
import pytest

from scripts.ingest.batching import CallBatcher
from scripts.ingest.pipeline import Stage


class Model:
    """A stand-in for the served embedding model's call: each item's row is [its number, call index];
    a call waits for `release` once `hold` is set, and fails on an item named 'bad'."""

    def __init__(self):
        self.calls, self.release, self.hold = [], threading.Event(), False
        self.started = threading.Event()

    def __call__(self, items):
        index = len(self.calls)
        self.calls.append(list(items))
        self.started.set()
        if self.hold:
            assert self.release.wait(10)
        if "bad" in items:
            raise RuntimeError("the model refused a row")
        return np.array([[float(item.split("-")[1]), index] for item in items])


def texts(page, count):
    return [f"p{page}-{page * 100 + i}" for i in range(count)]


def test_pages_waiting_while_a_call_is_in_flight_join_the_next_call_in_order():
    model, stage = Model(), Stage("embed", 1)
    model.hold = True
    batcher = CallBatcher(model, stage, batch=8, slots=1)
    first = batcher.submit(texts(1, 3))
    assert model.started.wait(10)
    later = [batcher.submit(texts(page, 2)) for page in (2, 3, 4, 5)]  # 8 items: one full call
    model.release.set()
    rows = [np.concatenate([f.result(10) for f in parts]) for parts in [first] + later]
    stage.shutdown()
    assert model.calls == [texts(1, 3), texts(2, 2) + texts(3, 2) + texts(4, 2) + texts(5, 2)]
    for page, got in zip((1, 2, 3, 4, 5), rows):
        assert got[:, 0].tolist() == [page * 100 + i for i in range(len(got))]  # each page its own rows
    assert stage.items == 11


def test_a_page_larger_than_the_batch_is_split_and_a_call_never_exceeds_the_batch():
    model, stage = Model(), Stage("embed", 2)
    batcher = CallBatcher(model, stage, batch=4, slots=2)
    parts = batcher.submit(texts(7, 10))
    assert len(parts) == 3
    got = np.concatenate([f.result(10) for f in parts])
    stage.shutdown()
    assert got[:, 0].tolist() == [700 + i for i in range(10)]
    assert sorted(map(len, model.calls)) == [2, 4, 4]


def _a_bad_page_between_two_good_ones(isolate):
    """Pages 1 (alone in a first call), then 'bad' and page 2 in one call, then page 3; `isolate`
    as CallBatcher takes it."""
    model, stage = Model(), Stage("embed", 1)
    model.hold = True
    batcher = CallBatcher(model, stage, batch=2, slots=1, isolate=isolate)
    first = batcher.submit(texts(1, 1))
    assert model.started.wait(10)
    pages = [batcher.submit(["bad"]), batcher.submit(texts(2, 1)), batcher.submit(texts(3, 2))]
    model.release.set()
    assert first[0].result(10)[:, 0].tolist() == [100]
    return model, stage, pages


def test_a_bad_input_fails_only_its_own_page_the_others_of_its_call_are_sent_again_alone():
    model, stage, (bad, shared_a_call_with_it, after) = _a_bad_page_between_two_good_ones(isolate=lambda error: True)
    with pytest.raises(RuntimeError, match="refused a row"):
        bad[0].result(10)
    assert shared_a_call_with_it[0].result(10)[:, 0].tolist() == [200]
    assert after[0].result(10)[:, 0].tolist() == [300, 301]
    stage.shutdown()
    assert model.calls == [texts(1, 1), ["bad"] + texts(2, 1), ["bad"], texts(2, 1), texts(3, 2)]


def test_a_failure_not_of_the_input_fails_every_page_of_the_call_without_resending():
    model, stage, (bad, shared_a_call_with_it, after) = _a_bad_page_between_two_good_ones(isolate=lambda e: False)
    for parts in (bad, shared_a_call_with_it):  # e.g. the server gone: sending again would not help
        with pytest.raises(RuntimeError, match="refused a row"):
            parts[0].result(10)
    assert after[0].result(10)[:, 0].tolist() == [300, 301]
    stage.shutdown()
    assert model.calls == [texts(1, 1), ["bad"] + texts(2, 1), texts(3, 2)]


def test_an_empty_page_makes_no_call_and_a_bad_setting_is_refused():
    model, stage = Model(), Stage("embed", 1)
    assert CallBatcher(model, stage, batch=4, slots=1).submit([]) == []
    assert model.calls == []
    stage.shutdown()
    with pytest.raises(ValueError, match="batch and slots"):
        CallBatcher(model, stage, batch=0, slots=1)


def test_a_wrong_row_count_fails_its_pages_and_the_slot_is_freed():
    stage = Stage("embed", 1)
    batcher = CallBatcher(lambda items: np.zeros((len(items) - 1, 2)), stage, batch=4, slots=1)
    for _ in range(3):  # each call fails; the one slot comes back every time
        with pytest.raises(RuntimeError, match="answered 1 rows for 2 items"):
            batcher.submit(["a-1", "b-2"])[0].result(10)
    stage.shutdown()


def test_after_the_stage_shuts_down_waiting_pages_fail_instead_of_hanging():
    model, stage = Model(), Stage("embed", 1)
    model.hold = True
    batcher = CallBatcher(model, stage, batch=1, slots=2)
    first = batcher.submit(texts(1, 1))
    assert model.started.wait(10)
    queued = batcher.submit(texts(2, 1))  # the second slot: queued in the stage's pool, not started
    waiting = batcher.submit(texts(3, 1))  # no slot left: waits in the batcher
    shutting = threading.Thread(target=stage.shutdown)  # cancels the queued call, waits for the running one
    shutting.start()
    assert isinstance(queued[0].exception(10), CancelledError)  # cancelled before the running call ends
    model.release.set()
    shutting.join(10)
    assert not shutting.is_alive()  # no deadlock on the pool's lock
    assert first[0].result(10)[:, 0].tolist() == [100]
    for parts in (queued, waiting):
        with pytest.raises(CancelledError):
            parts[0].result(10)
    assert not first[0].cancel()  # the futures handed out cannot be cancelled from outside


def _joined(gate, count):
    """`count` threads that join `gate`; each sets its event when its group goes."""
    done = [threading.Event() for _ in range(count)]

    def join(event):
        gate.join()
        event.set()
    for event in done:
        threading.Thread(target=join, args=(event,), daemon=True).start()
    return done


def test_the_ocr_gate_holds_pages_until_a_full_group_is_there():
    from scripts.ingest.batching import GroupGate

    gate = GroupGate(size=3, hold_s=60)
    gate.expect(5)
    first = _joined(gate, 2)
    assert not any(event.wait(0.3) for event in first)  # two of three, and three more pages may come
    last = _joined(gate, 1)
    assert all(event.wait(10) for event in first + last)
    assert gate.groups == [3] and gate.released_by == ["full"]


def test_the_ocr_gate_lets_its_pages_go_once_no_other_page_can_join():
    from scripts.ingest.batching import GroupGate

    gate = GroupGate(size=64, hold_s=60)
    gate.expect(4)
    held = _joined(gate, 2)
    gate.decided()  # a page with a text layer
    assert not any(event.wait(0.3) for event in held)
    gate.decided()  # the last page, failed before its raster: none is left to wait for
    assert all(event.wait(10) for event in held)
    assert gate.groups == [2] and gate.released_by == ["no page left"]


def test_the_ocr_gate_lets_a_group_go_after_its_hold_and_opens_the_next():
    from scripts.ingest.batching import GroupGate

    gate = GroupGate(size=64, hold_s=0.2)
    gate.expect(100)
    assert all(event.wait(10) for event in _joined(gate, 1))  # 99 pages still undecided
    assert gate.groups == [1] and gate.released_by == ["held"]
    assert all(event.wait(10) for event in _joined(gate, 2))
    assert sum(gate.groups) == 3 and set(gate.released_by) == {"held"}
    at_once = GroupGate(size=64, hold_s=0)
    at_once.expect(10)
    at_once.join()  # returns in this thread: no hold
    assert at_once.groups == [1]
    for size, hold in ((0, 1.0), (4, -1.0), (4, float("nan"))):
        with pytest.raises(ValueError, match="size must be at least 1"):
            GroupGate(size, hold)


def test_closing_the_ocr_gate_lets_the_waiting_pages_go_and_no_page_waits_after():
    from scripts.ingest.batching import GroupGate

    gate = GroupGate(size=64, hold_s=600)
    gate.expect(50)  # pages that will never come: their futures were cancelled
    held = _joined(gate, 2)
    assert not any(event.wait(0.3) for event in held)
    gate.close()
    assert all(event.wait(10) for event in held)
    assert all(event.wait(10) for event in _joined(gate, 1))
    assert gate.groups == [2]  # the group that was waiting; a page after the close is no group
    assert gate.released_by == ["closed"]
