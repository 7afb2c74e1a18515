"""Build ECLAIR for the PyTorch runtime: a VisionEncoderDecoder folder -> the `eclair` python model.

Checkpoint: a Hugging Face VisionEncoderDecoder folder of the Nougat/Donut family (config.json,
model.safetensors, tokenizer files, optionally preprocessor_config.json). `publish_eclair` is the
one owner of the served `eclair` model: this builder publishes it for the PyTorch generator, and
the TensorRT-LLM overlay's build (`triton_models/eclair/trtllm.py`) publishes the same contract
next to its engines for the TensorRT-LLM generator.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from converters.errors import UserError
from converters.model_folder import Golden
from converters.manifest import file_sha256
from converters.precision import TOLERANCES
from triton_models.common import (BuildOptions, companion_is_current, gpu_placement, publish_python_model,
                                  python_model_config, tensor)
from triton_models.registry import get
from triton_models.eclair.pages import PAGE_HEIGHT, PAGE_WIDTH, pad_page
from triton_models.eclair.runtime import EclairRuntime, parse_compile_encoder

# `--option` keys this builder reads (triton_models/build.py refuses any other)
OPTIONS = {"max_new_tokens": "tokens per page at most (default: the checkpoint's limit)",
           "generator": "graph (the graph decoder, default) or pytorch (`generate`)",
           "compile_encoder": "on or off: compile the vision encoder on a GPU (ECLAIR_COMPILE_ENCODER)"}

HERE = Path(__file__).parent
NAME = get("eclair").core
_CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin",
                     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                     "sentencepiece.bpe.model", "preprocessor_config.json", "added_tokens.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the TensorRT-LLM generator runs engines instead


def check_folder(folder: Path) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"ECLAIR checkpoint {folder} lacks config.json; point ECLAIR_CHECKPOINT at a Hugging Face "
                        "VisionEncoderDecoder folder.")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != "vision-encoder-decoder":
        raise UserError(f"ECLAIR checkpoint {folder} is a '{model_type}' model; a vision-encoder-decoder is expected.")
    if not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        raise UserError(f"ECLAIR checkpoint {folder} has no model.safetensors or pytorch_model.bin.")
    if not any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt", "sentencepiece.bpe.model")):
        raise UserError(f"ECLAIR checkpoint {folder} has no tokenizer files.")


def make_demo_checkpoint(folder: Path, tokenizer_folder: Path | None = None) -> Path:
    """A tiny random Donut-Swin encoder + mBART decoder at 1280x1024, with a WordPiece tokenizer
    (default: MiniLM's, from the demo weights package)."""
    from transformers import (AutoTokenizer, DonutSwinConfig, DonutSwinModel, MBartConfig, MBartForCausalLM,
                              VisionEncoderDecoderModel)

    from triton_models.e5_small_v2.build import make_demo_checkpoint as minilm_folder

    root = Path(folder) / "eclair_demo"
    if (root / "model.safetensors").is_file():
        return root
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder or minilm_folder(folder)), local_files_only=True)
    encoder = DonutSwinConfig(image_size=[PAGE_HEIGHT, PAGE_WIDTH], patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                              num_heads=[1, 2, 4, 8], window_size=10)
    decoder = MBartConfig(vocab_size=len(tokenizer), d_model=64, decoder_layers=2, decoder_attention_heads=4,
                          decoder_ffn_dim=128, max_position_embeddings=512, is_decoder=True, add_cross_attention=True,
                          scale_embedding=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                          eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(encoder=DonutSwinModel(encoder), decoder=MBartForCausalLM(decoder))
    # At its default init the random decoder repeats its start token whatever the page; larger
    # matrices make its text depend on the page, so that a mixed-up page or slot shows.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        model.enc_to_dec_proj.weight.copy_(torch.randn(model.enc_to_dec_proj.weight.shape, generator=generator) * 0.3)
    model.config.decoder_start_token_id = tokenizer.cls_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.sep_token_id
    model.save_pretrained(str(root))
    tokenizer.save_pretrained(str(root))
    return root


def demo_page() -> np.ndarray:
    page = np.full((1100, 850, 3), 255, dtype=np.uint8)
    page[80:120, 80:700] = 0
    page[200:900:30, 80:770] = 60
    return page


def max_new_tokens(folder: Path, demo: bool = False, wanted: int | None = None) -> int:
    """The generation limit, the same for both generators: `wanted` if given, else 64 for the demo,
    else the checkpoint's generation_config max_length, else up to 4096; never past the decoder's
    positions."""
    decoder = json.loads((folder / "config.json").read_text()).get("decoder", {})
    positions = int(decoder.get("max_position_embeddings", 4096))
    if wanted is None:
        generation = folder / "generation_config.json"
        checkpoint_limit = json.loads(generation.read_text()).get("max_length") if generation.is_file() else None
        return 64 if demo else min(int(checkpoint_limit or 4096), positions)
    if wanted > positions:
        raise UserError(f"ECLAIR max_new_tokens {wanted} exceeds the decoder's max_position_embeddings ({positions}) "
                        f"in {folder / 'config.json'}; use at most {positions}.")
    return wanted


def read_options(options: BuildOptions) -> tuple[int | None, str, bool]:
    """max_new_tokens as asked (None: the checkpoint's; its decoder's limit is checked in build), the
    generator and whether to compile the vision encoder; triton_models.build checks them before any work."""
    wanted = options.number("max_new_tokens", 1, 1, 1 << 20, kind=int) if "max_new_tokens" in options.extra else None
    # The graph decoder with in-flight batching: ECLAIR_BATCH_SIZE pages decode at once (its slots)
    # and one request carries at most that many pages. `--option generator=pytorch` serves `generate`.
    generator = options.extra.get("generator", "graph")
    if generator not in ("graph", "pytorch"):
        raise UserError(f"ECLAIR option generator={generator} is not one of graph, pytorch (TensorRT-LLM is the "
                        "overlay's build).")
    # The vision encoder on a GPU: compiled then captured per bucket (about 1.7x faster a page on an
    # H200, but minutes of compiling at build and load); `--option compile_encoder=off`: captured only.
    try:
        compile_encoder = parse_compile_encoder(options.extra.get("compile_encoder"),
                                                "ECLAIR option compile_encoder",
                                                "set ECLAIR_COMPILE_ENCODER in .env (or --option compile_encoder) "
                                                "to on or off.")
    except ValueError as error:
        raise UserError(str(error)) from None
    return wanted, generator, compile_encoder


def build(options: BuildOptions) -> list[Path]:
    folder = Path(options.checkpoint)
    check_folder(folder)
    wanted, generator, compile_encoder = read_options(options)
    # Like the python_torch runner: CPU instances that drive the GPU named by the `device` parameter.
    # The graph decoder: one instance per device, whatever INSTANCE_COUNT says; its slots are its
    # concurrency. Two on one GPU split the pages between two half-full decoders that both step
    # (ingest run 12: two schedulers stepping 10 s each at about two pages a step).
    count, placement = gpu_placement(replace(options, instance_count=1) if generator == "graph" else options)
    parameters = {"max_new_tokens": str(max_new_tokens(folder, options.demo, wanted)), "device": options.device,
                  "generator": generator, "slots": str(options.max_batch_size),
                  "compile_encoder": "on" if compile_encoder else "off",
                  **placement}
    return [publish_eclair(options.repo, folder, options.max_batch_size, parameters, count, force=options.force,
                           demo=options.demo)]


def publish_eclair(repo: Path, folder: Path, max_batch_size: int, parameters: dict[str, str], instance_count: int = 1,
                   *, force: bool = False, demo: bool = False, engine_dir: Path | None = None) -> Path:
    """Publish the `eclair` model (`image` UINT8 [B,1280,1024,3] -> `text` BYTES [B]) into `repo`, for
    every generator: `parameters["generator"]` is `graph` (the builder's; `slots` decoder slots),
    `pytorch` (the default here; both publish the checkpoint's weights) or `tensorrt_llm` (tokenizer
    and settings only; the engines at `engine_dir`, which
    `parameters["engine_dir"]` names relative to the model's version folder). Golden answers come
    from the serving path itself: greedy decoding of a text is exact, not toleranced."""
    generator = parameters.get("generator", "pytorch")
    config = python_model_config(
        NAME, [tensor("image", "TYPE_UINT8", [PAGE_HEIGHT, PAGE_WIDTH, 3])], [tensor("text", "TYPE_STRING", [1])],
        max_batch_size, parameters, instance_count=instance_count)
    sources = {"checkpoint": file_sha256(folder), "model_py": file_sha256(HERE / "eclair_model.py"),
               "runtime": file_sha256(HERE / "runtime.py"), "graph_decoder": file_sha256(HERE / "graph_decoder.py"),
               "encoder_graphs": file_sha256(HERE / "encoder_graphs.py"),
               "decode_attention": file_sha256(HERE / "decode_attention.py"),
               "greedy_rules": file_sha256(HERE / "greedy_rules.py"),
               "inflight": file_sha256(HERE / "inflight.py")}
    if generator == "tensorrt_llm":  # the engines themselves, not the repository published beside them
        from triton_models.eclair.trtllm_runtime import DECODER_FOLDER, VISUAL_ENGINE

        missing = [str(Path(engine_dir) / n) for n in (VISUAL_ENGINE, DECODER_FOLDER) if not (Path(engine_dir) / n).exists()]
        if missing:
            raise UserError(f"ECLAIR's TensorRT-LLM engines are missing ({', '.join(missing)}); run the overlay's "
                            "build-eclair first.")
        sources.update(trtllm_runtime=file_sha256(HERE / "trtllm_runtime.py"),
                       visual_engine=file_sha256(Path(engine_dir) / VISUAL_ENGINE),
                       decoder_engine=file_sha256(Path(engine_dir) / DECODER_FOLDER))
    if companion_is_current(repo, config, sources, force):
        return Path(repo) / NAME
    canvas, _ = pad_page(demo_page())
    params = {k: v.string_value for k, v in config.parameters.items()}
    runtime = EclairRuntime.for_serving(folder, params, engine_dir=engine_dir)
    expected = runtime(canvas[None])
    golden = Golden({"image": canvas[None]}, {"text": np.array(expected)}, TOLERANCES["fp32"])  # [B]: see eclair_model.py
    files: dict[str, Path | bytes | str] = {"1/eclair_runtime.py": HERE / "runtime.py",
                                            "1/eclair_graph_decoder.py": HERE / "graph_decoder.py",
                                            "1/eclair_encoder_graphs.py": HERE / "encoder_graphs.py",
                                            "1/eclair_decode_attention.py": HERE / "decode_attention.py",
                                            "1/eclair_greedy_rules.py": HERE / "greedy_rules.py",
                                            "1/eclair_inflight.py": HERE / "inflight.py"}
    if generator == "tensorrt_llm":
        files["1/eclair_trtllm_runtime.py"] = HERE / "trtllm_runtime.py"
    names = _CHECKPOINT_FILES if generator != "tensorrt_llm" else [n for n in _CHECKPOINT_FILES if n not in _WEIGHT_FILES]
    files.update({f"1/checkpoint/{n}": folder / n for n in names if (folder / n).is_file()})
    return publish_python_model(repo, config, HERE / "eclair_model.py", sources=sources, golden=golden, files=files,
                                demo=demo, precision=runtime.precision)
