"""The Helm chart on a real Kubernetes cluster: `stack up --mode kubernetes` installs it with the CPU
images (builder Jobs -> claim -> two Triton replicas, and the embeddings endpoint), `helm test`
verifies through the Services, both replicas answer, /v1/embeddings answers through its Service, a
deleted pod costs no answer and comes back, and uninstall leaves nothing running. With a fake GPU
(an extended resource advertised on the node), one GPU builds one model at a time and serves, and
more replicas than GPUs are named within 60 s. Needs helm, kubectl and a cluster (KUBECONFIG) that
can run the local images; .ci/run starts a Kubernetes 1.20 cluster with .ci/kubernetes.sh. The
chart alone (helm template, no cluster) is tests/kubernetes/test_helm_render.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers import REPO_ROOT
from tests.kubernetes.chart import FAKE_GPU, tools_or_skip

IMAGES = {"builder": "doc-triton-builder:local", "triton": "doc-triton-triton:local",
          "embeddings": "doc-triton-embeddings:local"}
MODELS = "caption_classification,yolox,eclair,e5_small_v2"  # all four: `ingest` calls each
GPU_MODELS = "caption_classification,e5_small_v2"  # the GPU-scheduling release: two builders queue for one GPU
# the CI cluster is one node: a ReadWriteOnce claim (its hostpath provisioner) serves every pod
ONE_NODE = "persistence:\n  size: 2Gi\n  accessModes: [ReadWriteOnce]\n  singleNode: true\n"
TRITON_NAMES = ["deberta_large", "caption_selection", "e5_small_v2", "e5_small_v2_text"]


def _cluster_or_skip() -> None:
    tools_or_skip()
    probe = subprocess.run(["kubectl", "get", "--raw", "/readyz"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or not os.environ.get("KUBECONFIG"):
        pytest.skip("no reachable Kubernetes cluster (KUBECONFIG); .ci/run starts one with .ci/kubernetes.sh")


def kubectl(namespace: str, *args: str, check: bool = True) -> str:
    result = subprocess.run(["kubectl", "--namespace", namespace, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result.stdout


def kube_json(namespace: str, *args: str) -> dict:
    return json.loads(kubectl(namespace, "get", *args, "-o", "json"))


# --- the release on a real cluster -------------------------------------------------------------------

@pytest.fixture(scope="module")
def images():
    _cluster_or_skip()
    build = subprocess.run(["docker", "compose", "build"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800,
                           env={**os.environ, "COMPOSE_FILE": "docker-compose.yaml", "COMPOSE_PROJECT_NAME": "doc-triton",
                                "PIP_OFFLINE": "1"})
    assert build.returncode == 0, build.stderr[-3000:]
    # No registry here: the cluster's containerd gets the images directly (pods use IfNotPresent).
    load = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "kubernetes.sh"), "load", *IMAGES.values()],
                          capture_output=True, text=True, timeout=900)
    assert load.returncode == 0, load.stderr


def _stack_runner(root, namespace: str, release: str, values, models: str = MODELS):
    def stack(command: str, target: str | None = None, **settings: str) -> subprocess.CompletedProcess:
        env_file = root / ".env"
        settings = {"HELM_RELEASE": release, "KUBE_NAMESPACE": namespace, "HELM_VALUES": str(values), "MODELS": models,
                    "READY_TIMEOUT_S": "600", **settings}
        env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return subprocess.run([sys.executable, "-m", "scripts.stack", command, *([target] if target else []),
                               *stack.extra_args, "--mode", "kubernetes", "--env-file", str(env_file)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=2400)
    stack.extra_args = []
    return stack


@pytest.fixture(scope="module")
def release(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("kubernetes")
    namespace = f"doctriton-{int(time.time())}"  # `up` creates it (helm --create-namespace)
    values = root / "values.yaml"
    values.write_text("triton:\n  replicas: 2\n  shmSize: 256Mi\nautoscaling:\n  enabled: true\n  minReplicas: 2\n"
                      + ONE_NODE)
    stack = _stack_runner(root, namespace, "dt", values)
    yield namespace, stack, root
    stack("clean")
    subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"], capture_output=True)


def _golden_folders(namespace: str, pod: str, root) -> dict:
    """The published folders (golden inputs and outputs), copied out of a Triton pod's claim."""
    folders = {}
    for name in TRITON_NAMES:
        target = root / "golden" / name
        if not target.is_dir():
            kubectl(namespace, "cp", f"{pod}:/models/{name}", str(target), "-c", "triton")
        folders[name] = target
    return folders


def _is_ready(pod: dict) -> bool:
    return any(c.get("ready") for c in pod["status"].get("containerStatuses", []))


def _triton_pods(namespace: str, ready_only: bool = True, release: str = "dt") -> list[dict]:
    pods = kube_json(namespace, "pods", "-l", f"app.kubernetes.io/instance={release},app.kubernetes.io/component=triton")[
        "items"]
    return [p for p in pods if p["metadata"].get("deletionTimestamp") is None and (_is_ready(p) or not ready_only)]


def test_up_builds_in_jobs_gates_on_them_and_verifies_through_the_service(release, capsys):
    namespace, stack, _ = release
    started = time.monotonic()
    up = stack("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert kube_json(namespace, "namespace", namespace)["status"]["phase"] == "Active"  # made by `up`
    assert "verified: every model answered" in up.stdout + up.stderr
    jobs = kube_json(namespace, "jobs", "-l", "app.kubernetes.io/instance=dt")["items"]
    assert sorted(j["metadata"]["labels"]["doc-triton/model"] for j in jobs) == sorted(MODELS.split(","))
    assert all(j["status"].get("succeeded") == 1 for j in jobs)
    deployment = kube_json(namespace, "deployment", "dt-triton")
    assert deployment["status"].get("readyReplicas") == 2
    hpa = kube_json(namespace, "hpa", "dt-triton")
    assert hpa["spec"]["minReplicas"] == 2
    # the embeddings endpoint: verified by helm test (its row), and answering through its Service
    assert "/v1/embeddings" in up.stdout, up.stdout
    assert kube_json(namespace, "deployment", "dt-embeddings")["status"].get("readyReplicas") == 1
    from scripts.embeddings_service import post_json

    address = kube_json(namespace, "service", "dt-embeddings")["spec"]["clusterIP"]
    status, answer = post_json(f"http://{address}:8000/v1/embeddings", {"model": "e5-small-v2", "input": ["an invoice"]})
    assert status == 200 and len(answer["data"]) == 1 and len(answer["data"][0]["embedding"]) == 384, answer
    with capsys.disabled():  # a figure for the record, not a timed assertion
        print(f"\n[figure] kubernetes: install to verified {time.monotonic() - started:.1f} s "
              f"({len(MODELS.split(','))} builder Jobs, 2 Triton replicas, CPU)")


def test_ingest_and_search_go_through_the_service(release):
    """`ingest` and `search --mode kubernetes`: the Triton Service forwarded for the command; the
    second run skips the document (the fingerprint is the current builder Jobs')."""
    from benchmarks.ingest_pdf import PageSpec, write_pdf

    namespace, stack, root = release
    sentences = ["The ferry to the island leaves at dawn.", "Copper wire prices doubled over the winter."]
    pdf = write_pdf(root / "cluster.pdf", [PageSpec("text", [sentences[0]]), PageSpec("text", [sentences[1]]),
                                           PageSpec("scan")])
    stack.extra_args = ["--out", str(root / "store")]
    try:
        first = stack("ingest", target=str(pdf))
        assert first.returncode == 0, first.stdout + first.stderr
        assert "1 ingested, 0 skipped" in first.stdout and "3 pages" in first.stdout, first.stdout + first.stderr
        again = stack("ingest", target=str(pdf))
        assert again.returncode == 0 and "0 ingested, 1 skipped" in again.stdout, again.stdout + again.stderr
        found = stack("search", target=sentences[1])
        assert found.returncode == 0, found.stderr
        assert found.stdout.startswith("1. ") and "cluster.pdf  page 2" in found.stdout.splitlines()[0], found.stdout
    finally:
        stack.extra_args = []
    assert not subprocess.run(["pgrep", "-f", "kubectl port-forward service/dt-triton"], capture_output=True).stdout


def test_each_replica_answers_the_golden_inputs(release):
    namespace, _, root = release
    from scripts.verify import verify_all

    pods = _triton_pods(namespace)
    assert len(pods) == 2
    folders = _golden_folders(namespace, pods[0]["metadata"]["name"], root)
    for pod in pods:
        rows, ok = verify_all(f"{pod['status']['podIP']}:8001", folders)
        assert ok, [(r.model, r.ready, r.verified) for r in rows]


def test_a_deleted_replica_costs_no_answer_and_comes_back(release):
    namespace, _, root = release
    from scripts.verify import verify_all

    service = kube_json(namespace, "service", "dt-triton")["spec"]["clusterIP"]
    before = _triton_pods(namespace)
    victim = before[0]["metadata"]["name"]
    folders = _golden_folders(namespace, victim, root)
    kubectl(namespace, "delete", "pod", victim, "--wait=false")
    answers, deadline = 0, time.monotonic() + 300
    while time.monotonic() < deadline:
        rows, ok = verify_all(f"{service}:8001", folders)  # a new connection each round: any replica
        assert ok, [(r.model, r.ready, r.verified) for r in rows]
        answers += 1
        ready = _triton_pods(namespace)
        if len(ready) == 2 and victim not in {p["metadata"]["name"] for p in ready}:
            break
        time.sleep(1)
    else:
        pytest.fail(f"the Deployment did not bring a second ready replica back within 300 s: {kubectl(namespace, 'get', 'pods')}")
    assert answers >= 2  # the Service answered while a replica was missing, not only after


def test_a_failed_build_or_a_missing_image_is_named_at_once_and_the_serving_replicas_keep_serving(release):
    namespace, stack, root = release
    from scripts.verify import verify_all

    failed = stack("up", E5_CHECKPOINT="no-such-folder")
    assert failed.returncode == 1
    assert "builder Job dt-build-e5-" in failed.stderr and "no-such-folder does not exist" in failed.stderr, failed.stderr
    service = kube_json(namespace, "service", "dt-triton")["spec"]["clusterIP"]
    folders = _golden_folders(namespace, _triton_pods(namespace)[0]["metadata"]["name"], root)
    rows, ok = verify_all(f"{service}:8001", folders)  # the replicas of the last good build still answer
    assert ok, [(r.model, r.ready, r.verified) for r in rows]
    bad_image = root / "bad-image.yaml"
    bad_image.write_text((root / "values.yaml").read_text() + "images:\n  builder: doc-triton-missing:local\n")
    unpullable = stack("up", HELM_VALUES=str(bad_image))
    assert unpullable.returncode == 1
    assert "cannot get image doc-triton-missing:local" in unpullable.stderr, unpullable.stderr
    fixed = stack("up")  # the settings put back: the same Job as before, its build current
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert kube_json(namespace, "deployment", "dt-triton")["status"].get("readyReplicas") == 2


def test_status_reads_the_cluster_and_verifies(release):
    _, stack, _ = release
    status = stack("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "dt-triton" in status.stdout and "verified" in status.stderr + status.stdout
    assert "dt-embeddings" in status.stdout and "/v1/embeddings" in status.stdout


def test_down_leaves_nothing_running_a_reinstall_skips_every_build_and_clean_deletes_the_claim(release):
    namespace, stack, _ = release
    down = stack("down")
    assert down.returncode == 0, down.stdout + down.stderr
    deadline = time.monotonic() + 120
    while kube_json(namespace, "pods")["items"] and time.monotonic() < deadline:
        time.sleep(2)
    left = kube_json(namespace, "pods,jobs,deployments,services,hpa")["items"]
    assert left == [], [f"{o['kind']}/{o['metadata']['name']}" for o in left]
    claims = [c["metadata"]["name"] for c in kube_json(namespace, "pvc")["items"]]
    assert claims == ["dt-models"]  # the built models are kept, as compose's `down` keeps its volume
    again = stack("up")  # the kept claim is adopted and every build finds its model current
    assert again.returncode == 0, again.stdout + again.stderr
    for model in MODELS.split(","):
        log = kubectl(namespace, "logs", "-l", f"doc-triton/model={model}", "--tail", "-1")
        assert "up to date" in log and "published" not in log, log
    clean = stack("clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert kube_json(namespace, "pods,jobs,deployments,services,hpa,pvc")["items"] == []


# --- a fake GPU: the scheduling of GPU values, with the CPU images ---------------------------------

@pytest.fixture(scope="module")
def fake_gpu():
    """One FAKE_GPU advertised on the node, as upstream's "Advertise Extended Resources for a Node":
    a JSON patch of the node's status through `kubectl proxy` (kubectl 1.20 has no --subresource)."""
    _cluster_or_skip()
    node = kubectl("default", "get", "nodes", "-o", "jsonpath={.items[0].metadata.name}")
    proxy = subprocess.Popen(["kubectl", "proxy", "--port=0"], stdout=subprocess.PIPE, text=True)
    address = proxy.stdout.readline().split()[-1]  # "Starting to serve on 127.0.0.1:PORT"

    def patch(*operations: dict) -> None:
        request = urllib.request.Request(f"http://{address}/api/v1/nodes/{node}/status", method="PATCH",
                                         data=json.dumps(list(operations)).encode(),
                                         headers={"Content-Type": "application/json-patch+json"})
        urllib.request.urlopen(request, timeout=30).read()

    path = FAKE_GPU.replace("/", "~1")
    try:
        patch(*({"op": "add", "path": f"/status/{field}/{path}", "value": "1"} for field in ("capacity", "allocatable")))
        yield node
        patch({"op": "remove", "path": f"/status/capacity/{path}"})  # the kubelet then drops it from allocatable
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


@pytest.fixture(scope="module")
def gpu_release(images, fake_gpu, tmp_path_factory):
    root = tmp_path_factory.mktemp("kubernetes-gpu")
    namespace = f"doctriton-gpu-{int(time.time())}"
    values = root / "values.yaml"

    def write(replicas: int) -> None:
        values.write_text(f"gpu:\n  enabled: true\n  resource: {FAKE_GPU}\n  device: cpu\n"
                          f"triton:\n  replicas: {replicas}\n  shmSize: 256Mi\nembeddings:\n  enabled: false\n" + ONE_NODE)

    write(1)
    stack = _stack_runner(root, namespace, "dg", values, models=GPU_MODELS)
    yield namespace, stack, write
    stack("clean")
    subprocess.run(["kubectl", "delete", "namespace", namespace, "--wait=false"], capture_output=True)


def test_with_one_gpu_up_builds_one_model_at_a_time_and_only_then_starts_the_replica(gpu_release):
    """Before, the replica took the only GPU while its init container waited for builders that
    needed that GPU: Pending for ever. Now the Deployment stays paused until the Jobs are complete."""
    namespace, stack, _ = gpu_release
    up = stack("up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "verified: every model answered" in up.stdout + up.stderr
    jobs = kube_json(namespace, "jobs", "-l", "app.kubernetes.io/instance=dg")["items"]
    assert len(jobs) == 2 and all(j["status"].get("succeeded") == 1 for j in jobs)
    for job in jobs:
        assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {FAKE_GPU: "1"}
    (pod,) = _triton_pods(namespace, release="dg")
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {FAKE_GPU: "1"}
    assert pod["metadata"]["creationTimestamp"] >= max(j["status"]["completionTime"] for j in jobs)  # GPU left free
    builders = kube_json(namespace, "pods", "-l", "app.kubernetes.io/instance=dg,app.kubernetes.io/component=builder")
    first, second = sorted((p["status"]["containerStatuses"][0]["state"]["terminated"] for p in builders["items"]),
                           key=lambda state: state["startedAt"])
    assert first["finishedAt"] <= second["startedAt"]  # one at a time: the queued one was not named as stuck


def test_more_replicas_than_gpus_is_named_in_one_sentence_long_before_the_ready_timeout(gpu_release):
    namespace, stack, write = gpu_release
    write(2)
    started = time.monotonic()
    up = stack("up")
    elapsed = time.monotonic() - started
    write(1)
    assert up.returncode == 1, up.stdout + up.stderr
    error = next(line for line in up.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith("error: pod dg-triton-") and "stays Pending" in error, up.stderr
    assert f"Insufficient {FAKE_GPU}" in error and error.count(". ") == 0, error
    print(f"[figure] more replicas than GPUs named after {elapsed:.0f} s")  # the 60 s rule: a unit test's clock
    assert elapsed < 300, f"{elapsed:.0f} s: {error}"  # named, not the READY_TIMEOUT_S=600 wait running out
    assert len(_triton_pods(namespace, release="dg")) == 1  # the replica that has the GPU keeps serving
