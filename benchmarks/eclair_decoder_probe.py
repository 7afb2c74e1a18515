"""How far is ECLAIR's decoding from the HBM floor: HF `generate` against `SlotDecoder` with CUDA graphs.

A plain script for a GPU machine (no Triton, no internet): it builds a real-size ECLAIR-shaped
VisionEncoderDecoder with random weights (DonutSwin-B-like encoder at 1280x1024 -> 1280 tokens of
width 1024; 10-layer mBART decoder, d_model 1024, 16 heads, FFN 4096, vocab 50k; the decoder's
matrices re-drawn at std gain/sqrt(fan_in), gain 2, and its embeddings at std 1 so that greedy outputs depend
on the page), then prints

  - tokens/s of decoding only (encoder outputs given, eos never reached, 128 new tokens) at batch
    1/16/64: HF `generate` vs `SlotDecoder` (admit + steps, each step's tokens read on the host while
    the next step runs, as the served model does);
  - the admission (each page's cross K/V from its encoder states, once per page) and the decode
    steps timed apart; the HBM floor per step: the bytes a step must read (decoder weights, self
    K/V up to the position, cross K/V of the batch) / --hbm (default 4.8e12 B/s, H200), and the
    fraction the steps reach;
  - fp16 (and with --fp32, fp32) agreement of token rows between `generate(pixels)` and SlotDecoder
    on a few pages, with HF's own batch-vs-alone difference as the baseline, and teacher-forced
    next-token agreement;
  - the encoder per bucket: eager, captured, and compiled then captured (as served).

    python3 benchmarks/eclair_decoder_probe.py [--batches 1,16,64] [--new-tokens 128] [--hbm 4.8e12]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench.points import host_cpu  # noqa: E402
from triton_models.eclair.graph_decoder import SlotDecoder, attention_kernels, bucket_sizes  # noqa: E402
from triton_models.eclair.runtime import TokenIds, steps_ahead  # noqa: E402

START, PAD, EOS = 0, 1, 2


def encoder_buckets(decoder, pixels, largest: int, device) -> None:
    """The encoder per bucket (1, 2, 4, ... `largest` pages): eager, captured as it is, and compiled
    then captured (as served), with the compile time and each path's difference from eager."""
    if not largest or not str(device).startswith("cuda"):
        return  # CUDA graphs only
    sizes = bucket_sizes(largest)
    rows = {}
    with torch.inference_mode(), attention_kernels(torch.device(device)):
        for compiled in (False, True):
            start = time.perf_counter()
            decoder.encoder_graphs.capture(decoder._encode_eager, sizes, compiled)
            setup = time.perf_counter() - start
            label = decoder.encoder_mode.split(" for ")[0]  # "compiled and captured", "captured" or "eager"
            print(f"encoder {label} (asked: {'compiled' if compiled else 'captured'}): set up for {sizes} in "
                  f"{setup:.1f} s")
            for size in sizes:
                eager = decoder._encode_eager(pixels[:size])
                if size not in rows:
                    rows[size] = [min(timed(lambda: decoder._encode_eager(pixels[:size]), device) for _ in range(3))]
                out = decoder.encode(pixels[:size])
                took = min(timed(lambda: decoder.encode(pixels[:size]), device) for _ in range(3))
                error = (out.float() - eager.float()).abs().max().item()
                rows[size].append((label, took, error))
    for size, (eager, *paths) in rows.items():
        print(f"encoder batch {size}: eager {eager * 1e3:.1f} ms ({eager / size * 1e3:.2f} ms/page); " + "; ".join(
            f"{label} {took * 1e3:.1f} ms ({took / size * 1e3:.2f} ms/page, {eager / took:.2f}x eager, max abs "
            f"diff {error:.3g})" for label, took, error in paths))


def build(args) -> torch.nn.Module:
    from transformers import DonutSwinConfig, DonutSwinModel, MBartConfig, MBartForCausalLM, VisionEncoderDecoderModel

    encoder = DonutSwinConfig(image_size=[1280, 1024], patch_size=4, embed_dim=128, depths=[2, 2, 14, 2],
                              num_heads=[4, 8, 16, 32], window_size=10)
    decoder = MBartConfig(vocab_size=args.vocab, d_model=1024, decoder_layers=args.layers, decoder_attention_heads=16,
                          decoder_ffn_dim=4096, max_position_embeddings=4096, is_decoder=True, add_cross_attention=True,
                          scale_embedding=True, pad_token_id=PAD, bos_token_id=START, eos_token_id=EOS)
    torch.manual_seed(args.seed)
    model = VisionEncoderDecoderModel(encoder=DonutSwinModel(encoder), decoder=MBartForCausalLM(decoder))
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = START, PAD, EOS
    with torch.no_grad():
        for module in model.decoder.modules():
            if isinstance(module, torch.nn.Linear) and module.weight is not model.decoder.lm_head.weight:
                module.weight.normal_(0, args.gain / module.in_features ** 0.5)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0, 1.0)
    return model.to(args.device, torch.float16).eval()


def timed(fn, device) -> float:
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda _: None)
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def hf_decode(model, states, new_tokens, eos, device):
    from transformers.modeling_outputs import BaseModelOutput

    with torch.inference_mode(), attention_kernels(torch.device(device)):
        return model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), max_new_tokens=new_tokens,
                              do_sample=False, num_beams=1, decoder_start_token_id=START,
                              pad_token_id=PAD, eos_token_id=eos)


def slot_decode(decoder: SlotDecoder, states, steps: int | None = None, admit: bool = True) -> list[list[int]]:
    """Admit the batch into slots [0, B) (unless the caller just did) and step until every slot
    finished (or `steps` steps)."""
    count = len(states)
    if admit:
        decoder.admit(list(range(count)), states)
    rows, live = [[START] for _ in range(count)], set(range(count))
    for _, tokens in zip(range(steps or decoder.max_new_tokens), steps_ahead(decoder, count)):
        for slot in list(live):
            rows[slot].append(tokens[slot])
            if tokens[slot] == decoder.ids.eos:
                live.discard(slot)
        if not live:
            break
    return rows


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if a == b else min(len(a), len(b)))


def agreement(model, decoder: SlotDecoder, pixels, new_tokens: int, device, label: str) -> None:
    """Token rows of generate(pixels) against SlotDecoder.encode + steps (eos never reached), HF's own
    batch-of-pages vs page-alone rows as the noise baseline, and teacher-forced agreement: the share
    of steps where SlotDecoder, fed HF's previous tokens, picks HF's next token."""
    count, never = len(pixels), decoder.ids.eos
    greedy = dict(max_new_tokens=new_tokens, do_sample=False, num_beams=1, decoder_start_token_id=START,
                  pad_token_id=PAD, eos_token_id=never)
    with torch.inference_mode(), attention_kernels(torch.device(device)):
        hf = model.generate(pixels, **greedy).tolist()
        alone = [model.generate(pixels[i:i + 1], **greedy).tolist()[0] for i in range(count)]
        rows = torch.tensor(hf, device=device)  # HF's own numerics: one uncached forward over its rows
        logits = model(pixel_values=pixels, decoder_input_ids=rows[:, :-1]).logits
        hf_forced = (logits.argmax(-1)[:, :-1] == rows[:, 1:-1]).float().mean().item()  # last token: forced eos
    states = decoder.encode(pixels)
    ours = slot_decode(decoder, states)
    decoder.admit(list(range(count)), states)
    agree = 0
    with torch.inference_mode():
        for t in range(1, new_tokens + 1):
            agree += sum(g == row[t] for g, row in zip(decoder.step(count).tolist(), hf)) if t < new_tokens else 0
            decoder.cur[:count].copy_(torch.tensor([row[t] for row in hf]))
    print(f"\n{label} agreement on {count} pages, {new_tokens} new tokens (distinct tokens per row "
          f"{[len(set(row)) for row in hf]}):\n"
          f"  SlotDecoder rows identical to generate's: {sum(a == b for a, b in zip(hf, ours))}/{count}, first "
          f"differences at {[first_difference(a, b) for a, b in zip(hf, ours)]}\n"
          f"  generate batch {count} vs each page alone (HF's own noise): "
          f"{[first_difference(a, b) for a, b in zip(hf, alone)]}\n"
          f"  teacher-forced next-token agreement with generate's rows: SlotDecoder "
          f"{agree / (count * (new_tokens - 1)):.1%}, HF's uncached forward {hf_forced:.1%}")


def floor_bytes(model, decoder: SlotDecoder, batch: int, new_tokens: int) -> float:
    """Bytes one step must read, averaged over the steps: decoder weights (tied embedding read once,
    by lm_head; one positional row), self K/V up to the position, cross K/V of the batch."""
    core = decoder.core
    weights = sum(p.numel() * p.element_size() for p in model.decoder.parameters())
    weights -= core.embed_positions.weight.numel() * core.embed_positions.weight.element_size()
    per_token = 2 * len(core.layers) * decoder.heads * decoder.head_dim * decoder.self_k.element_size()
    mean_positions = (new_tokens + 1) / 2
    return weights + batch * per_token * (mean_positions + decoder.encoder_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--hbm", type=float, default=4.8e12, help="HBM bandwidth, B/s (H200: 4.8e12)")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--vocab", type=int, default=50000)
    parser.add_argument("--pages", type=int, default=4, help="pages for the fp16 agreement check (0: none)")
    parser.add_argument("--encoder-graph-batch", type=int, default=4, help="largest encoder bucket (served: 4); 0: eager only")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp32", action="store_true", help="the agreement check in fp32 too")
    parser.add_argument("--gain", type=float, default=2.0,
                        help="decoder matrices ~ N(0, gain^2/fan_in); at 4 the model is chaotic in fp16")
    args = parser.parse_args()
    import transformers

    batches, device = [int(b) for b in args.batches.split(",")], args.device
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    # generate's speed is the host's (Python launching kernels): the report names the CPU too
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {gpu}; host {host_cpu()}")
    model = build(args)
    params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(f"encoder {params(model.encoder):.0f}M params, decoder {params(model.decoder):.0f}M params, fp16")

    never = args.vocab  # an id past the vocabulary: eos is never reached
    start, reserved = time.perf_counter(), torch.cuda.memory_reserved(device) if device.startswith("cuda") else 0
    decoder = SlotDecoder(model, max(batches + [args.pages]), args.new_tokens, TokenIds(START, PAD, never), device,
                          torch.float16, compile_encoder=False)  # the encoder: encoder_buckets, below
    print(f"SlotDecoder: {decoder.slots} slots x {args.new_tokens} tokens, {decoder.encoder_tokens} encoder tokens, "
          f"KV cache {decoder.kv_cache_bytes / 2**30:.2f} GiB, buckets {decoder.buckets}, decode-attention kernels "
          f"{'on' if decoder.kernels else 'off'}, built and captured in {time.perf_counter() - start:.1f} s, "
          f"reserving {((torch.cuda.memory_reserved(device) if reserved else 0) - reserved) / 2**30:.2f} GiB")

    pixels = torch.randn(max(batches + [args.pages]), 3, 1280, 1024, device=device, dtype=torch.float16)
    encoder_buckets(decoder, pixels, args.encoder_graph_batch, device)
    with torch.inference_mode(), attention_kernels(torch.device(device)):
        raw = torch.cat([model.encoder(pixel_values=chunk).last_hidden_state for chunk in pixels.split(8)])
        states = model.enc_to_dec_proj(raw) if decoder.project else raw  # HF gets raw, SlotDecoder projected

    print(f"\ndecoding only, {args.new_tokens} new tokens, eos never reached; floor at {args.hbm:.2e} B/s")
    print("slot tok/s counts the admission (each page's cross K/V, computed once) with the steps, as HF's "
          "time counts its first step's; slot ms/step and the floor are the decode steps alone")
    print(f"{'batch':>5} {'HF tok/s':>10} {'slot tok/s':>11} {'speed-up':>8} {'HF ms/step':>10} {'admit ms':>8} "
          f"{'slot ms/step':>12} {'floor ms/step':>13} {'of floor':>8}")
    for batch in batches:
        hf_decode(model, raw[:batch], 4, never, device)  # warm-up
        hf = timed(lambda: hf_decode(model, raw[:batch], args.new_tokens, never, device), device)
        rows = hf_decode(model, raw[:batch], args.new_tokens, never, device)
        assert rows.shape == (batch, args.new_tokens + 1), rows.shape
        slot_decode(decoder, states[:batch], 4)  # warm-up
        admit = timed(lambda: decoder.admit(list(range(batch)), states[:batch]), device)
        decode = timed(lambda: slot_decode(decoder, states[:batch], admit=False), device)
        slot, tokens, steps = admit + decode, batch * args.new_tokens, args.new_tokens
        floor = floor_bytes(model, decoder, batch, args.new_tokens) / args.hbm
        print(f"{batch:>5} {tokens / hf:>10.0f} {tokens / slot:>11.0f} {hf / slot:>7.1f}x {hf / steps * 1e3:>10.2f} "
              f"{admit * 1e3:>8.2f} {decode / steps * 1e3:>12.3f} {floor * 1e3:>13.3f} {floor / (decode / steps):>8.1%}")

    if args.pages < 1:  # the speeds only
        return
    agreement(model, decoder, pixels[:args.pages], args.new_tokens, device, f"fp16 (encoder {decoder.encoder_mode})")
    if args.fp32:
        del decoder
        torch.cuda.empty_cache()
        model.float()
        decoder = SlotDecoder(model, args.pages, args.new_tokens, TokenIds(START, PAD, never), device, torch.float32,
                              compile_encoder=False)
        agreement(model, decoder, pixels[:args.pages].float(), args.new_tokens, device, "fp32")

if __name__ == "__main__":
    main()
