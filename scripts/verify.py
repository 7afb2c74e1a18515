"""Health means "answers correctly": send each model's golden inputs through Triton and compare."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.model_folder import GOLDEN_FILE, Golden, read_model_config, wire_type


@dataclass(frozen=True)
class Verification:
    model: str
    ok: bool
    detail: str


def verify_model(client, model_dir: Path) -> Verification:
    """`client` is a tritonclient http or grpc InferenceServerClient; `model_dir` the published folder."""
    import importlib

    protocol = importlib.import_module(type(client).__module__.rsplit(".", 1)[0])  # tritonclient.http or .grpc

    model_dir = Path(model_dir)
    name = model_dir.name
    if not (model_dir / GOLDEN_FILE).is_file():
        return Verification(name, False, f"no {GOLDEN_FILE} in {model_dir}; rebuild the model")
    config = read_model_config(model_dir)
    golden = Golden.read(model_dir)
    atol, rtol = golden.tolerance
    inputs = []
    for model_input in config.input:
        if model_input.name not in golden.inputs and model_input.optional:
            continue
        if model_input.name not in golden.inputs:
            return Verification(name, False, f"{GOLDEN_FILE} lacks input '{model_input.name}'")
        value = golden.inputs[model_input.name]
        wire = wire_type(model_input.data_type)
        if wire == "BYTES":
            value = value.astype(object)
        tensor = protocol.InferInput(model_input.name, list(value.shape), wire)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    outputs = list(golden.outputs)
    try:
        response = client.infer(name, inputs, outputs=[protocol.InferRequestedOutput(o) for o in outputs])
    except Exception as exc:  # the server's answer, whatever its type, is the finding
        return Verification(name, False, f"inference failed: {exc}")
    worst = 0.0
    for output in outputs:
        expected = golden.outputs[output]
        try:
            actual = response.as_numpy(output)
        except ValueError as exc:  # a malformed answer is a finding, not a crash
            return Verification(name, False, f"output '{output}' is malformed: {exc}")
        if actual is None or actual.shape != expected.shape:
            return Verification(name, False, f"output '{output}' has shape {None if actual is None else actual.shape}, "
                                              f"expected {expected.shape}")
        if expected.dtype.kind in "SUO":
            if [bytes(x) if not isinstance(x, bytes) else x for x in actual.ravel()] != [
                    x.encode() if isinstance(x, str) else bytes(x) for x in expected.ravel()]:
                return Verification(name, False, f"output '{output}' differs from the golden text")
            continue
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        worst = max(worst, float(diff.max()) if diff.size else 0.0)
        if not np.all(diff <= atol + rtol * np.abs(expected)):
            return Verification(name, False, f"output '{output}' max abs error {float(diff.max()):.3g} over atol={atol:g}")
    return Verification(name, True, f"max abs error {worst:.3g}")
