import pytest

from converters.errors import UserError
from converters.conversion_settings import parse_int_list, parse_size


@pytest.mark.parametrize("text, expected", [
    ("1073741824", 1 << 30), ("1 << 30", 1 << 30), ("1<<32", 1 << 32), ("4GiB", 4 << 30), ("512MiB", 512 << 20),
    ("2G", 2 << 30), ("1.5GiB", 3 << 29),
])
def test_memory_pool_limit_forms(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "0", "4 parsecs", "-1"])
def test_bad_memory_pool_limit_names_the_flag(text):
    with pytest.raises(UserError, match="--memory-pool-limit"):
        parse_size(text)


def test_int_list():
    assert parse_int_list("1, 8,16", "--x") == (1, 8, 16)
    with pytest.raises(UserError, match="--preferred-batch-sizes"):
        parse_int_list("1,two", "--preferred-batch-sizes")
