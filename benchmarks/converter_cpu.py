"""The seed README's DeBERTa command at real deberta-large size (random weights) on CPU.

Prints the export+check time of the conversion tool and ONNX Runtime vs PyTorch latency at
batch 8 x 128, as a ratio. `python -m benchmarks.converter_cpu [--repeats N]`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import SEED_IO_CONFIG  # noqa: E402
from triton_models.caption_classification.model_script import DebertaLargeModel  # noqa: E402


def median_latency(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        model = DebertaLargeModel().eval()
        params = sum(p.numel() for p in model.parameters())
        torch.save(model.state_dict(), work / "model_0.pt")
        command = [sys.executable, str(ROOT / "converters/trt_converters.py"),
                   "--ckpt-path", str(work / "model_0.pt"), "--dynamic-batching", "--engine-path", str(work / "model.plan"),
                   "--generate-onnx", "--generate-triton-config", "--generate-trt", "--input-size", "8", "128",
                   "--model-class-name", "DebertaLargeModel", "--model-io-config", SEED_IO_CONFIG,
                   "--model-name", "deberta_large", "--model-script-path",
                   str(ROOT / "triton_models/caption_classification/model_script.py"),
                   "--onnx-path", str(work / "model.onnx"), "--overwrite", "--triton-inputs", "input_ids,input_mask",
                   "--triton-repo", str(work / "repo"), "--use-fp16"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        convert_seconds = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(result.stderr)
        check_lines = [l for l in result.stderr.splitlines() if "max abs error" in l]

        import onnxruntime as ort

        rng = np.random.default_rng(0)
        ids = rng.integers(1000, 50000, size=(8, 128)).astype(np.int64)
        mask = np.ones((8, 128), np.float32)
        session = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
        ort_s = median_latency(lambda: session.run(None, {"input_ids": ids, "input_mask": mask}), args.repeats)
        with torch.inference_mode():
            t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
            torch_s = median_latency(lambda: model(t_ids, t_mask), args.repeats)
    print(f"deberta-large ({params / 1e6:.0f}M params), CPU with {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"seed command (load, export, onnx.checker, ORT vs PyTorch check, publish): {convert_seconds:.1f} s")
    for line in check_lines:
        print(f"  check: {line.strip()}")
    print(f"batch 8 x 128 median latency: PyTorch {torch_s * 1000:.0f} ms, ONNX Runtime {ort_s * 1000:.0f} ms "
          f"(ONNX Runtime / PyTorch speed-up {torch_s / ort_s:.2f}x)")


if __name__ == "__main__":
    main()
