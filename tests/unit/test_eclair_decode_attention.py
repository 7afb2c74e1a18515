"""The split-K decode-attention kernels of ECLAIR's GPU decoder step
(triton_models/eclair/decode_attention.py): their cases (tests/unit/decode_attention_cases.py) run
in Triton's interpreter on the CPU, in a process of their own, since the interpreter is chosen when
Triton is first imported."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from triton_models.eclair import decode_attention as da

CASES = Path(__file__).with_name("decode_attention_cases.py")


def test_kernels_match_pytorch_attention_in_the_interpreter():
    pytest.importorskip("triton", reason="Triton is in the test extra; `make test` installs it")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
                         env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).parents[2])
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed == 16 and "skipped" not in summary, summary


def test_split_count_fills_the_card_with_at_least_one_block_per_range():
    assert da.split_count(rows=16, keys=1280, programs=528) == 20  # one page: ranges of BLOCK keys
    assert da.split_count(rows=1024, keys=1280, programs=528) == 1  # 64 pages x 16 heads fill it already
    assert da.split_count(rows=256, keys=1280, programs=528) == 3


def test_each_form_and_size_gets_its_measured_tiling():
    assert da.launch_for(rows=256, self_attention=True) == da.Launch(64, 4, 2, per_sm=8)  # 16 pages
    assert da.launch_for(rows=512, self_attention=True) == da.Launch(64, 2, 3, per_sm=2)  # 32 pages
    assert da.launch_for(rows=1024, self_attention=True) == da.Launch(32, 2, 3, per_sm=2)  # 64 pages
    assert da.launch_for(rows=256, self_attention=False) == da.Launch(64, 2, 3, per_sm=8)
    assert da.launch_for(rows=1024, self_attention=False) == da.Launch(64, 2, 3, per_sm=4)


def test_the_load_check_covers_every_tiling_launch_for_picks():
    """`problem` checks each tiling once at load: any page count's tiling is among them."""
    checked = da.picked_tilings()
    assert {(da.launch_for(rows, form), form) for rows in range(1, 5000) for form in (False, True)} <= checked
    assert len(checked) == 5  # self: 3 tilings, cross: 2


def test_only_cuda_devices_use_the_kernels():
    import torch

    assert not da.available(torch.device("cpu"))


def test_a_kernel_that_fails_or_disagrees_is_named_for_the_fallback():
    import torch
    import torch.nn.functional as F

    def broken(q, k, v, scale, programs, *self_attention, **launch):
        raise RuntimeError("PTX .version 8.7 does not support .target sm_120")

    def wrong(q, k, v, scale, programs, *self_attention, **launch):
        return torch.zeros_like(q)

    def right(q, k, v, scale, programs, lengths=None, length_add=0, new_k=None, new_v=None, skip=None, **launch):
        mask = None
        if lengths is not None:
            rows = torch.arange(len(q)) if skip is None else torch.nonzero(~skip).flatten()  # a skipped page: no write
            k[rows, :, lengths[rows]], v[rows, :, lengths[rows]] = new_k[rows], new_v[rows]
            mask = (torch.arange(k.shape[2])[None, :] <= lengths[:, None]).view(len(q), 1, 1, -1)
        out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, scale=scale)[:, :, 0]
        return out if skip is None else out.masked_fill(skip[:, None, None], 0.0)

    def no_skip(*args, skip=None, **kwargs):  # a kernel that reads a skipped page anyway
        return right(*args, **kwargs)

    def add_norm(x, y, norm):
        return x + y, norm(x + y)

    def add_no_norm(x, y, norm):
        return x + y, x + y

    cpu = torch.device("cpu")
    assert da.problem(cpu, torch.float32, 4, 16, 4, attend=right, add_norm=add_norm) is None
    assert da.problem(cpu, torch.float32, 4, 16, 4, attend=broken, add_norm=add_norm) == \
        "RuntimeError: PTX .version 8.7 does not support .target sm_120"
    assert da.problem(cpu, torch.float32, 4, 16, 4, attend=wrong, add_norm=add_norm).startswith("max abs error")
    assert da.problem(cpu, torch.float32, 4, 16, 4, attend=right, add_norm=add_no_norm).startswith("max abs error")
    assert da.problem(cpu, torch.float32, 4, 16, 4, attend=no_skip, add_norm=add_norm).startswith("max abs error")
