"""The compose stack: `docker compose` for the lifecycle (builders -> volume -> Triton), the
docker SDK to follow containers (found by compose's labels)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from converters.errors import UserError
from converters.model_folder import DESCRIPTION_FILES
from scripts.console import log, tail
from scripts.stack_settings import StackSettings
from scripts.stacks.base import Stack
from triton_models.registry import get

ROOT = Path(__file__).resolve().parents[2]


class ComposeStack(Stack):
    """`docker compose` for the lifecycle, the docker SDK to follow containers (by compose labels)."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.project = settings["COMPOSE_PROJECT_NAME"]
        try:
            import docker

            self.docker = docker.from_env()
            self.docker.ping()
        except Exception as exc:
            raise UserError(f"no Docker engine answers ({type(exc).__name__}); start Docker or use --mode local.") from None
        if settings.gpu_mode and not settings["TRITON_BASE_IMAGE"]:
            raise UserError("TRITON_BASE_IMAGE is empty: set it in .env to NVIDIA's tritonserver image (NGC release 25.01-py3).")
        self.builder_gpu_ids = settings["BUILDER_GPU_ID"]
        if settings.gpu_mode:
            from scripts.gpus import builder_gpu_ids, host_gpus

            gpus = host_gpus()
            if gpus:  # one GPU of each type Triton serves from: the builders build an engine per type
                self.builder_gpu_ids = builder_gpu_ids(gpus, settings["BUILDER_GPU_ID"], settings["TRITON_GPU_IDS"])

    @property
    def http_url(self) -> str:
        return f"{self.settings['TRITON_BIND_ADDRESS']}:{self.settings['TRITON_HTTP_PORT']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.settings['TRITON_BIND_ADDRESS']}:{self.settings['TRITON_GRPC_PORT']}"

    @property
    def port_host(self) -> str:
        host = self.settings["TRITON_BIND_ADDRESS"]
        return "127.0.0.1" if host == "0.0.0.0" else host

    def compose(self, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.settings.compose_environment()}
        if self.settings.gpu_mode:  # GPU ids as lists, not one string (see gpu_ids_override)
            override = ROOT / "build" / "compose" / f"{self.project}.gpu-ids.yaml"
            override.parent.mkdir(parents=True, exist_ok=True)
            override.write_text(gpu_ids_override(self.settings, self.builder_gpu_ids))
            env["COMPOSE_FILE"] = f"{env['COMPOSE_FILE']}:{override}"
        result = subprocess.run(["docker", "compose", *args], cwd=ROOT, env=env, text=True,
                                capture_output=capture, stdout=None if capture else sys.stderr)
        if check and result.returncode != 0:
            detail = tail(result.stderr or "") if capture else "see the output above"
            raise UserError(f"`docker compose {' '.join(args)}` failed with exit code {result.returncode}: {detail}")
        return result

    def container(self, service: str):
        found = self.docker.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        return found[0] if found else None

    def build(self, keys: list[str], skip_current: bool = True) -> None:  # each builder container decides
        self.settings.refuse_placement_without_gpus(self.settings.gpu_mode, "add docker-compose.gpu.yaml to COMPOSE_FILE")
        services = [get(k).compose_service for k in keys]
        images = services + ["triton"] + (["embeddings"] if self.settings.serves_embeddings else [])
        log(f"building images for {', '.join(images)}")
        self.compose("build", *images)
        for index, (key, service) in enumerate(zip(keys, services), 1):
            log(f"[{index}/{len(services)}] running {service}")
            started = time.monotonic()
            self.compose("up", "--no-deps", "--detach", "--force-recreate", service)
            container = self.container(service)
            published = False
            for line in container.logs(stream=True, follow=True):
                text = line.decode(errors="replace").rstrip()
                published |= text.startswith("published")
                if text.startswith(("[build", "published", "up to date", "error")):
                    print(f"      {service}: {text}", flush=True)
            code = container.wait()["StatusCode"]
            if code != 0:
                raise UserError(f"builder service {service} failed with exit code {code}; Triton was not started. "
                                f"Last lines of its log:\n{tail(container.logs().decode(errors='replace'))}")
            log(f"      {key}: {'built' if published else 'up to date, skipped'} in {time.monotonic() - started:.1f} s")

    def start_server(self) -> None:
        self.compose("up", "--no-deps", "--detach", "--force-recreate", "triton")

    @property
    def embeddings_url(self) -> str:
        return f"{self.port_host}:{self.settings['EMBEDDINGS_HTTP_PORT']}"

    def embeddings_running(self) -> bool:
        container = self.container("embeddings")
        return container is not None and container.status == "running"

    def start_embeddings(self) -> None:
        self.compose("up", "--no-deps", "--detach", "--force-recreate", "embeddings")

    def check_alive(self) -> None:
        container = self.container("triton")
        if container is None:
            raise UserError("the triton container does not exist; run `python -m scripts.stack up`.")
        container.reload()
        if container.status in ("exited", "dead"):
            raise UserError(f"the triton container {container.status} (exit code {container.attrs['State']['ExitCode']}):\n"
                            f"{tail(container.logs().decode(errors='replace'))}")

    def model_folders(self, names: list[str]) -> dict[str, Path]:
        """Copy each model's config, manifest and golden answers out of the triton container."""
        import io
        import tarfile
        import tempfile

        container = self.container("triton")
        if container is None:
            raise UserError("the triton container does not exist; run `python -m scripts.stack up`.")
        target = Path(tempfile.mkdtemp(prefix="stack-verify-"))
        for name in names:
            (target / name).mkdir()
            for file in DESCRIPTION_FILES:
                try:
                    stream, _ = container.get_archive(f"/models/{name}/{file}")
                except Exception:
                    continue  # missing files show up as not verified
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                    archive.extractall(target / name, filter="data")
            (target / name / "1").mkdir(exist_ok=True)
        return {name: target / name for name in names}

    def logs(self, service: str | None) -> str:
        container = self.container(service or "triton")
        if container is None:
            raise UserError(f"no container for service {service or 'triton'} in project {self.project}.")
        return container.logs().decode(errors="replace")

    def server_running(self) -> bool:
        container = self.container("triton")
        return container is not None and container.status == "running"

    def server_state(self) -> str:
        container = self.container("triton")
        if container is None:
            return "not created"
        container.reload()
        health = container.attrs.get("State", {}).get("Health", {}).get("Status", "no healthcheck")
        return f"{container.status} ({health})"

    def server_pid(self) -> int | None:
        container = self.container("triton")
        if container is None:
            return None
        container.reload()
        return container.attrs.get("State", {}).get("Pid") or None  # the entrypoint execs tritonserver

    def down(self, quiet: bool = False) -> None:
        """`docker compose down`: containers and network go, the volumes (every built model, the
        TensorRT timing cache, the ONNX work files) stay for the next `up`."""
        self.compose("down", "--remove-orphans")

    def clean(self) -> list[str]:
        volumes = [v.name for v in self.docker.volumes.list(filters={"label": f"com.docker.compose.project={self.project}"})]
        self.compose("down", "--volumes", "--remove-orphans")
        return [f"volume {name}" for name in volumes]


def gpu_ids_override(settings: StackSettings, builder_ids: str | None = None) -> str:
    """A compose override giving each GPU service its device ids as a list. docker-compose.gpu.yaml
    interpolates `["${TRITON_GPU_IDS}"]`, so `TRITON_GPU_IDS=0,1` would reach Docker as the single
    id "0,1" (Compose cannot split a variable into a list); `!override` (Compose >= 2.24) replaces
    that list rather than adding a second reservation. The builders get `builder_ids`
    (`scripts.gpus.builder_gpu_ids`: one GPU per type served from), else BUILDER_GPU_ID. The builder
    of a model with GPUs of its own (<PREFIX>_GPU_IDS) also gets GPUS: their CUDA ordinals in the
    Triton container, which sees only the GPUs it reserves and, with CUDA_DEVICE_ORDER=PCI_BUS_ID
    (set here on every GPU service), numbers them 0, 1, ... in nvidia-smi's order, the host ids'."""
    from triton_models.registry import MODELS, get

    def ids(value: str) -> str:
        return json.dumps([part for part in value.split(",") if part])

    builders = builder_ids or settings["BUILDER_GPU_ID"]
    services = [("triton", settings["TRITON_GPU_IDS"])] + [(m.compose_service, builders) for m in MODELS]
    lines = ["# Written by scripts/stacks/compose.py from .env (TRITON_GPU_IDS, BUILDER_GPU_ID); do not edit.", "services:"]
    reserved = sorted(settings["TRITON_GPU_IDS"].split(","), key=int)  # the container's order: the PCI bus
    placed = {get(model).compose_service: ",".join(str(reserved.index(gpu)) for gpu in
                                                   settings.model_gpu_ids(model).split(","))
              for model in settings.placed_models()}
    for service, value in services:
        lines += [f"  {service}:", "    deploy:", "      resources:", "        reservations:",
                  f"          devices: !override [{{driver: nvidia, device_ids: {ids(value)}, capabilities: [gpu]}}]",
                  "    environment:", "      CUDA_DEVICE_ORDER: PCI_BUS_ID"]
        if service in placed:
            lines.append(f"      GPUS: {json.dumps(placed[service])}")
    return "\n".join(lines) + "\n"
