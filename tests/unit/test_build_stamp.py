"""The local stack's build stamp: what makes `up` start a builder again."""
import os

from scripts.build_stamp import build_stamp, environment_key, is_current

ENV = environment_key(None)
COMMAND = ["python", "-m", "triton_models.build", "e5_small_v2", "--max-batch-size", "64"]


def _published(tmp_path):
    folder = tmp_path / "repo" / "e5_small_v2"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"fingerprint": "a"}')
    return [folder]


def test_the_same_inputs_give_the_same_stamp_and_it_is_current(tmp_path):
    published = _published(tmp_path)
    stamp = build_stamp(COMMAND, None, published, ENV)
    assert stamp == build_stamp(COMMAND, None, published, ENV)
    (tmp_path / "build.stamp").write_text(stamp + "\n")
    assert is_current(tmp_path / "build.stamp", stamp)
    assert not is_current(tmp_path / "absent.stamp", stamp)


def test_a_setting_a_gpu_or_a_republished_folder_changes_it(tmp_path):
    published = _published(tmp_path)
    stamp = build_stamp(COMMAND, None, published, ENV)
    assert build_stamp(COMMAND[:-1] + ["8"], None, published, ENV) != stamp
    assert build_stamp(COMMAND, None, published, environment_key("[Gpu(index=0, name='H100', compute_capability='9.0')]")) != stamp
    (published[0] / "manifest.json").write_text('{"fingerprint": "b"}')
    assert build_stamp(COMMAND, None, published, ENV) != stamp
    (published[0] / "manifest.json").unlink()
    assert build_stamp(COMMAND, None, published, ENV) != stamp


def test_a_checkpoint_file_touched_or_added_changes_it(tmp_path):
    published = _published(tmp_path)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    stamp = build_stamp(COMMAND, checkpoint, published, ENV)
    os.utime(checkpoint / "model.safetensors", ns=(1, 1))
    touched = build_stamp(COMMAND, checkpoint, published, ENV)
    assert touched != stamp
    (checkpoint / "config.json").write_text("{}")
    assert build_stamp(COMMAND, checkpoint, published, ENV) != touched
