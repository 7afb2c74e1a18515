import pytest

from converters.errors import UserError
from scripts.gpus import Gpu, builder_gpu_ids, parse_gpus

SMI = "0, NVIDIA H100 80GB HBM3, 9.0\n1, NVIDIA H100 80GB HBM3, 9.0\n2, NVIDIA A100-SXM4-80GB, 8.0\n"


def test_nvidia_smi_rows_are_read():
    assert parse_gpus(SMI)[2] == Gpu(2, "NVIDIA A100-SXM4-80GB", "8.0")


def test_serving_gpus_of_the_builders_type_add_no_builder_gpu():
    assert builder_gpu_ids(parse_gpus(SMI), "0", "0,1") == "0"
    assert builder_gpu_ids(parse_gpus(SMI), "1", "0") == "1"


def test_a_serving_gpu_of_another_type_is_given_to_the_builders():
    """One engine per type: the builders see the A100 too, and only one GPU of each type."""
    assert builder_gpu_ids(parse_gpus(SMI), "0", "0,1,2") == "0,2"
    assert builder_gpu_ids(parse_gpus(SMI), "2", "0,1") == "2,0"


def test_a_gpu_the_host_lacks_is_named():
    with pytest.raises(UserError, match="TRITON_GPU_IDS=0,5 names GPU 5, but this host has GPUs 0, 1, 2"):
        builder_gpu_ids(parse_gpus(SMI), "0", "0,5")
    with pytest.raises(UserError, match="BUILDER_GPU_ID=3 names GPU 3"):
        builder_gpu_ids(parse_gpus(SMI), "3", "0")
