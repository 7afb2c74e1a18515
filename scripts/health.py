"""Readiness: wait until Triton has every model ready, or say why it could not load one. Shared by
every stack; `scripts/verify.py` then sends each model its golden inputs (health means "answers
correctly"). This module imports nothing of verify's: the arrow goes one way."""
from __future__ import annotations

import time
from pathlib import Path

from converters.errors import UserError

CALL_TIMEOUT_S = 10.0  # health and index calls: a server that does not answer in 10 s is not healthy


def failed_models(client, names: list[str]) -> dict[str, str]:
    """Models among `names` whose load failed, with Triton's reason (from the repository index)."""
    index = client.get_model_repository_index(as_json=True, client_timeout=CALL_TIMEOUT_S).get("models", [])
    return {entry["name"]: entry.get("reason") or "load failed"
            for entry in index
            if entry.get("name") in names and entry.get("state") == "UNAVAILABLE" and entry.get("reason")}


def wait_until_ready(grpc_url: str, names: list[str], timeout: float, alive=lambda: None) -> dict[str, float]:
    """Wait for live, then ready, then each model ready; returns seconds until each model was ready."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(grpc_url)
    started, ready_at = time.monotonic(), {}
    deadline = started + timeout
    while time.monotonic() < deadline:
        alive()
        failed = {}
        try:
            if client.is_server_live(client_timeout=CALL_TIMEOUT_S):
                for name in names:
                    if name not in ready_at and client.is_model_ready(name, client_timeout=CALL_TIMEOUT_S):
                        ready_at[name] = time.monotonic() - started
                if len(ready_at) == len(names):
                    return ready_at
                failed = failed_models(client, [n for n in names if n not in ready_at])
        except Exception:  # not accepting connections yet
            pass
        if failed:
            # Triton answers only once its first load pass is over, so UNAVAILABLE here is final.
            raise UserError("Triton could not load " + "; ".join(f"{n}: {why}" for n, why in failed.items())
                            + ". Fix the model (see `python -m scripts.stack logs`) and run `up` again.")
        time.sleep(0.5)
    missing = [n for n in names if n not in ready_at]
    raise UserError(f"Triton did not make {', '.join(missing)} ready within {timeout:.0f} s; run `python -m scripts.stack logs` "
                    "to see why.")
