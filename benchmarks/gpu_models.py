"""Each model's PyTorch path on CUDA: fp16 agreement with fp32, and throughput, at real size.

Run on a GPU machine: `python -m benchmarks.gpu_models`. Random weights at the real
architectures' sizes (DeBERTa-large, YOLOX-L, BERT 12x384 = e5-small-v2's size, and an
ECLAIR-shaped Donut-Swin + mBART of moderate size); prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from third_party.yolox import build_yolox
from triton_models.caption_classification.model_script import DebertaLargeModel
from triton_models.e5_small_v2.model_script import E5Embedder


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def agreement(fp32: torch.Tensor, fp16: torch.Tensor) -> dict:
    a, b = fp32.float().flatten(1), fp16.float().flatten(1)
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1).min().item()
    return {"max_abs_error": (a - b).abs().max().item(), "min_cosine": cosine}


def text_model(name, model, vocab, seq, batches, repeats):
    model = model.cuda().eval()
    ids = torch.randint(1000, min(vocab, 20000), (max(batches), seq), device="cuda")
    mask = torch.ones_like(ids)
    mask[:, seq // 2:] = 0  # half padding: exercises the masking paths
    mask_arg = mask.float() if name == "deberta_large" else mask
    with torch.inference_mode():
        reference = model(ids, mask_arg)
        half = model.half()
        result = {"model": name, **agreement(reference, half(ids, mask_arg)), "throughput": {}}
        for batch in batches:
            seconds = timed(lambda: half(ids[:batch], mask_arg[:batch]), repeats)
            result["throughput"][batch] = batch / seconds
    return result


def yolox(batches, repeats):
    model = build_yolox(1.0, 1.0, 3).cuda().eval()
    images = torch.rand(max(batches), 3, 1024, 1024, device="cuda") * 255
    with torch.inference_mode():
        reference = model(images[:2])
        half = model.half()
        out16 = half(images[:2].half())
        scores32, scores16 = reference[..., 4:], out16[..., 4:]
        result = {"model": "yolox", **agreement(scores32, scores16), "throughput": {}}
        for batch in batches:
            seconds = timed(lambda: half(images[:batch].half()), repeats)
            result["throughput"][batch] = batch / seconds
    return result


def eclair(batches, repeats, new_tokens=64):
    from transformers import DonutSwinConfig, DonutSwinModel, MBartConfig, MBartForCausalLM, VisionEncoderDecoderModel

    encoder = DonutSwinConfig(image_size=[1280, 1024], patch_size=4, embed_dim=128, depths=[2, 2, 14, 2],
                              num_heads=[4, 8, 16, 32], window_size=10)
    decoder = MBartConfig(vocab_size=50000, d_model=1024, decoder_layers=4, decoder_attention_heads=16,
                          decoder_ffn_dim=4096, max_position_embeddings=4096, is_decoder=True, add_cross_attention=True,
                          pad_token_id=1, bos_token_id=0, eos_token_id=2)
    model = VisionEncoderDecoderModel(encoder=DonutSwinModel(encoder), decoder=MBartForCausalLM(decoder)).cuda().eval()
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = 0, 1, 2
    pixels = torch.rand(max(batches), 3, 1280, 1024, device="cuda")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1)
    with torch.inference_mode():
        enc32 = model.encoder(pixels[:2]).last_hidden_state
        half = model.half()
        enc16 = half.encoder(pixels[:2].half()).last_hidden_state
        result = {"model": "eclair (encoder states; Swin-B encoder, 4-layer mBART decoder)", **agreement(enc32, enc16),
                  "throughput": {}}
        for batch in batches:
            seconds = timed(lambda: half.generate(pixels[:batch].half(), **kwargs), max(1, repeats // 5))
            result["throughput"][batch] = batch / seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="gpu_models.json")
    args = parser.parse_args()
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    results = [
        text_model("deberta_large", DebertaLargeModel(), 50265, 128, (1, 8, 32, 128), args.repeats),
        text_model("e5_small_v2", E5Embedder(BertModel(BertConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                                                                  intermediate_size=1536), add_pooling_layer=False)),
                   30522, 128, (1, 8, 64, 256), args.repeats),
        yolox((1, 4, 8, 16), args.repeats),
        eclair((1, 4, 16), args.repeats),
    ]
    gpu = torch.cuda.get_device_name(0)
    print(f"GPU: {gpu}, torch {torch.__version__}")
    print(f"{'model':<28} {'max abs err':>12} {'min cosine':>11}  throughput (items/s) by batch, fp16")
    for r in results:
        rates = ", ".join(f"b{b}: {v:,.0f}" for b, v in r["throughput"].items())
        print(f"{r['model'][:28]:<28} {r['max_abs_error']:>12.3g} {r['min_cosine']:>11.6f}  {rates}")
    with open(args.out, "w") as handle:
        json.dump({"gpu": gpu, "torch": torch.__version__, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
