"""`eclair` on TensorRT-LLM (`ECLAIR_RUNTIME=tensorrt_llm`): the overlay in third_party/eclair_triton
driven by `stack up`, `status` and `verify` in docker mode, with the original README's three commands:

    docker compose -f third_party/eclair_triton/docker-compose.yaml build triton-trt-llm
    docker compose -f third_party/eclair_triton/docker-compose.yaml up build-eclair
    docker compose -f docker-compose.yaml -f third_party/eclair_triton/docker-compose.yaml up triton-eclair

`build-eclair` publishes `$ECLAIR_MODEL_DIR/repository/eclair` (triton_models/eclair/trtllm.py), a
host folder, so verification reads its golden answers from there and sends them to triton-eclair's
HTTP port, as for every other model. The services share the compose project, so `down` removes
triton-eclair with the rest.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from converters.errors import UserError
from scripts.console import log
from scripts.report import ModelRow
from scripts.stack_settings import StackSettings

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = "third_party/eclair_triton/docker-compose.yaml"
MODEL = "eclair"


class EclairOverlay:
    def __init__(self, settings: StackSettings) -> None:
        from triton_models.eclair.trtllm import REPOSITORY

        self.settings = settings
        self.folder = settings.path("ECLAIR_MODEL_DIR") / REPOSITORY / MODEL

    @property
    def http_url(self) -> str:
        return f"{self.settings['TRITON_BIND_ADDRESS']}:{self.settings['ECLAIR_HTTP_PORT']}"

    def compose(self, files: list[str], *args: str) -> None:
        env = {**os.environ, **self.settings.compose_environment()}
        env.pop("COMPOSE_FILE")  # the files are named, as in the original commands
        command = ["docker", "compose", *[a for f in files for a in ("-f", f)], *args]
        result = subprocess.run(command, cwd=ROOT, env=env, text=True, stdout=sys.stderr)
        if result.returncode != 0:
            raise UserError(f"`{' '.join(command)}` failed with exit code {result.returncode} (output above); the main "
                            "stack keeps serving its models.")

    def up(self) -> None:
        """Build the TensorRT-LLM image and the engines (build-eclair skips nothing: TensorRT-LLM's
        build is its own), then start triton-eclair on the repository it wrote."""
        log("eclair on TensorRT-LLM: building the overlay's image, then the engines (build-eclair)")
        self.compose([OVERLAY], "--profile", "image", "build", "triton-trt-llm")
        self.compose([OVERLAY], "up", "--exit-code-from", "build-eclair", "build-eclair")
        log("eclair on TensorRT-LLM: starting triton-eclair")
        self.compose(["docker-compose.yaml", OVERLAY], "up", "--detach", "--no-deps", "--force-recreate", "triton-eclair")

    def verify(self, timeout_s: float | None = None) -> tuple[ModelRow, bool]:
        """triton-eclair's `eclair` against the golden answers build-eclair published."""
        import tritonclient.http as http

        from scripts.verify import verify_model

        row = ModelRow.from_folder(self.folder)
        if not self.folder.is_dir():
            row.verified = f"NO: {self.folder} does not exist; run the overlay's build-eclair (`stack up`)"
            return row, False
        client = http.InferenceServerClient(self.http_url, network_timeout=120)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.settings.int("READY_TIMEOUT_S"))
        while True:
            try:
                if client.is_model_ready(MODEL):
                    break
            except Exception:  # not accepting connections yet
                pass
            if time.monotonic() >= deadline:
                row.verified = f"NO: triton-eclair at {self.http_url} has no ready {MODEL}"
                return row, False
            time.sleep(0.5)
        row.ready = "yes"
        result = verify_model(client, self.folder)
        client.close()
        row.verified = "yes" if result.ok else f"NO: {result.detail}"
        return row, result.ok
