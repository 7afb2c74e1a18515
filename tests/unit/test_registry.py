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


def test_stack_settings_derive_every_model_key_from_the_registry():
    from scripts.stack_settings import KEYS, env_example_text

    keys = {key.name: key for key in KEYS}
    for spec in MODELS:
        assert keys[spec.batch_size_key].default == str(spec.default_batch_size)
        assert keys[spec.checkpoint_key].kind == "checkpoint" and keys[spec.checkpoint_key].default == ""
        assert f"{spec.batch_size_key}={spec.default_batch_size}\n" in env_example_text()
    assert keys["MODELS"].default == ",".join(spec.key for spec in MODELS)


def test_yolox_io_config_agrees_with_the_page_processing():
    """The declared output is what the model code yields at that input size: one row per anchor of
    the strides 8, 16 and 32, each box (4), objectness (1) and one score per label."""
    from triton_models.registry import get
    from triton_models.yolox.page_processing import INPUT_SIZE, LABELS

    io = get("yolox").core_io
    anchors = sum((INPUT_SIZE // stride) ** 2 for stride in (8, 16, 32))
    assert io["inputs"][0]["shape"] == [3, INPUT_SIZE, INPUT_SIZE]
    assert io["outputs"][0]["shape"] == [anchors, 5 + len(LABELS)]


@pytest.mark.parametrize("spec", [s for s in MODELS if s.core_io], ids=lambda s: s.key)
def test_core_io_configs_parse_and_text_models_use_the_max_length(spec):
    from converters.io_config import parse_io_config

    io = parse_io_config(spec.core_io_json)
    assert io.output_names and io.input_names
    if spec.max_length:
        assert all(max(t.max_shape or t.shape) == spec.max_length for t in io.inputs)
