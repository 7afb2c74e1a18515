"""The Helm chart alone (helm lint and template, no cluster): every optional part renders, a changed
setting makes a new build Job, the embeddings endpoint's defaults and refusals, every pod locked
down, the claim's access modes, and the GPU resource as a value. The release on a real cluster is
tests/kubernetes/test_helm_chart.py."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.kubernetes.chart import CHART, FAKE_GPU, named, pod_specs, render, tools_or_skip


def test_chart_lints_and_renders_every_optional_part():
    tools_or_skip()
    lint = subprocess.run(["helm", "lint", str(CHART), "--strict"], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    objects = render("--set", "gpu.enabled=true", "--set", "autoscaling.enabled=true", "--set", "settings.MODELS=yolox",
                     "--set", "settings.YOLOX_BATCH_SIZE=16")
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Job", "PersistentVolumeClaim", "Pod", "Service"]
    job = next(o for o in objects if o["kind"] == "Job")
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MAX_BATCH_SIZE"] == "16" and env["SERVE_BACKEND"] == "tensorrt_plan" and env["DEVICE"] == "cuda"
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    wait = deployment["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
    assert job["metadata"]["name"] in wait  # Triton waits for exactly this Job's receipt


def test_a_changed_setting_makes_a_new_build_job():
    tools_or_skip()

    def job_names(*sets: str) -> list[str]:
        out = subprocess.run(["helm", "template", "t", str(CHART), "--show-only", "templates/jobs.yaml", *sets],
                             capture_output=True, text=True, check=True).stdout
        return [line.split()[-1] for line in out.splitlines() if line.startswith("  name: ")]

    default, changed = job_names(), job_names("--set", "settings.E5_BATCH_SIZE=128")
    assert len(default) == 4
    assert [n for n in default if "-build-e5-" in n] != [n for n in changed if "-build-e5-" in n]
    assert [n for n in default if "-build-e5-" not in n] == [n for n in changed if "-build-e5-" not in n]
    # anything else in a Job's (immutable) spec makes new Jobs too, never a failed upgrade
    placed = job_names("--set", "nodeSelector.pool=cpu")
    assert len(placed) == 4 and not set(placed) & set(default)


def test_the_embeddings_endpoint_renders_by_default_as_a_plain_triton_client():
    tools_or_skip()
    for grpc_port, sets in ((8001, ()), (9001, ("--set", "triton.service.grpcPort=9001"))):
        objects = render(*sets)
        deployment, service = named(objects, "Deployment", "t-embeddings"), named(objects, "Service", "t-embeddings")
        assert deployment and service
        triton = named(objects, "Service", "t-triton")
        assert {p["name"]: p["port"] for p in triton["spec"]["ports"]}["grpc"] == grpc_port
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["replicas"] == 1
        for labelled in (deployment, service):
            assert labelled["metadata"]["labels"]["app.kubernetes.io/component"] == "embeddings"
            assert labelled["metadata"]["labels"]["app.kubernetes.io/instance"] == "t"
        assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"] == {
            "app.kubernetes.io/name": "doc-triton", "app.kubernetes.io/instance": "t",
            "app.kubernetes.io/component": "embeddings"}
        assert pod["metadata"]["labels"] == service["spec"]["selector"]
        assert "volumes" not in pod["spec"] and "t-models" not in json.dumps(deployment)  # never the claim
        (container,) = pod["spec"]["containers"]
        assert "volumeMounts" not in container and container["image"] == "doc-triton-embeddings:local"
        command = " ".join(container.get("command", []) + container.get("args", []))
        assert "python3 -m embeddings_api" in command and "--port 8000" in command
        assert f'--triton-url "${{T_TRITON_SERVICE_HOST:-t-triton}}:{grpc_port}"' in command
        assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": "http"}
        assert container["resources"]["requests"]
        assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
        verify = named(objects, "Pod", "t-verify")["spec"]["containers"][0]["command"][2]
        assert '--embeddings-url "${T_EMBEDDINGS_SERVICE_HOST:-t-embeddings}:8000"' in verify  # helm test checks it


@pytest.mark.parametrize("setting", ["embeddings.enabled=false", "settings.MODELS=yolox\\,caption_classification"])
def test_the_embeddings_endpoint_is_left_out_when_disabled_or_without_e5(setting):
    tools_or_skip()
    objects = render("--set", setting)
    assert [o["kind"] for o in objects if "embeddings" in o["metadata"]["name"]] == []
    assert named(objects, "Deployment", "t-triton") and named(objects, "Service", "t-triton")
    assert "--embeddings-url" not in named(objects, "Pod", "t-verify")["spec"]["containers"][0]["command"][2]


@pytest.mark.parametrize("setting, named", [("settings.E5_BATCH=8", "settings.E5_BATCH is not a setting"),
                                             ("settings.MODELS=e5\\,yolox", 'unknown model "e5"'),
                                             ("settings.PRECISION=fp8", "fp8 runs only in the local stack's compiled path")])
def test_a_bad_value_stops_the_install_in_one_sentence(setting, named):
    tools_or_skip()
    result = subprocess.run(["helm", "template", "t", str(CHART), "--set", setting], capture_output=True, text=True)
    assert result.returncode != 0 and named in result.stderr, result.stderr


def test_every_pod_is_locked_down_requests_resources_and_every_object_carries_the_app_version():
    tools_or_skip()
    import yaml

    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    objects = render("--set", "gpu.enabled=true", "--set", "autoscaling.enabled=true")
    for o in objects:
        assert o["metadata"]["labels"]["app.kubernetes.io/version"] == app_version, o["metadata"]["name"]
    specs = pod_specs(objects)
    assert len(specs) == 7  # Triton, embeddings, 4 builders, the test pod
    for name, spec in specs.items():
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # the builder and Triton images run as root (a value: podSecurityContext.runAsNonRoot); embeddings does not
        assert spec["securityContext"]["runAsNonRoot"] is name.endswith("embeddings"), name
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                                    "capabilities": {"drop": ["ALL"]}}, name
        for container in spec["containers"]:  # requests on every container: no pod is BestEffort
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
    assert specs["Deployment/t-embeddings"]["securityContext"]["runAsUser"] == 65534


def test_a_claim_one_node_attaches_needs_single_node_and_triton_waits_paused_for_the_builds():
    tools_or_skip()
    claim = named(render(), "PersistentVolumeClaim", "t-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # builders, replicas and the test pod on any node
    for sets in (("--set", "persistence.accessModes={ReadWriteOnce}"),
                 ("--set", "persistence.accessModes={ReadWriteOncePod}", "--set", "persistence.singleNode=true")):
        refused = subprocess.run(["helm", "template", "t", str(CHART), *sets], capture_output=True, text=True)
        message = next(line for line in refused.stderr.splitlines() if "values: " in line)
        assert refused.returncode != 0 and "persistence.accessModes" in message, refused.stderr
        assert "persistence.singleNode=true" in message and ". " not in message.split("values: ", 1)[1]
    one_node = render("--set", "persistence.accessModes={ReadWriteOnce}", "--set", "persistence.singleNode=true")
    assert named(one_node, "PersistentVolumeClaim", "t-models")["spec"]["accessModes"] == ["ReadWriteOnce"]
    # no cluster here, so no complete builder Job: the Deployment renders paused (no pod holds a GPU)
    assert named(render(), "Deployment", "t-triton")["spec"]["paused"] is True
    assert named(render("--set", "triton.pausedUntilBuilt=false"), "Deployment", "t-triton")["spec"]["paused"] is False


def test_the_gpu_resource_is_a_value_and_gpu_device_cpu_rehearses_gpu_scheduling_on_cpu_images():
    tools_or_skip()
    objects = render("--set", "gpu.enabled=true", "--set", f"gpu.resource={FAKE_GPU}", "--set", "gpu.device=cpu")
    triton = named(objects, "Deployment", "t-triton")
    assert triton["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {FAKE_GPU: "1"}
    assert triton["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}  # GPUs are full
    for job in (o for o in objects if o["kind"] == "Job"):
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert container["resources"]["limits"] == {FAKE_GPU: "1"}
        assert env["DEVICE"] == "cpu" and env["SERVE_BACKEND"] == "python_onnx"
    refused = subprocess.run(["helm", "template", "t", str(CHART), "--set", "gpu.device=rocm"], capture_output=True,
                             text=True)
    assert refused.returncode != 0 and 'gpu.device "rocm" is not a device' in refused.stderr
