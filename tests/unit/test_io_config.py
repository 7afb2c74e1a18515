import json

import numpy as np
import pytest

from converters.errors import UserError
from converters.io_config import parse_io_config
from tests.helpers import SEED_IO_CONFIG


def test_seed_io_config_parses():
    io = parse_io_config(SEED_IO_CONFIG)
    assert io.input_names == ["input_ids", "input_mask", "input_token_type_ids"]
    assert io.output_names == ["output"]
    assert io.input("input_ids").numpy_dtype == np.int64
    assert io.input("input_mask").triton_dtype == "TYPE_FP32"
    assert not io.input("input_ids").is_dynamic


def test_dynamic_dims_and_options():
    io = parse_io_config(json.dumps({
        "inputs": [{"name": "ids", "dtype": "int64", "shape": [-1], "max_shape": [512], "range": [0, 30], "optional": True}],
        "outputs": [{"name": "emb", "dtype": "fp32", "shape": [384]}]}))
    spec = io.input("ids")
    assert spec.is_dynamic and spec.max_shape == (512,) and spec.value_range == (0, 30) and spec.optional
    assert io.outputs[0].dtype == "float32"


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON"),
    ('{"inputs": []}', '{"inputs": [...], "outputs": [...]}'),
    ('{"inputs": [], "outputs": []}', "at least one input"),
    ('{"inputs": [{"name": "a", "dtype": "float32"}], "outputs": [{"name": "b", "dtype": "float32", "shape": [1]}]}', "lacks shape"),
    ('{"inputs": [{"name": "a", "dtype": "complex", "shape": [1]}], "outputs": [{"name": "b", "dtype": "float32", "shape": [1]}]}', "dtype 'complex'"),
    ('{"inputs": [{"name": "a", "dtype": "float32", "shape": [0]}], "outputs": [{"name": "b", "dtype": "float32", "shape": [1]}]}', "shape must be"),
    ('{"inputs": [{"name": "a", "dtype": "float32", "shape": [1]}], "outputs": [{"name": "a", "dtype": "float32", "shape": [1]}]}', "more than once"),
    ('{"inputs": [{"name": "a", "dtype": "float32", "shape": [1], "colour": 1}], "outputs": [{"name": "b", "dtype": "float32", "shape": [1]}]}', "unknown keys"),
    ('{"inputs": [{"name": "a", "dtype": "float32", "shape": [-1], "max_shape": [4, 4]}], "outputs": [{"name": "b", "dtype": "float32", "shape": [1]}]}', "max_shape"),
])
def test_malformed_io_config_names_the_flag(text, fragment):
    with pytest.raises(UserError) as info:
        parse_io_config(text)
    assert "--model-io-config" in str(info.value)
    assert fragment in str(info.value)
