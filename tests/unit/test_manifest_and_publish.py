import os
from pathlib import Path

import numpy as np
import pytest

from converters.manifest import engine_compatibility, fingerprint
from converters.model_folder import Golden, Manifest
from converters.publish import atomic_output, publish_model_folder


def _key(**changes):
    parts = dict(sources={"checkpoint": "a"}, settings={"max_batch_size": 8}, versions={"torch": "2", "onnx": "1", "tensorrt": "10.3"},
                 gpu={"compute_capability": "9.0"}, serve_backend="tensorrt_plan")
    parts.update(changes)
    return fingerprint(**parts)


def test_fingerprint_changes_with_what_the_engine_depends_on():
    base = _key()
    assert base == _key()
    assert base != _key(sources={"checkpoint": "b"})
    assert base != _key(settings={"max_batch_size": 16})
    assert base != _key(gpu={"compute_capability": "8.0"})
    assert base != _key(versions={"torch": "2", "onnx": "1", "tensorrt": "10.8"})


def test_onnx_artifacts_do_not_depend_on_the_gpu():
    onnx = dict(serve_backend="python_onnx")
    assert _key(**onnx) == _key(gpu={"compute_capability": "8.0"}, **onnx)


def test_an_engine_built_beside_a_served_onnx_follows_the_tensorrt_that_builds_it():
    built = dict(serve_backend="python_onnx", settings={"max_batch_size": 8, "generate_trt": True})
    rtx = {"torch": "2", "onnx": "1", "tensorrt": "1.7.1.116", "tensorrt_module": "tensorrt_rtx"}
    assert _key(versions=rtx, **built) != _key(versions=dict(rtx, tensorrt="1.8.0"), **built)
    assert _key(versions=rtx, **built) != _key(versions=dict(rtx, tensorrt=None, tensorrt_module=None), **built)
    no_engine = dict(serve_backend="python_onnx", settings={"max_batch_size": 8, "generate_trt": False})
    assert _key(versions=rtx, **no_engine) == _key(versions=dict(rtx, tensorrt=None), **no_engine)


def _manifest(serve_backend: str, **changes) -> Manifest:
    return Manifest(**{"model": "m", "fingerprint": "f", "serve_backend": serve_backend, "precision": "fp16",
                       "demo": False, "sources": {}, "versions": {}, "gpu": {}, **changes})


def test_engine_gate_refuses_another_gpu_or_tensorrt():
    manifest = _manifest("tensorrt_plan", versions={"tensorrt": "10.3.0"}, gpu={"compute_capability": "9.0"})
    assert engine_compatibility(manifest, "10.3.1", ["9.0"]).ok
    other_gpu = engine_compatibility(manifest, "10.3.0", ["8.0"])
    assert not other_gpu.ok and "compute capability 9.0" in other_gpu.reason
    assert not engine_compatibility(manifest, "10.8.0", ["9.0"]).ok
    assert engine_compatibility(_manifest("python_onnx"), None, []).ok


def test_damaged_manifest_reads_as_absent(tmp_path):
    (tmp_path / "manifest.json").write_text("{half")
    assert Manifest.read(tmp_path) is None


def test_manifest_and_golden_round_trip_through_the_folder(tmp_path):
    manifest = _manifest("python_onnx", engine={"bytes": 3})
    (tmp_path / "manifest.json").write_text(manifest.to_text())
    assert Manifest.read(tmp_path) == manifest
    golden = Golden({"text": np.array([["a"], ["b"]])}, {"score": np.ones((2, 1), np.float32)}, (2e-2, 2e-2))
    (tmp_path / "golden.npz").write_bytes(golden.to_bytes())
    back = Golden.read(tmp_path)
    assert back.tolerance == (2e-2, 2e-2) and list(back.inputs) == ["text"] and list(back.outputs) == ["score"]
    np.testing.assert_array_equal(back.inputs["text"], golden.inputs["text"])
    assert back.tiled_inputs(5)["text"].shape == (5, 1)


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "model.plan"
    target.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("build died")
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["model.plan"]


def test_publish_swaps_the_whole_folder(tmp_path):
    publish_model_folder(tmp_path, "m", {"config.pbtxt": "old", "1/model.onnx": b"1", "1/stale": b"x"})
    publish_model_folder(tmp_path, "m", {"config.pbtxt": "new", "1/model.onnx": b"2"})
    assert (tmp_path / "m/config.pbtxt").read_text() == "new"
    assert not (tmp_path / "m/1/stale").exists()
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_publish_failure_leaves_the_previous_model(tmp_path):
    publish_model_folder(tmp_path, "m", {"config.pbtxt": "old"})
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        publish_model_folder(tmp_path, "m", {"config.pbtxt": "new", "1/model.onnx": Path(tmp_path / "missing.onnx")})
    assert (tmp_path / "m/config.pbtxt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["m"]


PUBLISH_LOOP = """
import sys
from pathlib import Path
from converters.publish import publish_model_folder
repo, version = Path(sys.argv[1]), 0
while True:
    version += 1
    blob = str(version).encode() * 400_000  # a few MB, so a kill lands mid-copy as often as mid-swap
    publish_model_folder(repo, "m", {"config.pbtxt": str(version), "1/model.onnx": blob, "golden.npz": blob})
"""


def test_a_publish_killed_at_any_moment_leaves_one_whole_folder(tmp_path):
    """A builder killed mid-publish: `<repo>/m` is always one whole version (config, model and
    golden answers of the same version), and the next publish clears what the kill left."""
    import random
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import REPO_ROOT

    repo = tmp_path / "repo"
    publish_model_folder(repo, "m", {"config.pbtxt": "0", "1/model.onnx": b"0", "golden.npz": b"0"})
    rng = random.Random(7)
    published = 0

    def identity():  # each publish swaps in a new folder with new files (an inode alone can be reused)
        config = (repo / "m" / "config.pbtxt").stat()
        return config.st_ino, config.st_mtime_ns

    for _ in range(12):
        before = identity()
        writer = subprocess.Popen([sys.executable, "-c", PUBLISH_LOOP, str(repo)], cwd=REPO_ROOT)
        deadline = time.monotonic() + 60  # the kill must land among publishes, not before the first
        while identity() == before and time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.01)
        published += identity() != before
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        version = (repo / "m" / "config.pbtxt").read_text()
        assert (repo / "m" / "1" / "model.onnx").read_bytes()[:len(version)] == version.encode()
        assert (repo / "m" / "golden.npz").read_bytes()[:len(version)] == version.encode()
        assert [p.name for p in repo.iterdir() if not p.name.startswith(".")] == ["m"]
    assert published == 12, f"the writer published before only {published} of 12 kills"
    publish_model_folder(repo, "m", {"config.pbtxt": "last"})
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging or retired folder left behind
