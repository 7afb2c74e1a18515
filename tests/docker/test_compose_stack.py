"""The real compose stack (CPU profile) driven by the orchestrator: builders -> volume -> Triton ->
verification; faults; `down` leaves nothing behind. Needs a Docker engine with Compose v2 and the
local base image (.ci/run provides both)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO_ROOT



def _docker():
    try:
        import docker

        client = docker.from_env()
        client.ping()
        client.images.get("doc-triton-base:local")
        return client
    except Exception as exc:  # the absence is named in the skip reason
        pytest.skip(f"no Docker engine with the doc-triton-base:local image here ({type(exc).__name__}); .ci/run sets both up")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    client = _docker()
    root = tmp_path_factory.mktemp("compose")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    project = f"doctriton-test-{int(time.time())}"
    base = {"COMPOSE_FILE": "docker-compose.yaml", "COMPOSE_PROJECT_NAME": project, "PIP_OFFLINE": "1",
            "TRITON_HTTP_PORT": "18100", "TRITON_GRPC_PORT": "18101", "TRITON_METRICS_PORT": "18102",
            "EMBEDDINGS_HTTP_PORT": "18103",
            "CHECKPOINTS_DIR": str(checkpoints), "READY_TIMEOUT_S": "300"}

    def run(command: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
        env_file = root / f"{command}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in {**base, **(env or {})}.items()))
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "scripts.stack", command, *extra, "--mode", "docker",
                                 "--env-file", str(env_file)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)
        result.seconds = time.monotonic() - started
        return result

    yield client, run, project, checkpoints
    run("clean")
    for image in (f"{project}-builder:local", f"{project}-triton:local", f"{project}-embeddings:local"):  # layers stay cached for later builds
        try:
            client.images.remove(image)
        except Exception:
            pass  # never built (an earlier test failed first)


def _project_objects(client, project: str):
    label = f"com.docker.compose.project={project}"
    return client.containers.list(all=True, filters={"label": label}), client.volumes.list(filters={"label": label})


def test_cold_up_then_warm_up_skips_every_build(stack, capsys):
    client, run, project, _ = stack
    cold = run("up")
    assert cold.returncode == 0, cold.stdout + cold.stderr
    assert cold.stdout.count(" yes ") >= 7 and "NOT verified" not in cold.stdout
    warm = run("up")
    assert warm.returncode == 0, warm.stdout + warm.stderr
    skipped = [line for line in warm.stdout.splitlines() if "up to date, skipped" in line]
    assert len(skipped) == 4, warm.stdout  # every builder found its models current
    assert "published" not in warm.stdout
    with capsys.disabled():  # a figure for the record, not a timed assertion
        print(f"\n[figure] compose stack: cold up {cold.seconds:.1f} s, warm up {warm.seconds:.1f} s "
              f"(cold/warm {cold.seconds / warm.seconds:.2f})")


def test_ingest_and_search_through_the_compose_stack(stack, tmp_path):
    from benchmarks.ingest_pdf import PageSpec, write_pdf

    _, run, _, _ = stack
    pdf = write_pdf(tmp_path / "compose.pdf", [PageSpec("text", ["The tram line to the harbour opened in May."]),
                                               PageSpec("text", ["Glass beads were traded along the river."])])
    store = str(tmp_path / "store")
    ingested = run("ingest", str(pdf), "--out", store)
    assert ingested.returncode == 0 and "1 ingested, 0 skipped" in ingested.stdout, ingested.stdout + ingested.stderr
    found = run("search", "Glass beads traded along the river", "--out", store)
    assert found.returncode == 0, found.stderr
    assert "compose.pdf  page 2" in found.stdout.splitlines()[0], found.stdout


def test_triton_killed_is_reported_and_up_recovers(stack):
    client, run, project, _ = stack
    triton = client.containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                       "com.docker.compose.service=triton"]})[0]
    triton.kill()
    status = run("status")
    assert status.returncode == 1
    assert "exited" in status.stdout and " no " in status.stdout
    again = run("up")
    assert again.returncode == 0, again.stdout + again.stderr


def test_failing_builder_names_itself_and_keeps_the_good_model(stack):
    client, run, project, checkpoints = stack
    (checkpoints / "broken.pth").write_bytes(b"this is not a checkpoint")
    before = run("status")
    assert before.returncode == 0
    subprocess.run(["docker", "stop", f"{project}-triton-1"], check=True, capture_output=True)
    failed = run("up", env={"YOLOX_CHECKPOINT": "broken.pth"})
    assert failed.returncode == 1
    assert "builder service build-yolox failed with exit code 1" in failed.stderr
    assert "not a readable state_dict checkpoint" in failed.stderr
    triton = client.containers.get(f"{project}-triton-1")
    assert triton.status == "exited"  # not started on a partial repository
    manifest = client.containers.run(f"{project}-builder:local", entrypoint=["cat", "/models/yolox/manifest.json"],
                                     volumes={f"{project}_model_repository": {"bind": "/models", "mode": "ro"}}, remove=True)
    assert json.loads(manifest)["demo"] is True  # the previous good build is untouched
    recovered = run("up")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr


def test_a_port_in_use_is_a_clear_error(stack):
    client, run, project, _ = stack
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 18190))
        holder.listen()
        result = run("up", env={"TRITON_HTTP_PORT": "18190", "TRITON_GRPC_PORT": "18191", "TRITON_METRICS_PORT": "18192",
                                "EMBEDDINGS_HTTP_PORT": "18193",
                                "COMPOSE_PROJECT_NAME": project + "-ports"})
    assert result.returncode == 1
    assert "port 18190 (TRITON_HTTP_PORT) is already in use on 127.0.0.1" in result.stderr
    assert _project_objects(client, project + "-ports") == ([], [])


def test_bad_env_lists_every_problem_and_starts_nothing(stack):
    client, run, project, _ = stack
    result = run("up", env={"COMPOSE_PROJECT_NAME": project + "-bad", "E5_BATCH_SIZE": "lots", "TRITON_GPU": "0",
                            "CAPTION_CHECKPOINT": "missing-folder"})
    assert result.returncode == 1
    for fragment in ("unknown key TRITON_GPU", "E5_BATCH_SIZE='lots' is not a whole number", "CAPTION_CHECKPOINT=missing-folder"):
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert _project_objects(client, project + "-bad") == ([], [])


def test_down_keeps_what_was_built_and_up_skips_every_builder(stack):
    client, run, project, _ = stack
    down = run("down")
    assert down.returncode == 0, down.stderr
    containers, volumes = _project_objects(client, project)
    assert containers == [] and {v.name for v in volumes} >= {f"{project}_model_repository"}
    up = run("up")
    assert up.returncode == 0, up.stdout + up.stderr
    skipped = [line for line in up.stdout.splitlines() if "up to date, skipped" in line]
    assert len(skipped) == 4, up.stdout


def test_clean_says_what_it_deletes_and_leaves_no_container_or_volume(stack):
    client, run, project, _ = stack
    result = run("clean")
    assert result.returncode == 0, result.stderr
    assert f"volume {project}_model_repository" in result.stdout
    assert _project_objects(client, project) == ([], [])
