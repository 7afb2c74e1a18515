"""Where DeBERTa-large's FP8 error and speed come from, on a GPU: the random-weight caption model
(triton_models/caption_classification, fp16 beside fp32) with one group of linear layers at a time
in FP8 (converters/fp8.py: row-wise weight scales, per-token activations), each group's logits
error to fp32 over 72 rows and top-row changes per batch of 8, as the build's gate measures them;
then each way of running the linear layers in FP8 beside fp16: its error (of the eager module),
and exported (`torch.export`, as the served path is), compiled and replayed as a CUDA graph at
[64, 128] tokens, its items/s, the fraction of the fp16 dense limit and where a forward's kernel
time goes (GEMMs, Triton's fused kernels, the rest; torch.profiler). Until 2026-12-02 the probe
compiled the module itself, which left DeBERTa's attention outside the graph. The ways:
converters/fp8.py (row-wise weight scales, per-token activations), as served and with cuBLASLt's
fast accumulation; per-tensor with static input scales calibrated on other batches than the
error's (one fused cast, fp16 out, fast accumulation), all layers and with the FFN down
projections kept in fp16; torchao's float8 inference path, row-wise (in bf16) and per-tensor,
where it imports. Each timed line names the four largest GEMM kernels.

With `--fused-attention` every model runs DeBERTa's attention as one SDPA kernel (the disentangled
terms its additive bias), to see what the shared, non-GEMM part costs.

    python3 benchmarks/fp8_probe.py [--batch 64] [--tokens 128] [--dense-tflops 989] [--variants fast,per-tensor]
                                    [--fused-attention] [--gate-choice]

With `--gate-choice` it first runs the build's fp8 gate as a PRECISION=fp8 build would (the layers
it publishes in FP8, the kinds it keeps in fp16) and times that choice too.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.graph_timing import capture, seconds_per_replay  # noqa: E402
from converters.export import gate_batches  # noqa: E402
from converters.fp8 import (E4M3_MAX, ERROR_FACTOR, choose_for_model, quantisable,  # noqa: E402
                            quantise_linear_layers, top_changes)
from triton_models.caption_classification.model_script import DebertaLargeModel  # noqa: E402

GROUPS = {"attention in_proj (q/k/v)": r"attention\.self\.in_proj", "attention out": r"attention\.output\.dense",
          "FFN up": r"intermediate\.dense", "FFN down": r"layer\.\d+\.output\.dense"}


def logits(model, batches):
    with torch.inference_mode():
        return torch.cat([model(ids, mask).float() for ids, mask in batches])[:, 0]


def changed(reference, other, fp16_error, rows=8):
    """Top-row changes per batch of `rows`, by the build gate's rule."""
    batches = lambda scores: [part.cpu().numpy() for part in scores.split(rows)]  # noqa: E731
    return top_changes(batches(reference), batches(other), fp16_error)


def graphed_items_per_s(model, ids, mask, count=30):
    """As the served path runs it: a `torch.export` program (non-strict, as converters/compiled_step.py
    makes it), compiled, replayed as a CUDA graph. Compiling the module itself breaks its graph at
    transformers' DeBERTa attention span (`Tensor.item()`), leaving the attention to eager kernels."""
    program = torch.export.export(model, (ids, mask), strict=False).module()
    compiled = torch.compile(program)
    with torch.inference_mode():
        graph = capture(lambda: compiled(ids, mask))
        return len(ids) / seconds_per_replay(graph, count), compiled


# Triton's kernels first: inductor names a kernel after the ops it fused, so the one that quantises
# a GEMM's input holds "_scaled_mm" in its name (until 2026-12-04 those counted as GEMMs)
KERNEL_KINDS = {"Triton fused": re.compile(r"^triton_", re.I),
                "GEMM": re.compile(r"gemm|nvjet|cutlass|xmma|cublas|splitk|scaled_mm", re.I)}


def kernel_split(compiled, ids, mask, forwards=5) -> str:
    """Kernel time of one compiled forward, split by kind, with the largest kernels of the rest."""
    from torch.autograd import DeviceType
    with torch.inference_mode():
        compiled(ids, mask)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(forwards):
                compiled(ids, mask)
            torch.cuda.synchronize()
    kinds, others, gemms = dict.fromkeys([*KERNEL_KINDS, "other"], 0.0), {}, {}
    for event in prof.key_averages():
        if event.device_type != DeviceType.CUDA or event.self_device_time_total <= 0:
            continue
        ms = event.self_device_time_total / 1e3 / forwards
        kind = next((k for k, pattern in KERNEL_KINDS.items() if pattern.search(event.key)), "other")
        kinds[kind] += ms
        if kind in ("other", "GEMM"):
            into = others if kind == "other" else gemms
            into[event.key] = into.get(event.key, 0.0) + ms
    largest = lambda found: ", ".join(f"{k[:70]} {v:.2f}" for k, v in  # noqa: E731
                                      sorted(found.items(), key=lambda item: -item[1])[:4])
    return (f"kernels {sum(kinds.values()):.2f} ms a forward: " + ", ".join(f"{k} {v:.2f}" for k, v in kinds.items())
            + f" (largest other: {largest(others)})\n  largest GEMMs: {largest(gemms)}")


class Fp8StaticLinear(torch.nn.Module):
    """Per-tensor FP8: the weight's scale and the input's (calibrated, fixed), so the cast to e4m3 is
    one elementwise op that fuses into the producer, and the GEMM writes fp16 with fast accumulation.
    Plain float8/fp32 buffers: the probe casts nothing after quantising (converters/fp8.py stores
    bytes because the served path does)."""

    def __init__(self, linear: torch.nn.Linear, input_amax: float):
        super().__init__()
        weight = linear.weight.detach().float()
        self.register_buffer("weight_scale", (weight.abs().max().clamp(min=1e-12) / E4M3_MAX).reshape(()))
        self.register_buffer("weight", (weight / self.weight_scale).to(torch.float8_e4m3fn))
        self.register_buffer("input_scale", torch.tensor(max(input_amax, 1e-12) / E4M3_MAX, device=weight.device))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x):
        rows = x.reshape(-1, x.shape[-1])
        quantised = (rows / self.input_scale.to(rows.dtype)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(quantised, self.weight.t(), scale_a=self.input_scale, scale_b=self.weight_scale,
                               bias=self.bias, out_dtype=x.dtype, use_fast_accum=True)
        return out.reshape(*x.shape[:-1], -1)


def quantise_rowwise_fast(model) -> int:
    """converters/fp8.py's layers with cuBLASLt's fast accumulation (no periodic promotion to fp32)."""
    names = quantise_linear_layers(model)
    for name in names:
        model.get_submodule(name).fast_accumulation = True
    return len(names)


def quantise_static(model, batches, keep: str | None = None) -> int:
    """Every quantisable linear layer (but those `keep` matches) to Fp8StaticLinear, its input scale
    the amax seen on `batches`."""
    names = [n for n, m in model.named_modules() if quantisable(n, m) and not (keep and re.search(keep, n))]
    amax = dict.fromkeys(names, 0.0)
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: amax.__setitem__(n, max(amax[n], float(args[0].abs().max())))) for n in names]
    logits(model, batches)
    for hook in hooks:
        hook.remove()
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, Fp8StaticLinear(getattr(owner, child), amax[name]))
    return len(names)


def fused_attention_forward(self, hidden_states, attention_mask, output_attentions=False, query_states=None,
                            relative_pos=None, rel_embeddings=None):
    """transformers' DeBERTa (v1) self-attention with the scores' softmax and the weighted sum of V in
    one kernel: the disentangled terms (c2p + p2c, as transformers computes them) and the padding
    mask become SDPA's additive bias, so the [B, H, L, L] scores and probabilities are never written.
    The query is already divided by the scale, hence `scale=1`. Eval only (no dropout)."""
    from transformers.models.deberta.modeling_deberta import scaled_size_sqrt
    if query_states is not None or output_attentions or self.head_logits_proj is not None:
        raise NotImplementedError("the fused attention covers DeBERTa-large's own path only")
    query, key, value = self.transpose_for_scores(self.in_proj(hidden_states)).chunk(3, dim=-1)
    query = query + self.transpose_for_scores(self.q_bias[None, None, :])
    value = value + self.transpose_for_scores(self.v_bias[None, None, :])
    scale_factor = 1 + len(self.pos_att_type)
    query = query / scaled_size_sqrt(query, scale_factor).to(dtype=query.dtype)
    bias = self.disentangled_att_bias(query, key, relative_pos, rel_embeddings, scale_factor)
    bias = bias.masked_fill(~attention_mask.bool(), torch.finfo(query.dtype).min).to(query.dtype)
    context = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=1.0)
    context = context.permute(0, 2, 1, 3).contiguous()
    return context.view(*context.shape[:-2], -1), None


def use_fused_attention() -> None:
    from transformers.models.deberta import modeling_deberta
    modeling_deberta.DisentangledSelfAttention.forward = fused_attention_forward


def quantise_torchao(model, granularity: str) -> int:
    """torchao's float8 inference path (dynamic activations), on the layers converters/fp8.py takes;
    row-wise asks for bf16 weights, so that model runs in bf16."""
    import torchao
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_
    print(f"torchao {torchao.__version__}")
    if granularity == "row":
        model.to(torch.bfloat16)
    chosen = [n for n, m in model.named_modules() if quantisable(n, m)]
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if granularity == "row" else PerTensor())
    quantize_(model, config, filter_fn=lambda module, name: name in chosen)
    return len(chosen)


def gate_choice(reference) -> list[str]:
    """What PRECISION=fp8 would publish: the build gate's layer choice on the gate's own inputs (the
    golden batch and 64 random rows of the caption core's IO at 128 tokens), printed with its report."""
    from converters.batching import BatchPlan
    from converters.io_config import parse_io_config
    from triton_models.registry import get

    entry = get("caption_classification")
    io, plan = parse_io_config(entry.core_io_json), BatchPlan.create(64, (None, entry.max_length), None)
    choice = choose_for_model(reference, gate_batches(io, plan), ("input_ids", "input_mask"), io.output_names, "cuda")
    print(f"the build gate's choice: {len(choice.layers)} layers in FP8\n{choice.report()}")
    return choice.layers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dense-tflops", type=float, default=989.0, help="the card's fp16 dense rate (H200: 989)")
    parser.add_argument("--fused-attention", action="store_true", help="every model (fp32 reference too) with "
                        "the scores' softmax and V in one SDPA kernel, the disentangled terms as its bias")
    parser.add_argument("--variants", default="", help="comma-separated words; only the timed variants whose "
                        "label holds one of them run, with fp16 always (default: every variant)")
    parser.add_argument("--gate-choice", action="store_true", help="run the build's fp8 gate on its own inputs "
                        "(converters/fp8.py choose_for_model) and time the layers it would publish in FP8")
    args = parser.parse_args()
    torch.manual_seed(0)
    reference = DebertaLargeModel().cuda().eval()
    half = copy.deepcopy(reference).half()
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = [(torch.randint(0, 30000, (8, 64), device="cuda", generator=gen),
                torch.ones(8, 64, dtype=torch.long, device="cuda")) for _ in range(9)]
    if args.fused_attention:
        unfused = logits(reference, batches)
        use_fused_attention()
        print(f"fused attention (SDPA, the disentangled terms as its bias): fp32 logits' max abs difference to "
              f"transformers' attention {float((logits(reference, batches) - unfused).abs().max()):.3g}")
    want, fp16 = logits(reference, batches), logits(half, batches)
    fp16_error = float((fp16 - want).abs().max())
    bound = ERROR_FACTOR * max(fp16_error, 1e-3)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}: random-weight DeBERTa-large caption model, {len(want)} rows of 64 tokens; "
          f"fp16 max abs error to fp32 {fp16_error:.3g} (gate bound {bound:.3g}); logits range "
          f"{float(want.min()):.3g}..{float(want.max()):.3g}")
    within = []
    for label, pattern in {"all": None, **GROUPS}.items():
        model = copy.deepcopy(half)
        names = quantise_linear_layers(model, re.compile(pattern) if pattern else None)
        got = logits(model, batches)
        error, flips = float((got - want).abs().max()), changed(want, got, fp16_error)
        ok = error <= bound and flips == 0
        within += [pattern] if ok and pattern else []
        print(f"fp8 {label}: {len(names)} layers, max abs error {error:.3g} ({error / fp16_error:.0f} x fp16), "
              f"top row changed in {flips} of {len(batches)} batches: {'within' if ok else 'outside'} the gate")
    ids = torch.randint(0, 30000, (args.batch, args.tokens), device="cuda", generator=gen)
    mask = torch.ones_like(ids)
    flops = 2 * sum(p.numel() for n, p in reference.named_parameters() if "embeddings" not in n) * ids.numel()
    limit = args.dense_tflops * 1e12 / flops * args.batch  # items/s
    calibration = [(torch.randint(0, 30000, (8, 64), device="cuda", generator=gen),  # not the error batches
                    torch.ones(8, 64, dtype=torch.long, device="cuda")) for _ in range(4)]
    chosen = gate_choice(reference) if args.gate_choice else None
    variants = {"fp16": lambda m: 0, "fp8 row-wise, converters/fp8.py": quantise_linear_layers,
                **({"fp8 row-wise, the build gate's choice": lambda m: quantise_linear_layers(
                    m, names=set(chosen))} if chosen else {}),
                **({"fp8 row-wise, the layers within the gate": lambda m: quantise_linear_layers(
                    m, re.compile("|".join(within)))} if within else {}),
                "fp8 row-wise, fast accumulation": quantise_rowwise_fast,
                "fp8 per-tensor, static input scales": lambda m: quantise_static(m, calibration),
                "fp8 per-tensor, static input scales, FFN down in fp16": lambda m: quantise_static(
                    m, calibration, keep=GROUPS["FFN down"]),
                "torchao fp8 row-wise": lambda m: quantise_torchao(m, "row"),
                "torchao fp8 per-tensor": lambda m: quantise_torchao(m, "tensor")}
    wanted = [w.strip() for w in args.variants.split(",") if w.strip()]
    unmatched = [w for w in wanted if not any(w in label for label in variants)]
    if unmatched:
        parser.error(f"--variants {','.join(unmatched)} matches none of: {'; '.join(variants)}")
    variants = {k: v for k, v in variants.items() if k == "fp16" or not wanted or any(w in k for w in wanted)}
    fp16_rate = None
    for label, quantise in variants.items():
        model = copy.deepcopy(half)
        try:
            quantise(model)
            got = logits(model, batches)
            rate, compiled = graphed_items_per_s(model, ids, mask)
            split = kernel_split(compiled, ids, mask)
        except Exception as exc:  # a path this torch or GPU cannot run: say so and go on
            print(f"{label}: not run: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
            continue
        finally:
            torch.compiler.reset()
        fp16_rate = rate if label == "fp16" else fp16_rate
        error, flips = float((got - want).abs().max()), changed(want, got, fp16_error)
        versus = f"{rate / fp16_rate:.2f} x fp16" if fp16_rate else "fp16 not measured"
        print(f"{label}: {rate:,.0f} items/s at [{args.batch}, {args.tokens}] (exported, compiled, CUDA graph), "
              f"{versus}, {rate / limit:.2f} of the fp16 dense limit "
              f"({limit:,.0f} items/s, linear-layer FLOPs only); max abs error {error:.3g} "
              f"({error / fp16_error:.0f} x fp16), top row changed in {flips} of {len(batches)} batches\n  {split}")
        del model


if __name__ == "__main__":
    main()
