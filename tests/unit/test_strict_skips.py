"""CI runs the suite with --no-skips (tests/strict_skips.py): a skip there fails, with its reason."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ("import pytest\n\n"
          "def test_passes():\n    assert True\n\n"
          "def test_needs_docker():\n    pytest.skip('no Docker engine here')\n\n"
          "@pytest.mark.xfail(reason='known')\ndef test_known_failure():\n    assert False\n")
MODULE_SKIPPED = "import pytest\n\npytest.importorskip('a_module_that_is_not_installed')\n\ndef test_never_runs():\n    pass\n"


def run(folder: Path, *options: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # CI's --no-skips is this run's own choice
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                           "-p", "tests.strict_skips", "--rootdir", str(folder), *options, str(folder)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_a_skip_fails_the_run_under_no_skips_and_names_its_reason(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    strict = run(tmp_path, "--no-skips")
    assert strict.returncode == 1, strict.stdout
    assert "1 failed, 1 passed, 1 xfailed" in strict.stdout
    assert "--no-skips makes a skip fail the run: no Docker engine here" in strict.stdout


def test_a_module_skipped_whole_fails_the_run_too(tmp_path):
    (tmp_path / "test_module_skipped.py").write_text(MODULE_SKIPPED)
    strict = run(tmp_path, "--no-skips")
    assert strict.returncode != 0, strict.stdout  # a collection error: the run stops
    assert "--no-skips makes a skip fail the run: could not import 'a_module_that_is_not_installed'" in strict.stdout


def test_without_the_option_a_skip_is_a_skip(tmp_path):
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "test_module_skipped.py").write_text(MODULE_SKIPPED)
    relaxed = run(tmp_path)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in relaxed.stdout
