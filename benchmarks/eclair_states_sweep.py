"""ECLAIR's cross-attention in a decoding step, two ways, on this GPU: over per-layer K/V
(decode_attention.py, as served before) and over the encoder states (states_attention.py: the
query projected through Wk, attention over E, the result through Wv), with the states kernel's
tilings swept. Each timing is 10 layers replayed in one CUDA graph; printed per layer, with the
bytes each form must read and the fraction of the card's HBM bandwidth. Also the states form's
fp16 error against an fp32 reference of the K/V form, on real projections.

    python3 benchmarks/eclair_states_sweep.py [--batches 1,16,64] [--hbm-tbps 4.8]
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.eclair_attention_sweep import replay_us, sweep_arguments  # noqa: E402
from triton_models.eclair import decode_attention as da  # noqa: E402
from benchmarks import eclair_states_attention as sa  # noqa: E402

LAYERS, HEADS, DIM, WIDTH, TOKENS = 10, 16, 64, 1024, 1280  # ECLAIR's decoder and a 1280x1024 page


def main() -> None:
    args, sms = sweep_arguments()
    batches, hbm_tbps = args.batches, args.hbm_tbps
    grid = [sa.StatesLaunch(*t) for t in itertools.product((16, 32, 64), (4, 8), (1, 2, 3), (1, 2, 4))]
    gen = torch.Generator(device="cuda").manual_seed(0)
    wk, wv = (torch.randn(LAYERS, HEADS, DIM, WIDTH, device="cuda", generator=gen).half() / WIDTH ** 0.5
              for _ in range(2))
    bv = torch.randn(LAYERS, HEADS, 1, DIM, device="cuda", generator=gen).half()
    print(f"{torch.cuda.get_device_name(0)}, {sms} SMs; {HEADS} heads of {DIM}; encoder states [B, {TOKENS}, "
          f"{WIDTH}] fp16; {LAYERS} layers per graph")
    with torch.inference_mode():
        accuracy(wk[0], wv[0], bv[0], gen)
        for b in batches:
            states = torch.randn(b, TOKENS, WIDTH, device="cuda", generator=gen).half()
            q = torch.randn(b, HEADS, DIM, device="cuda", generator=gen).half()
            k, v = (torch.randn(LAYERS, b, HEADS, TOKENS, DIM, device="cuda", generator=gen).half() for _ in range(2))
            counters = torch.zeros(b * HEADS, device="cuda", dtype=torch.int32)
            launch = da.launch_for(b * HEADS, False)
            kv = replay_us([lambda i=i: da.decode_attention(q, k[i], v[i], 0.125, launch.per_sm * sms,
                                                            counters=counters, launch=launch) for i in range(LAYERS)])
            kv_read = 2 * b * HEADS * TOKENS * DIM * 2
            states_read = b * TOKENS * WIDTH * 2
            print(f"batch {b} K/V form: {kv:.1f} us/layer, {kv_read / 2**20:.1f} MiB read, "
                  f"{kv_read / (kv * 1e-6) / (hbm_tbps * 1e12):.2f} of HBM")
            del k, v
            results = []
            for tiling in grid:
                def layer(i, tiling=tiling):
                    projected = torch.bmm(q.transpose(0, 1), wk[i])  # [H, B, C]
                    ctx = sa.states_attention(projected, states, 0.125, tiling.per_sm * sms, counters, launch=tiling)
                    return torch.baddbmm(bv[i], ctx, wv[i].transpose(1, 2))
                try:
                    results.append((replay_us([lambda i=i: layer(i) for i in range(LAYERS)]), tiling))
                except Exception as error:  # noqa: BLE001 - a tiling that does not compile is reported, not fatal
                    print(f"batch {b} states: {tiling} failed: {type(error).__name__}: {str(error)[:120]}")
            results.sort(key=lambda r: r[0])
            for rank, (us, tiling) in enumerate(results[:4]):
                print(f"batch {b} states form #{rank + 1}: {us:.1f} us/layer ({kv / us:.2f}x the K/V form), "
                      f"{states_read / 2**20:.1f} MiB read, {states_read / (us * 1e-6) / (hbm_tbps * 1e12):.2f} "
                      f"of HBM; {tiling}")
            default = next((r for r in results if r[1] == sa.STATES_LAUNCH), None)
            if default:
                print(f"batch {b} states form default {default[1]}: {default[0]:.1f} us/layer")


def accuracy(wk, wv, bv, gen) -> None:
    """fp16 states form against fp32 K/V attention on the same projections (4 pages)."""
    b = 4
    states = torch.randn(b, TOKENS, WIDTH, device="cuda", generator=gen).half()
    q = torch.randn(b, HEADS, DIM, device="cuda", generator=gen).half()
    k = torch.einsum("btc,hdc->bhtd", states.float(), wk.float())
    v = torch.einsum("btc,hdc->bhtd", states.float(), wv.float()) + bv.float()[None]
    want = F.scaled_dot_product_attention(q.float()[:, :, None], k, v, scale=0.125)[:, :, 0]  # [B, H, D]
    projected = torch.bmm(q.transpose(0, 1), wk)
    ctx = sa.states_attention(projected, states, 0.125, 264)
    got = torch.baddbmm(bv, ctx, wv.transpose(1, 2)).transpose(0, 1).float()
    kv16 = F.scaled_dot_product_attention(q[:, :, None], k.half(), v.half(), scale=0.125)[:, :, 0].float()
    print(f"accuracy, 4 pages: states form fp16 max abs error {(got - want).abs().max().item():.3g}, "
          f"K/V form fp16 {(kv16 - want).abs().max().item():.3g} (against fp32; outputs' max {want.abs().max().item():.3g})")


if __name__ == "__main__":
    main()
