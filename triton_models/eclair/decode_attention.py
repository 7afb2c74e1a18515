"""Triton kernels for ECLAIR's decoder step on a GPU: attention of one new token per (page, head)
over a cache, and the residual add fused with the layer norm after it.

A decoding step has one query row per page and head. PyTorch's flash kernel pads that row to a
128-row tile and walks the keys in one thread block per (page, head): on an H200 it read the 64 x
1,280 cross-attention keys of a 64-page step at 0.44 of HBM bandwidth, and the memory-efficient
kernel (the self-attention, with its mask) did worse. This is the split-K ("flash-decoding")
layout instead: each (page, head) is cut into `splits` key ranges, one program per range keeps a
running max, sum and weighted sum of V in fp32, and the last range of a (page, head) to finish
combines them (an atomic count per row: one launch, not two). Keys past a
page's length are never read, so the self-attention reads only the positions decoded so far.

For the self-attention, `new_k`/`new_v` (the step's own key and value) are used for the page's last
position and written into the cache by the program whose range holds it: the cache write and the
attention are one launch. `add_layer_norm` makes a step's 30 residual adds and 31 layer norms 31
launches. The module imports Triton only when called, and on a CPU the kernels run in Triton's
interpreter (TRITON_INTERPRET=1), which the tests use.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

BLOCK = 64  # key ranges are whole multiples of this


@dataclasses.dataclass(frozen=True)
class Launch:
    """The attention kernel's tiling: keys per loop iteration, warps per program, software-pipeline
    stages, and programs per SM to aim for (split_count cuts rows into ranges to reach it)."""
    block: int = 64
    warps: int = 4
    stages: int = 3
    per_sm: int = 4


LAUNCH = Launch()


def launch_for(rows: int, self_attention: bool) -> Launch:
    """The tiling measured fastest on an H200 (benchmarks/eclair_attention_sweep.py, 16 heads of 64,
    at 16, 256, 512 and 1,024 rows: 1, 16, 32 and 64 pages; the cut points between those sizes were
    not measured). The cross-attention reads fastest with two warps a program at every size (0.86 of
    HBM bandwidth over 1,280 keys at 64 pages, 0.77 with four); the self-attention from 32 pages on
    (0.62 over a half-full cache at 64 pages, 0.46 with four)."""
    if self_attention:
        if rows <= 256:
            return Launch(block=64, warps=4, stages=2, per_sm=8)
        return Launch(block=64 if rows <= 512 else 32, warps=2, stages=3, per_sm=2)
    return Launch(block=64, warps=2, stages=3, per_sm=8 if rows <= 256 else 4)


def available(device: torch.device) -> bool:
    """Whether these kernels can run on `device` (a CUDA device with Triton installed)."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def split_count(rows: int, keys: int, programs: int) -> int:
    """Key ranges per (page, head): enough programs to fill the card (`programs`, e.g. 4 per SM),
    at least BLOCK keys per range."""
    return max(1, min(math.ceil(keys / BLOCK), math.ceil(programs / max(rows, 1))))


@functools.lru_cache(maxsize=None)
def _kernels():
    global triton, tl
    import triton
    import triton.language as tl

    @triton.jit
    def attend(q_ptr, k_ptr, v_ptr, new_k_ptr, new_v_ptr, len_ptr, skip_ptr, m_ptr, l_ptr, acc_ptr, count_ptr, out_ptr,
               heads, keys, scale, chunk, len_add,
               sq_b, sq_h, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sn_b, sn_h, snv_b, snv_h,
               D: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, HAS_LEN: tl.constexpr,
               HAS_NEW: tl.constexpr, HAS_SKIP: tl.constexpr):
        row, split = tl.program_id(0), tl.program_id(1)
        splits = tl.num_programs(1)
        b, h = row // heads, row % heads
        d = tl.arange(0, D)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + d).to(tl.float32) * scale
        length = keys
        if HAS_LEN:
            length = tl.minimum(tl.load(len_ptr + b).to(tl.int32) + len_add, keys)
        if HAS_SKIP:  # a finished or free slot of the bucket: read nothing, write nothing, output 0
            length = tl.where(tl.load(skip_ptr + b) != 0, 0, length)
        start = split * chunk
        end = tl.minimum(start + chunk, length)
        k_row, v_row = k_ptr + b * sk_b + h * sk_h, v_ptr + b * sv_b + h * sv_h
        last = length - 1
        if HAS_NEW:
            new_k = tl.load(new_k_ptr + b * sn_b + h * sn_h + d)
            new_v = tl.load(new_v_ptr + b * snv_b + h * snv_h + d)
            # this range holds the new position: write it (the mask a block, as Triton 3.9's interpreter wants)
            last_d = tl.zeros([D], dtype=tl.int32) + last
            mine = (last_d >= start) & (last_d < start + chunk)
            tl.store(k_row + last * sk_t + d, new_k, mask=mine)
            tl.store(v_row + last * sv_t + d, new_v, mask=mine)
        m_run, l_run = float("-inf"), 0.0
        acc = tl.zeros([D], dtype=tl.float32)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            valid = n < end
            cached = valid
            if HAS_NEW:
                cached = valid & (n != last)  # the new position comes from new_k/new_v, not the cache
            k = tl.load(k_row + n[:, None] * sk_t + d[None, :], mask=cached[:, None], other=0.0)
            v = tl.load(v_row + n[:, None] * sv_t + d[None, :], mask=cached[:, None], other=0.0)
            if HAS_NEW:
                k = tl.where((n == last)[:, None], new_k[None, :], k)
                v = tl.where((n == last)[:, None], new_v[None, :], v)
            score = tl.where(valid, tl.sum(k.to(tl.float32) * q[None, :], 1), float("-inf"))
            m_new = tl.maximum(m_run, tl.max(score, 0))
            p = tl.exp(score - m_new)
            alpha = tl.exp(m_run - m_new)
            l_run = l_run * alpha + tl.sum(p, 0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
            m_run = m_new
        if SPLITS == 1:
            tl.store(out_ptr + row * D + d, (acc / tl.where(l_run > 0, l_run, 1.0)).to(out_ptr.dtype.element_ty))
        else:  # publish this range; the row's last range to finish combines them (no second launch)
            at = row * SPLITS + split
            tl.store(m_ptr + at, m_run)
            tl.store(l_ptr + at, l_run)
            tl.store(acc_ptr + at * D + d, acc)
            tl.debug_barrier()  # every thread's stores above happen before the release below
            if tl.atomic_add(count_ptr + row, 1) == SPLITS - 1:  # acq_rel: the other ranges' stores are visible
                s = tl.arange(0, SPLITS)
                m = tl.load(m_ptr + row * SPLITS + s, cache_modifier=".cg")
                l_sum = tl.load(l_ptr + row * SPLITS + s, cache_modifier=".cg")
                parts = tl.load(acc_ptr + (row * SPLITS + s)[:, None] * D + d[None, :], cache_modifier=".cg")
                top = tl.max(m, 0)  # -inf only where every range is empty (a skipped row): output 0
                weight = tl.exp(m - tl.where(top > float("-inf"), top, 0.0))  # an empty range: weight 0
                total = tl.sum(l_sum * weight, 0)
                out = tl.sum(parts * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
                tl.store(out_ptr + row * D + d, out.to(out_ptr.dtype.element_ty))
                tl.store(count_ptr + row, 0)  # ready for the next launch (a CUDA graph replays this one)

    @triton.jit
    def add_norm(x_ptr, y_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, width, eps, BLOCK_D: tl.constexpr):
        row = tl.program_id(0)
        d = tl.arange(0, BLOCK_D)
        inside = d < width
        at = row * width + d
        total = tl.load(x_ptr + at, mask=inside, other=0.0) + tl.load(y_ptr + at, mask=inside, other=0.0)
        tl.store(sum_ptr + at, total, mask=inside)  # the residual, rounded to its dtype as PyTorch's add does
        f = total.to(tl.float32)
        centred = tl.where(inside, f - tl.sum(f, 0) / width, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 0) / width + eps)
        w = tl.load(w_ptr + d, mask=inside, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + d, mask=inside, other=0.0).to(tl.float32)
        tl.store(out_ptr + at, (centred * rstd * w + b).to(out_ptr.dtype.element_ty), mask=inside)

    return attend, add_norm


def add_layer_norm(x: torch.Tensor, y: torch.Tensor, norm: torch.nn.LayerNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y, norm(x + y)) in one launch, for a decoder step's residual add and the layer norm after
    it; x and y contiguous, of one shape, the last dimension the norm's."""
    add_norm = _kernels()[1]
    width = x.shape[-1]
    if (x.shape != y.shape or not (x.is_contiguous() and y.is_contiguous()) or norm.normalized_shape != (width,)
            or norm.weight is None or norm.bias is None):
        raise ValueError(f"add_layer_norm: x {tuple(x.shape)} and y {tuple(y.shape)} must be contiguous, of one "
                         f"shape, normalised over {tuple(norm.normalized_shape)} with a weight and a bias")
    total, out = torch.empty_like(x), torch.empty_like(x)
    add_norm[(x.numel() // width,)](x, y, norm.weight, norm.bias, total, out, width, norm.eps,
                                    BLOCK_D=triton.next_power_of_2(width), num_warps=4)
    return total, out


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, programs: int,
                     lengths: torch.Tensor | None = None, length_add: int = 0,
                     new_k: torch.Tensor | None = None, new_v: torch.Tensor | None = None,
                     counters: torch.Tensor | None = None, launch: Launch | None = None,
                     skip: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, H, D]; k, v [B, H, T, D] (last dim contiguous). Page b attends to keys [0, lengths[b] +
    length_add) (all T without `lengths`); where `skip[b]` (bool [B]) is set, page b reads and writes
    nothing and its output is 0 (a decoder's finished and free slots: a bucket's idle rows cost no
    cache bandwidth). With new_k/new_v [B, H, D], the key and value at the
    page's last position are theirs, and they are written there into k and v. `counters`: int32
    zeros, at least B x H, left zero after each call (a decoder keeps one for all its calls; None
    allocates one); `launch` the kernel's tiling (default LAUNCH). Returns [B, H, D] in q's dtype. Fixed shapes, no host sync: capturable in a CUDA
    graph."""
    attend, launch = _kernels()[0], launch or LAUNCH
    pages, heads, dim = q.shape
    keys = k.shape[2]
    if (new_k is None) != (new_v is None) or (new_k is not None and lengths is None):
        raise ValueError("decode_attention: new_k and new_v come together, with lengths")
    if any(t is not None and t.stride(-1) != 1 for t in (q, k, v, new_k, new_v)) or dim & (dim - 1):
        raise ValueError("decode_attention: the head dimension must be contiguous and a power of two")
    if new_k is not None and not (new_k.dtype == new_v.dtype == k.dtype == v.dtype):
        raise ValueError("decode_attention: new_k and new_v must have the cache's dtype")
    rows = pages * heads
    splits = split_count(rows, keys, programs)
    chunk = BLOCK * math.ceil(keys / splits / BLOCK)
    splits = 1 << (math.ceil(keys / chunk) - 1).bit_length()  # a power of two; ranges past the keys are empty
    if counters is None:
        counters = torch.zeros(rows, device=q.device, dtype=torch.int32)
    elif counters.numel() < rows or counters.dtype != torch.int32:
        raise ValueError(f"decode_attention: counters must be int32 with at least {rows} elements")
    m = torch.empty(rows * splits, device=q.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(rows * splits, dim, device=q.device, dtype=torch.float32)
    out = torch.empty(pages, heads, dim, device=q.device, dtype=q.dtype)
    if skip is not None and (skip.dtype != torch.bool or skip.shape != (pages,)):
        raise ValueError(f"decode_attention: skip must be bool [{pages}], got {skip.dtype} {tuple(skip.shape)}")
    has_new = new_k is not None
    nk, nv = (new_k, new_v) if has_new else (q, q)
    attend[(rows, splits)](
        q, k, v, nk, nv, lengths if lengths is not None else q, skip.view(torch.uint8) if skip is not None else q,
        m, l_sum, acc, counters, out,
        heads, keys, scale, chunk, length_add,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        nk.stride(0), nk.stride(1), nv.stride(0), nv.stride(1),
        D=dim, BLOCK_N=launch.block, SPLITS=splits, HAS_LEN=lengths is not None, HAS_NEW=has_new,
        HAS_SKIP=skip is not None,
        num_warps=launch.warps, num_stages=launch.stages)
    return out


def picked_tilings() -> set[tuple[Launch, bool]]:
    """Every (tiling, self-attention) `launch_for` can pick: its cut points are powers of two."""
    return {(launch_for(1 << power, form), form) for power in range(21) for form in (False, True)}


def problem(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int, sms: int,
            attend=None, add_norm=None) -> str | None:
    """Why these kernels cannot serve here (one fails to compile or run, or disagrees with PyTorch
    on a small problem), or None: both attention forms at every tiling `launch_for` picks (a skipped
    page too), and the fused residual + layer norm. Checked once at load, so a GPU or a Triton they do not work on
    falls back to PyTorch's attention instead of failing the model."""
    attend, add_norm = attend or decode_attention, add_norm or add_layer_norm
    tilings = picked_tilings()
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(shape, device=device, generator=gen).to(dtype)
                   for shape in ((2, heads, head_dim), (2, heads, 192, head_dim), (2, heads, 192, head_dim)))
        scale, lengths = head_dim ** -0.5, torch.tensor([63, 150], device=device)
        error = 0.0
        for launch, self_attention in tilings:
            programs = launch.per_sm * sms
            if not self_attention:
                cross = attend(q, k, v, scale, programs, launch=launch)
                want = F.scaled_dot_product_attention(q[:, :, None].float(), k.float(), v.float(), scale=scale)
                skipped = attend(q, k, v, scale, programs, launch=launch, skip=torch.tensor([False, True], device=device))
                error = max(error, (cross.float() - want[:, :, 0]).abs().max().item(),
                            (skipped[0].float() - want[0, :, 0]).abs().max().item(), skipped[1].float().abs().max().item())
                continue
            new_k, new_v, keys, values = k[:, :, 0].clone(), v[:, :, 0].clone(), k.clone(), v.clone()
            skipped_keys = k.clone()  # a skipped page's cache is not written
            skipped = attend(q, skipped_keys, v.clone(), scale, programs, lengths, 1, new_k, new_v, launch=launch,
                             skip=torch.tensor([True, True], device=device))
            error = max(error, skipped.float().abs().max().item(), (skipped_keys.float() - k.float()).abs().max().item())
            own = attend(q, keys, values, scale, programs, lengths, 1, new_k, new_v, launch=launch)
            keys[torch.arange(2), :, lengths], values[torch.arange(2), :, lengths] = new_k, new_v
            mask = (torch.arange(192, device=device)[None, :] <= lengths[:, None]).view(2, 1, 1, -1)
            want = F.scaled_dot_product_attention(q[:, :, None].float(), keys.float(), values.float(), attn_mask=mask,
                                                  scale=scale)
            error = max(error, (own.float() - want[:, :, 0]).abs().max().item())
        norm = torch.nn.LayerNorm(heads * head_dim, device=device, dtype=dtype)
        x, y = q.reshape(2, 1, -1).contiguous(), k[:, :, 0].reshape(2, 1, -1).contiguous()
        total, normed = add_norm(x, y, norm)
        want = F.layer_norm((x + y).float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
        error = max(error, (total.float() - (x + y).float()).abs().max().item(),
                    (normed.float() - want).abs().max().item())
    except Exception as exc:  # noqa: BLE001 - any failure means: use PyTorch's attention
        return f"{type(exc).__name__}: {exc}"
    return None if error <= 1e-2 else f"max abs error {error:.3g} against PyTorch"
