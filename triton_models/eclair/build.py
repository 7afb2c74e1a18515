"""Build ECLAIR for the PyTorch runtime: a VisionEncoderDecoder folder -> the `eclair` python model.

Checkpoint: a Hugging Face VisionEncoderDecoder folder of the Nougat/Donut family (config.json,
model.safetensors, tokenizer files, optionally preprocessor_config.json). The TensorRT-LLM
engines (encoder + decoder) are built by `third_party/eclair_triton` on GPU hosts; see
`triton_models/eclair/trtllm.py` for the decisions around that build.
"""
from __future__ import annotations

import json
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

HERE = Path(__file__).parent
NAME = get("eclair").core
_CHECKPOINT_FILES = ("config.json", "generation_config.json", "model.safetensors", "pytorch_model.bin",
                     "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                     "sentencepiece.bpe.model", "preprocessor_config.json", "added_tokens.json")


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


def _max_new_tokens(folder: Path, options: BuildOptions) -> int:
    """The generation limit: 64 for the demo, else up to 4096, never past the decoder's positions."""
    decoder = json.loads((folder / "config.json").read_text()).get("decoder", {})
    positions = int(decoder.get("max_position_embeddings", 4096))
    if "max_new_tokens" not in options.extra:
        return 64 if options.demo else min(4096, positions)
    wanted = int(options.extra["max_new_tokens"])
    if wanted > positions:
        raise UserError(f"ECLAIR max_new_tokens {wanted} exceeds the decoder's max_position_embeddings ({positions}) "
                        f"in {folder / 'config.json'}; use at most {positions}.")
    return wanted


def build(options: BuildOptions) -> list[Path]:
    from triton_models.eclair.runtime import EclairRuntime

    folder = Path(options.checkpoint)
    check_folder(folder)
    max_new_tokens = _max_new_tokens(folder, options)
    # Like the python_torch runner: CPU instances that drive the GPU named by the `device` parameter.
    count, placement = gpu_placement(options)
    config = python_model_config(
        NAME, [tensor("image", "TYPE_UINT8", [PAGE_HEIGHT, PAGE_WIDTH, 3])], [tensor("text", "TYPE_STRING", [1])],
        options.max_batch_size, {"max_new_tokens": str(max_new_tokens), "device": options.device, **placement},
        instance_count=count)
    sources = {"checkpoint": file_sha256(folder), "model_py": file_sha256(HERE / "eclair_model.py"),
               "runtime": file_sha256(HERE / "runtime.py")}
    if companion_is_current(options.repo, config, sources, options.force):
        return [options.repo / NAME]
    canvas, _ = pad_page(demo_page())
    # Golden text from the serving path itself (fp16 on CUDA): greedy decoding of a text is exact, not toleranced.
    params = {k: v.string_value for k, v in config.parameters.items()}
    runtime = EclairRuntime.for_serving(folder, params)
    expected = runtime(canvas[None])
    golden = Golden({"image": canvas[None]}, {"text": np.array([[t] for t in expected])}, TOLERANCES["fp32"])
    files: dict[str, Path | bytes | str] = {"1/eclair_runtime.py": HERE / "runtime.py"}
    files.update({f"1/checkpoint/{n}": folder / n for n in _CHECKPOINT_FILES if (folder / n).is_file()})
    return [publish_python_model(options.repo, config, HERE / "eclair_model.py", sources=sources, golden=golden,
                                 files=files, demo=options.demo, precision=runtime.precision)]
