"""The Triton image copies a few of the repository's modules, not the whole tree, so that a code
change elsewhere does not rebuild it. What it copies must import on its own: the image build runs
`python3 -m scripts.local_triton layout`, and a module missing from the COPY lines fails that build
(as `scripts.gpus` once did) only in the slow docker tier."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"


def stage(name: str) -> str:
    text = DOCKERFILE.read_text()
    start = text.index(f" AS {name}\n")
    end = text.find("\nFROM ", start)
    return text[start:] if end < 0 else text[start:end]


def copied_into_opt_stack(stage_text: str) -> list[tuple[str, str]]:
    """(repository path, path under /opt/stack) for each file a COPY line puts under /opt/stack."""
    pairs = []
    for line in stage_text.splitlines():
        match = re.match(r"COPY (.+) /opt/stack/(\S*)$", line.strip())
        if match:
            for source in match.group(1).split():
                pairs.append((source, match.group(2) + Path(source).name))
    return pairs


def test_the_triton_stage_copies_every_module_its_layout_step_imports(tmp_path):
    triton = stage("triton")
    assert "python3 -m scripts.local_triton layout" in triton
    pairs = copied_into_opt_stack(triton)
    assert pairs, "the triton stage copies nothing under /opt/stack"
    for source, target in pairs:
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / source, tmp_path / target)
    # -I -S: only the copied tree and the standard library are importable (no editable install of the
    # repository, whose finder would supply what the image lacks).
    probe = subprocess.run([sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, '.'); import scripts.local_triton"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert probe.returncode == 0, f"docker/Dockerfile's triton stage misses a module: {probe.stderr.strip()[-400:]}"
