"""Fetch TensorRT-LLM's examples/ for the tensorrt_llm installed in this image (the overlay's image build).

NVIDIA's *-trtllm-python-py3 images of 24.07 and later ship no /app/tensorrt_llm/examples
(triton-inference-server/tensorrtllm_backend issues 721 and 739), and `build-eclair` needs the
encoder-decoder `convert_checkpoint.py` of exactly the installed version. So the image build
(docker/Dockerfile, builder stage, TRTLLM_EXAMPLES=1, which the overlay's compose file sets) runs

    python3 third_party/eclair_triton/fetch_trtllm_examples.py /opt/tensorrt_llm_examples

which takes examples/ of the matching GitHub tag (v<version>, else v<release> for a .postN or local
build) with a sparse, blob-less git clone, or from the tag's tarball where there is no git, and
writes TENSORRT_LLM_VERSION beside them ("<version> <tag>", checked by triton_models/eclair/trtllm.py).
It needs the network, which GPU hosts have; CI never builds this image. Standard library only.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

REPOSITORY = "https://github.com/NVIDIA/TensorRT-LLM"
LEGACY = Path("/app/tensorrt_llm/examples")  # images before 24.07 ship them here
VERSION_FILE = "TENSORRT_LLM_VERSION"
CONVERT_SCRIPTS = ("models/core/enc_dec/convert_checkpoint.py", "enc_dec/convert_checkpoint.py")


# tarfile's "data" filter (Python 3.12, backported to 3.8.17+) refuses links out of the folder and device files
SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


class FetchError(Exception):
    pass


def installed_version() -> str:
    """From the package metadata: importing tensorrt_llm loads CUDA's driver library, which an image
    build (no GPU attached) may lack."""
    from importlib import metadata

    for name in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    raise FetchError("no tensorrt_llm is installed in this image, so there are no TensorRT-LLM examples to match; "
                     "build the overlay on NVIDIA's Triton TensorRT-LLM image (TRTLLM_BASE_IMAGE)")


def candidate_tags(version: str) -> list[str]:
    """GitHub tags for a pip version: itself, then its release part (with an rc) without .postN, .devN or +local."""
    release = re.match(r"\d+(?:\.\d+)*(?:(?:a|b|rc)\d+)?", version)
    tags = [f"v{version}"] + ([f"v{release.group(0)}"] if release else [])
    return list(dict.fromkeys(tags))


def has_converter(folder: Path) -> bool:
    return any((folder / r).is_file() for r in CONVERT_SCRIPTS)


def _git_examples(tag: str, work: Path, repository: str) -> Path:
    clone = work / "clone"
    for command in (["git", "clone", "--quiet", "--depth", "1", "--branch", tag, "--filter=blob:none", "--sparse",
                     repository, str(clone)],
                    ["git", "-C", str(clone), "sparse-checkout", "set", "examples"]):
        # LFS content is never examples' code; skipping it keeps a missing git-lfs from failing the clone
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GIT_LFS_SKIP_SMUDGE": "1"})
        if done.returncode:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise FetchError(f"git {'clone' if command[1] == 'clone' else 'sparse-checkout'} of {tag} failed: {last}")
    return clone / "examples"


def _tarball_examples(tag: str, work: Path, repository: str) -> Path:
    """Streams the tag's tarball and keeps only <top>/examples/ (no git in the image)."""
    url = f"{repository}/archive/refs/tags/{tag}.tar.gz"
    out = work / "tarball"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, tarfile.open(fileobj=response, mode="r|gz") as archive:
            for member in archive:
                parts = Path(member.name).parts
                if len(parts) < 2 or parts[1] != "examples" or ".." in parts or not (member.isfile() or member.isdir()):
                    continue
                member.name = str(Path(*parts[1:]))
                archive.extract(member, out, **SAFE)
    except (OSError, tarfile.TarError) as exc:  # urllib's URLError and HTTPError are OSErrors
        raise FetchError(f"{url}: {exc}") from None
    return out / "examples"


def fetch(destination: Path, version: str, repository: str = REPOSITORY, use_git: bool | None = None) -> str:
    """examples/ of the first tag of `candidate_tags(version)` that exists, into `destination`; the tag."""
    use_git = shutil.which("git") is not None if use_git is None else use_git
    errors = []
    for tag in candidate_tags(version):
        with tempfile.TemporaryDirectory() as work:
            try:
                examples = (_git_examples if use_git else _tarball_examples)(tag, Path(work), repository)
            except FetchError as exc:
                errors.append(str(exc))
                continue
            if not has_converter(examples):
                errors.append(f"{tag}'s examples have no {' or '.join(CONVERT_SCRIPTS)}")
                continue
            if destination.exists():
                shutil.rmtree(destination)
            shutil.copytree(examples, destination, symlinks=True)
            (destination / VERSION_FILE).write_text(f"{version} {tag}\n")
            return tag
    raise FetchError(f"could not fetch the examples of TensorRT-LLM {version} (tags {', '.join(candidate_tags(version))}) "
                     f"from {repository} ({'; '.join(errors)}); build where GitHub is reachable, or build with "
                     "TRTLLM_EXAMPLES=0 and pass build-eclair --examples with that version's examples folder")


def main(argv: list[str]) -> int:
    destination = Path(argv[1]) if len(argv) > 1 else Path("/opt/tensorrt_llm_examples")
    try:
        version = installed_version()
        if has_converter(LEGACY):
            print(f"TensorRT-LLM {version}: this image ships its examples at {LEGACY}; nothing fetched")
            return 0
        tag = fetch(destination, version)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"TensorRT-LLM {version}: examples of {tag} in {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
