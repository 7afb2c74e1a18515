import pytest

from converters.errors import UserError
from scripts.gpus import Gpu, check_engine_gpus, parse_gpus

SMI = "0, NVIDIA H100 80GB HBM3, 9.0\n1, NVIDIA H100 80GB HBM3, 9.0\n2, NVIDIA A100-SXM4-80GB, 8.0\n"


def test_nvidia_smi_rows_are_read():
    assert parse_gpus(SMI)[2] == Gpu(2, "NVIDIA A100-SXM4-80GB", "8.0")


def test_serving_gpus_of_the_builders_type_pass():
    check_engine_gpus(parse_gpus(SMI), "0", "0,1")


def test_a_serving_gpu_of_another_type_is_refused_in_one_sentence():
    with pytest.raises(UserError, match=r"TRITON_GPU_IDS=0,2 includes GPU 2 \(NVIDIA A100-SXM4-80GB, compute capability 8.0\)"
                                        r".*BUILDER_GPU_ID=0 \(NVIDIA H100 80GB HBM3, 9.0\)"):
        check_engine_gpus(parse_gpus(SMI), "0", "0,2")


def test_a_gpu_the_host_lacks_is_named():
    with pytest.raises(UserError, match="TRITON_GPU_IDS=0,5 names GPU 5, but this host has GPUs 0, 1, 2"):
        check_engine_gpus(parse_gpus(SMI), "0", "0,5")
