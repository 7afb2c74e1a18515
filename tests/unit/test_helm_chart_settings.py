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
