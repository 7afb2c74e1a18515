
import re
import shutil
from pathlib import Path

import pytest

from converters.errors import UserError
from scripts.stack_settings import KEYS, env_example_text, load_settings
from tests.helpers import REPO_ROOT


def test_env_example_is_generated_from_the_keys():
    assert (REPO_ROOT / ".env.example").read_text() == env_example_text()


def test_every_key_has_help_and_the_example_validates(tmp_path):
    assert all(k.help for k in KEYS)
    settings = load_settings(REPO_ROOT / ".env.example", REPO_ROOT)
    assert settings.gpu_mode and settings.int("ECLAIR_BATCH_SIZE") == 16


def test_defaults_without_env_file(tmp_path):
    settings = load_settings(tmp_path / "absent.env", tmp_path)
    assert settings.models == ["caption_classification", "yolox", "eclair", "e5_small_v2"]
    assert not settings.gpu_mode and settings.checkpoint("yolox") is None
    assert settings.path("LOCAL_REPOSITORY") == tmp_path / "build/model_repository"


def test_every_problem_is_listed_at_once(tmp_path):
    env = tmp_path / ".env"
    env.write_text("E5_BATCH_SIZE=lots\nTRITON_HTTP_PORT=99999\nMODELS=e5_small_v2,bert\nPRECISION=fp4\n"
                   "YOLOX_CHECKPOINT=nope.pth\nTRITON_GPU=1\nTRITON_GPU_IDS=0;1\nTRITON_GRPC_PORT=8000\n")
    with pytest.raises(UserError) as info:
        load_settings(env, tmp_path)
    message = str(info.value)
    for fragment in ("E5_BATCH_SIZE='lots' is not a whole number", "TRITON_HTTP_PORT=99999 is not a port",
                     "names unknown models ['bert']", "PRECISION='fp4' must be one of fp16, fp32, fp8",
                     "YOLOX_CHECKPOINT=nope.pth does not exist", "unknown key TRITON_GPU",
                     "TRITON_GPU_IDS='0;1' must be GPU ids"):
        assert fragment in message
    assert str(env) in message and "7 problem(s)" in message


def test_checkpoint_paths_resolve_under_checkpoints_dir(tmp_path):
    (tmp_path / "ckpts/yolox").mkdir(parents=True)
    (tmp_path / "ckpts/yolox/best_ckpt.pth").write_bytes(b"x")
    settings = load_settings(None, tmp_path, {"CHECKPOINTS_DIR": "ckpts", "YOLOX_CHECKPOINT": "yolox/best_ckpt.pth"})
    assert settings.checkpoint("yolox") == tmp_path / "ckpts/yolox/best_ckpt.pth"


def test_duplicate_ports_are_refused(tmp_path):
    with pytest.raises(UserError, match="must differ"):
        load_settings(None, tmp_path, {"TRITON_HTTP_PORT": "9000", "TRITON_GRPC_PORT": "9000"})


def test_eclair_on_tensorrt_llm_names_what_it_needs_and_leaves_eclair_to_the_overlay(tmp_path, capsys):
    from scripts.stack import main

    with pytest.raises(UserError) as error:
        load_settings(None, tmp_path, {"ECLAIR_RUNTIME": "tensorrt_llm"})
    assert "needs TRTLLM_BASE_IMAGE and ECLAIR_CHECKPOINT_NAME" in str(error.value)
    assert "needs the GPU profile" in str(error.value)
    checkpoints = Path("build") / "test-settings" / tmp_path.name  # relative to the repository root, as .env gives it
    (REPO_ROOT / checkpoints / "eclair").mkdir(parents=True)
    (REPO_ROOT / checkpoints / "eclair" / "config.json").write_text("{}")
    overlay = {"ECLAIR_RUNTIME": "tensorrt_llm", "TRTLLM_BASE_IMAGE": "trtllm", "TRITON_BASE_IMAGE": "triton",
               "ECLAIR_CHECKPOINT_DIR": f"./{checkpoints}", "ECLAIR_CHECKPOINT_NAME": "eclair",
               "COMPOSE_FILE": "docker-compose.yaml:docker-compose.gpu.yaml"}
    try:
        settings = load_settings(None, REPO_ROOT, overlay)
        assert settings.eclair_on_trtllm and "eclair" not in settings.models and "yolox" in settings.models
        env = tmp_path / ".env"
        env.write_text("".join(f"{k}={v}\n" for k, v in overlay.items()))
        assert main(["up", "--local", "--env-file", str(env)]) == 1
        assert "ECLAIR_RUNTIME=tensorrt_llm runs in docker mode only" in capsys.readouterr().err
    finally:
        shutil.rmtree(REPO_ROOT / checkpoints)


def test_the_embeddings_port_must_differ_from_tritons(tmp_path):
    with pytest.raises(UserError, match="EMBEDDINGS_HTTP_PORT must differ"):
        load_settings(None, tmp_path, {"EMBEDDINGS_HTTP_PORT": "8000"})


@pytest.mark.parametrize("batch, ok", [("8", True), ("16", True), ("1", True), ("12", False), ("6", False)])
def test_yolox_batch_size_is_a_power_of_two(tmp_path, batch, ok):
    if ok:
        assert load_settings(None, tmp_path, {"YOLOX_BATCH_SIZE": batch}).int("YOLOX_BATCH_SIZE") == int(batch)
    else:
        with pytest.raises(UserError, match=f"YOLOX_BATCH_SIZE={batch} must be a power of two"):
            load_settings(None, tmp_path, {"YOLOX_BATCH_SIZE": batch})


def test_the_embeddings_endpoint_runs_where_e5_is_served(tmp_path):
    assert load_settings(None, tmp_path).serves_embeddings
    assert not load_settings(None, tmp_path, {"MODELS": "yolox,eclair"}).serves_embeddings


def test_ingest_without_its_packages_is_one_sentence(monkeypatch):
    import importlib.util

    from scripts.ingest.commands import check_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lancedb" else real(name, *a))
    with pytest.raises(UserError, match=r"ingest and search need lancedb: pip install -e '\.\[ingest\]'"):
        check_installed()


def test_the_configuration_reference_is_generated_from_the_keys():
    from scripts.stack_settings import configuration_markdown

    assert (REPO_ROOT / "docs" / "configuration.md").read_text() == configuration_markdown(), \
        "run `python -m scripts.stack_settings docs > docs/configuration.md`"
    assert all(f"| `{key.name}` |" in configuration_markdown() for key in KEYS)


def test_a_models_gpu_ids_must_be_gpus_triton_reserves(tmp_path):
    """<PREFIX>_GPU_IDS places one model's instances on some of TRITON_GPU_IDS (e.g. OCR on a GPU of
    its own); empty: all of them. GPUs Triton does not reserve, repeats and bad ids are named."""
    settings = load_settings(None, tmp_path, {"TRITON_GPU_IDS": "0,1", "ECLAIR_GPU_IDS": "1"})
    assert (settings.model_gpu_ids("eclair"), settings.model_gpu_ids("yolox")) == ("1", "0,1")
    assert settings.placed_models() == ["eclair"]
    for value, says in (("2", "ECLAIR_GPU_IDS=2 must name distinct GPUs of TRITON_GPU_IDS=0,1 (the GPUs Triton "
                               "reserves); add 2 there or leave ECLAIR_GPU_IDS empty"),
                        ("1,1", "ECLAIR_GPU_IDS=1,1 must name distinct GPUs"),
                        ("gpu1", "ECLAIR_GPU_IDS='gpu1' must be GPU ids like 1 or 0,1")):
        with pytest.raises(UserError, match=re.escape(says)):
            load_settings(None, tmp_path, {"TRITON_GPU_IDS": "0,1", "ECLAIR_GPU_IDS": value})
    with pytest.raises(UserError, match="ECLAIR_GPU_IDS places the PyTorch runtime's instances"):
        load_settings(None, tmp_path, {"ECLAIR_GPU_IDS": "0", "ECLAIR_RUNTIME": "tensorrt_llm",
                                       "TRTLLM_BASE_IMAGE": "x", "COMPOSE_FILE": "docker-compose.yaml:docker-compose.gpu.yaml"},
                      host_checkpoints=False)


def test_a_placement_on_a_stack_that_serves_on_the_cpu_is_refused_before_any_build(tmp_path):
    """<PREFIX>_GPU_IDS would be ignored on the CPU: the local stack (LOCAL_DEVICE=cpu) and the compose
    stack (no GPU profile) refuse it in one sentence, before building anything."""
    from scripts.stacks.compose import ComposeStack
    from scripts.stacks.local import LocalStack

    settings = load_settings(None, tmp_path, {"TRITON_GPU_IDS": "0,1", "ECLAIR_GPU_IDS": "1", "E5_GPU_IDS": "0",
                                              "LOCAL_REPOSITORY": str(tmp_path / "repo")})
    says = ("ECLAIR_GPU_IDS=1, E5_GPU_IDS=0 place models on GPUs, but this stack serves on the CPU: set "
            "LOCAL_DEVICE=cuda, or leave them empty.")
    with pytest.raises(UserError, match=re.escape(says)):
        LocalStack(settings).build(["e5_small_v2"])
    assert not (tmp_path / "local").exists()
    compose = object.__new__(ComposeStack)  # no Docker engine needed: the refusal comes first
    compose.settings = settings
    with pytest.raises(UserError, match=re.escape("serves on the CPU: add docker-compose.gpu.yaml to COMPOSE_FILE")):
        compose.build(["e5_small_v2"])
    settings.refuse_placement_without_gpus(True, "unused")  # on GPUs: nothing to say
    load_settings(None, tmp_path).refuse_placement_without_gpus(False, "unused")  # nothing placed


def test_the_local_repository_is_a_folder_of_its_own_and_clean_deletes_only_what_the_stack_made(tmp_path, capsys):
    """LOCAL_REPOSITORY's parent also gets work/ and local/: `clean` deletes a folder only when the stack
    made it (its marker file), so a user's folder that happens to sit there is kept, and said so."""
    from scripts.stacks.local import MADE_BY_STACK, LocalStack, claim, made_by_stack

    for value in (".", str(tmp_path), str(tmp_path.parent), str(Path.home()), "/"):
        with pytest.raises(UserError, match=re.escape(f"LOCAL_REPOSITORY={value!r} is the project, home or root folder")):
            load_settings(None, tmp_path, {"LOCAL_REPOSITORY": value})
    mine = tmp_path / "x" / "work"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's")
    stack = LocalStack(load_settings(None, tmp_path, {"LOCAL_REPOSITORY": str(tmp_path / "x" / "models")}))
    for folder in (stack.repo, stack.work, stack.state):  # what `build` does first
        claim(folder)
    assert (stack.repo / MADE_BY_STACK).is_file() and not (mine / MADE_BY_STACK).exists()
    assert stack.clean() == [str(stack.repo)]
    assert (mine / "notes.txt").read_text() == "the user's" and not stack.repo.exists()
    assert f"kept {mine}: it holds what the stack did not make" in capsys.readouterr().out
    older = tmp_path / "y" / "models"  # built by a version before the marker: model folders only
    (older / "e5_small_v2" / "1").mkdir(parents=True)
    (older / ".e5_small_v2.staging").mkdir()
    assert made_by_stack(older) and not made_by_stack(mine) and not made_by_stack(tmp_path / "nowhere")


def test_a_settings_file_that_cannot_be_read_is_named_not_replaced_by_defaults(tmp_path, capsys):
    from scripts.stack import main

    env = tmp_path / "broken.env"
    env.write_text('MODELS="e5_small_v2\nYOLOX_BATCH_SIZE=8\n')
    with pytest.raises(UserError, match=re.escape(f"{env} has 1 problem(s): line 1 cannot be read as KEY=value: "
                                                  "'MODELS=\"e5_small_v2'")):
        load_settings(env, tmp_path)
    env.write_bytes(b"MODELS=e5\xff\n")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_settings(env, tmp_path)
    assert main(["status", "--local", "--env-file", str(tmp_path / "typo.env")]) == 1
    assert f"error: --env-file {tmp_path / 'typo.env'} is not a file" in capsys.readouterr().err


def test_local_logs_name_the_services_there_are(tmp_path):
    from scripts.stacks.local import LocalStack

    stack = LocalStack(load_settings(None, tmp_path, {"LOCAL_REPOSITORY": str(tmp_path / "build" / "repo")}))
    with pytest.raises(UserError, match="no service nosuch; choose triton, embeddings or one of caption_classification, "):
        stack.logs("nosuch")
    stack.state.mkdir(parents=True)
    (stack.state / "build-e5_small_v2.log").write_text("built\n")
    assert stack.logs("build-e5") == stack.logs("e5_small_v2") == "built\n"  # compose's service name or the model key
