"""Shared test helpers: small real checkpoints and the seed README's command."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
# Triton opens its endpoints only once every model has loaded (model control mode none); a compiled
# model's load took over 60 s on a busy 2-core machine. A server that dies is reported at once.
SERVER_LIVE_TIMEOUT_S = 300.0

SEED_IO_CONFIG = json.dumps({
    "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [128]},
               {"name": "input_mask", "dtype": "float32", "shape": [128]},
               {"name": "input_token_type_ids", "dtype": "float32", "shape": [128]}],
    "outputs": [{"name": "output", "dtype": "float32", "shape": [1]}],
})

# A DeBERTa of the real architecture, small enough to export in seconds. Built with no arguments.
SMALL_DEBERTA_SCRIPT = f'''
import importlib.util
from transformers import DebertaConfig

_spec = importlib.util.spec_from_file_location(
    "caption_model_script_for_tests", {str(REPO_ROOT / "triton_models/caption_classification/model_script.py")!r})
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)


class SmallDeberta(_module.DebertaLargeModel):
    def __init__(self):
        super().__init__(DebertaConfig(
            vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=512, type_vocab_size=0, relative_attention=True, max_relative_positions=-1,
            pos_att_type=["c2p", "p2c"], position_biased_input=False))
'''


def seed_command(ckpt: Path, script: Path, work: Path, repo: Path, class_name: str = "SmallDeberta") -> list[str]:
    """The seed README's DeBERTa command, as written, with this repository's script path."""
    return [
        "--ckpt-path", str(ckpt), "--dynamic-batching", "--engine-path", str(work / "model.plan"),
        "--generate-onnx", "--generate-triton-config", "--generate-trt", "--input-size", "8", "128",
        "--model-class-name", class_name, "--model-io-config", SEED_IO_CONFIG, "--model-name", "deberta_large",
        "--model-script-path", str(script), "--onnx-path", str(work / "model.onnx"), "--overwrite",
        "--triton-inputs", "input_ids,input_mask", "--triton-repo", str(repo), "--use-fp16",
    ]


def run_converter(args: list[str], script_form: bool = False) -> subprocess.CompletedProcess:
    entry = [sys.executable, str(REPO_ROOT / "converters/trt_converters.py")] if script_form else [sys.executable, "-m", "converters"]
    return subprocess.run(entry + args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def wait_models_ready(client, names: list[str], timeout: float = 60.0) -> None:
    deadline, last = time.monotonic() + timeout, "no answer yet"
    while time.monotonic() < deadline:
        try:
            waiting = [n for n in names if not client.is_model_ready(n)]
            if not waiting:
                return
            last = f"not ready: {', '.join(waiting)}"
        except Exception as error:  # the server is still starting: asked again, and said if it never answers
            last = f"{type(error).__name__}: {error}"
        time.sleep(0.2)
    raise AssertionError(f"models {names} not ready within {timeout} s ({last})")


def infer(client, model: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.http as http

    wire = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8",
            np.dtype(np.int32): "INT32", np.dtype(object): "BYTES", np.dtype(np.float16): "FP16"}
    tensors = []
    for name, value in feeds.items():
        tensor = http.InferInput(name, list(value.shape), wire[value.dtype])
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    response = client.infer(model, tensors, outputs=[http.InferRequestedOutput(o) for o in outputs])
    return {o: response.as_numpy(o) for o in outputs}


def batch_and_rows(client, model: str, feeds: dict[str, np.ndarray], output: str) -> tuple[np.ndarray, np.ndarray]:
    """`output` for the feeds sent as one batch, and for each row sent alone (stacked)."""
    batch = infer(client, model, feeds, [output])[output]
    rows = [infer(client, model, {k: v[i:i + 1] for k, v in feeds.items()}, [output])[output][0]
            for i in range(len(batch))]
    return batch, np.stack(rows)
