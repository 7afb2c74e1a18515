import pytest

from converters.batching import BatchPlan, default_preferred_batch_sizes
from converters.errors import UserError
from converters.io_config import parse_io_config
from tests.helpers import SEED_IO_CONFIG


def test_default_preferred_sizes_are_powers_of_two_up_to_max():
    assert default_preferred_batch_sizes(8) == (1, 2, 4, 8)
    assert default_preferred_batch_sizes(12) == (1, 2, 4, 8, 12)
    assert default_preferred_batch_sizes(1) == (1,)


def test_missing_batch_defaults_to_max_batch():
    plan = BatchPlan.create(8, (None, 128), None)
    assert plan.opt_batch_size == 8 and plan.sequence_length == 128


def test_profile_spans_batch_one_to_max_with_opt_from_input_size():
    io = parse_io_config(SEED_IO_CONFIG)
    plan = BatchPlan.create(16, (4, 128), None)
    assert plan.profile(io.input("input_ids")) == ((1, 128), (4, 128), (16, 128))


def test_dynamic_dimension_profile_uses_max_shape():
    io = parse_io_config('{"inputs": [{"name": "ids", "dtype": "int64", "shape": [-1], "max_shape": [512]}],'
                         ' "outputs": [{"name": "o", "dtype": "float32", "shape": [384]}]}')
    plan = BatchPlan.create(32, (8, 128), None)
    assert plan.profile(io.input("ids")) == ((1, 1), (8, 128), (32, 512))
    assert plan.sample_shape(io.input("ids"), batch=2) == (2, 128)


@pytest.mark.parametrize("args, flag", [
    ((8, (None, 128), (1, 16)), "--preferred-batch-sizes"),
    ((8, (9, 128), None), "--input-size"),
    ((0, (None, 128), None), "--max-batch-size"),
    ((8, (1, 0), None), "--input-size"),
])
def test_inconsistent_batch_settings_are_refused(args, flag):
    with pytest.raises(UserError, match=flag):
        BatchPlan.create(*args)
