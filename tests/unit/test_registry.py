"""The registry and the fixtures agree: every model has its builder, folder, tests and service."""

import pytest
import yaml

from triton_models.registry import MODELS
from tests.helpers import REPO_ROOT


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.key)
def test_every_model_has_builder_folder_tests_and_compose_service(spec):
    assert (REPO_ROOT / "triton_models" / spec.key).is_dir()
    builder = spec.builder
    assert callable(builder.build) and callable(builder.make_demo_checkpoint)
    tests_text = "".join(p.read_text() for p in (REPO_ROOT / "tests").rglob("test_*.py"))
    for name in spec.triton_names:
        assert f'"{name}"' in tests_text, f"no test names the Triton model {name}"
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    assert spec.compose_service in compose["services"], f"docker-compose.yaml lacks {spec.compose_service}"
    assert f"${{{spec.batch_size_key}" in (REPO_ROOT / "docker-compose.yaml").read_text()
    assert spec.batch_size_key in (REPO_ROOT / ".env.example").read_text()


def test_triton_names_are_unique():
    names = [n for spec in MODELS for n in spec.triton_names]
    assert len(names) == len(set(names))
