"""The Helm chart takes its settings from the same source as .env: settings.yaml is generated from
KEYS and the registry, and `stack up --mode kubernetes` passes exactly the chart's keys."""
from __future__ import annotations

import re

import pytest
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
        assert set(entry["builderSettings"].values()) <= set(chart["settings"])  # every builder setting is a chart key
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
    import scripts.verify as verify
    from scripts.report import ModelRow
    from scripts.verify import main as verify_main

    monkeypatch.setattr(verify, "wait_until_ready", lambda url, names, timeout: None)
    monkeypatch.setattr(verify, "verify_all", lambda url, folders: ([ModelRow(n, ready="yes", verified="yes")
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


class FakeCluster:
    """Answers KubernetesStack's helm and kubectl calls from `state(t)` on a simulated clock (the
    stack's sleep advances it); `helm upgrade` pauses Triton while a Job is incomplete, as the chart's
    lookup does. `calls` records every call, with the time it was made."""

    def __init__(self, stack, state):
        self.t, self.state, self.calls, self.paused = 0.0, state, [], False
        stack._run, stack.clock, stack.sleep = self.run, lambda: self.t, self.advance

    def advance(self, seconds):
        self.t += seconds

    def run(self, tool, *args, check=True, timeout=600):
        import json
        import subprocess

        self.calls.append((self.t, " ".join((tool, *args))))
        state = {"jobs": [_job("dt-build-e5-x", True)], "pods": [], "pvc": [], "events": [], "triton": True,
                 "embeddings": "", **self.state(self.t)}
        out = ""
        if args[:2] == ("upgrade", "--install"):
            self.paused = not all(j["status"].get("succeeded") for j in state["jobs"])
        elif args[:1] == ("get",) and args[1] in ("jobs", "pods", "pvc", "events"):
            out = json.dumps({"items": state[args[1]]})
        elif args[:3] == ("get", "deployment", "dt-embeddings") and "name" in args:
            out = state["embeddings"]
        elif args[:2] == ("get", "deployment"):
            ready = state["triton"] if args[2] == "dt-triton" else state.get("embeddings_ready", True)
            replicas = 0 if self.paused or not ready else 2
            out = json.dumps({"metadata": {"generation": 2}, "spec": {"replicas": 2, "paused": self.paused},
                              "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": replicas,
                                         "availableReplicas": replicas}})
        elif args[0] == "test":
            out = "POD LOGS: dt-verify\n| e5_small_v2_text | yes |\n| /v1/embeddings | yes |"
        return subprocess.CompletedProcess([tool, *args], 0, out, "")

    def commands(self, prefix):
        return [(t, c) for t, c in self.calls if c.startswith(prefix)]


def _job(name, succeeded=False):
    return {"metadata": {"name": name}, "status": {"succeeded": 1} if succeeded else {}}


def _pod(name, component, phase="Pending", unschedulable="", job=None, leaving=False):
    scheduled = ({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
                 if unschedulable else {"type": "PodScheduled", "status": "True"})
    labels = {"app.kubernetes.io/component": component, **({"job-name": job} if job else {})}
    return {"metadata": {"name": name, "labels": labels, **({"deletionTimestamp": "now"} if leaving else {})},
            "status": {"phase": phase, "conditions": [scheduled]}}


def _event(kind, name, reason, message, at, type_="Warning"):
    return {"involvedObject": {"kind": kind, "name": name}, "reason": reason, "message": message, "type": type_,
            "lastTimestamp": f"2026-01-01T00:00:{at:02d}Z", "metadata": {}}


def _stack(tmp_path):
    from scripts.stacks.kubernetes import KubernetesStack

    env = tmp_path / ".env"
    env.write_text("HELM_RELEASE=dt\nMODELS=e5_small_v2\n")
    return KubernetesStack(load_settings(env, tmp_path, host_checkpoints=False))


def test_per_model_gpu_ids_are_refused_on_kubernetes_in_one_sentence(tmp_path):
    """A pod sees only its replica's GPUs: <PREFIX>_GPU_IDS is for the compose and local stacks. Refused
    before helm installs anything; `down`, `clean` and `status` still work with it set."""
    from converters.errors import UserError
    from scripts.stacks.kubernetes import KubernetesStack

    env = tmp_path / ".env"
    env.write_text("HELM_RELEASE=dt\nTRITON_GPU_IDS=0,1\nECLAIR_GPU_IDS=1\nYOLOX_GPU_IDS=0\n")
    stack = KubernetesStack(load_settings(env, tmp_path, host_checkpoints=False))
    calls = []
    stack.helm = lambda *args, **kwargs: calls.append(args)
    with pytest.raises(UserError, match="YOLOX_GPU_IDS, ECLAIR_GPU_IDS place models on GPUs of one host"):
        stack.up()
    assert calls == []


def test_kubernetes_up_waits_for_the_embeddings_endpoint_before_helm_test(tmp_path, capsys):
    import pytest

    from converters.errors import UserError

    stack = _stack(tmp_path)
    cluster = FakeCluster(stack, lambda t: {"embeddings": "deployment.apps/dt-embeddings"})
    assert stack.up() == 0
    order = [c for _, c in cluster.calls if c.startswith(("kubectl get deployment dt-", "helm test"))]
    assert [c.split()[3] if c.startswith("kubectl") else "test" for c in order if "--ignore-not-found" not in c] == [
        "dt-triton", "dt-triton", "dt-embeddings", "test"]  # paused?, rolled out?, then the endpoint's rollout
    assert "the embeddings endpoint too" in "".join(capsys.readouterr())
    cluster = FakeCluster(stack, lambda t: {})  # the chart left it out (HELM_VALUES: embeddings.enabled=false)
    assert stack.up() == 0 and not cluster.commands("kubectl get deployment dt-embeddings -o json")
    cluster = FakeCluster(stack, lambda t: {"embeddings": "deployment.apps/dt-embeddings", "embeddings_ready": False})
    with pytest.raises(UserError, match="logs embeddings --mode kubernetes"):
        stack.up()
    assert 600 <= cluster.t <= 610  # READY_TIMEOUT_S
    cluster = FakeCluster(stack, lambda t: {})
    stack.logs("embeddings")
    assert [c for _, c in cluster.calls] == ["kubectl logs deployment/dt-embeddings --all-containers"]


def test_up_creates_the_namespace_and_starts_the_replicas_only_once_the_builds_are_complete(tmp_path):
    stack = _stack(tmp_path)
    cluster = FakeCluster(stack, lambda t: {"jobs": [_job("dt-build-e5-x", t >= 30)]})
    assert stack.up() == 0
    installs = cluster.commands("helm upgrade --install dt")
    assert all("--create-namespace" in c for _, c in installs)
    # installed paused (no replica holds a GPU a builder waits for), upgraded again once the Jobs are done
    assert [t for t, _ in installs][0] == 0 and len(installs) == 2 and installs[1][0] >= 30
    cluster = FakeCluster(stack, lambda t: {})  # nothing to build: one install, never paused
    assert stack.up() == 0 and len(cluster.commands("helm upgrade")) == 1


def _named_within_60_s(stack, cluster, wait, expected: str, not_before: float):
    import pytest

    from converters.errors import UserError

    with pytest.raises(UserError) as raised:
        wait()
    message = str(raised.value)
    assert message == expected, message
    assert message.endswith(".") and ". " not in message  # one sentence
    assert not_before <= cluster.t <= 60, cluster.t


def test_a_replica_short_of_gpus_is_named_in_one_sentence_within_60_s(tmp_path):
    from scripts.stacks.kubernetes import STUCK_AFTER_S

    stack = _stack(tmp_path)
    short = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    # the old replica leaves during the first 10 s: until then the new one may be waiting for its GPU
    cluster = FakeCluster(stack, lambda t: {"triton": False, "pods": [
        _pod("dt-triton-a", "triton", "Running", leaving=t < 10), _pod("dt-triton-b", "triton", unschedulable=short)]})
    _named_within_60_s(stack, cluster, stack.up, "pod dt-triton-b stays Pending: 0/1 nodes are available: 1 "
                       "Insufficient nvidia.com/gpu; free what it needs or ask for less in HELM_VALUES "
                       "(triton.replicas, gpu.perReplica, resources).", 10 + STUCK_AFTER_S)


def test_a_builder_queued_behind_another_or_a_claim_being_provisioned_is_not_named(tmp_path):
    stack = _stack(tmp_path)
    unbound = "0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims."
    short = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."

    def state(t):  # one GPU: e5 builds for 100 s, then caption for 100 s; the claim binds at 30 s
        return {"jobs": [_job("dt-build-e5-x", t >= 100), _job("dt-build-caption-y", t >= 205)],
                "pvc": [] if t >= 30 else [{"metadata": {"name": "dt-models"}, "spec": {"accessModes": ["ReadWriteMany"]},
                                              "status": {"phase": "Pending"}}],
                "events": [_event("PersistentVolumeClaim", "dt-models", "ExternalProvisioning",
                                  "waiting for a volume to be created by nfs.csi.k8s.io", 1, "Normal")],
                "pods": [_pod("e5", "builder", "Succeeded" if t >= 100 else "Pending" if t < 35 else "Running",
                              job="dt-build-e5-x", unschedulable=unbound if t < 30 else ""),
                         _pod("caption", "builder", "Succeeded" if t >= 205 else "Running" if t >= 104 else "Pending",
                              job="dt-build-caption-y", unschedulable=unbound if t < 30 else short if t < 104 else ""),
                         _pod("old", "builder", "Pending", job="dt-build-e5-old", unschedulable=short)]}

    cluster = FakeCluster(stack, state)
    stack.wait_for_builds()  # returns: nothing was stuck, though the caption builder waited 104 s
    assert cluster.t >= 205


def test_a_multi_attach_or_an_unbound_claim_is_named_with_the_value_to_set(tmp_path):
    stack = _stack(tmp_path)
    attach = ('Multi-Attach error for volume "pvc-1" Volume is already used by pod(s) dt-triton-a')
    cluster = FakeCluster(stack, lambda t: {"triton": False, "pods": [_pod("dt-triton-b", "triton")], "events": [
        _event("Pod", "dt-triton-b", "Scheduled", "assigned to node-2", 1, "Normal"),
        _event("Pod", "dt-triton-b", "FailedAttachVolume", attach, 3)]})
    _named_within_60_s(stack, cluster, lambda: stack.wait_for_rollout("triton", "Triton was", 600),
                       f"pod dt-triton-b cannot mount its volumes: {attach}; the claim attaches to one node only: "
                       "set persistence.accessModes to [ReadWriteMany], or keep every pod on one node.", 20)
    failed = "invalid AccessModes [ReadWriteMany]: only AccessModes [ReadWriteOnce] are supported"
    cluster = FakeCluster(stack, lambda t: {"jobs": [_job("dt-build-e5-x")], "pods": [_pod(
        "e5", "builder", job="dt-build-e5-x", unschedulable="0/1 nodes are available: 1 pod has unbound immediate "
        "PersistentVolumeClaims.")], "pvc": [{"metadata": {"name": "dt-models"}, "spec": {
            "accessModes": ["ReadWriteMany"]}, "status": {"phase": "Pending"}}],
        "events": [_event("PersistentVolumeClaim", "dt-models", "ProvisioningFailed", failed, 2)]})
    _named_within_60_s(stack, cluster, stack.wait_for_builds, f"claim dt-models is not bound: {failed}; set "
                       "persistence.storageClass to a class that provides ReadWriteMany (or [ReadWriteOnce] with "
                       "persistence.singleNode=true where every pod runs on one node).", 20)


def test_status_says_the_cluster_did_not_answer_not_that_the_namespace_is_empty(tmp_path):
    import subprocess

    from converters.errors import UserError

    stack = _stack(tmp_path)
    refused = "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?"
    stack._run = lambda tool, *args, **kwargs: subprocess.CompletedProcess([tool, *args], 1, "", refused + "\n")
    with pytest.raises(UserError, match=re.escape(f"kubectl could not read namespace default: {refused}; check KUBECONFIG")):
        stack.status()
