"""`--mode kubernetes`: the same stack as compose, installed as the Helm chart in deploy/helm/doc-triton.

A thin layer over `helm` and `kubectl` (both must be on PATH, pointed at the cluster by KUBECONFIG
as usual): `up` installs or upgrades the release with the chart keys of `.env` as values (plus
HELM_VALUES, a values file of your own), creating the namespace if needed, and waits for the builder
Jobs (a failed one is named at once). The chart keeps the Triton Deployment paused while a current
build is incomplete (a replica waiting for its builds would hold the GPU a builder needs), so `up`
then upgrades once more to start the replicas, waits for their rollout and the embeddings
endpoint's (where the chart installs it: e5_small_v2 served and embeddings.enabled), then runs
`helm test`, the project's golden verification inside the cluster, through the Triton Service and
the embeddings Service. While it waits, a pod that cannot get its image is named at once, and one
that stays Pending (unschedulable, e.g. too few GPUs; a volume it cannot attach or mount, e.g.
Multi-Attach; an unbound claim) within STUCK_AFTER_S + a poll, not after the whole wait. `status` lists the
release's objects and verifies; `logs` reads a builder's, Triton's or the embeddings endpoint's logs;
`down` uninstalls (the claim with the built models is kept); `clean` also deletes the claim.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from converters.errors import UserError
from scripts.console import log
from scripts.stack_settings import StackSettings, chart_values
from triton_models.registry import MODELS, by_key_or_service, get

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "doc-triton"
COMMANDS = ("up", "status", "verify", "logs", "down", "clean")
BUILD_WAIT_S = 3600  # builder Jobs can take long on a GPU (TensorRT engines)
# A pod or claim seen stuck this long in a row is named (a claim being provisioned, or a builder
# queued for the resource a running builder holds, is not stuck). Well under the 60 s promised.
STUCK_AFTER_S = 20
CLAIM_AFTER_S = 50  # a claim whose provisioner reports no failure may just be slow
POLL_S = 2
IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
MOUNT_ERRORS = ("FailedAttachVolume", "FailedMount")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(f"--mode kubernetes needs `{name}` on PATH (and KUBECONFIG pointing at the cluster); "
                        "install it or use --mode docker / --mode local.")
    return path


def _sentence(message: str) -> str:
    """The first sentence of a Kubernetes message, without its full stop."""
    return " ".join(message.split()).split(". ")[0].rstrip(".")


def _condition(pod: dict, kind: str) -> dict:
    return next((c for c in pod["status"].get("conditions", []) if c["type"] == kind), {})


def _rolled_out(deployment: dict) -> bool:
    """`kubectl rollout status`'s test: every replica updated and available, no old one left."""
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    updated = status.get("updatedReplicas", 0)
    return (status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
            and updated >= spec.get("replicas", 1) and status.get("replicas", 0) <= updated
            and status.get("availableReplicas", 0) >= updated)


class KubernetesStack:
    clock = staticmethod(time.monotonic)  # both replaced in the unit tests
    sleep = staticmethod(time.sleep)

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self._stuck_since: dict[str, float] = {}
        self.release = settings["HELM_RELEASE"]
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?", self.release):
            # the chart names objects <release>-<part>, and cuts the release at 30 characters
            raise UserError(f"HELM_RELEASE={self.release!r} must be lowercase letters, digits and '-', at most 30 "
                            "characters, starting and ending with a letter or digit.")
        self.namespace = settings["KUBE_NAMESPACE"]
        extra = settings["HELM_VALUES"]
        self.values_file = settings.path("HELM_VALUES") if extra else None
        if self.values_file is not None and not self.values_file.is_file():
            raise UserError(f"HELM_VALUES={extra} is not a file; point it at a values file or leave it empty.")

    # --- helm and kubectl ------------------------------------------------------------------------

    def _run(self, tool: str, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [_tool(tool), *args, "--namespace", self.namespace]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
            raise UserError(f"`{tool} {args[0]}` failed: {detail[-1] if detail else 'no output'}. "
                            "See `python -m scripts.stack status --mode kubernetes` and its `logs`.")
        return result

    def helm(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        return self._run("helm", *args, check=check, timeout=timeout)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self._run("kubectl", *args, check=check, timeout=timeout)

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release}"

    # --- commands --------------------------------------------------------------------------------

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def install(self) -> None:
        placed = self.settings.placed_models()
        if placed:  # a pod sees only its own GPUs; the chart has no per-model placement inside one
            keys = ", ".join(get(model).gpu_ids_key for model in placed)
            raise UserError(f"{keys} place models on GPUs of one host (compose and local stacks); on Kubernetes "
                            "every replica serves every model on its own GPUs: leave them empty and scale with replicas.")
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="doc-triton-values-") as values:
            json.dump(chart_values(self.settings), values)  # JSON is YAML: the .env keys as chart values
            values.flush()
            extra = ["--values", str(self.values_file)] if self.values_file else []
            log(f"helm: installing release {self.release} in namespace {self.namespace}")
            self.helm("upgrade", "--install", self.release, str(CHART), "--create-namespace",
                      "--values", values.name, *extra)

    def triton_paused(self) -> bool:
        return bool(self.get("deployment", f"{self.release}-triton").get("spec", {}).get("paused"))

    def up(self) -> int:
        self.install()
        self.wait_for_builds()
        if self.triton_paused():  # the chart read incomplete builds at install: now they are complete
            log("every build complete; upgrading again to start the Triton replicas (paused while the builds ran)")
            self.install()
            if self.triton_paused():
                raise UserError(f"deployment {self.release}-triton is still paused although every builder Job "
                                "succeeded; check triton.pausedUntilBuilt in HELM_VALUES and run `up` again.")
        log("waiting for the Triton replicas to be ready (every model loaded)")
        timeout = self.settings.int("READY_TIMEOUT_S")
        self.wait_for_rollout("triton", "the Triton replicas were", timeout)
        embeddings = self.embeddings_installed()
        if embeddings:  # ready means its /v1/health/ready: Triton's e5_small_v2_text ready behind it
            log("waiting for the embeddings endpoint (/v1/health/ready through Triton's Service)")
            self.wait_for_rollout("embeddings", "the embeddings endpoint was", timeout)
        log("every replica ready; verifying through the Service" + ("s" if embeddings else ""))
        return self.verify()

    def embeddings_installed(self) -> bool:
        """Whether the release has the embeddings endpoint (the chart decides: e5_small_v2 in
        settings.MODELS and embeddings.enabled, either of which HELM_VALUES may change)."""
        found = self.kubectl("get", "deployment", f"{self.release}-embeddings", "--ignore-not-found", "-o", "name",
                             check=False)
        return bool(found.stdout.strip())

    def wait_for_rollout(self, component: str, what: str, timeout: int) -> None:
        """The `<release>-<component>` Deployment's rollout, polled so that a pod that cannot get its
        image, or stays Pending, is named on the way."""
        deadline, self._stuck_since = self.clock() + timeout, {}
        while not _rolled_out(self.get("deployment", f"{self.release}-{component}")):
            self._check_pods(component)
            if self.clock() >= deadline:
                raise UserError(f"{what} not ready within {timeout} s; "
                                f"`python -m scripts.stack logs {component} --mode kubernetes` shows why.")
            self.sleep(POLL_S)

    def wait_for_builds(self) -> None:
        """Helm's --wait-for-jobs waits out its whole timeout on a failed Job; this names it at once,
        and a builder that cannot start (_check_pods) within a minute."""
        deadline, self._stuck_since = self.clock() + BUILD_WAIT_S, {}
        while self.clock() < deadline:
            jobs = [j for j in self.get("jobs", "-l", self.selector)["items"]
                    if not j["metadata"].get("deletionTimestamp")]
            failed = [j for j in jobs if any(c["type"] == "Failed" and c["status"] == "True"
                                             for c in j["status"].get("conditions", []))]
            if failed:
                name = failed[0]["metadata"]["name"]
                tail = self.kubectl("logs", f"job/{name}", "--tail", "1", check=False).stdout.strip().rstrip(".")
                raise UserError(f"builder Job {name} failed: {tail or 'no log'}. Replicas already serving keep "
                                "serving the previous build; fix it and run `up` again.")
            if jobs and all(j["status"].get("succeeded") for j in jobs):
                return
            self._check_pods("builder", {j["metadata"]["name"] for j in jobs})
            self.sleep(POLL_S)
        raise UserError(f"the builder Jobs did not finish within {BUILD_WAIT_S} s; "
                        "`python -m scripts.stack status --mode kubernetes` lists them.")

    def _check_pods(self, component: str, jobs: set[str] | None = None) -> None:
        """Raise for a pod of `component` (of the current `jobs` only: those of a replaced Job may
        linger a moment) that cannot get its image, at once; for one, or the release's claim, that is
        stuck (below) STUCK_AFTER_S in a row, or CLAIM_AFTER_S where a provisioner may still be at
        work. Either waits for ever, not for the deadline."""
        everything = self.get("pods", "-l", self.selector)["items"]
        pods = [p for p in everything if not p["metadata"].get("deletionTimestamp")
                and p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
                and (jobs is None or p["metadata"]["labels"].get("job-name") in jobs)]
        for pod in pods:
            for status in pod["status"].get("containerStatuses", []) + pod["status"].get("initContainerStatuses", []):
                waiting = status.get("state", {}).get("waiting", {})
                if waiting.get("reason") in IMAGE_ERRORS:
                    raise UserError(f"pod {pod['metadata']['name']} cannot get image {status['image']} "
                                    f"({waiting['reason']}); push it where the cluster pulls from and set "
                                    "images.builder / images.triton / embeddings.image in HELM_VALUES.")
        events: list[dict] = []
        stuck = self._claims_stuck(events)
        # Short of a resource that a pod of ours frees soon, a pod waits its turn: a builder while
        # another builder is scheduled (it ends), any pod while one of ours is leaving.
        frees = any(p["metadata"].get("deletionTimestamp") for p in everything) or (component == "builder" and any(
            _condition(p, "PodScheduled").get("status") == "True" and p["status"].get("phase") in ("Pending", "Running")
            for p in pods))
        for pod in (p for p in pods if p["status"].get("phase") == "Pending"):
            name, scheduled = pod["metadata"]["name"], _condition(pod, "PodScheduled")
            if scheduled.get("reason") == "Unschedulable":
                message = scheduled.get("message", "")
                if ("Insufficient" in message and frees) or ("unbound" in message and stuck):
                    continue  # waiting its turn, or its claim is named
                stuck[f"pod/{name}"] = (f"pod {name} stays Pending: {_sentence(message)}; free what it needs or ask "
                                        "for less in HELM_VALUES (triton.replicas, gpu.perReplica, resources)",
                                        CLAIM_AFTER_S if "unbound" in message else STUCK_AFTER_S)
            elif scheduled.get("status") == "True":
                last = self._last_event(events, "Pod", name)
                if last.get("reason") in MOUNT_ERRORS:
                    hint = ("the claim attaches to one node only: set persistence.accessModes to [ReadWriteMany], "
                            "or keep every pod on one node" if "Multi-Attach" in last.get("message", "")
                            else f"`kubectl describe pod {name}` shows more")
                    stuck[f"mount/{name}"] = (f"pod {name} cannot mount its volumes: {_sentence(last['message'])}; "
                                              f"{hint}", STUCK_AFTER_S)
        now = self.clock()
        self._stuck_since = {key: self._stuck_since.get(key, now) for key in stuck}
        for key, since in self._stuck_since.items():
            if now - since >= stuck[key][1]:
                raise UserError(stuck[key][0] + ".")

    def _claims_stuck(self, events: list[dict]) -> dict[str, tuple[str, float]]:
        """The release's Pending claims, unless waiting for a first consumer (its pod is then named)."""
        stuck = {}
        for claim in self.get("pvc", "-l", self.selector)["items"]:
            if claim["status"].get("phase") != "Pending":
                continue
            name, modes = claim["metadata"]["name"], claim["spec"].get("accessModes", [])
            last = self._last_event(events, "PersistentVolumeClaim", name)
            if last.get("reason") == "WaitForFirstConsumer":
                continue
            failed = last.get("type") == "Warning" or last.get("reason") == "FailedBinding"
            rwo = " (or [ReadWriteOnce] with persistence.singleNode=true where every pod runs on one node)"
            stuck[f"pvc/{name}"] = (f"claim {name} is not bound: {_sentence(last.get('message') or 'no volume')}; "
                                    f"set persistence.storageClass to a class that provides {','.join(modes)}"
                                    + (rwo if "ReadWriteMany" in modes else ""),
                                    STUCK_AFTER_S if failed else CLAIM_AFTER_S)
        return stuck

    def _last_event(self, events: list[dict], kind: str, name: str) -> dict:
        """The latest event about one object; `events` caches the namespace's for one round."""
        if not events:
            events.extend(self.get("events")["items"] or [{}])
        about = [e for e in events if e.get("involvedObject", {}).get("kind") == kind
                 and e["involvedObject"].get("name") == name]
        return max(about, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or
                   e["metadata"].get("creationTimestamp", ""), default={})

    def verify(self) -> int:
        """`helm test`: the chart's verification pod runs scripts.verify against the Triton Service
        and, where installed, the embeddings Service (its row, scripts.embeddings_service.verify); the
        table is printed either way (Helm 4 reads the pod's log before deleting a passed pod)."""
        timeout = self.settings.int("READY_TIMEOUT_S")
        result = self.helm("test", self.release, "--logs", "--timeout", f"{timeout}s", check=False, timeout=timeout + 60)
        table = result.stdout.split("POD LOGS:", 1)[1].split("\n", 1)[-1].strip() if "POD LOGS:" in result.stdout else ""
        if result.returncode != 0:
            table = table or self.kubectl("logs", f"{self.release}-verify", check=False).stdout.strip()
            print(table or result.stderr.strip())
            log("NOT verified: the verification pod's output is above")
            return 1
        print(table)
        log("verified: every model answered its golden inputs through the Service (helm test)"
            + ("; the embeddings endpoint too" if "/v1/embeddings" in table else ""))
        return 0

    def build_fingerprint(self) -> str:
        """sha256 over the current builder Jobs' names: each carries a hash of everything its Job is
        given (image, settings, checkpoint; the chart's doc-triton.builds), so equal names, equal builds."""
        jobs = [j["metadata"]["name"] for j in self.get("jobs", "-l", self.selector)["items"]
                if j["status"].get("succeeded") and not j["metadata"].get("deletionTimestamp")]
        if not jobs:
            raise UserError(f"release {self.release} has no completed build in namespace {self.namespace}; "
                            "run `python -m scripts.stack up --mode kubernetes` first.")
        return hashlib.sha256("\n".join(sorted(jobs)).encode()).hexdigest()

    @contextlib.contextmanager
    def forwarded(self, component: str, port: int, timeout_s: float = 30.0):
        """A local address of the `component` Service's `port` while the block runs (`kubectl
        port-forward`, which picks one ready pod behind the Service)."""
        service = f"service/{self.release}-{component}"
        errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: nobody reads it while the forward runs
        process = subprocess.Popen([_tool("kubectl"), "port-forward", service, f":{port}", "--namespace",
                                    self.namespace], stdout=subprocess.PIPE, stderr=errors, text=True)
        lines: queue.Queue = queue.Queue()

        def read() -> None:
            for output in process.stdout:
                lines.put(output)
            lines.put("")  # kubectl ended

        threading.Thread(target=read, daemon=True).start()
        try:
            try:
                line = lines.get(timeout=timeout_s)  # "Forwarding from 127.0.0.1:40123 -> 8001"
            except queue.Empty:
                line = ""
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            if not found:
                process.kill()
                process.wait(10)
                errors.seek(0)
                detail = (errors.read() or line or "no answer").strip().splitlines()
                raise UserError(f"`kubectl port-forward {service}` failed: {detail[-1] if detail else 'no output'}; "
                                "`python -m scripts.stack status --mode kubernetes` shows the release.")
            yield f"127.0.0.1:{found.group(1)}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
            errors.close()

    def status(self) -> int:
        listing = self.kubectl("get", "jobs,deployments,pods,services,pvc", "-l", self.selector, check=False)
        if listing.returncode != 0:  # the cluster did not answer: not the same as an empty namespace
            detail = (listing.stderr or listing.stdout).strip().splitlines()
            raise UserError(f"kubectl could not read namespace {self.namespace}: {detail[-1] if detail else 'no output'}; "
                            "check KUBECONFIG and that the cluster answers (kubectl get nodes).")
        print(listing.stdout.strip() or f"release {self.release}: nothing in namespace {self.namespace}")
        if self.helm("status", self.release, check=False).returncode != 0:
            log(f"release {self.release} is not installed; run `up`")
            return 1
        return self.verify()

    def logs(self, service: str | None) -> str:
        """`triton` (default), `embeddings`, or a builder by compose service (`build-e5`) or model key
        (`e5_small_v2`)."""
        if service in (None, "triton", "embeddings"):
            return self.kubectl("logs", f"deployment/{self.release}-{service or 'triton'}", "--all-containers").stdout
        model = by_key_or_service(service)
        if model is None:
            raise UserError(f"no service {service}; choose triton, embeddings or one of "
                            f"{', '.join(m.compose_service for m in MODELS)}.")
        return self.kubectl("logs", "-l", f"{self.selector},doc-triton/model={model.key}", "--tail", "-1").stdout

    def down(self) -> None:
        if self.helm("status", self.release, check=False).returncode == 0:
            self.helm("uninstall", self.release, "--wait")
        self.kubectl("delete", "pod", "-l", f"{self.selector},app.kubernetes.io/component=verify",
                     "--ignore-not-found", check=False)
        # The uninstall returns once its objects are deleted; their pods terminate after. Wait for
        # them, so `down` and `clean` leave nothing running when they return.
        self.kubectl("wait", "--for=delete", "pod", "-l", self.selector, "--timeout=100s", check=False)

    def clean(self) -> list[str]:
        self.down()
        claim = f"{self.release}-models"
        deleted = self.kubectl("delete", "pvc", claim, "--ignore-not-found", "--wait").stdout.strip()
        return [f"claim {claim}"] if deleted else []


def run_command(command: str, target: str | None, settings: StackSettings) -> int:
    if command not in COMMANDS:
        raise UserError(f"`{command}` has no Kubernetes mode; choose from {', '.join(COMMANDS)} "
                        "(bench and soak: run them against a port-forward with --mode docker settings).")
    if settings.eclair_on_trtllm:
        raise UserError("ECLAIR_RUNTIME=tensorrt_llm is not in the Helm chart yet; use ECLAIR_RUNTIME=pytorch on "
                        "Kubernetes, or the compose overlay.")
    stack = KubernetesStack(settings)
    if command == "up":
        return stack.up()
    if command == "verify":
        return stack.verify()
    if command == "status":
        return stack.status()
    if command == "logs":
        print(stack.logs(target))
        return 0
    if command == "down":
        stack.down()
        log("uninstalled; the claim with the built models is kept (`clean` deletes it)")
        return 0
    deleted = stack.clean()
    log("deleted " + (", ".join(deleted) if deleted else "nothing (nothing was built)"))
    return 0
