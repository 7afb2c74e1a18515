"""Step 2: check the ONNX graph and compare ONNX Runtime with PyTorch on the same sample."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.errors import UserError


@dataclass(frozen=True)
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    ok: bool


@dataclass(frozen=True)
class CheckResult:
    errors: tuple[OutputError, ...]
    tolerance: tuple[float, float]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.errors)

    def report(self) -> str:
        atol, rtol = self.tolerance
        lines = [f"  {e.name}: max abs error {e.max_abs:.3g}, max rel error {e.max_rel:.3g} "
                 f"({'ok' if e.ok else 'OVER'} tolerance atol={atol:g} rtol={rtol:g})" for e in self.errors]
        return "\n".join(lines)


def check_graph(onnx_path: Path) -> None:
    import onnx  # lazily: `scripts/verify.py` compares answers without it
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"{onnx_path} fails onnx.checker: {str(exc).splitlines()[0][:300]}") from None


def ort_session(onnx_path: Path, device: str = "cpu"):
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=providers)


def run_onnx(onnx_path: Path, feeds: dict[str, np.ndarray], device: str = "cpu") -> dict[str, np.ndarray]:
    session = ort_session(onnx_path, device)
    wanted = {i.name for i in session.get_inputs()}
    outputs = session.run(None, {k: v for k, v in feeds.items() if k in wanted})
    return {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outputs)}


def allowed_error(expected: np.ndarray, tolerance: tuple[float, float]) -> np.ndarray:
    """Per element: atol x its column's range (the largest magnitude along the last axis' column, at
    least 1) + rtol x |expected|. The range scaling gives a column in pixels (YOLOX's decoded boxes,
    up to 1024) the slack a logit gets: in fp16 a box centre near 0 moved by 1.4 px, which a fixed
    atol of 0.02 refused; its score columns (0..1) keep the plain atol."""
    atol, rtol = tolerance
    return atol * column_range(expected) + rtol * np.abs(expected)


def column_range(expected: np.ndarray) -> np.ndarray | float:
    """max(1, the largest |value| of each last-axis column), broadcastable against `expected`."""
    if expected.size == 0 or expected.ndim == 0:
        return 1.0
    return np.maximum(1.0, np.abs(expected).reshape(-1, expected.shape[-1]).max(axis=0))


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
            tolerance: tuple[float, float]) -> CheckResult:
    """Per output: max absolute and relative error; ok where |a-b| is within `allowed_error` everywhere."""
    errors = []
    for name, expected in reference.items():
        if name not in candidate:
            raise UserError(f"output tensor '{name}' of --model-io-config is missing from the converted model.")
        actual = np.asarray(candidate[name], dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        if actual.shape != expected.shape:
            raise UserError(f"output tensor '{name}' has shape {actual.shape} after conversion, {expected.shape} in PyTorch.")
        diff = np.abs(actual - expected)
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = float((diff / np.maximum(np.abs(expected), 1e-6)).max()) if diff.size else 0.0
        ok = bool(np.all(diff <= allowed_error(expected, tolerance))) and bool(np.all(np.isfinite(actual)))
        errors.append(OutputError(name, max_abs, max_rel, ok))
    return CheckResult(tuple(errors), tolerance)
