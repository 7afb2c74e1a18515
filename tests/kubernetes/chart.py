"""What the Helm chart's tests share: the chart, its rendering with `helm template`, and the check
that helm and kubectl are here."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import REPO_ROOT

CHART = REPO_ROOT / "deploy" / "helm" / "doc-triton"
FAKE_GPU = "doc-triton.test/gpu"  # an extended resource a test advertises on the node in place of a GPU


def tools_or_skip() -> None:
    missing = [tool for tool in ("helm", "kubectl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no {' or '.join(missing)} here; .ci/run installs both (.ci/kubernetes.sh)")


def render(*sets: str) -> list[dict]:
    import yaml

    out = subprocess.run(["helm", "template", "t", str(CHART), *sets], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def named(objects: list[dict], kind: str, name: str) -> dict | None:
    return next((o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name), None)


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"] if "template" in o["spec"] else o["spec"]
            for o in objects if o["kind"] in ("Deployment", "Job", "Pod")}
