"""Under load, locally (the wheel's Triton): a short soak, a model process killed, the server
killed, and `down` / `clean`. Each fault's outcome is asserted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts.local_triton import free_port, orphaned_shm_regions
from scripts.processes import descendants, group_members, stub_model
from scripts.soak import memory_mb
from scripts.verify import GoldenRequest
from tests.helpers import REPO_ROOT



@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One local e5 stack (core + text companion) for the module; `run(command, *args)`."""
    root = tmp_path_factory.mktemp("faults")
    (root / "checkpoints").mkdir()
    grpc_port = free_port()
    values = {"LOCAL_REPOSITORY": str(root / "build/model_repository"), "MODELS": "e5_small_v2",
              "CHECKPOINTS_DIR": str(root / "checkpoints"), "TRITON_HTTP_PORT": str(free_port()),
              "TRITON_GRPC_PORT": str(grpc_port), "TRITON_METRICS_PORT": str(free_port()),
              "EMBEDDINGS_HTTP_PORT": str(free_port())}
    (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def run(command: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scripts.stack", command, *args, "--local",
                               "--env-file", str(root / ".env")], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=900)

    up = run("up")
    assert up.returncode == 0, up.stdout + up.stderr
    yield run, root, f"127.0.0.1:{grpc_port}"
    run("clean")


def _server_pid(root: Path) -> int:
    return int((root / "build/local/triton.pid").read_text())


def _stub_pid(server_pid: int, model: str) -> int:
    """The python-backend stub process serving `model`."""
    found = [pid for pid in descendants(server_pid) if stub_model(pid) == model]
    assert found, f"no stub process for {model}"
    return found[0]


class Load:
    """Clients sending one model's golden request in a loop; each call's outcome and duration."""

    def __init__(self, grpc_url: str, model_dir: Path, clients: int = 4) -> None:
        import tritonclient.grpc as grpc

        self.request, self.results, self.stop = GoldenRequest(model_dir), [], threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(grpc.InferenceServerClient(grpc_url),))
                        for _ in range(clients)]

    def _loop(self, client) -> None:
        from tritonclient.utils import InferenceServerException

        while not self.stop.is_set():
            begun = time.monotonic()
            try:
                ok = self.request.check(self.request.infer(client, timeout_s=10)).ok
                self.results.append(("right" if ok else "wrong", time.monotonic() - begun, time.monotonic()))
            except InferenceServerException:  # the server's (or the transport's) error answer: an outcome here
                self.results.append(("error", time.monotonic() - begun, time.monotonic()))
                time.sleep(0.05)
            except Exception as error:  # anything else is a broken client, which must not pass as an error answer
                self.results.append((f"client failed: {type(error).__name__}: {error}", time.monotonic() - begun, time.monotonic()))
                time.sleep(0.05)

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self.threads), "a client hung"


def test_short_soak_passes_with_memory_figures(stack):
    run, root, _ = stack
    result = run("soak", "--clients", "4", "--minutes", "0.5", "--sample-every", "2", "--out", str(root / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "soak passed" in result.stdout
    report = json.loads((root / "out/soak/soak.json").read_text())
    assert report["counts"]["right"] > 0 and report["counts"].get("refused", 0) > 0
    assert set(report["counts"]) <= {"right", "refused"} and report["failures"] == []
    assert report["memory_judged"] is False and "memory not judged" in result.stdout  # 30 s is warm-up
    assert {"tritonserver", "e5_small_v2", "e5_small_v2_text", "total"} <= set(report["memory"])
    assert (root / "out/soak/soak.png").is_file()


def test_a_model_process_killed_mid_load_costs_only_that_model(stack):
    run, root, grpc_url = stack
    repo = root / "build/model_repository"
    with Load(grpc_url, repo / "e5_small_v2") as core_load, Load(grpc_url, repo / "e5_small_v2_text", 2) as text_load:
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(_stub_pid(_server_pid(root), "e5_small_v2_text"), signal.SIGKILL)
        time.sleep(5)
    core = [outcome for outcome, _, _ in core_load.results]
    assert core and set(core) == {"right"}  # the other model kept answering, every time
    before = [outcome for outcome, _, at in text_load.results if at < killed_at]
    assert before and set(before) == {"right"}  # the model answered right until its process was killed
    after = [outcome for outcome, _, at in text_load.results if at > killed_at + 1]
    assert after and set(after) == {"error"}  # Triton 2.51 keeps the model "ready" but refuses its requests
    assert all(seconds < 11 for _, seconds, _ in text_load.results)  # errors, not hangs
    status = run("status")  # health means answering correctly: status names the broken model
    rows = {line.split()[0]: line for line in status.stdout.splitlines() if line.startswith("e5_small_v2")}
    assert status.returncode == 1 and "NO: inference failed" in rows["e5_small_v2_text"]
    assert "not healthy" in rows["e5_small_v2_text"] and " yes " in rows["e5_small_v2"]
    restored = run("up")  # restarts the server: the model gets a new process
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "e5_small_v2: up to date, skipped" in restored.stdout


def test_triton_killed_mid_load_gives_errors_not_hangs_and_up_recovers(stack):
    run, root, grpc_url = stack
    repo = root / "build/model_repository"
    with Load(grpc_url, repo / "e5_small_v2_text") as load:
        time.sleep(2)
        killed_at, killed_pid = time.monotonic(), _server_pid(root)
        os.kill(killed_pid, signal.SIGKILL)
        time.sleep(3)
    before = [outcome for outcome, _, at in load.results if at < killed_at]
    assert before and set(before) == {"right"}
    # Calls sent after the kill (a call in flight at the kill may still have had its answer sent).
    after = [(outcome, seconds) for outcome, seconds, at in load.results if at - seconds > killed_at]
    assert after and {outcome for outcome, _ in after} == {"error"}
    assert max(seconds for _, seconds in after) < 11  # every call ended within the client timeout
    status = run("status")
    assert status.returncode == 1 and "not running" in status.stdout
    again = run("up")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "e5_small_v2: up to date, skipped" in again.stdout
    # Nothing of the killed server stays: its model processes are ended, its shared memory removed.
    assert not group_members(killed_pid)
    assert orphaned_shm_regions() == []


def test_down_keeps_the_build_and_clean_deletes_it(stack):
    run, root, _ = stack
    assert run("down").returncode == 0
    repo = root / "build/model_repository"
    assert (repo / "e5_small_v2" / "manifest.json").is_file()
    up = run("up")
    assert up.returncode == 0 and "e5_small_v2: up to date, skipped" in up.stdout
    cleaned = run("clean")
    assert cleaned.returncode == 0 and f"deleted {repo}" in cleaned.stdout
    assert not repo.exists() and not (root / "build/work").exists()
    assert run("status").returncode == 1
    rebuilt = run("up")
    assert rebuilt.returncode == 0 and "e5_small_v2: built" in rebuilt.stdout


def test_memory_figures_name_each_model_process(stack):
    _, root, _ = stack
    memory = memory_mb(_server_pid(root))
    assert {"tritonserver", "e5_small_v2", "e5_small_v2_text"} <= set(memory)
    assert all(value > 0 for value in memory.values())
