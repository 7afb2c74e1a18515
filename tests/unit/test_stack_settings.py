
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
    env.write_text("E5_BATCH_SIZE=lots\nTRITON_HTTP_PORT=99999\nMODELS=e5_small_v2,bert\nPRECISION=fp8\n"
                   "YOLOX_CHECKPOINT=nope.pth\nTRITON_GPU=1\nTRITON_GPU_IDS=0;1\nTRITON_GRPC_PORT=8000\n")
    with pytest.raises(UserError) as info:
        load_settings(env, tmp_path)
    message = str(info.value)
    for fragment in ("E5_BATCH_SIZE='lots' is not a whole number", "TRITON_HTTP_PORT=99999 is not a port",
                     "names unknown models ['bert']", "PRECISION='fp8' must be one of fp16, fp32",
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
