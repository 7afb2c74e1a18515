"""`--no-skips`: a skipped test fails the run. Tests skip where a tier's component (Docker, a
cluster, TensorRT) is missing, which is right on a laptop; CI installs every one of them, so a skip
there means an installation step broke, and it must not pass as green. `.ci/run` sets it.
tests/conftest.py takes these hooks in; another pytest run loads them with `-p tests.strict_skips`."""
from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--no-skips", action="store_true",
                     help="a skipped test fails the run (CI, where every tier's components are installed)")


def _fail_a_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, and --no-skips makes a skip fail the run: {reason.removeprefix('Skipped: ')}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and item.config.getoption("--no-skips"):
        _fail_a_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A whole module skipped (`pytest.importorskip` or `skip(allow_module_level=True)` at its top)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and collector.config.getoption("--no-skips"):
        _fail_a_skip(report)
