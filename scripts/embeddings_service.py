"""The OpenAI-compatible embeddings endpoint (embeddings_api) as the stacks run and check it: a
detached process in the local stack, and, in every stack, health and verification through the
endpoint itself (its answers against `e5_small_v2_text`'s golden embeddings)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from converters.errors import UserError
from scripts.report import ModelRow

ROW_NAME = "/v1/embeddings"  # the status table's row for the endpoint
TEXT_MODEL = "e5_small_v2_text"
MODEL_ID = "e5-small-v2"  # embeddings_api's default `model`


def post_json(url: str, body: dict, timeout_s: float = 60.0) -> tuple[int, dict]:
    """POST `body` as JSON; (status, parsed answer), for error statuses too."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def is_ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v1/health/ready", timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(http_url: str, timeout_s: float, alive=lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive()
        if is_ready(http_url):
            return
        time.sleep(0.5)
    raise UserError(f"the embeddings endpoint at http://{http_url} was not ready within {timeout_s:.0f} s; run "
                    "`python -m scripts.stack logs embeddings` to see why.")


def verify(http_url: str, text_model_folder: Path) -> ModelRow:
    """The endpoint's row: each golden text of `e5_small_v2_text`, sent with its input type, must come
    back as the golden embedding within the served precision's tolerance."""
    from converters.model_folder import Golden

    row = ModelRow(ROW_NAME, backend="openai http", batch="-")
    if not is_ready(http_url):
        row.verified = f"NO: not ready at http://{http_url}/v1/health/ready"
        return row
    row.ready = "yes"
    golden = Golden.read(text_model_folder)
    atol, rtol = golden.tolerance
    texts = golden.inputs["text"].reshape(-1)
    kinds = golden.inputs["input_type"].reshape(-1)
    expected = golden.outputs["embedding"]
    worst = 0.0
    for text, kind, want in zip(texts, kinds, expected):
        text = text.decode() if isinstance(text, bytes) else str(text)
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        status, answer = post_json(f"http://{http_url}/v1/embeddings", {"model": MODEL_ID, "input": [text], "input_type": kind})
        if status != 200:
            row.verified = f"NO: HTTP {status}: {answer.get('error', {}).get('message', answer)}"
            return row
        got = np.asarray(answer["data"][0]["embedding"], dtype=np.float64)
        diff = np.abs(got - want)
        worst = max(worst, float(diff.max()))
        if got.shape != want.shape or not np.all(diff <= atol + rtol * np.abs(want)):
            row.verified = f"NO: embedding of '{text}' differs from {TEXT_MODEL}'s golden answer (max abs {worst:.3g})"
            return row
    row.verified = "yes"
    return row


class LocalEmbeddingsService:
    """`python -m embeddings_api` detached beside the local Triton; its pid and log in `state`."""

    def __init__(self, state: Path, triton_grpc_url: str, port: int) -> None:
        self.pid_file, self.log_file = state / "embeddings.pid", state / "embeddings.log"
        self.triton_grpc_url, self.port = triton_grpc_url, port

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def running_pid(self) -> int | None:
        from scripts.local_triton import recorded_pid

        return recorded_pid(self.pid_file)

    def start(self) -> int:
        self.stop()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parent.parent
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "embeddings_api", "--triton-url", self.triton_grpc_url,
                                        "--port", str(self.port)], cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.pid_file.write_text(str(process.pid))
        self._process = process
        return process.pid

    def check_alive(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is not None:
            from scripts.console import tail

            raise UserError(f"the embeddings endpoint exited with code {process.returncode}; see {self.log_file}:\n"
                            f"{tail(self.log_file.read_text(errors='replace'))}")

    def stop(self) -> int | None:
        """Stop it if it runs; returns the pid it had."""
        from scripts.local_triton import stop_process

        pid = self.running_pid()
        if pid:
            stop_process(pid, timeout=10)
        self.pid_file.unlink(missing_ok=True)
        return pid
