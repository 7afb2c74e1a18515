"""The Helm chart takes its settings from the same source as .env: settings.yaml is generated from
KEYS and the registry, and `stack up --mode kubernetes` passes exactly the chart's keys."""
from __future__ import annotations

import yaml

from scripts.stack import main
from scripts.stack_settings import KEYS, chart_settings_text, chart_values, load_settings
from tests.helpers import REPO_ROOT
from triton_models.registry import MODELS

CHART = REPO_ROOT / "deploy" / "helm" / "doc-triton"


def test_chart_settings_file_is_generated_from_the_keys_and_registry():
    assert (CHART / "settings.yaml").read_text() == chart_settings_text(), \
        "run `python -m scripts.stack_settings chart > deploy/helm/doc-triton/settings.yaml`"
    chart = yaml.safe_load(chart_settings_text())
    assert chart["settings"] == {k.name: k.default for k in KEYS if k.chart}
    assert [m["key"] for m in chart["models"]] == [spec.key for spec in MODELS]
    for entry, spec in zip(chart["models"], MODELS):
        assert entry["batchSizeKey"] in chart["settings"] and entry["checkpointKey"] in chart["settings"]
        assert entry["job"] == spec.compose_service and entry["tritonNames"] == list(spec.triton_names)


def test_values_from_env_carry_every_chart_key_and_no_other(tmp_path):
    env = tmp_path / ".env"
    env.write_text("E5_BATCH_SIZE=128\nMODELS=e5_small_v2\nTRITON_HTTP_PORT=9000\nE5_CHECKPOINT=e5-small-v2\n")
    settings = load_settings(env, tmp_path, host_checkpoints=False)  # the checkpoint lives on a claim
    values = chart_values(settings)["settings"]
    assert values["E5_BATCH_SIZE"] == "128" and values["MODELS"] == "e5_small_v2"
    assert values["E5_CHECKPOINT"] == "e5-small-v2" and "TRITON_HTTP_PORT" not in values
    assert set(values) == set(yaml.safe_load(chart_settings_text())["settings"])


def test_kubernetes_mode_names_what_is_missing_in_one_line(tmp_path, monkeypatch, capsys):
    env = tmp_path / ".env"
    env.write_text("HELM_VALUES=nowhere.yaml\n")
    assert main(["up", "--mode", "kubernetes", "--env-file", str(env)]) == 1
    assert "HELM_VALUES=nowhere.yaml is not a file" in capsys.readouterr().err
    env.write_text("HELM_RELEASE=Doc_Triton\n")
    assert main(["up", "--mode", "kubernetes", "--env-file", str(env)]) == 1
    assert "HELM_RELEASE='Doc_Triton' must be lowercase" in capsys.readouterr().err
    env.write_text("")
    monkeypatch.setenv("PATH", str(tmp_path))  # no helm, no kubectl
    assert main(["up", "--mode", "kubernetes", "--env-file", str(env)]) == 1
    assert "needs `helm` on PATH" in capsys.readouterr().err
    assert main(["bench", "--mode", "kubernetes", "--env-file", str(env)]) == 1
    assert "`bench` has no Kubernetes mode" in capsys.readouterr().err


def test_the_helm_test_verification_adds_the_embeddings_endpoints_row(tmp_path, monkeypatch, capsys):
    """`python -m scripts.verify ... --embeddings-url`: what the chart's test pod runs where the
    endpoint is installed; its row joins the models' and a wrong answer fails the whole check."""
    import scripts.embeddings_service as endpoint
    import scripts.health as health
    from scripts.report import ModelRow
    from scripts.verify import main as verify_main

    monkeypatch.setattr(health, "wait_until_ready", lambda url, names, timeout: None)
    monkeypatch.setattr(health, "verify_all", lambda url, folders: ([ModelRow(n, ready="yes", verified="yes")
                                                                     for n in folders], True))
    monkeypatch.setattr(endpoint, "wait_ready", lambda url, timeout_s: None)
    seen = []

    def verify(url, folder):
        seen.append((url, folder))
        return ModelRow(endpoint.ROW_NAME, ready="yes", verified=answer)

    monkeypatch.setattr(endpoint, "verify", verify)
    args = ["--url", "t-triton:8001", "--repository", str(tmp_path), "--models", "e5_small_v2,e5_small_v2_text"]
    answer = "yes"
    assert verify_main(args) == 0 and seen == []  # no --embeddings-url: the models only
    assert "/v1/embeddings" not in capsys.readouterr().out
    assert verify_main([*args, "--embeddings-url", "t-embeddings:8000"]) == 0
    assert seen == [("t-embeddings:8000", tmp_path / "e5_small_v2_text")]
    assert "/v1/embeddings" in capsys.readouterr().out
    answer = "NO: embedding differs"
    assert verify_main([*args, "--embeddings-url", "t-embeddings:8000"]) == 1


def _fake_cluster(stack, embeddings: str, rollout_rc: int = 0) -> list[str]:
    """Answers KubernetesStack's helm and kubectl calls; returns the calls made, in order."""
    import json
    import subprocess

    calls = []

    def run(tool, *args, check=True, timeout=600):
        calls.append(" ".join((tool, *args)))
        out, rc = "", 0
        if args[:2] == ("get", "jobs"):
            out = json.dumps({"items": [{"metadata": {"name": "dt-build-e5-x"}, "status": {"succeeded": 1}}]})
        elif args[:2] == ("get", "pods"):
            out = json.dumps({"items": []})
        elif args[:2] == ("get", "deployment"):
            out = embeddings
        elif args[:3] == ("rollout", "status", "deployment/dt-embeddings"):
            rc = rollout_rc
        elif args[0] == "test":
            out = "POD LOGS: dt-verify\n| e5_small_v2_text | yes |\n| /v1/embeddings | yes |"
        return subprocess.CompletedProcess([tool, *args], rc, out, "")

    stack._run = run
    return calls


def test_kubernetes_up_waits_for_the_embeddings_endpoint_before_helm_test(tmp_path, capsys):
    import pytest

    from converters.errors import UserError
    from scripts.stacks.kubernetes import KubernetesStack

    env = tmp_path / ".env"
    env.write_text("HELM_RELEASE=dt\nMODELS=e5_small_v2\n")
    stack = KubernetesStack(load_settings(env, tmp_path, host_checkpoints=False))
    calls = _fake_cluster(stack, "deployment.apps/dt-embeddings")
    assert stack.up() == 0
    order = [c for c in calls if c.startswith(("kubectl rollout", "helm test"))]
    assert [c.split()[3] if c.startswith("kubectl") else "test" for c in order] == [
        "deployment/dt-triton", "deployment/dt-embeddings", "test"]
    assert "the embeddings endpoint too" in "".join(capsys.readouterr())
    calls = _fake_cluster(stack, "")  # the chart left it out (HELM_VALUES: embeddings.enabled=false)
    assert stack.up() == 0 and not any("dt-embeddings" in c for c in calls if c.startswith("kubectl rollout"))
    _fake_cluster(stack, "deployment.apps/dt-embeddings", rollout_rc=1)
    with pytest.raises(UserError, match="logs embeddings --mode kubernetes"):
        stack.up()
    calls = _fake_cluster(stack, "")
    stack.logs("embeddings")
    assert calls == ["kubectl logs deployment/dt-embeddings --all-containers"]
