"""FP8 for the compiled path (converters/fp8.py) on CPU: which layers are quantised, that the
quantised model keeps its FP8 weights through dtype casts, the refusals off FP8 GPUs, and the
accuracy gate, which publishes a sound quantisation and refuses a deliberately broken one, and
keeps in fp16 the kinds of layer whose FP8 breaks the bounds."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from converters.errors import UserError
from converters.fp8 import (ERROR_FACTOR, AccuracyCheck, Fp8Accuracy, Fp8Linear, check_fp8_device, choose_fp8_layers,
                            gate, layer_groups, quantise_linear_layers, top_changes)


class Scorer(torch.nn.Module):
    """A small transformer-shaped scorer: a block of linear layers, a norm and a 1-wide head."""

    def __init__(self, width=64, vector=False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(100, width)
        self.up, self.down = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)
        self.norm = torch.nn.LayerNorm(width)
        self.odd = torch.nn.Linear(width, 24)  # 24 is not a multiple of 16: FP8 GEMMs cannot take it
        self.head = torch.nn.Linear(24, 16 if vector else 1)

    def forward(self, ids):
        x = self.embed(ids)
        x = self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))
        return self.head(self.odd(x).mean(1))


def _batches(rows=8, count=8):
    generator = np.random.default_rng(0)
    return [{"ids": generator.integers(0, 100, (rows, 12)).astype(np.int64)} for _ in range(count)]


def test_only_the_quantisable_linear_layers_go_to_fp8_and_stay_fp8_through_casts():
    model = Scorer().half()
    assert quantise_linear_layers(model) == ["up", "down"]  # not the head, not 24 wide, not the embedding or norm
    assert isinstance(model.up, Fp8Linear) and isinstance(model.head, torch.nn.Linear)
    model.half().float().half()  # what export and runners do to a module
    assert model.up.weight_bytes.dtype == torch.uint8 and model.up.weight_scale.dtype == torch.float32
    weight = Scorer().up.weight.detach()
    restored = model.up.weight_bytes.view(torch.float8_e4m3fn).float() * model.up.weight_scale.reshape(-1, 1)
    assert torch.allclose(restored, weight, rtol=0.07, atol=1e-6)  # e4m3: 3 mantissa bits, one scale per row


def test_a_changed_choice_counts_only_where_the_reference_margin_is_clear_of_fp16_noise():
    reference = [np.array([3.0, 1.0, 0.0]), np.array([1.0, 0.99, 0.0]), np.array([5.0])]
    other = [np.array([0.0, 2.0, 0.0]), np.array([0.0, 2.0, 0.0]), np.array([0.0])]
    # batch 1 flips with a margin of 2 (> 2 x 0.1): counted; batch 2's margin 0.01 is within noise;
    # a one-row batch has no choice to change
    assert top_changes(reference, other, fp16_error=0.1) == 1
    assert top_changes(reference, reference, fp16_error=0.1) == 0
    assert top_changes(reference, other, fp16_error=1.5) == 0


def test_fp8_is_refused_off_fp8_tensor_cores_in_one_sentence(monkeypatch):
    with pytest.raises(UserError, match="on CPU use fp32"):
        check_fp8_device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(UserError) as refused:
        check_fp8_device("cuda")
    assert str(refused.value) == ("--use-fp8 needs FP8 tensor cores (compute capability 8.9 or newer); "
                                  "NVIDIA A100-SXM4-80GB is 8.0: use --use-fp16.")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA L4")
    import converters.fp8 as fp8

    monkeypatch.setattr(fp8, "rowwise_gemm_problem", lambda: "f8f8bf16_rowwise is sm_90 specific")  # an older torch
    with pytest.raises(UserError, match=r"has no row-wise FP8 GEMM for NVIDIA L4 \(f8f8bf16_rowwise is sm_90 "
                                        r"specific\); upgrade torch or use --use-fp16\.$"):
        check_fp8_device("cuda")
    monkeypatch.setattr(fp8, "rowwise_gemm_problem", lambda: None)
    check_fp8_device("cuda")  # Ada with a torch that has the GEMM


@pytest.mark.parametrize("vector", [False, True], ids=["scores", "vectors"])
def test_the_gate_publishes_a_sound_quantisation_and_refuses_a_broken_one(vector):
    model = Scorer(vector=vector).eval()
    quantised = copy.deepcopy(model).half()
    quantise_linear_layers(quantised)
    accuracy = AccuracyCheck(model, _batches(), ("ids",), ("out",), "cpu").measure(quantised)
    (measured,) = accuracy
    assert measured.rows == 64 and measured.quantised_layers == 2
    assert measured.kind == ("vector" if vector else "score")
    assert measured.fp8_max_abs_error > measured.fp16_max_abs_error > 0
    if not vector:
        assert measured.bound == pytest.approx(ERROR_FACTOR * max(measured.fp16_max_abs_error, 1e-3))
    gate("scorer", accuracy)  # within bounds: no error
    assert measured.as_manifest()["fp8_max_abs_error"] == measured.fp8_max_abs_error

    broken = copy.deepcopy(quantised)
    broken.down.weight_scale.mul_(4)  # a deliberately broken quantisation: the wrong scale (a view of its bytes)
    accuracy = AccuracyCheck(model, _batches(), ("ids",), ("out",), "cpu").measure(broken)
    with pytest.raises(UserError) as refused:
        gate("scorer", accuracy)
    message = str(refused.value)
    assert message.startswith("scorer in fp8 is outside its accuracy bounds, so nothing was published: out: ")
    assert message.endswith("Serve it in fp16 (PRECISION=fp16 / --use-fp16).")
    assert ("min cosine" if vector else "max abs error") in message


class Blocks(torch.nn.Module):
    """Two residual blocks of (up, down), each block's layers named by its index, as transformers' are."""

    def __init__(self, width=64):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(100, width)
        self.layer = torch.nn.ModuleList(torch.nn.ModuleDict(
            {"up": torch.nn.Linear(width, 4 * width), "down": torch.nn.Linear(4 * width, width)}) for _ in range(2))
        self.norm, self.head = torch.nn.LayerNorm(width), torch.nn.Linear(width, 1)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.layer:
            x = self.norm(x + block["down"](torch.nn.functional.gelu(block["up"](x))))
        return self.head(x.mean(1))


def _measure_with_broken(model, broken_groups):
    """The gate's measure for `choose_fp8_layers`, with the layers of `broken_groups` quantised with
    a deliberately wrong scale (4x)."""
    check = AccuracyCheck(model, _batches(), ("ids",), ("out",), "cpu")
    groups = layer_groups(model)

    def measure(names):
        quantised = copy.deepcopy(model).half()
        quantise_linear_layers(quantised, names=set(names))
        for name in names:
            if any(name in groups[group] for group in broken_groups):
                quantised.get_submodule(name).weight_scale.mul_(4)
        return check.measure(quantised)
    return measure


def test_layers_are_grouped_by_kind_across_blocks():
    assert layer_groups(Blocks()) == {"layer.*.up": ["layer.0.up", "layer.1.up"],
                                      "layer.*.down": ["layer.0.down", "layer.1.down"]}  # not the head
    mlp = lambda: torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))  # noqa: E731
    blocks = torch.nn.Module()
    blocks.blocks = torch.nn.ModuleList(torch.nn.ModuleDict({"mlp": mlp()}) for _ in range(2))
    assert layer_groups(blocks) == {"blocks.*.mlp.0": ["blocks.0.mlp.0", "blocks.1.mlp.0"],  # a layer's own
                                    "blocks.*.mlp.2": ["blocks.0.mlp.2", "blocks.1.mlp.2"]}  # index stays


def test_the_greedy_choice_adds_kinds_from_the_smallest_error_while_they_hold_together():
    """Made-up errors that add up per layer (bound 1): d breaks the bound alone; a, c, b hold alone
    (in that order of error); a + c hold together, a + c + b do not."""
    error = {"a": 0.2, "b": 0.5, "c": 0.4, "d": 2.0}
    groups = {kind: [f"{kind}.0", f"{kind}.1"] for kind in "abcd"}
    tried = []

    def measure(names):
        tried.append("".join(sorted({n[0] for n in names})))
        total = sum(error[n[0]] for n in names) / 2
        return [Fp8Accuracy(66, len(names), "out", "score", 0.01, total, 1.0, None, None, 0)]

    choice = choose_fp8_layers(groups, measure)
    assert tried == ["abcd", "a", "b", "c", "d", "ac", "abc"]  # all; each alone; then by error: +c, +b
    assert choice.layers == ["a.0", "a.1", "c.0", "c.1"]
    assert choice.accuracy[0].fp8_max_abs_error == pytest.approx(0.6)  # the chosen set's own measurement
    assert choice.kept["b"] == "holds alone, not with a, c" and "max abs error" in choice.kept["d"]
    assert list(choice.kept) == ["d", "b"]


def test_the_kinds_whose_fp8_breaks_the_bounds_stay_fp16_and_the_rest_is_published_in_fp8():
    model = Blocks().eval()
    sound = choose_fp8_layers(layer_groups(model), _measure_with_broken(model, []))
    assert sound.layers == ["layer.0.up", "layer.1.up", "layer.0.down", "layer.1.down"] and sound.kept == {}
    assert sound.accuracy[0].quantised_layers == 4 and sound.accuracy[0].ok

    choice = choose_fp8_layers(layer_groups(model), _measure_with_broken(model, ["layer.*.down"]))
    assert choice.layers == ["layer.0.up", "layer.1.up"]
    assert list(choice.kept) == ["layer.*.down"] and "max abs error to fp32" in choice.kept["layer.*.down"]
    (measured,) = choice.accuracy
    assert measured.ok and measured.quantised_layers == 2  # the published layers' own errors, within bounds
    manifest = choice.as_manifest()
    assert manifest["fp8_layers"] == choice.layers and manifest["fp8"][0]["quantised_layers"] == 2
    assert "kept in fp16: layer.*.down (alone in fp8: out: max abs error" in choice.report()
    gate("blocks", choice.accuracy, choice.kept)  # published: no error


def test_with_every_kind_broken_nothing_is_published_and_each_kind_is_named():
    model = Blocks().eval()
    choice = choose_fp8_layers(layer_groups(model), _measure_with_broken(model, ["layer.*.up", "layer.*.down"]))
    assert choice.layers == [] and set(choice.kept) == {"layer.*.up", "layer.*.down"}
    with pytest.raises(UserError) as refused:
        gate("blocks", choice.accuracy, choice.kept)
    message = str(refused.value)
    assert message.startswith("blocks in fp8 is outside its accuracy bounds, so nothing was published: out: ")
    assert "; layer.*.up alone: out: max abs error" in message and "; layer.*.down alone: " in message
    assert message.endswith("Serve it in fp16 (PRECISION=fp16 / --use-fp16).")


def test_the_converter_refuses_fp8_outside_the_compiled_path(small_deberta, tmp_path, capsys):
    from converters.cli import main
    from tests.helpers import seed_command

    command = seed_command(small_deberta.ckpt, small_deberta.script, tmp_path / "work", tmp_path / "repo")
    args = [a for a in command if a != "--generate-trt"] + ["--use-fp8"]
    assert main(args + ["--serve-backend", "python_onnx"]) == 1
    assert "--use-fp8 is for --serve-backend python_compiled" in capsys.readouterr().err
    assert main(args + ["--serve-backend", "python_compiled"]) == 1  # on CPU
    assert "on CPU use fp32" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists() and not (tmp_path / "work").exists()  # refused before any work


def test_precision_fp8_reaches_the_transformer_cores_only_and_needs_the_compiled_gpu_path(tmp_path):
    from scripts.stack_settings import load_settings
    from triton_models.common import BuildOptions, conversion_settings
    from triton_models.registry import get

    options = BuildOptions(checkpoint=tmp_path, repo=tmp_path, work_dir=tmp_path, max_batch_size=8, precision="fp8",
                           serve_backend="python_compiled", device="cuda")
    io = get("e5_small_v2").core_io_json
    common = dict(name="core", io_json=io, script=tmp_path / "s.py", class_name="C", sequence_length=128)
    e5 = conversion_settings(options, **common, fp8_capable=True)
    yolox_like = conversion_settings(options, **common)
    assert (e5.use_fp8, e5.use_fp16) == (True, True) and (yolox_like.use_fp8, yolox_like.use_fp16) == (False, True)
    env = tmp_path / ".env"
    env.write_text("PRECISION=fp8\n")
    with pytest.raises(UserError, match="PRECISION=fp8 runs only in the compiled path on a GPU"):
        load_settings(env, tmp_path)
    env.write_text("PRECISION=fp8\nLOCAL_SERVE_BACKEND=python_compiled\nLOCAL_DEVICE=cuda\n")
    assert load_settings(env, tmp_path)["PRECISION"] == "fp8"


def test_e5_with_its_real_weights_misses_the_cosine_bound_in_fp8_so_it_stays_fp16(tmp_path):
    """Why E5 is not fp8_capable: its gate, on the real MiniLM weights, refuses per-row FP8."""
    from converters.batching import BatchPlan
    from converters.export import make_sample
    from converters.io_config import parse_io_config
    from triton_models.e5_small_v2.build import make_demo_checkpoint
    from triton_models.e5_small_v2.model_script import E5Embedder
    from triton_models.registry import get

    model = E5Embedder.from_folder(make_demo_checkpoint(tmp_path)).eval()
    io = parse_io_config(get("e5_small_v2").core_io_json)
    plan = BatchPlan.create(64, (None, 128), None)
    quantised = copy.deepcopy(model).half()
    assert len(quantise_linear_layers(quantised)) == 36  # 6 layers x (q, k, v, attention out, FFN up, FFN down)
    batches = [make_sample(io, plan, batch=8, seed=100 + i) for i in range(8)]
    (measured,) = AccuracyCheck(model, batches, ("input_ids", "attention_mask"), ("embedding",),
                                 "cpu").measure(quantised)
    assert measured.kind == "vector" and measured.fp16_min_cosine > 0.9999
    assert measured.fp8_min_cosine < 0.999
    with pytest.raises(UserError, match="embedding: min cosine to fp32 over 64 rows"):
        gate("e5_small_v2", [measured])


def test_the_exported_program_carries_the_chosen_fp8_layers_and_answers_as_the_eager_model(tmp_path):
    """compiled_step.export_program with the layers the gate chose: exactly those run as FP8 GEMMs in
    the saved program, and it answers as the eager model quantised the same way (CPU)."""
    from converters.batching import BatchPlan
    from converters.compiled_step import export_program
    from converters.export import make_sample
    from converters.io_config import parse_io_config

    io = parse_io_config('{"inputs": [{"name": "ids", "dtype": "int64", "shape": [-1], "max_shape": [12], '
                         '"range": [0, 100]}], "outputs": [{"name": "out", "dtype": "float32", "shape": [1]}]}')
    plan = BatchPlan.create(8, (None, 12), None)
    model, chosen = Blocks().eval(), ["layer.0.up", "layer.1.up"]
    sample = make_sample(io, plan, batch=4, seed=0)
    path = export_program(model, io, plan, ("ids",), sample, "cpu", True, tmp_path / "model.pt2", fp8_layers=chosen)
    program = torch.export.load(str(path))
    gemms = [node for node in program.graph.nodes if node.target == torch.ops.aten._scaled_mm.default]
    assert len(gemms) == len(chosen)
    eager = copy.deepcopy(model).half()
    quantise_linear_layers(eager, names=set(chosen))
    ids = torch.from_numpy(make_sample(io, plan, batch=3, seed=5)["ids"])
    with torch.inference_mode():
        torch.testing.assert_close(program.module()(ids), eager(ids), rtol=0, atol=0)


def test_fp8_layers_that_the_model_lacks_are_refused_not_skipped():
    """A manifest's fp8_layers read against another model would quietly serve what the gate never
    measured: refused, naming the layer and the fix."""
    with pytest.raises(UserError) as refused:
        quantise_linear_layers(Blocks().half(), names={"layer.0.up", "layer.7.up"})
    message = str(refused.value)
    assert "layer.7.up" in message and "layer.0.up" not in message and "--overwrite" in message
