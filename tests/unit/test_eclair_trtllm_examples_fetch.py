"""The overlay image's fetch of TensorRT-LLM's examples (third_party/eclair_triton/fetch_trtllm_examples.py),
offline: local stand-ins for GitHub's tag tarball (archive/refs/tags/<tag>.tar.gz) and for a
sparse, blob-less clone of the repository, and the Dockerfile/compose wiring that runs it."""
import importlib.util
import io
import shutil
import subprocess
import tarfile

import pytest
import yaml

from tests.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "third_party" / "eclair_triton" / "fetch_trtllm_examples.py"


@pytest.fixture(scope="module")
def fetcher():
    spec = importlib.util.spec_from_file_location("fetch_trtllm_examples", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("version, tags", [
    ("0.17.0.post1", ["v0.17.0.post1", "v0.17.0"]),  # 25.01's pip version; GitHub tags v0.17.0
    ("0.11.0", ["v0.11.0"]),
    ("1.2.0rc3", ["v1.2.0rc3"]),
    ("0.12.0.dev2024073000", ["v0.12.0.dev2024073000", "v0.12.0"]),
    ("0.16.0+cu126", ["v0.16.0+cu126", "v0.16.0"]),
])
def test_the_tags_tried_for_an_installed_version(fetcher, version, tags):
    assert fetcher.candidate_tags(version) == tags


def _tarball(root, tag, layout="enc_dec"):
    """GitHub's tag tarball: one top folder, the whole tree under it."""
    path = root / "archive" / "refs" / "tags" / f"{tag}.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    top = f"TensorRT-LLM-{tag[1:]}"
    with tarfile.open(path, "w:gz") as archive:
        for name, text in {f"{top}/examples/{layout}/convert_checkpoint.py": "# converter\n",
                           f"{top}/examples/{layout}/helper.py": "# helper\n", f"{top}/cpp/kernels.cu": "x" * 1000}.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text.encode()))
    return root


def test_the_tarball_gives_only_examples_of_the_matching_tag(fetcher, tmp_path):
    github = _tarball(tmp_path / "github", "v0.17.0")
    destination = tmp_path / "opt" / "tensorrt_llm_examples"
    tag = fetcher.fetch(destination, "0.17.0.post1", repository=github.as_uri(), use_git=False)
    assert tag == "v0.17.0"  # v0.17.0.post1 has no tarball
    assert (destination / "enc_dec" / "convert_checkpoint.py").read_text() == "# converter\n"
    assert (destination / "enc_dec" / "helper.py").is_file() and not (destination / "cpp").exists()
    assert (destination / "TENSORRT_LLM_VERSION").read_text() == "0.17.0.post1 v0.17.0\n"


def test_what_was_fetched_is_what_build_eclair_finds(fetcher, tmp_path):
    from triton_models.eclair.trtllm import find_convert_script

    destination = tmp_path / "opt"
    fetcher.fetch(destination, "0.19.0", repository=_tarball(tmp_path / "gh", "v0.19.0", "models/core/enc_dec").as_uri(),
                  use_git=False)
    assert find_convert_script(None, (destination,), version="0.19.0") == \
        destination / "models/core/enc_dec/convert_checkpoint.py"


@pytest.mark.skipif(shutil.which("git") is None, reason="no git here")
def test_the_sparse_clone_gives_only_examples(fetcher, tmp_path):
    source = tmp_path / "TensorRT-LLM"
    (source / "examples" / "models" / "core" / "enc_dec").mkdir(parents=True)
    (source / "examples" / "models" / "core" / "enc_dec" / "convert_checkpoint.py").write_text("# converter\n")
    (source / "cpp").mkdir()
    (source / "cpp" / "kernels.cu").write_text("x")
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "r"], ["tag", "v1.2.0rc3"],
                 ["config", "uploadpack.allowFilter", "true"]):  # what GitHub allows: --filter is really used
        subprocess.run(git + args, check=True, capture_output=True)
    destination = tmp_path / "opt"
    assert fetcher.fetch(destination, "1.2.0rc3", repository=source.as_uri(), use_git=True) == "v1.2.0rc3"
    assert (destination / "models" / "core" / "enc_dec" / "convert_checkpoint.py").is_file()
    assert not (destination / "cpp").exists() and not (destination / ".git").exists()


def test_no_network_stops_the_image_build_in_one_sentence(fetcher, tmp_path):
    with pytest.raises(fetcher.FetchError, match=r"could not fetch the examples of TensorRT-LLM 0\.17\.0 \(tags v0\.17\.0\) "
                                                 r".*TRTLLM_EXAMPLES=0 and pass build-eclair --examples"):
        fetcher.fetch(tmp_path / "opt", "0.17.0", repository=(tmp_path / "nowhere").as_uri(), use_git=False)
    assert not (tmp_path / "opt").exists()


def test_a_tag_without_the_converter_is_not_taken(fetcher, tmp_path):
    github = _tarball(tmp_path / "gh", "v0.17.0", layout="gpt")
    with pytest.raises(fetcher.FetchError, match="v0.17.0's examples have no"):
        fetcher.fetch(tmp_path / "opt", "0.17.0", repository=github.as_uri(), use_git=False)


def test_the_script_without_tensorrt_llm_or_with_old_images_examples(fetcher, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetcher, "installed_version", lambda: (_ for _ in ()).throw(fetcher.FetchError("no tensorrt_llm")))
    assert fetcher.main(["fetch", str(tmp_path / "opt")]) == 1 and "error: no tensorrt_llm" in capsys.readouterr().err
    legacy = tmp_path / "app"
    (legacy / "enc_dec").mkdir(parents=True)
    (legacy / "enc_dec" / "convert_checkpoint.py").write_text("")
    monkeypatch.setattr(fetcher, "installed_version", lambda: "0.10.0")
    monkeypatch.setattr(fetcher, "LEGACY", legacy)
    assert fetcher.main(["fetch", str(tmp_path / "opt")]) == 0 and "ships its examples" in capsys.readouterr().out


def test_the_overlays_image_build_runs_the_fetch_into_the_folder_build_eclair_searches_first():
    from triton_models.eclair.trtllm import EXAMPLES_LOCATIONS

    compose = yaml.safe_load((REPO_ROOT / "third_party" / "eclair_triton" / "docker-compose.yaml").read_text())
    assert compose["services"]["triton-trt-llm"]["build"]["args"]["TRTLLM_EXAMPLES"] == "1"
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    builder = dockerfile[dockerfile.index("AS builder"):]
    assert "ARG TRTLLM_EXAMPLES=0" in builder  # off for every other build (CI has no network for it)
    assert f"third_party/eclair_triton/fetch_trtllm_examples.py {EXAMPLES_LOCATIONS[0]}" in builder


@pytest.mark.skipif(shutil.which("git") is None, reason="no git here")
def test_a_missing_tag_in_git_names_what_failed(fetcher, tmp_path):
    with pytest.raises(fetcher.FetchError, match=r"git clone of v9\.9\.9 failed: "):
        fetcher.fetch(tmp_path / "opt", "9.9.9", repository=(tmp_path / "nowhere").as_uri(), use_git=True)
