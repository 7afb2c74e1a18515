"""Releasing a bench caller's shared-memory region. Triton can still hold the last request's
reference for a moment after answering ("currently in use"); the race cannot be forced against
the real server, so a client that answers so twice stands in for it here."""
from pathlib import Path

import pytest
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from scripts.bench.load import release


class BusyThenFree:
    def __init__(self, busy_answers: int, message: str = "it is currently in use") -> None:
        self.busy_answers, self.message, self.calls = busy_answers, message, 0

    def unregister_system_shared_memory(self, region: str, client_timeout: float | None = None) -> None:
        self.calls += 1
        if self.calls <= self.busy_answers:
            raise InferenceServerException(f"Cannot unregister shared memory region '{region}', {self.message}.")


def _region(name: str):
    return shm.create_shared_memory_region(name, f"/{name}", 64)


def test_unregister_is_retried_while_the_server_still_holds_the_region():
    client = BusyThenFree(busy_answers=2)
    release(client, "bench_test_busy", _region("bench_test_busy"))
    assert client.calls == 3
    assert not Path("/dev/shm/bench_test_busy").exists()


def test_other_errors_are_raised_at_once_and_the_region_is_still_unlinked():
    client = BusyThenFree(busy_answers=5, message="unknown region")
    with pytest.raises(InferenceServerException, match="unknown region"):
        release(client, "bench_test_other", _region("bench_test_other"))
    assert client.calls == 1
    assert not Path("/dev/shm/bench_test_other").exists()


def test_a_region_busy_for_too_long_is_reported():
    client = BusyThenFree(busy_answers=10)
    with pytest.raises(InferenceServerException, match="in use"):
        release(client, "bench_test_stuck", _region("bench_test_stuck"), attempts=3)
    assert client.calls == 3
    assert not Path("/dev/shm/bench_test_stuck").exists()
