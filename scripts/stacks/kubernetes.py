"""`--mode kubernetes`: the same stack as compose, installed as the Helm chart in deploy/helm/doc-triton.

A thin layer over `helm` and `kubectl` (both must be on PATH, pointed at the cluster by KUBECONFIG
as usual): `up` installs or upgrades the release with the chart keys of `.env` as values (plus
HELM_VALUES, a values file of your own), waits for the builder Jobs (a failed one is named at
once) and the Triton replicas' rollout, then the embeddings endpoint's (where the chart installs it:
e5_small_v2 served and embeddings.enabled), then runs `helm test`, the project's golden verification
inside the cluster, through the Triton Service and the embeddings Service. `status` lists the
release's objects and verifies; `logs` reads a builder's, Triton's or the embeddings endpoint's logs;
`down` uninstalls (the claim with the built models is kept); `clean` also deletes the claim.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from converters.errors import UserError
from scripts.console import log
from scripts.stack_settings import StackSettings, chart_values
from triton_models.registry import MODELS

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "doc-triton"
COMMANDS = ("up", "status", "verify", "logs", "down", "clean")
BUILD_WAIT_S = 3600  # builder Jobs can take long on a GPU (TensorRT engines)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(f"--mode kubernetes needs `{name}` on PATH (and KUBECONFIG pointing at the cluster); "
                        "install it or use --mode docker / --mode local.")
    return path


class KubernetesStack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
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

    def up(self) -> int:
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="doc-triton-values-") as values:
            json.dump(chart_values(self.settings), values)  # JSON is YAML: the .env keys as chart values
            values.flush()
            extra = ["--values", str(self.values_file)] if self.values_file else []
            log(f"helm: installing release {self.release} in namespace {self.namespace}")
            self.helm("upgrade", "--install", self.release, str(CHART), "--values", values.name, *extra)
        self.wait_for_builds()
        log("every build complete; waiting for the Triton replicas to be ready (every model loaded)")
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
        """The `<release>-<component>` Deployment's rollout; a pod that cannot get its image is named."""
        rollout = self.kubectl("rollout", "status", f"deployment/{self.release}-{component}", f"--timeout={timeout}s",
                               check=False, timeout=timeout + 60)
        if rollout.returncode != 0:
            self._check_images(f"app.kubernetes.io/component={component}")
            raise UserError(f"{what} not ready within {timeout} s; "
                            f"`python -m scripts.stack logs {component} --mode kubernetes` shows why.")

    def wait_for_builds(self) -> None:
        """Helm's --wait-for-jobs waits out its whole timeout on a failed Job; this names it at once."""
        deadline = time.monotonic() + BUILD_WAIT_S
        while time.monotonic() < deadline:
            jobs = json.loads(self.kubectl("get", "jobs", "-l", self.selector, "-o", "json").stdout)["items"]
            jobs = [j for j in jobs if not j["metadata"].get("deletionTimestamp")]
            failed = [j for j in jobs if any(c["type"] == "Failed" and c["status"] == "True"
                                             for c in j["status"].get("conditions", []))]
            if failed:
                name = failed[0]["metadata"]["name"]
                tail = self.kubectl("logs", f"job/{name}", "--tail", "1", check=False).stdout.strip().rstrip(".")
                raise UserError(f"builder Job {name} failed: {tail or 'no log'}. Replicas already serving keep "
                                "serving the previous build; fix it and run `up` again.")
            if jobs and all(j["status"].get("succeeded") for j in jobs):
                return
            self._check_images("app.kubernetes.io/component=builder", {j["metadata"]["name"] for j in jobs})
            time.sleep(2)
        raise UserError(f"the builder Jobs did not finish within {BUILD_WAIT_S} s; "
                        "`python -m scripts.stack status --mode kubernetes` lists them.")

    def _check_images(self, component: str, jobs: set[str] | None = None) -> None:
        """A pod whose image cannot be pulled waits forever: name it and the image at once (only
        pods of the current Jobs: those of a replaced Job may linger a moment)."""
        pods = json.loads(self.kubectl("get", "pods", "-l", f"{self.selector},{component}", "-o", "json").stdout)["items"]
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp") or (
                    jobs is not None and pod["metadata"].get("labels", {}).get("job-name") not in jobs):
                continue
            for status in pod["status"].get("containerStatuses", []) + pod["status"].get("initContainerStatuses", []):
                waiting = status.get("state", {}).get("waiting", {})
                if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                    raise UserError(f"pod {pod['metadata']['name']} cannot get image {status['image']} "
                                    f"({waiting['reason']}); push it where the cluster pulls from and set "
                                    "images.builder / images.triton / embeddings.image in HELM_VALUES.")

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

    def status(self) -> int:
        listing = self.kubectl("get", "jobs,deployments,pods,services,pvc", "-l", self.selector, check=False)
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
        model = next((m.key for m in MODELS if service in (m.key, m.compose_service)), None)
        if model is None:
            raise UserError(f"no service {service}; choose triton, embeddings or one of "
                            f"{', '.join(m.compose_service for m in MODELS)}.")
        return self.kubectl("logs", "-l", f"{self.selector},doc-triton/model={model}", "--tail", "-1").stdout

    def down(self) -> None:
        if self.helm("status", self.release, check=False).returncode == 0:
            self.helm("uninstall", self.release, "--wait")
        self.kubectl("delete", "pod", "-l", f"{self.selector},app.kubernetes.io/component=verify",
                     "--ignore-not-found", check=False)

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
