"""FP8 (e4m3) for the `python_compiled` program: weights quantised once at build time with one
scale per output row, activations quantised per row (per token) as they are produced. The
product is `torch._scaled_mm` (cuBLASLt's FP8 tensor-core GEMM); `torch.compile` fuses each
activation's amax, scale and cast into the kernel that produces it, which is what makes FP8
pay (quantising with separate kernels ran the same GEMMs at half the fp16 speed).

Only `nn.Linear` layers are quantised, and not all: embeddings, norms, softmax and the rest of
the graph stay in fp16 as in the fp16 path, and so do heads (the classifier, the pooler: few
FLOPs, most of the answer) and layers whose sizes FP8 GEMMs cannot take (multiples of 16).
Ada and Hopper (compute capability 8.9 and newer) have FP8 tensor cores; elsewhere FP8 is refused.

The accuracy gate runs the fp32 model, the fp16 model and the fp8 model on the same inputs
(the golden batch and 64 random rows). When every quantisable layer in FP8 breaks a bound, the
build keeps in fp16 the kinds of layer (`layer_groups`: q/k/v, attention output, FFN up, ...) that
break it, and publishes the rest in FP8 where that holds (`choose_fp8_layers`); when no kind holds
alone, it refuses to publish. The bounds:
- vector outputs (embeddings): cosine to fp32 at least `MIN_COSINE` for every row;
- scalar outputs (logits): max abs error at most `ERROR_FACTOR` x the fp16 path's own, and the
  row with the top score in each batch the same as fp32's wherever fp32's margin is clear of
  the fp16 error (a near-tie that fp16 itself cannot decide is not FP8's fault).
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass

import numpy as np
import torch

from converters.errors import UserError

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
MIN_CAPABILITY = (8, 9)
MIN_COSINE = 0.999
ERROR_FACTOR = 16.0  # fp8 keeps 3 mantissa bits to fp16's 10; a dot product's error averages over its terms
VECTOR_MIN_WIDTH = 8  # outputs at least this wide are vectors (cosine); narrower ones are scores
KEPT_LAYERS = re.compile(r"(^|\.)(classifier|pooler|head|lm_head|score|qa_outputs)(\.|$)")


class Fp8Linear(torch.nn.Module):
    """`nn.Linear` with e4m3 weights (one scale per output row) and per-row dynamic activations."""
    fast_accumulation = False  # cuBLASLt's fast accumulation (benchmarks/fp8_probe.py measures it on)

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
        # both stored as bytes: `.half()` on the module (export, runners) must not cast the FP8 weight
        # or its fp32 scales, which `_scaled_mm` requires
        quantised = (weight / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        self.register_buffer("weight_bytes", quantised.view(torch.uint8))
        self.register_buffer("scale_bytes", scale.reshape(1, -1).contiguous().view(torch.uint8))  # [1, 4 x out]
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @property
    def weight_scale(self) -> torch.Tensor:
        return self.scale_bytes.view(torch.float32)  # [1, out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
        quantised = (rows.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        weight = self.weight_bytes.view(torch.float8_e4m3fn)
        # row-wise scales take a bf16 product (cuBLASLt); the cast back fuses into the next op
        out = torch._scaled_mm(quantised, weight.t(), scale_a=scale, scale_b=self.weight_scale,
                               out_dtype=torch.bfloat16, use_fast_accum=self.fast_accumulation).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def quantisable(name: str, module: torch.nn.Module) -> bool:
    return (isinstance(module, torch.nn.Linear) and not KEPT_LAYERS.search(name)
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def quantise_linear_layers(model: torch.nn.Module, only: re.Pattern | None = None,
                           names: Collection[str] | None = None) -> list[str]:
    """Replace the quantisable `nn.Linear` layers (those whose names `only` matches, or that `names`
    lists, where given: each must be one) in place; returns their names."""
    wanted = None if names is None else set(names)
    chosen = [name for name, module in model.named_modules() if quantisable(name, module)
              and (only is None or only.search(name)) and (wanted is None or name in wanted)]
    missing = sorted((wanted or set()) - set(chosen))
    if missing:  # a model other than the one the gate measured: serving it would not be what was checked
        raise UserError(f"the fp8 layers {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (manifest "
                        "accuracy.fp8_layers) are not quantisable linear layers of this model; rebuild it with "
                        "--overwrite so that the gate measures this model.")
    names = chosen
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp8Linear(getattr(parent, child)))
    return names


def layer_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """The quantisable layers by kind: their names with the index of each block that holds them
    replaced by `*` ("encoder.layer.3.intermediate.dense" -> "encoder.layer.*.intermediate.dense"),
    in model order. A layer's own index stays: in a Sequential MLP "blocks.3.mlp.0" (FFN up) and
    "blocks.3.mlp.2" (FFN down) are two kinds."""
    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if quantisable(name, module):
            *holders, own = name.split(".")
            kind = ".".join(["*" if part.isdigit() else part for part in holders] + [own])
            groups.setdefault(kind, []).append(name)
    return groups


def check_fp8_device(device: str) -> None:
    """FP8 tensor cores or a one-sentence refusal that names the GPU and the precision to use."""
    if device != "cuda" or not torch.cuda.is_available():
        raise UserError("--use-fp8 runs on NVIDIA GPUs of compute capability 8.9 or newer (Ada, Hopper, "
                        "Blackwell); on CPU use fp32 (leave out --use-fp16/--use-fp8).")
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        raise UserError(f"--use-fp8 needs FP8 tensor cores (compute capability 8.9 or newer); "
                        f"{torch.cuda.get_device_name()} is {capability[0]}.{capability[1]}: use --use-fp16.")
    problem = rowwise_gemm_problem()
    if problem:
        raise UserError(f"--use-fp8: torch {torch.__version__} has no row-wise FP8 GEMM for "
                        f"{torch.cuda.get_device_name()} ({problem}); upgrade torch or use --use-fp16.")


def rowwise_gemm_problem() -> str | None:
    """None where a row-wise FP8 GEMM runs on this GPU, else its error's first line (Ada GPUs need
    torch 2.7 or newer for it)."""
    try:
        Fp8Linear(torch.nn.Linear(16, 16).cuda())(torch.ones(16, 16, device="cuda", dtype=torch.float16))
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:120]
    return None


@dataclass(frozen=True)
class Fp8Accuracy:
    """What the gate measured against fp32, for the manifest and the build log."""
    rows: int
    quantised_layers: int
    output: str
    kind: str  # "vector" | "score"
    fp16_max_abs_error: float
    fp8_max_abs_error: float
    bound: float  # scores: ERROR_FACTOR x fp16's error; vectors: MIN_COSINE
    fp8_min_cosine: float | None
    fp16_min_cosine: float | None
    top_row_changed: int  # batches whose top-scoring row differs from fp32's beyond fp16's own error

    @property
    def ok(self) -> bool:
        if self.kind == "vector":
            return self.fp8_min_cosine is not None and self.fp8_min_cosine >= MIN_COSINE
        return self.fp8_max_abs_error <= self.bound and self.top_row_changed == 0

    @property
    def share_of_bound(self) -> float:
        """How much of its bound the error takes (1: at the bound), comparable across kinds of output."""
        if self.kind == "vector":
            return (1 - (self.fp8_min_cosine or 0.0)) / (1 - MIN_COSINE)
        return self.fp8_max_abs_error / max(self.bound, 1e-12)

    def report(self) -> str:
        if self.kind == "vector":
            return (f"{self.output}: min cosine to fp32 over {self.rows} rows: fp8 {self.fp8_min_cosine:.5f}, fp16 "
                    f"{self.fp16_min_cosine:.5f} (bound {MIN_COSINE}); max abs error fp8 {self.fp8_max_abs_error:.3g}, "
                    f"fp16 {self.fp16_max_abs_error:.3g}")
        return (f"{self.output}: max abs error to fp32 over {self.rows} rows: fp8 {self.fp8_max_abs_error:.3g}, fp16 "
                f"{self.fp16_max_abs_error:.3g} (bound {self.bound:.3g} = {ERROR_FACTOR:g} x fp16); top row changed in "
                f"{self.top_row_changed} batch(es)")

    def as_manifest(self) -> dict:
        return asdict(self)


def _run(model: torch.nn.Module, feeds: dict[str, np.ndarray], inputs: tuple[str, ...], device: str,
         dtype: torch.dtype) -> list[np.ndarray]:
    args = [torch.from_numpy(feeds[name]).to(device) for name in inputs]
    args = [a.to(dtype) if a.is_floating_point() else a for a in args]
    with torch.inference_mode():
        result = model(*args)
    values = result if isinstance(result, (tuple, list)) else [result]
    return [v.float().cpu().numpy().reshape(v.shape[0], -1) for v in values]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def top_changes(reference: list[np.ndarray], other: list[np.ndarray], fp16_error: float) -> int:
    """Batches (score vectors, one per batch) whose chosen row differs from the fp32 reference's where
    the reference's top two are further apart than twice the fp16 path's own error (closer, either
    choice is within fp16's noise)."""
    changed = 0
    for ref, got in zip(reference, other):
        if len(ref) > 1:
            top, second = np.sort(ref)[-2:][::-1]
            changed += int(top - second > 2 * fp16_error and np.argmax(got) != np.argmax(ref))
    return changed


class AccuracyCheck:
    """fp32 and fp16 (`half`, a half copy of `model`) run once on `batches`; `measure(quantised)`
    compares an fp8 model (already in fp16) against them, output by output."""

    def __init__(self, model: torch.nn.Module, batches: list[dict[str, np.ndarray]], inputs: tuple[str, ...],
                 output_names: tuple[str, ...], device: str):
        self.half = copy.deepcopy(model).to(device).half().eval()
        reference_model = model.to(device).float().eval()
        self.batches, self.inputs, self.output_names, self.device = batches, inputs, output_names, device
        self.fp32 = [_run(reference_model, feeds, inputs, device, torch.float32) for feeds in batches]
        self.fp16 = [_run(self.half, feeds, inputs, device, torch.float16) for feeds in batches]

    def measure(self, quantised: torch.nn.Module) -> list[Fp8Accuracy]:
        fp8_runs = [_run(quantised, feeds, self.inputs, self.device, torch.float16) for feeds in self.batches]
        layers = sum(isinstance(m, Fp8Linear) for m in quantised.modules())
        results = []
        for index, name in enumerate(self.output_names):
            per_batch = {path: [batch[index] for batch in outputs]
                         for path, outputs in (("fp32", self.fp32), ("fp16", self.fp16), ("fp8", fp8_runs))}
            ref, fp16, fp8 = (np.concatenate(per_batch[path]) for path in ("fp32", "fp16", "fp8"))
            error16, error8 = float(np.abs(fp16 - ref).max()), float(np.abs(fp8 - ref).max())
            if ref.shape[1] >= VECTOR_MIN_WIDTH:
                results.append(Fp8Accuracy(len(ref), layers, name, "vector", error16, error8, MIN_COSINE,
                                           float(_cosines(fp8, ref).min()), float(_cosines(fp16, ref).min()), 0))
                continue
            changed = top_changes([r[:, 0] for r in per_batch["fp32"]], [q[:, 0] for q in per_batch["fp8"]], error16)
            results.append(Fp8Accuracy(len(ref), layers, name, "score", error16, error8,
                                       ERROR_FACTOR * max(error16, 1e-3), None, None, changed))
        return results


@dataclass(frozen=True)
class Fp8Choice:
    """The layers published in FP8, what the gate measured on them, and the kinds of layer kept in
    fp16 with what each measured alone in FP8 (or, where none held, why nothing is published)."""
    layers: list[str]
    accuracy: list[Fp8Accuracy]
    kept: dict[str, str]

    def report(self) -> str:
        kept = "".join(f"\n  kept in fp16: {group} (alone in fp8: {why})" for group, why in self.kept.items())
        return "\n".join(a.report() for a in self.accuracy) + kept

    def as_manifest(self) -> dict:
        return {"fp8": [a.as_manifest() for a in self.accuracy], "fp8_layers": self.layers, "kept_in_fp16": self.kept}


def choose_fp8_layers(groups: dict[str, list[str]],
                      measure: Callable[[list[str]], list[Fp8Accuracy]]) -> Fp8Choice:
    """Every group in FP8 where the bounds hold; else the groups that hold alone, added from the
    smallest error up while the bounds still hold together (a greedy search: `measure(layer names)`
    runs the gate's inputs with those layers in FP8). With no group holding alone, `layers` is empty
    and `accuracy` is every layer's."""
    every = [name for names in groups.values() for name in names]
    accuracy = measure(every)
    if all(a.ok for a in accuracy) or len(groups) < 2:
        return Fp8Choice(every if all(a.ok for a in accuracy) else [], accuracy, {})
    alone = {group: measure(names) for group, names in groups.items()}
    kept = {group: "; ".join(a.report() for a in measured if not a.ok)
            for group, measured in alone.items() if not all(a.ok for a in measured)}
    holding = sorted((g for g in groups if g not in kept), key=lambda g: max(a.share_of_bound for a in alone[g]))
    if not holding:
        return Fp8Choice([], accuracy, kept)
    chosen, accuracy = [holding[0]], alone[holding[0]]
    for group in holding[1:]:
        together = measure([name for g in chosen + [group] for name in groups[g]])
        if all(a.ok for a in together):
            chosen, accuracy = chosen + [group], together
        else:
            kept[group] = "holds alone, not with " + ", ".join(chosen)
    return Fp8Choice([name for g in groups if g in chosen for name in groups[g]], accuracy, kept)


def choose_for_model(model: torch.nn.Module, batches: list[dict[str, np.ndarray]], inputs: tuple[str, ...],
                     output_names: tuple[str, ...], device: str) -> Fp8Choice:
    """`choose_fp8_layers` for `model` (fp32) on the gate's batches: each candidate set of layers
    quantised in a fresh fp16 copy, against fp32 and fp16 run once."""
    check = AccuracyCheck(model, batches, inputs, output_names, device)

    def measure(names: list[str]) -> list[Fp8Accuracy]:
        quantised = copy.deepcopy(check.half)
        quantise_linear_layers(quantised, names=names)
        return check.measure(quantised)
    return choose_fp8_layers(layer_groups(check.half), measure)


def gate(model_name: str, accuracy: list[Fp8Accuracy], kept: dict[str, str] | None = None) -> None:
    """Refuse to publish when a bound fails, naming the output, what was measured and the fix (and,
    from `choose_fp8_layers`, what each kind of layer measured alone)."""
    failed = [a for a in accuracy if not a.ok]
    if failed:
        alone = "".join(f"; {group} alone: {why}" for group, why in (kept or {}).items())
        raise UserError(f"{model_name} in fp8 is outside its accuracy bounds, so nothing was published: "
                        + "; ".join(a.report() for a in failed) + alone
                        + ". Serve it in fp16 (PRECISION=fp16 / --use-fp16).")
