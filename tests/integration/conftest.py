"""The suite: every registered model built from (demo) checkpoints into one repository and served
by the real Triton, once per session, with the OpenAI-compatible embeddings endpoint in front of
it. Shared by test_models.py and test_nv_ingest_clients.py."""
from __future__ import annotations

import pytest

from tests.helpers import SERVER_LIVE_TIMEOUT_S, wait_models_ready
from triton_models.registry import MODELS

ALL_NAMES = [name for spec in MODELS for name in spec.triton_names]


@pytest.fixture(scope="session")
def served_suite(tmp_path_factory):
    """(server, repo, work): every model built, Triton serving them all."""
    from scripts.local_triton import LocalTriton
    from triton_models.build import main as build_main
    import tritonclient.http as http

    root = tmp_path_factory.mktemp("suite")
    repo, work = root / "repo", root / "work"
    for spec in MODELS:
        assert build_main([spec.key, "--repo", str(repo), "--work-dir", str(work)]) == 0
    server = LocalTriton(repo, log_path=root / "triton.log", exit_timeout_s=2)
    server.start()
    try:  # a server that never became ready is stopped too: it would hold its ports for the other tests
        server.wait_live(SERVER_LIVE_TIMEOUT_S)
        client = http.InferenceServerClient(server.http_url, network_timeout=120)
        wait_models_ready(client, ALL_NAMES, timeout=180)
        client.close()
        yield server, repo, work
    finally:
        server.stop()


@pytest.fixture(scope="session")
def suite(served_suite):
    """(http client, repo, work) on the served suite."""
    import tritonclient.http as http

    server, repo, work = served_suite
    client = http.InferenceServerClient(server.http_url, network_timeout=120)
    yield client, repo, work
    client.close()


@pytest.fixture(scope="session")
def embeddings_endpoint(served_suite, tmp_path_factory):
    """The embeddings endpoint (embeddings_api) as the local stack runs it, on the suite's Triton;
    at most 4 inputs per request, so that the limit is cheap to test. Yields its host:port."""
    import subprocess
    import sys

    from scripts.embeddings_service import wait_ready
    from scripts.local_triton import free_port
    from tests.helpers import REPO_ROOT

    server, _, _ = served_suite
    port = free_port()
    log = open(tmp_path_factory.mktemp("embeddings") / "embeddings.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "embeddings_api", "--triton-url", server.grpc_url, "--port",
                                str(port), "--max-inputs", "4"], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"127.0.0.1:{port}", 60)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()
