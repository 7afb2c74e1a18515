"""INT8 calibration batches are cut at the profile's opt batch (where TensorRT calibrates)."""
from pathlib import Path

import numpy as np
import pytest

from converters.calibration import calibration_batches
from converters.errors import UserError

SOURCE = Path("calib.npz")
OPT = {"input_ids": (4, 16), "input_mask": (4, 16)}


def _data(rows: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.arange(rows * 16, dtype=np.int64).reshape(rows, 16),
            "input_mask": np.ones((rows, 16), np.float32)}


def test_batches_have_the_opt_batch_size_and_the_remainder_is_reported():
    result = calibration_batches(_data(10), OPT, SOURCE)
    assert result.batch_size == 4 and len(result.batches) == 2 and result.dropped_rows == 2
    assert all(b["input_ids"].shape == (4, 16) and b["input_mask"].shape == (4, 16) for b in result.batches)
    np.testing.assert_array_equal(result.batches[1]["input_ids"], _data(10)["input_ids"][4:8])
    assert "2 calibration batch(es) of 4 rows" in result.summary() and "last 2 row(s)" in result.summary()


def test_exact_multiple_drops_nothing():
    result = calibration_batches(_data(8), OPT, SOURCE)
    assert len(result.batches) == 2 and result.dropped_rows == 0 and "not used" not in result.summary()


def test_fewer_rows_than_one_batch_is_refused_clearly():
    with pytest.raises(UserError, match=r"calib.npz holds 3 row\(s\).*opt batch of 4"):
        calibration_batches(_data(3), OPT, SOURCE)


def test_a_missing_input_array_is_named():
    data = _data(8)
    del data["input_mask"]
    with pytest.raises(UserError, match="input_mask"):
        calibration_batches(data, OPT, SOURCE)


def test_rows_of_the_wrong_shape_are_named():
    data = _data(8)
    data["input_mask"] = np.ones((8, 32), np.float32)
    with pytest.raises(UserError, match=r"'input_mask' has rows of shape \(32,\).*needs \(16,\)"):
        calibration_batches(data, OPT, SOURCE)


def test_arrays_with_different_row_counts_are_refused():
    data = _data(8)
    data["input_mask"] = np.ones((9, 16), np.float32)
    with pytest.raises(UserError, match="different numbers of rows"):
        calibration_batches(data, OPT, SOURCE)
