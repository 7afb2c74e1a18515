from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import SERVER_LIVE_TIMEOUT_S, SMALL_DEBERTA_SCRIPT
from tests.strict_skips import pytest_addoption, pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (--no-skips)

# A test's tier is its folder: `-m "not triton"` skips every test that starts a Triton, and so on.
TIER_MARKERS = {"integration": "triton", "docker": "docker", "kubernetes": "kubernetes", "tensorrt": "tensorrt"}


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(item.path).parent.name
        if tier in TIER_MARKERS:
            item.add_marker(getattr(pytest.mark, TIER_MARKERS[tier]))


@dataclass(frozen=True)
class Checkpoint:
    script: Path
    ckpt: Path
    class_name: str


@pytest.fixture(scope="session")
def small_deberta(tmp_path_factory) -> Checkpoint:
    folder = tmp_path_factory.mktemp("small_deberta")
    script = folder / "small_deberta.py"
    script.write_text(SMALL_DEBERTA_SCRIPT)
    from converters.loading import import_model_class

    torch.manual_seed(0)
    model = import_model_class(script, "SmallDeberta")()
    ckpt = folder / "model_0.pt"
    torch.save(model.state_dict(), ckpt)
    return Checkpoint(script, ckpt, "SmallDeberta")


@pytest.fixture
def triton_server():
    """Start the real Triton (nvidia-pytriton's binary) on a repository; stopped after the test."""
    from scripts.local_triton import LocalTriton

    servers = []

    def start(repo: Path) -> LocalTriton:
        server = LocalTriton(repo, log_path=Path(repo).parent / "triton.log", exit_timeout_s=2)
        server.start()
        servers.append(server)  # before waiting: one that never becomes live is stopped too
        server.wait_live(SERVER_LIVE_TIMEOUT_S)
        return server

    yield start
    for server in servers:
        server.stop()
