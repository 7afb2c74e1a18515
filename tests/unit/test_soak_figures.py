"""The soak's figures: memory read from /proc, the rising-memory gate, the outcome counts."""
from __future__ import annotations

import subprocess
import time

from scripts.soak import Call, _summarise, memory_mb, memory_rise


def test_memory_is_read_for_the_server_and_each_child_process():
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 30  # until both children have started, however loaded the machine
        while True:
            memory = memory_mb(parent.pid)
            if len([label for label in memory if label.startswith("pid ")]) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        parent.kill()
    assert memory["tritonserver"] > 0  # the root of the tree is the server
    children = [label for label in memory if label.startswith("pid ")]
    assert len(children) == 2 and all(memory[label] > 0 for label in children)


def test_a_plateau_is_not_rising_and_a_climb_is():
    times = [float(t) for t in range(0, 300, 5)]
    plateau = [1000 + (200 * t / 100 if t < 100 else 200) + (3 if i % 2 else -3) for i, t in enumerate(times)]
    climbing = [1000 + 2.0 * t for t in times]  # 2 MB/s, as the issue saw under 16 clients
    assert abs(memory_rise(times, plateau)) < 10
    assert 180 < memory_rise(times, climbing) < 220


def _samples(totals):
    return [(float(i * 5), {"tritonserver": value, "total": value}) for i, value in enumerate(totals)]


def test_outcomes_and_the_gate():
    calls = [Call(1.0, "m", False, "right", 0.01), Call(2.0, "m", True, "refused", 0.01),
             Call(3.0, "m", False, "wrong", 0.02, "output 'x' differs"), Call(4.0, "n", True, "accepted", 0.01)]
    flat = _summarise(calls, _samples([500.0] * 30), clients=2, seconds=150, alive=True, window_s=30)
    assert flat.counts == {"right": 1, "refused": 1, "wrong": 1, "accepted": 1}
    assert flat.per_model["n"] == {"accepted": 1}
    assert flat.failures == ["1 wrong answers", "1 malformed requests answered instead of refused"]
    assert flat.latency_windows[0]["requests"] == 1 and not flat.memory_rising

    rising = _summarise(calls[:2], _samples([500.0 + 10 * i for i in range(30)]), 2, 150, alive=False, window_s=30)
    assert rising.memory_rising and "the server died" in rising.failures
    assert any(f.startswith("memory still rising over the last third") for f in rising.failures)


def test_a_run_shorter_than_the_warm_up_is_reported_but_not_judged():
    climbing = _samples([300.0 + 10 * i for i in range(15)])
    short = _summarise([], climbing, clients=4, seconds=30, alive=True, window_s=30)
    assert not short.memory_judged and not short.memory_rising and short.failures == []
    assert short.memory_rise_mb["total"] > 30  # the figure is still there for the reader
