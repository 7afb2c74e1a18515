"""The `--model-io-config` JSON: tensor names, dtypes and per-sample shapes (batch excluded).

`-1` marks a dynamic dimension. Optional per-input keys:
- `"max_shape"`: upper bounds for the dynamic dimensions (default: the sequence length of
  `--input-size`), used for the TensorRT optimization profile;
- `"range"`: `[low, high)` of the random values of the export/check sample (default `[0, 100)`
  for integers, `[0, 1)` for floats);
- `"optional": true`: the tensor may be left out of the Triton config (`--triton-inputs`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from converters.errors import UserError

# name in the JSON -> (numpy dtype, Triton data type, ONNX TensorProto enum name)
DTYPES: dict[str, tuple[type, str, str]] = {
    "float32": (np.float32, "TYPE_FP32", "FLOAT"),
    "float16": (np.float16, "TYPE_FP16", "FLOAT16"),
    "int64": (np.int64, "TYPE_INT64", "INT64"),
    "int32": (np.int32, "TYPE_INT32", "INT32"),
    "int8": (np.int8, "TYPE_INT8", "INT8"),
    "uint8": (np.uint8, "TYPE_UINT8", "UINT8"),
    "bool": (np.bool_, "TYPE_BOOL", "BOOL"),
}
_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
            "long": "int64", "int": "int32"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int, ...]  # per sample, batch excluded; -1 = dynamic
    max_shape: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = None
    optional: bool = False

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.dtype][0])

    @property
    def triton_dtype(self) -> str:
        return DTYPES[self.dtype][1]

    @property
    def is_dynamic(self) -> bool:
        return any(d == -1 for d in self.shape)


@dataclass(frozen=True)
class IOConfig:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source_text: str = field(default="", compare=False)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def _parse_tensor(raw: object, where: str) -> TensorSpec:
    if not isinstance(raw, dict):
        raise UserError(f"--model-io-config: {where} must be an object with name, dtype and shape.")
    missing = [k for k in ("name", "dtype", "shape") if k not in raw]
    if missing:
        raise UserError(f"--model-io-config: {where} lacks {', '.join(missing)}.")
    name = raw["name"]
    if not isinstance(name, str) or not name:
        raise UserError(f"--model-io-config: {where} needs a non-empty string name.")
    dtype = _ALIASES.get(str(raw["dtype"]).lower(), str(raw["dtype"]).lower())
    if dtype not in DTYPES:
        raise UserError(
            f"--model-io-config: tensor '{name}' has dtype '{raw['dtype']}'; use one of {', '.join(DTYPES)}."
        )
    shape = raw["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape):
        raise UserError(
            f"--model-io-config: tensor '{name}' shape must be a list of positive integers or -1 "
            f"(batch excluded), got {shape!r}."
        )
    max_shape = raw.get("max_shape")
    if max_shape is not None:
        if (not isinstance(max_shape, list) or len(max_shape) != len(shape)
                or not all(isinstance(d, int) and d > 0 for d in max_shape)
                or any(s != -1 and s != m for s, m in zip(shape, max_shape))):
            raise UserError(
                f"--model-io-config: tensor '{name}' max_shape {max_shape!r} must match shape {shape!r} "
                "with a positive bound for every -1."
            )
        max_shape = tuple(max_shape)
    value_range = raw.get("range")
    if value_range is not None:
        if (not isinstance(value_range, list) or len(value_range) != 2
                or not all(isinstance(v, (int, float)) for v in value_range) or value_range[0] >= value_range[1]):
            raise UserError(f"--model-io-config: tensor '{name}' range must be [low, high) with low < high.")
        value_range = (value_range[0], value_range[1])
    unknown = set(raw) - {"name", "dtype", "shape", "max_shape", "range", "optional"}
    if unknown:
        raise UserError(f"--model-io-config: tensor '{name}' has unknown keys {sorted(unknown)}.")
    return TensorSpec(name, dtype, tuple(shape), max_shape, value_range, bool(raw.get("optional", False)))


def parse_io_config(text: str) -> IOConfig:
    """Parse and validate the JSON text; every problem is a UserError naming the flag."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--model-io-config is not valid JSON ({exc.msg} at column {exc.colno}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) or not isinstance(data.get("outputs"), list):
        raise UserError('--model-io-config must be {"inputs": [...], "outputs": [...]}.')
    if not data["inputs"] or not data["outputs"]:
        raise UserError("--model-io-config needs at least one input and one output.")
    inputs = tuple(_parse_tensor(t, f"inputs[{i}]") for i, t in enumerate(data["inputs"]))
    outputs = tuple(_parse_tensor(t, f"outputs[{i}]") for i, t in enumerate(data["outputs"]))
    names = [t.name for t in inputs + outputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"--model-io-config names {duplicates} more than once.")
    return IOConfig(inputs, outputs, source_text=text)
