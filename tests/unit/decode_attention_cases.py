"""Cases for the decode-attention kernels (triton_models/eclair/decode_attention.py) in Triton's
interpreter on the CPU, against PyTorch's attention. Run by tests/unit/test_eclair_decode_attention.py
in a process started with TRITON_INTERPRET=1 (the interpreter is chosen when Triton is first
imported); not collected on its own (no test_ prefix)."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from triton_models.eclair import decode_attention as da

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("run these cases with TRITON_INTERPRET=1, as tests/unit/test_eclair_decode_attention.py does")


@pytest.fixture()
def interpreted():
    return da.decode_attention


def reference(q, k, v, scale, lengths=None):
    mask = None if lengths is None else (torch.arange(k.shape[2])[None, :] < lengths[:, None]).view(len(q), 1, 1, -1)
    return F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, scale=scale)[:, :, 0]


# one range per (page, head); two; BLOCK-sized ranges; three ranges and an empty fourth (a power of two)
@pytest.mark.parametrize("programs, keys", [(1, 200), (7, 200), (64, 200), (18, 300)])
def test_cross_attention_equals_pytorch(interpreted, programs, keys):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 16), torch.randn(3, 2, keys, 16), torch.randn(3, 2, keys, 16)
    counters = torch.zeros(6, dtype=torch.int32)
    out = interpreted(q, k, v, 0.25, programs, counters=counters)
    assert torch.equal(counters, torch.zeros(6, dtype=torch.int32))  # left ready for the next call
    assert torch.equal(interpreted(q, k, v, 0.25, programs, counters=counters), out)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, reference(q, k, v, 0.25), rtol=1e-5, atol=1e-5)


def test_self_attention_reads_only_each_pages_positions_and_writes_the_new_key(interpreted):
    torch.manual_seed(1)
    pages, heads, keys, dim = 4, 2, 150, 16
    k, v = torch.randn(pages, heads, keys, dim), torch.randn(pages, heads, keys, dim)
    pos = torch.tensor([0, 63, 64, 149])  # first position, both sides of a BLOCK edge, the cache's end
    k[torch.arange(pages), :, pos] = float("nan")  # stale at the new position: must not be read
    v[torch.arange(pages), :, pos] = float("nan")
    for page, p in enumerate(pos.tolist()):  # past the page's position: never read
        k[page, :, p + 1:] = float("inf")
        v[page, :, p + 1:] = float("inf")
    q, new_k, new_v = torch.randn(pages, heads, dim), torch.randn(pages, heads, dim), torch.randn(pages, heads, dim)
    out = interpreted(q, k, v, 1 / math.sqrt(dim), 16, lengths=pos, length_add=1, new_k=new_k, new_v=new_v)
    for page, p in enumerate(pos.tolist()):
        assert torch.equal(k[page, :, p], new_k[page]) and torch.equal(v[page, :, p], new_v[page])
    want = reference(q, k.nan_to_num(posinf=0.0), v.nan_to_num(posinf=0.0), 1 / math.sqrt(dim), pos + 1)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("programs", [1, 16])  # one range per (page, head), and split ranges combined
def test_skipped_pages_read_and_write_nothing_and_give_zeros(interpreted, programs):
    """A decoder's finished and free slots: the others' outputs unchanged, no cache write."""
    torch.manual_seed(3)
    pages, heads, keys, dim = 3, 2, 130, 16
    q, k, v = torch.randn(pages, heads, dim), torch.randn(pages, heads, keys, dim), torch.randn(pages, heads, keys, dim)
    skip = torch.tensor([False, True, False])
    k[1], v[1] = float("nan"), float("nan")  # a skipped page's cache is never read
    cross = interpreted(q, k, v, 0.25, programs, skip=skip)
    assert torch.equal(cross[1], torch.zeros(heads, dim))
    keep = [0, 2]
    torch.testing.assert_close(cross[keep], reference(q[keep], k[keep], v[keep], 0.25), rtol=1e-5, atol=1e-5)
    pos, new_k, new_v = torch.tensor([4, 90, 129]), torch.randn(pages, heads, dim), torch.randn(pages, heads, dim)
    before = k[1].clone()
    own = interpreted(q, k, v, 0.25, programs, lengths=pos, length_add=1, new_k=new_k, new_v=new_v, skip=skip)
    assert torch.equal(own[1], torch.zeros(heads, dim)) and torch.equal(k[1].isnan(), before.isnan())
    assert torch.equal(k[2, :, 129], new_k[2])
    torch.testing.assert_close(own[keep], reference(q[keep], k[keep], v[keep], 0.25, pos[keep] + 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="skip must be bool"):
        interpreted(q, k, v, 0.25, programs, skip=skip.long())


def test_strided_inputs_as_the_fused_projection_gives_them(interpreted):
    torch.manual_seed(2)
    qkv = torch.randn(2, 3 * 4 * 16)  # [pages, 3 x heads x dim], as one fused q/k/v projection returns
    q, new_k, new_v = (part.view(2, 4, 16) for part in qkv.split(64, dim=1))
    k, v = torch.randn(2, 4, 70, 16), torch.randn(2, 4, 70, 16)
    pos = torch.tensor([5, 69])
    out = interpreted(q, k, v, 0.5, 8, lengths=pos, length_add=1, new_k=new_k, new_v=new_v)
    torch.testing.assert_close(out, reference(q, k, v, 0.5, pos + 1), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named(interpreted):
    q, k = torch.randn(1, 2, 12), torch.randn(1, 2, 8, 12)
    with pytest.raises(ValueError, match="power of two"):
        interpreted(q, k, k, 1.0, 4)
    q, k = torch.randn(1, 2, 16), torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="new_k and new_v"):
        interpreted(q, k, k, 1.0, 4, new_k=q)
    with pytest.raises(ValueError, match="counters must be int32 with at least 2"):
        interpreted(q, k, k, 1.0, 4, counters=torch.zeros(1, dtype=torch.int32))


def test_the_load_time_check_passes_the_kernels():
    assert da.problem(torch.device("cpu"), torch.float32, heads=4, head_dim=16, sms=4) is None


@pytest.mark.parametrize("launch", [da.Launch(block=32, warps=2, stages=1), da.Launch(block=128, warps=8, stages=4)])
def test_other_tilings_give_the_same_attention(interpreted, launch):
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 2, 16), torch.randn(2, 2, 300, 16), torch.randn(2, 2, 300, 16)
    torch.testing.assert_close(interpreted(q, k, v, 0.25, 8, launch=launch), reference(q, k, v, 0.25),
                               rtol=1e-5, atol=1e-5)
    lengths = torch.tensor([7, 250])
    torch.testing.assert_close(interpreted(q, k, v, 0.25, 8, lengths=lengths, launch=launch),
                               reference(q, k, v, 0.25, lengths), rtol=1e-5, atol=1e-5)


def test_add_layer_norm_is_the_residual_then_the_norm():
    torch.manual_seed(4)
    norm = torch.nn.LayerNorm(48, eps=1e-5)  # not a power of two: a masked tail
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x, y = torch.randn(3, 1, 48) * 4 + 1, torch.randn(3, 1, 48)
    total, normed = da.add_layer_norm(x, y, norm)
    assert torch.equal(total, x + y)
    torch.testing.assert_close(normed, norm(x + y), rtol=1e-5, atol=1e-5)
    for wrong in (y[:2], torch.randn(3, 1, 96)[..., ::2]):
        with pytest.raises(ValueError, match="add_layer_norm"):
            da.add_layer_norm(x, wrong, norm)
    with pytest.raises(ValueError, match="normalised over"):
        da.add_layer_norm(x, y, torch.nn.LayerNorm(48, elementwise_affine=False))


def test_the_decoders_gpu_step_gives_the_cpu_steps_tokens(tmp_path):
    """SlotDecoder's step through these kernels (fused q/k/v, split-K attention writing the cache,
    fused residual and norm) on the demo checkpoint, three pages of differing lengths, against the
    same decoder's PyTorch step: the same tokens at every step."""
    from transformers import VisionEncoderDecoderModel

    from triton_models.eclair.build import make_demo_checkpoint
    from triton_models.eclair.graph_decoder import SlotDecoder
    from triton_models.eclair.runtime import TokenIds

    folder = make_demo_checkpoint(tmp_path)
    model = VisionEncoderDecoderModel.from_pretrained(str(folder), local_files_only=True).eval()
    model.config.encoder.image_size = [320, 320]  # 100 encoder tokens, not 1,280: the interpreter is slow
    ids = TokenIds(model.config.decoder_start_token_id, model.config.pad_token_id, model.config.decoder.vocab_size - 1)
    plain, fused = (SlotDecoder(model, 3, 16, ids, "cpu", torch.float32, compile_encoder=False) for _ in range(2))
    assert fused.use_kernels(da, sms=4) and fused.kernels is da and not plain.kernels
    states = torch.randn(3, plain.encoder_tokens, plain.d_model, generator=torch.Generator().manual_seed(5))
    rows = []
    for decoder in (plain, fused):
        decoder.admit([0, 1, 2], states, limit=16)
        decoder.admit([2], states[2:], limit=7)  # a shorter page
        rows.append([decoder.step(3).tolist() for _ in range(16)])
    assert rows[0] == rows[1]
    assert len({tuple(step) for step in rows[0]}) > 3  # the pages do decode (not a constant row)


@pytest.mark.parametrize("programs", [1, 16])  # one range per page, and split ranges combined
def test_the_states_form_probe_equals_attention_over_projected_keys_and_values(programs):
    """benchmarks/eclair_states_attention.py (a probe, not served): attention over the encoder states
    with the query projected through Wk and the result through Wv equals attention over K and V."""
    from benchmarks import eclair_states_attention as sa

    torch.manual_seed(6)
    pages, heads, dim, width, keys = 3, 4, 16, 48, 130  # width not a power of two: a masked tail
    states, q = torch.randn(pages, keys, width), torch.randn(pages, heads, dim)
    wk, wv, bk, bv = torch.randn(heads, dim, width) / 7, torch.randn(heads, dim, width) / 7, torch.randn(heads, dim), \
        torch.randn(heads, dim)
    k = torch.einsum("btc,hdc->bhtd", states, wk) + bk[None, :, None]
    v = torch.einsum("btc,hdc->bhtd", states, wv) + bv[None, :, None]
    want = reference(q, k, v, 0.25)
    skip = torch.tensor([False, True, False])
    states[1] = float("nan")  # a skipped page's states are never read
    ctx = sa.states_attention(torch.einsum("bhd,hdc->hbc", q, wk).contiguous(), states, 0.25, programs, skip=skip)
    assert torch.equal(ctx[:, 1], torch.zeros(heads, width))
    got = (torch.einsum("hbc,hdc->bhd", ctx, wv) + bv[None]).index_select(0, torch.tensor([0, 2]))
    torch.testing.assert_close(got, want[[0, 2]], rtol=1e-4, atol=1e-4)
