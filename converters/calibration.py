"""INT8 calibration batches for TensorRT 10's calibrators.

TensorRT calibrates at the calibration profile's opt shape, so the rows of a `--calibration-data`
.npz are cut into batches of the opt batch size (`--input-size`), not of the max batch size; rows
that do not fill a last batch are dropped (and said so), and too little data is refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters.errors import UserError

Shape = tuple[int, ...]


@dataclass(frozen=True)
class CalibrationBatches:
    batches: tuple[dict[str, np.ndarray], ...]
    batch_size: int
    dropped_rows: int

    def summary(self) -> str:
        text = f"{len(self.batches)} calibration batch(es) of {self.batch_size} rows (the profile's opt batch)"
        if self.dropped_rows:
            text += f"; the last {self.dropped_rows} row(s) do not fill a batch and are not used"
        return text


def calibration_batches(data: dict[str, np.ndarray], opt_shapes: dict[str, Shape], source: Path) -> CalibrationBatches:
    """`data`: one array per network input, rows first. `opt_shapes`: each input's opt shape."""
    missing = [name for name in opt_shapes if name not in data]
    if missing:
        raise UserError(f"--calibration-data {source} lacks arrays for inputs {missing}; add one array per input, "
                        "named after it, rows first.")
    for name, opt in opt_shapes.items():
        if tuple(data[name].shape[1:]) != tuple(opt[1:]):
            raise UserError(f"--calibration-data {source}: array '{name}' has rows of shape {tuple(data[name].shape[1:])}, "
                            f"the profile's opt shape needs {tuple(opt[1:])}.")
    rows = {name: len(data[name]) for name in opt_shapes}
    if len(set(rows.values())) > 1:
        raise UserError(f"--calibration-data {source}: the arrays hold different numbers of rows {rows}; give every "
                        "input the same rows.")
    batch = next(iter(opt_shapes.values()))[0]
    total = next(iter(rows.values()))
    if total < batch:
        raise UserError(f"--calibration-data {source} holds {total} row(s); TensorRT calibrates at the profile's opt "
                        f"batch of {batch} (--input-size), so give at least {batch} rows (a few hundred calibrate well).")
    count = total // batch
    batches = tuple({name: np.ascontiguousarray(data[name][i * batch:(i + 1) * batch]) for name in opt_shapes}
                    for i in range(count))
    return CalibrationBatches(batches, batch, total - count * batch)


def entropy_calibrator(trt, batches: tuple[dict[str, np.ndarray], ...], cache_path: Path | None):
    """TensorRT's int8 entropy calibrator over these batches (`trt` is the imported TensorRT module)."""
    import torch  # device buffers for the calibrator

    from converters.publish import atomic_output

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = iter(batches)
            self._keep: list = []

        def get_batch_size(self) -> int:
            return next(iter(batches[0].values())).shape[0] if batches else 1

        def get_batch(self, names):
            feed = next(self._batches, None)
            if feed is None:
                return None
            self._keep = [torch.from_numpy(feed[name]).cuda() for name in names]
            return [t.data_ptr() for t in self._keep]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path and cache_path.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            if cache_path:
                with atomic_output(cache_path) as tmp:
                    tmp.write_bytes(bytes(cache))

    return Calibrator()
