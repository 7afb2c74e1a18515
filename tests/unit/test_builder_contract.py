"""One builder contract (triton_models/builder_contract.py): the local stack, the builder image's
entrypoint, both compose files and the chart's settings all give a builder what it derives."""
from __future__ import annotations

import pytest
import yaml

from scripts.stack_settings import KEYS, load_settings
from tests.helpers import REPO_ROOT
from triton_models.build import build_parser
from triton_models.builder_contract import builder_arguments, builder_environment, main
from triton_models.registry import MODELS, get

DEFAULTS = {key.name: key.default for key in KEYS}


def _compose_setting(key: str) -> str:
    return f"${{{key}:-{DEFAULTS[key]}}}"


def _services(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / name).read_text())["services"]


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.key)
def test_compose_builders_are_given_what_the_contract_derives(spec):
    base = _services("docker-compose.yaml")[spec.compose_service]
    assert base["command"] == [spec.key]
    expected = builder_environment(spec, _compose_setting, "cpu")
    assert base["environment"] == expected, f"docker-compose.yaml {spec.compose_service}: environment should be {expected}"
    gpu = {**base["environment"], **_services("docker-compose.gpu.yaml")[spec.compose_service]["environment"]}
    expected = builder_environment(spec, _compose_setting, "cuda")
    assert gpu == expected, f"docker-compose.gpu.yaml {spec.compose_service}: environment should add {expected}"


def test_the_local_stack_builds_with_the_contracts_arguments(tmp_path):
    from scripts.stacks.local import LocalStack

    (tmp_path / "ckpt").mkdir()
    env = tmp_path / ".env"
    env.write_text("E5_BATCH_SIZE=32\nE5_CHECKPOINT=ckpt\nCHECKPOINTS_DIR=.\nLOCAL_DEVICE=cuda\nTRITON_GPU_IDS=0,1\n"
                   "LOCAL_SERVE_BACKEND=python_compiled\n")
    stack = LocalStack(load_settings(env, tmp_path))
    command, checkpoint = stack._builder_command("e5_small_v2")
    assert checkpoint == tmp_path / "ckpt"
    args = build_parser().parse_args(command[3:])  # what triton_models.build receives
    assert (args.model, args.max_batch_size, args.serve_backend, args.device, args.gpus, args.checkpoint) == (
        "e5_small_v2", 32, "python_compiled", "cuda", "0,1", tmp_path / "ckpt")


def test_a_model_with_gpus_of_its_own_is_built_for_them_and_the_others_for_all(tmp_path):
    """ECLAIR_GPU_IDS=1 with TRITON_GPU_IDS=0,1 (local stack on CUDA): ECLAIR's builder gets --gpus 1,
    the other models every GPU of TRITON_GPU_IDS; on the CPU no model gets GPUs."""
    from scripts.stacks.local import LocalStack

    env = tmp_path / ".env"
    env.write_text("LOCAL_DEVICE=cuda\nTRITON_GPU_IDS=0,1\nECLAIR_GPU_IDS=1\nLOCAL_SERVE_BACKEND=python_torch\n")
    stack = LocalStack(load_settings(env, tmp_path))
    gpus = {key: build_parser().parse_args(stack._builder_command(key)[0][3:]).gpus for key in ("eclair", "yolox")}
    assert gpus == {"eclair": "1", "yolox": "0,1"}
    env.write_text("TRITON_GPU_IDS=0,1\nECLAIR_GPU_IDS=1\n")
    assert build_parser().parse_args(LocalStack(load_settings(env, tmp_path))._builder_command("eclair")[0][3:]).gpus is None


def test_the_builder_images_entrypoint_reads_the_contracts_environment(tmp_path, monkeypatch, capsys):
    import triton_models.build as build

    seen = []
    monkeypatch.setattr(build, "main", lambda argv: seen.append(argv) or 0)
    environment = builder_environment(get("yolox"), lambda key: {"YOLOX_BATCH_SIZE": "16", "YOLOX_CHECKPOINT": "y.pth"}
                                      .get(key, DEFAULTS[key]), "cuda")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPTION_SERVICE_PORT", "8080")  # e.g. a Kubernetes service link: not one of yolox's options
    assert main(["yolox", "--repo", "/models", "--work-dir", "/work", "--checkpoints-dir", "/checkpoints"]) == 0
    args = build_parser().parse_args(seen[0])
    assert args.option == []
    assert (args.max_batch_size, args.serve_backend, args.device, str(args.checkpoint)) == (
        16, "tensorrt_plan", "cuda", "/checkpoints/y.pth")
    assert seen[0] == builder_arguments("yolox", environment, repo="/models", work_dir="/work",
                                        checkpoints_dir="/checkpoints")
    monkeypatch.delenv("MAX_BATCH_SIZE")
    monkeypatch.delenv("DEVICE")
    assert main(["yolox", "--repo", "/m", "--work-dir", "/w", "--checkpoints-dir", "/c"]) == 1
    assert "the builder of yolox was not given MAX_BATCH_SIZE, DEVICE" in capsys.readouterr().err


def test_eclair_keeps_its_pytorch_runtime_on_gpus_and_cores_become_engines():
    assert {spec.key: spec.serve_backend_on("cuda") for spec in MODELS} == {
        "caption_classification": "tensorrt_plan", "yolox": "tensorrt_plan", "eclair": "python_onnx",
        "e5_small_v2": "tensorrt_plan"}
    assert all(spec.serve_backend_on("cpu") == "python_onnx" for spec in MODELS)


def test_a_models_options_reach_its_builder_as_option_arguments(tmp_path):
    """ECLAIR_COMPILE_ENCODER in `.env` -> OPTION_COMPILE_ENCODER in the builder's environment (every
    stack) -> `--option compile_encoder=off` for triton_models.build; other models get no options."""
    from scripts.stacks.local import LocalStack

    env = tmp_path / ".env"
    env.write_text("ECLAIR_COMPILE_ENCODER=off\n")
    stack = LocalStack(load_settings(env, tmp_path))
    command, _ = stack._builder_command("eclair")
    assert build_parser().parse_args(command[3:]).option == ["compile_encoder=off"]
    command, _ = stack._builder_command("e5_small_v2")
    assert build_parser().parse_args(command[3:]).option == []
    env.write_text("ECLAIR_COMPILE_ENCODER=maybe\n")
    from converters.errors import UserError

    with pytest.raises(UserError, match="ECLAIR_COMPILE_ENCODER='maybe' must be one of on, off"):
        load_settings(env, tmp_path)


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.key)
def test_each_builder_declares_every_option_it_reads_and_the_settings_it_is_given(spec):
    """`OPTIONS` in a builder module is what triton_models.build accepts; the keys its code reads and
    the options the settings set (`ModelSpec.options`) must all be there."""
    import re

    source = (REPO_ROOT / "triton_models" / spec.key / "build.py").read_text()
    read = set(re.findall(r'options\.(?:extra\.get|number)\("(\w+)"', source))
    assert read <= set(spec.builder.OPTIONS), read - set(spec.builder.OPTIONS)
    assert {name for name, _ in spec.options} <= set(spec.builder.OPTIONS)


BAD_VALUES = {"yolox": ("score_threshold=2", "--option score_threshold=2 must be a number from 0 to 1"),
              "caption_classification": ("folds=first", "--option folds=first must be all or a fold number"),
              "eclair": ("max_new_tokens=0", "--option max_new_tokens=0 must be a whole number from 1"),
              "e5_small_v2": ("pooling=cls", "--option pooling is not an option of e5_small_v2")}  # it has none


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.key)
def test_an_option_value_out_of_range_is_refused_before_the_demo_checkpoint(spec, tmp_path, capsys):
    """Every builder reads its options in `read_options`, which the CLI runs before any work: a bad
    value costs no demo checkpoint (minutes for ECLAIR) and leaves no folder behind."""
    from triton_models.build import main as build_main

    assert set(BAD_VALUES) == {m.key for m in MODELS}
    option, sentence = BAD_VALUES[spec.key]
    assert (option.partition("=")[0] in spec.builder.OPTIONS) == bool(spec.builder.OPTIONS)
    work = tmp_path / "work"
    assert build_main([spec.key, "--repo", str(tmp_path / "repo"), "--work-dir", str(work), "--option", option]) == 1
    assert f"error: {sentence}" in capsys.readouterr().err
    assert not work.exists() and not (tmp_path / "repo").exists()


def test_an_unknown_option_or_a_bad_value_is_refused_in_one_sentence(tmp_path, capsys):
    from triton_models.build import main as build_main

    checkpoint = tmp_path / "best_ckpt.pth"
    checkpoint.write_bytes(b"")
    common = ["--repo", str(tmp_path / "repo"), "--work-dir", str(tmp_path / "work"), "--checkpoint", str(checkpoint)]
    assert build_main(["yolox", *common, "--option", "score_treshold=0.3"]) == 1
    assert ("error: --option score_treshold is not an option of yolox; its options: score_threshold "
            in capsys.readouterr().err)
    assert build_main(["yolox", *common, "--max-batch-size", "0"]) == 1
    assert "error: --max-batch-size must be at least 1, got 0." in capsys.readouterr().err
    from converters.errors import UserError
    from triton_models.common import BuildOptions

    options = BuildOptions(checkpoint, tmp_path, tmp_path, 8, extra={"score_threshold": "high", "min_words": "2.5"})
    with pytest.raises(UserError, match=r"--option score_threshold=high must be a number from 0 to 1 \(default 0.1\)\."):
        options.number("score_threshold", 0.1, 0.0, 1.0)
    with pytest.raises(UserError, match=r"--option min_words=2.5 must be a whole number from 0 to 1000"):
        options.number("min_words", 1, 0, 1000, kind=int)
    assert options.number("nms_iou_threshold", 0.5, 0.0, 1.0) == 0.5
