"""CI runs the suite with --no-skips (tests/strict_skips.py): a skip there fails, with its reason."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "def test_passes():\n    assert True\n\n"
        "def test_needs_docker():\n    pytest.skip('no Docker engine here')\n\n"
        "@pytest.mark.xfail(reason='known')\ndef test_known_failure():\n    assert False\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "-p", "tests.strict_skips", "--rootdir", str(tmp_path), *options, str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_the_run_under_no_skips_and_names_its_reason(tmp_path):
    strict = run(tmp_path, "--no-skips")
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 passed, 1 xfailed" in strict.stdout
    assert "--no-skips makes a skip fail the run: no Docker engine here" in strict.stdout


def test_without_the_option_a_skip_is_a_skip(tmp_path):
    relaxed = run(tmp_path)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in relaxed.stdout
