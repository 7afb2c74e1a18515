"""The orchestrator's local mode (no Docker): builders as subprocesses, the wheel's Triton, verify."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from scripts.local_triton import free_port
from tests.helpers import REPO_ROOT


@pytest.fixture
def local_stack(tmp_path):
    ports = {"TRITON_HTTP_PORT": str(free_port()), "TRITON_GRPC_PORT": str(free_port()),
             "TRITON_METRICS_PORT": str(free_port()), "EMBEDDINGS_HTTP_PORT": str(free_port())}
    base = {"LOCAL_REPOSITORY": str(tmp_path / "build/model_repository"), "MODELS": "e5_small_v2",
            "CHECKPOINTS_DIR": str(tmp_path / "checkpoints"), **ports}
    (tmp_path / "checkpoints").mkdir()

    def run(command: str, **env: str) -> subprocess.CompletedProcess:
        env_file = tmp_path / ".env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in {**base, **env}.items()))
        return subprocess.run([sys.executable, "-m", "scripts.stack", command, "--local", "--env-file", str(env_file)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)

    yield run, tmp_path, ports
    run("down")


def test_up_verifies_then_warm_up_skips_and_down_stops(local_stack):
    run, tmp_path, _ = local_stack
    cold = run("up")
    assert cold.returncode == 0, cold.stdout + cold.stderr
    rows = [line for line in cold.stdout.splitlines() if line.startswith("e5_small_v2")]
    assert len(rows) == 2 and all(" yes " in row and row.rstrip().endswith("demo") for row in rows)
    endpoint = [line for line in cold.stdout.splitlines() if line.startswith("/v1/embeddings")]
    assert len(endpoint) == 1 and endpoint[0].split()[-4:-2] == ["yes", "yes"], cold.stdout  # ready, verified
    warm = run("up")
    assert warm.returncode == 0 and "e5_small_v2: up to date, skipped" in warm.stdout
    assert "building e5_small_v2" not in warm.stdout  # the build stamp matched: no builder process started
    forced = run("build")  # `stack build` starts the builder, which finds its manifest current
    assert forced.returncode == 0 and "building e5_small_v2" in forced.stdout
    assert "e5_small_v2: up to date, skipped" in forced.stdout
    status = run("status")
    assert status.returncode == 0 and "running (pid" in status.stdout
    down = run("down")
    assert down.returncode == 0 and "stopped the embeddings endpoint" in down.stdout
    stopped = run("status")
    assert stopped.returncode == 1 and "not running" in stopped.stdout


def test_failing_builder_is_named_and_triton_is_not_started(local_stack):
    run, tmp_path, _ = local_stack
    (tmp_path / "checkpoints/empty_folder").mkdir()
    result = run("up", E5_CHECKPOINT="empty_folder")
    assert result.returncode == 1
    assert "builder e5_small_v2 failed with exit code 1" in result.stderr and "lacks config.json" in result.stderr
    assert "starting Triton" not in result.stdout
    assert not (tmp_path / "build/local/triton.pid").exists()


def test_port_in_use_is_refused_before_anything_starts(local_stack):
    run, tmp_path, ports = local_stack
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(ports["TRITON_GRPC_PORT"])))
        holder.listen()
        result = run("up")
    assert result.returncode == 1
    assert f"port {ports['TRITON_GRPC_PORT']} (TRITON_GRPC_PORT) is already in use" in result.stderr
    assert "building" not in result.stdout


def test_model_that_fails_to_load_is_named_at_once(local_stack):
    run, tmp_path, _ = local_stack
    assert run("up").returncode == 0
    assert run("down").returncode == 0
    # A published model damaged after its build: the builder is skipped, Triton's load fails.
    (tmp_path / "build/model_repository/e5_small_v2/1/model.onnx").write_bytes(b"not an onnx model")
    result = run("up", READY_TIMEOUT_S="500")
    assert result.returncode == 1
    assert "Triton could not load e5_small_v2:" in result.stderr
    assert "within 500 s" not in result.stderr
    status = run("status")  # the server stays up for the models that did load
    assert "running (pid" in status.stdout and status.returncode == 1


def test_only_the_configured_models_are_served(local_stack):
    """A model folder left in the repository by an earlier build with other MODELS is not loaded."""
    run, tmp_path, ports = local_stack
    assert run("up").returncode == 0
    assert run("down").returncode == 0
    leftover = tmp_path / "build/model_repository/old_model"
    (leftover / "1").mkdir(parents=True)
    (leftover / "config.pbtxt").write_text('name: "old_model"\nbackend: "python"\n')
    assert run("up").returncode == 0
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(f"127.0.0.1:{ports['TRITON_GRPC_PORT']}")
    loaded = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"] if m.get("state") == "READY"}
    assert loaded == {"e5_small_v2", "e5_small_v2_text"}
