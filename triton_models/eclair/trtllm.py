"""ECLAIR on TensorRT-LLM (GPU hosts): the engine build and the served repository.

The build runs in the TensorRT-LLM image (`third_party/eclair_triton`): the vision encoder goes
ONNX -> TensorRT through the converters; the mBART decoder goes through TensorRT-LLM's
`convert_checkpoint.py --model_type bart --nougat` and `trtllm-build`. Then `publish_repository`
writes `<engines>/repository/eclair`, the same `eclair` model as the PyTorch runtime (one owner:
`triton_models.eclair.build.publish_eclair`) with the TensorRT-LLM generator, which
`triton-eclair` serves. What is decided here (visual tokens per page, sequence limits, dtype,
batch, where TensorRT-LLM keeps its converter) is tested; the TensorRT-LLM commands and runtime
only run where TensorRT-LLM is installed.

`python -m triton_models.eclair.trtllm plan CHECKPOINT` prints the plan and the commands.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from converters.errors import ArgumentParser, UserError


@dataclass(frozen=True)
class TrtllmPlan:
    image_hw: tuple[int, int]
    encoder_tokens: int  # visual features per page, what the decoder cross-attends to
    encoder_hidden: int
    max_batch_size: int
    max_new_tokens: int
    dtype: str  # bfloat16 | float16

    @property
    def max_encoder_input_len(self) -> int:
        # With remove_input_padding the encoder output of a whole batch is packed into one dimension.
        return self.encoder_tokens * self.max_batch_size

    def decoder_build_command(self, checkpoint_dir: Path, engine_dir: Path) -> list[str]:
        return ["trtllm-build", "--checkpoint_dir", str(checkpoint_dir), "--output_dir", str(engine_dir),
                "--paged_kv_cache", "disable", "--moe_plugin", "disable", "--gemm_plugin", self.dtype,
                "--bert_attention_plugin", self.dtype, "--gpt_attention_plugin", self.dtype,
                "--remove_input_padding", "enable", "--max_beam_width", "1",
                "--max_batch_size", str(self.max_batch_size), "--max_input_len", "1",
                "--max_seq_len", str(self.max_new_tokens + 1),
                "--max_encoder_input_len", str(self.max_encoder_input_len)]

    def convert_command(self, examples: Path | None, hf_dir: Path, out_dir: Path) -> list[str]:
        return [sys.executable, str(find_convert_script(examples)), "--model_type", "bart",
                "--model_dir", str(hf_dir), "--output_dir", str(out_dir), "--tp_size", "1", "--pp_size", "1",
                "--dtype", self.dtype, "--nougat"]


# Where TensorRT-LLM keeps the encoder-decoder converter: newer releases moved the examples.
CONVERT_SCRIPTS = ("models/core/enc_dec/convert_checkpoint.py", "enc_dec/convert_checkpoint.py")
# Where the overlay's image keeps TensorRT-LLM's examples: NVIDIA's *-trtllm-python-py3 images of
# 24.07 and later ship none (triton-inference-server/tensorrtllm_backend issues 721 and 739), so the
# image build fetches those of its installed tensorrt_llm into the first
# (third_party/eclair_triton/fetch_trtllm_examples.py); older images had the second.
EXAMPLES_LOCATIONS = (Path("/opt/tensorrt_llm_examples"), Path("/app/tensorrt_llm/examples"))
EXAMPLES_VERSION_FILE = "TENSORRT_LLM_VERSION"  # written by the fetch: the tensorrt_llm version they are for


def installed_trtllm_version() -> str | None:
    """The installed tensorrt_llm's version, from its package metadata: importing it loads CUDA's driver
    library, which a build without a GPU (an image build, this plan on a laptop) may lack."""
    from importlib import metadata

    for name in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _script_in(folder: Path) -> Path | None:
    return next((Path(folder) / r for r in CONVERT_SCRIPTS if (Path(folder) / r).is_file()), None)


def find_convert_script(examples: Path | None = None, locations: tuple[Path, ...] = EXAMPLES_LOCATIONS,
                        version: str | None = None) -> Path:
    """convert_checkpoint.py under `examples` if given, else in the first of `locations` that has it,
    refusing examples fetched for another tensorrt_llm than the installed one (`version`)."""
    if examples is not None:
        script = _script_in(examples)
        if script is None:
            raise UserError(f"TensorRT-LLM's convert_checkpoint.py is not under {examples} (looked for "
                            f"{' and '.join(CONVERT_SCRIPTS)}); pass --examples with the TensorRT-LLM examples folder.")
        return script
    version = version or installed_trtllm_version()
    for folder in locations:
        script = _script_in(folder)
        if script is None:
            continue
        marker = Path(folder) / EXAMPLES_VERSION_FILE
        fetched_for = next(iter(marker.read_text().split()), None) if marker.is_file() else None
        if version and fetched_for and fetched_for != version:
            raise UserError(f"the TensorRT-LLM examples in {folder} are {fetched_for}'s but TensorRT-LLM {version} is "
                            f"installed; rebuild the overlay's image, or pass --examples with {version}'s examples folder.")
        return script
    looked = " and ".join(str(f) for f in locations)
    if version is None:
        raise UserError(f"TensorRT-LLM's convert_checkpoint.py is in neither {looked} and no tensorrt_llm is installed "
                        "here; pass --examples with the examples folder of the TensorRT-LLM that builds the engines.")
    raise UserError(f"TensorRT-LLM {version}'s convert_checkpoint.py is in neither {looked}; rebuild the overlay's image "
                    f"where GitHub is reachable (it fetches the examples of {version}), or pass --examples with the "
                    f"examples folder of TensorRT-LLM {version}.")


def encoder_tokens(encoder: dict) -> tuple[tuple[int, int], int, int]:
    """(image h, w), visual tokens per page and hidden size, from the encoder's HF config."""
    size = encoder.get("image_size")
    image_hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    patch = encoder.get("patch_size", 4)
    kind = encoder.get("model_type")
    if kind in ("donut-swin", "swin"):
        stages = len(encoder["depths"])
        stride = patch * 2 ** (stages - 1)  # each stage but the last merges 2x2 patches
        hidden = int(encoder["embed_dim"] * 2 ** (stages - 1))
    elif kind == "vit":
        stride, hidden = patch, encoder["hidden_size"]
    elif kind and "radio" in str(kind).lower():
        raise UserError(f"ECLAIR checkpoint's encoder is RADIO ('{kind}'): this build makes the vision encoder "
                        "engine through ONNX for Donut-Swin and ViT encoders only, and does not drive TensorRT-LLM's "
                        "RADIO mode (--eclair_radio); serve this checkpoint with the PyTorch runtime (the main "
                        "stack's `eclair`).")
    else:
        raise UserError(f"ECLAIR encoder type '{kind}' is not supported for TensorRT-LLM; use donut-swin or vit.")
    if image_hw[0] % stride or image_hw[1] % stride:
        raise UserError(f"ECLAIR image size {image_hw} is not a multiple of the encoder's stride {stride}.")
    tokens = (image_hw[0] // stride) * (image_hw[1] // stride) + (1 if kind == "vit" else 0)
    return image_hw, tokens, hidden


def plan(checkpoint: Path, batch_size: int, max_new_tokens: int | None = None,
         compute_capability: str | None = None) -> TrtllmPlan:
    config_path = Path(checkpoint) / "config.json"
    if not config_path.is_file():
        raise UserError(f"ECLAIR checkpoint {checkpoint} lacks config.json.")
    config = json.loads(config_path.read_text())
    if batch_size < 1:
        raise UserError(f"ECLAIR_BATCH_SIZE must be at least 1, got {batch_size}.")
    image_hw, tokens, hidden = encoder_tokens(config["encoder"])
    from triton_models.eclair.build import max_new_tokens as generation_limit

    max_new_tokens = generation_limit(Path(checkpoint), wanted=max_new_tokens)  # the PyTorch runtime's limit too
    # bf16 where the GPU has it (Ampere and newer): the decoder's logits stay in range; fp16 before.
    major = int(compute_capability.split(".")[0]) if compute_capability else 8
    return TrtllmPlan(image_hw, tokens, hidden, batch_size, max_new_tokens, "bfloat16" if major >= 8 else "float16")


class VisionEncoder:
    """The checkpoint's vision encoder alone, for ONNX -> TensorRT: pixels -> encoder states."""

    def __new__(cls, folder: Path):
        import torch
        from transformers import VisionEncoderDecoderModel

        class _Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = VisionEncoderDecoderModel.from_pretrained(str(folder), local_files_only=True).encoder

            def forward(self, pixel_values):
                return self.encoder(pixel_values=pixel_values).last_hidden_state

        return _Encoder().eval()


def encoder_settings(checkpoint: Path, work: Path, engines: Path, batch_size: int, device: str = "cuda",
                     precision: str = "fp16"):
    """The converter's settings for the vision encoder: pixels -> encoder states, batch 1..batch_size."""
    from converters.batching import BatchPlan
    from converters.io_config import parse_io_config
    from converters.conversion_settings import ConversionSettings

    result = plan(checkpoint, batch_size)
    height, width = result.image_hw
    io = json.dumps({"inputs": [{"name": "pixel_values", "dtype": "float32", "shape": [3, height, width], "range": [-2, 2]}],
                     "outputs": [{"name": "encoder_states", "dtype": "float32",
                                  "shape": [result.encoder_tokens, result.encoder_hidden]}]})
    return ConversionSettings(
        ckpt_path=checkpoint, model_script_path=Path(__file__), model_class_name="VisionEncoder", model_name="encoder",
        io=parse_io_config(io), plan=BatchPlan.create(batch_size, (None, 1), None), onnx_path=work / "encoder.onnx",
        engine_path=engines / "visual_encoder.plan", triton_repo=work / "unused_repo", triton_inputs=None, device=device,
        generate_onnx=True, generate_trt=True, generate_triton_config=False, overwrite=True,
        use_fp16=precision == "fp16")


def build_encoder(checkpoint: Path, work: Path, engines: Path, batch_size: int, device: str = "cuda",
                  precision: str = "fp16"):
    """Vision encoder -> ONNX -> TensorRT engine at `engines/visual_encoder.plan` (the converters' pipeline)."""
    from converters.pipeline import convert

    settings = encoder_settings(checkpoint, work, engines, batch_size, device, precision)
    return convert(settings, load_model=lambda: VisionEncoder(checkpoint))


def build(checkpoint: Path, work: Path, engines: Path, examples: Path | None, batch_size: int) -> TrtllmPlan:
    """Encoder -> ONNX -> TensorRT (fp16) with the converters; decoder -> TensorRT-LLM; then the
    served repository beside them. GPU hosts only."""
    import subprocess

    from converters.manifest import gpu_identity
    from converters.tensorrt_backend import installed_tensorrt

    tensorrt = installed_tensorrt()
    if tensorrt is None or not tensorrt.serves_triton:
        raise UserError("the ECLAIR TensorRT-LLM build needs NVIDIA's TensorRT and TensorRT-LLM: run it in the "
                        "triton-trt-llm image.")
    result = plan(checkpoint, batch_size, compute_capability=gpu_identity()["compute_capability"])
    convert = result.convert_command(examples, checkpoint, work / "trtllm_checkpoint")  # finds the script first
    build_encoder(checkpoint, work, engines, batch_size)
    subprocess.run(convert, check=True)
    subprocess.run(result.decoder_build_command(work / "trtllm_checkpoint" / "decoder", engines / "decoder"), check=True)
    (engines / "plan.json").write_text(json.dumps(result.__dict__, indent=2, default=list) + "\n")
    publish_repository(checkpoint, engines, result, generator="tensorrt_llm", device=SERVING_DEVICE)
    return result


# The GPU the engines serve on, named (a bare "cuda" has no index for torch.cuda.set_device): TensorRT-LLM's
# EncDecModelRunner runs on MPI rank % GPU count, cuda:0 in a process of its own (trtllm_runtime.serving_gpu).
SERVING_DEVICE = "cuda:0"
REPOSITORY = "repository"  # under the engines folder: what triton-eclair serves
ENGINE_DIR_FROM_VERSION = "../../.."  # <engines>/repository/eclair/1 -> <engines>


def publish_repository(checkpoint: Path, engines: Path, result: TrtllmPlan, generator: str = "tensorrt_llm",
                       device: str = SERVING_DEVICE, force: bool = False) -> Path:
    """`<engines>/repository/eclair`: the `eclair` contract, batch size and token limit of the plan.
    `generator="pytorch"` puts the PyTorch runtime behind the same model (what CI runs: TensorRT-LLM
    cannot be installed there); `tensorrt_llm` runs the engines beside the repository."""
    from triton_models.eclair.build import publish_eclair

    parameters = {"max_new_tokens": str(result.max_new_tokens), "device": device, "generator": generator}
    if generator == "tensorrt_llm":
        parameters["engine_dir"] = ENGINE_DIR_FROM_VERSION
    return publish_eclair(Path(engines) / REPOSITORY, Path(checkpoint), result.max_batch_size, parameters, force=force,
                          engine_dir=Path(engines) if generator == "tensorrt_llm" else None)


if __name__ == "__main__":
    import argparse

    parser = ArgumentParser(prog="python -m triton_models.eclair.trtllm")
    parser.add_argument("command", choices=("plan", "build"))
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("/work/eclair"))
    parser.add_argument("--engines", type=Path, default=Path("/engines"))
    parser.add_argument("--examples", type=Path, default=None,
                        help="TensorRT-LLM's examples folder (convert_checkpoint.py); default: the first of "
                             f"{', '.join(map(str, EXAMPLES_LOCATIONS))} that has it")
    args = parser.parse_args()
    try:
        if args.command == "plan":
            result = plan(args.checkpoint, args.batch_size)
            print(result)
            print(" ".join(result.convert_command(args.examples, args.checkpoint, args.work / "trtllm_checkpoint")))
            print(" ".join(result.decoder_build_command(args.work / "trtllm_checkpoint" / "decoder", args.engines / "decoder")))
        else:
            build(args.checkpoint, args.work, args.engines, args.examples, args.batch_size)
    except UserError as exc:
        sys.exit(f"error: {exc}")
