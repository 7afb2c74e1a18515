"""A probe, not served: ECLAIR's cross-attention of a decoding step read from the encoder states
instead of per-layer K/V (measured against the served K/V form by benchmarks/eclair_states_sweep.py;
the result, in docs/benchmarks.md, is why the served decoder keeps K/V).

A layer's cross-attention keys and values are projections of the page's encoder states E [T, C]:
K = E Wk^T + bk and V = E Wv^T + bv, per head h a [T, 64] slice. For one query row q_h:

    scores_h = q_h K_h^T = (q_h Wk_h) E^T + q_h . bk_h      (the last term is the same for every key:
                                                             softmax ignores it)
    out_h    = softmax(scores_h) V_h = (softmax(scores_h) E) Wv_h^T + bv_h   (the weights sum to 1)

So a step could read E once per layer instead of K and V: at d_model 1,024 and 16 heads of 64, E
is half of K and V together, and a page's E serves all ten layers. The projections q_h Wk_h and
ctx_h Wv_h^T are small batched products outside the kernel; the kernel is attention with all heads
sharing one key = value of width C, in the split-K layout of triton_models/eclair/decode_attention.py
(ranges of keys per program, the last range of a page to finish combines them), with tensor-core
products: the heads are the M dimension, padded to 16.

Imports Triton only when called; on a CPU it runs in Triton's interpreter (the tests).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch


@dataclasses.dataclass(frozen=True)
class StatesLaunch:
    """Keys per loop iteration, warps per program, pipeline stages, programs per SM to aim for."""
    block: int = 32
    warps: int = 8
    stages: int = 2
    per_sm: int = 2


STATES_LAUNCH = StatesLaunch()


@functools.lru_cache(maxsize=None)
def _kernel():
    global triton, tl
    import triton
    import triton.language as tl

    @triton.jit
    def attend_states(q_ptr, e_ptr, skip_ptr, m_ptr, l_ptr, acc_ptr, count_ptr, out_ptr,
                      heads, keys, width, scale, chunk, sq_h, sq_b, se_b, se_t, so_h, so_b,
                      HP: tl.constexpr, C: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
                      HAS_SKIP: tl.constexpr):
        b, split = tl.program_id(0), tl.program_id(1)
        h, c = tl.arange(0, HP), tl.arange(0, C)
        rows, cols = h < heads, c < width
        q = tl.load(q_ptr + h[:, None] * sq_h + b * sq_b + c[None, :], mask=rows[:, None] & cols[None, :], other=0.0)
        length = keys
        if HAS_SKIP:  # a finished or free slot: read nothing, output 0
            length = tl.where(tl.load(skip_ptr + b) != 0, 0, keys)
        start = split * chunk
        end = tl.minimum(start + chunk, length)
        m_run = tl.full([HP], float("-inf"), tl.float32)
        l_run = tl.zeros([HP], dtype=tl.float32)
        acc = tl.zeros([HP, C], dtype=tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            valid = n < end
            e = tl.load(e_ptr + b * se_b + n[:, None] * se_t + c[None, :], mask=valid[:, None] & cols[None, :],
                        other=0.0)
            score = tl.dot(q, tl.trans(e), input_precision="ieee") * scale
            score = tl.where(valid[None, :], score, float("-inf"))
            m_new = tl.maximum(m_run, tl.max(score, 1))
            p = tl.exp(score - m_new[:, None])
            alpha = tl.exp(m_run - m_new)
            l_run = l_run * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(e.dtype), e, input_precision="ieee")
            m_run = m_new
        out_at = out_ptr + h[:, None] * so_h + b * so_b + c[None, :]
        inside = rows[:, None] & cols[None, :]
        if SPLITS == 1:
            out = acc / tl.where(l_run > 0, l_run, 1.0)[:, None]
            tl.store(out_at, out.to(out_ptr.dtype.element_ty), mask=inside)
        else:  # publish this range; the page's last range to finish combines them
            at = b * SPLITS + split
            tl.store(m_ptr + at * HP + h, m_run)
            tl.store(l_ptr + at * HP + h, l_run)
            tl.store(acc_ptr + (at * HP + h[:, None]) * C + c[None, :], acc)
            tl.debug_barrier()  # every thread's stores above happen before the release below
            if tl.atomic_add(count_ptr + b, 1) == SPLITS - 1:  # acq_rel: the other ranges' stores are visible
                top = tl.full([HP], float("-inf"), tl.float32)
                for s in range(SPLITS):
                    top = tl.maximum(top, tl.load(m_ptr + (b * SPLITS + s) * HP + h, cache_modifier=".cg"))
                top = tl.where(top > float("-inf"), top, 0.0)  # every range empty (a skipped page): weights 0
                total = tl.zeros([HP], dtype=tl.float32)
                out = tl.zeros([HP, C], dtype=tl.float32)
                for s in range(SPLITS):
                    at = b * SPLITS + s
                    weight = tl.exp(tl.load(m_ptr + at * HP + h, cache_modifier=".cg") - top)
                    total += tl.load(l_ptr + at * HP + h, cache_modifier=".cg") * weight
                    part = tl.load(acc_ptr + (at * HP + h[:, None]) * C + c[None, :], cache_modifier=".cg")
                    out += part * weight[:, None]
                out = out / tl.where(total > 0, total, 1.0)[:, None]
                tl.store(out_at, out.to(out_ptr.dtype.element_ty), mask=inside)
                tl.store(count_ptr + b, 0)  # ready for the next launch (a CUDA graph replays this one)

    return attend_states


def split_count(pages: int, keys: int, block: int, programs: int) -> int:
    """Key ranges per page, a power of two: about `programs` in all, at least two blocks a range."""
    wanted = max(1, min(math.ceil(keys / (2 * block)), math.ceil(programs / max(pages, 1))))
    return 1 << (wanted - 1).bit_length()


def states_attention(q: torch.Tensor, states: torch.Tensor, scale: float, programs: int,
                     counters: torch.Tensor | None = None, skip: torch.Tensor | None = None,
                     launch: StatesLaunch | None = None) -> torch.Tensor:
    """q [H, B, C] (the heads' queries projected into the states' space: q_h Wk_h), states [>=B, T, C]
    (rows 0..B-1 used); page b attends to its T states with every head. Where `skip[b]` (bool [B]) is
    set, page b reads nothing and its output is 0. `counters`: int32 zeros, at least B, left zero
    (None allocates one). Returns softmax(scale q E^T) E as [H, B, C] in q's dtype. Fixed shapes, no
    host sync: capturable in a CUDA graph."""
    launch = launch or STATES_LAUNCH
    heads, pages, width = q.shape
    keys = states.shape[1]
    if states.dim() != 3 or states.shape[0] < pages or states.shape[2] != width:
        raise ValueError(f"states_attention: states must be [>={pages}, T, {width}], got {tuple(states.shape)}")
    if q.stride(-1) != 1 or states.stride(-1) != 1 or q.dtype != states.dtype:
        raise ValueError("states_attention: q and states must share a dtype, their last dimension contiguous")
    if skip is not None and (skip.dtype != torch.bool or skip.shape != (pages,)):
        raise ValueError(f"states_attention: skip must be bool [{pages}], got {skip.dtype} {tuple(skip.shape)}")
    if counters is None:
        counters = torch.zeros(pages, device=q.device, dtype=torch.int32)
    elif counters.numel() < pages or counters.dtype != torch.int32:
        raise ValueError(f"states_attention: counters must be int32 with at least {pages} elements")
    padded_heads, padded_width = max(16, 1 << (heads - 1).bit_length()), max(16, 1 << (width - 1).bit_length())
    splits = split_count(pages, keys, launch.block, programs)
    chunk = launch.block * math.ceil(keys / splits / launch.block)
    m = torch.empty(pages * splits * padded_heads, device=q.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(m.numel(), padded_width, device=q.device, dtype=torch.float32)
    out = torch.empty(heads, pages, width, device=q.device, dtype=q.dtype)
    _kernel()[(pages, splits)](
        q, states, skip.view(torch.uint8) if skip is not None else q, m, l_sum, acc, counters, out,
        heads, keys, width, scale, chunk, q.stride(0), q.stride(1), states.stride(0), states.stride(1),
        out.stride(0), out.stride(1),
        HP=padded_heads, C=padded_width, BLOCK_N=launch.block, SPLITS=splits, HAS_SKIP=skip is not None,
        num_warps=launch.warps, num_stages=launch.stages)
    return out


def reference(q: torch.Tensor, states: torch.Tensor, scale: float) -> torch.Tensor:
    """What states_attention computes, in PyTorch (fp32): [H, B, C]."""
    scores = torch.einsum("hbc,btc->hbt", q.float(), states[:q.shape[1]].float()) * scale
    return torch.einsum("hbt,btc->hbc", scores.softmax(-1), states[:q.shape[1]].float())
