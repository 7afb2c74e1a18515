"""Build caption classification: fold checkpoint(s) -> deberta_large (converter), plus caption_selection.

Checkpoint folder layout (the NGC model's, extracted): `weights/foldK/model/model_K.pt`, with
`tokenizer/` (or the tokenizer files at the top) and, for a non-standard size, `config.json`
(a DebertaConfig; default: deberta-large). Option `folds=all` serves every fold averaged;
`folds=K` (default 0) one fold. Options `threshold` (a probability, default 0.5) and
`min_words` (default 1) tune the selection.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch

from converters.errors import UserError
from converters.model_folder import Golden
from converters.export import run_as_served
from converters.io_config import parse_io_config
from converters.loading import load_state_dict
from converters.manifest import file_sha256
from converters.pipeline import convert
from converters.precision import TOLERANCES
from triton_models.caption_classification.model_script import DebertaLargeModel, FoldAverage
from triton_models.common import (BuildOptions, companion_is_current, conversion_settings, core_fingerprint, gpu_placement,
                                  publish_python_model, python_model_config, serving_tokenizer, tensor,
                                  TOKENIZER_FILE)
from triton_models.registry import get

# `--option` keys this builder reads (triton_models/build.py refuses any other)
OPTIONS = {"folds": "which fold checkpoints to average: all, or a fold number (default 0)",
           "threshold": "the probability a caption must reach to be chosen (default 0.5)",
           "min_words": "candidates with fewer words are dropped (default 1)"}

HERE = Path(__file__).parent
CORE, SELECTION = get("caption_classification").triton_names
MAX_LENGTH = get("caption_classification").max_length
# caption_selection takes one image's candidates a request (nv-ingest's contract: no batch axis), and
# each instance holds one call to the core at a time; with several per core instance (on every GPU),
# the calls of concurrent images meet in the core's dynamic batcher instead of queueing one by one
SELECTION_INSTANCES_PER_CORE_INSTANCE = 4
IO_CONFIG = get("caption_classification").core_io_json
GOLDEN_CANDIDATES = ["A bar chart of quarterly revenue by region.", "Figure", "", "Table 3: results on the test set."]


def fold_checkpoints(folder: Path) -> dict[int, Path]:
    found = {}
    for path in sorted(Path(folder).glob("weights/fold*/model/model_*.pt")):
        match = re.fullmatch(r"model_(\d+)\.pt", path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def tokenizer_dir(folder: Path) -> Path:
    for candidate in (folder / "tokenizer", folder):
        if (candidate / "tokenizer.json").is_file() or (candidate / "vocab.txt").is_file() or (candidate / "spm.model").is_file():
            return candidate
    raise UserError(f"caption checkpoint {folder} has no tokenizer (tokenizer/ with tokenizer.json, vocab.txt or "
                    "spm.model); copy the tokenizer the model was trained with there.")


def model_config(folder: Path):
    from transformers import DebertaConfig

    path = folder / "config.json"
    return DebertaConfig.from_json_file(str(path)) if path.is_file() else None


def load_model(folder: Path, folds: list[int]) -> torch.nn.Module:
    available = fold_checkpoints(folder)
    config = model_config(folder)
    models = []
    for fold in folds:
        model = DebertaLargeModel(config)
        result = model.load_state_dict(load_state_dict(available[fold]), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise UserError(f"{available[fold]} does not match DebertaLargeModel (missing {result.missing_keys[:3]}, "
                            f"unexpected {result.unexpected_keys[:3]}); add a config.json for its size.")
        models.append(model)
    return (models[0] if len(models) == 1 else FoldAverage(models)).eval()


def _folds(folder: Path, option: str) -> list[int]:
    available = fold_checkpoints(folder)
    if not available:
        raise UserError(f"caption checkpoint {folder} has no weights/foldK/model/model_K.pt files.")
    if option == "all":
        return sorted(available)
    if not option.isdigit() or int(option) not in available:
        raise UserError(f"caption option folds={option} is not one of: all, {', '.join(map(str, sorted(available)))}.")
    return [int(option)]


def make_demo_checkpoint(folder: Path) -> Path:
    """A small random DeBERTa (2 folds) in the NGC layout, with the MiniLM WordPiece tokenizer."""
    from transformers import DebertaConfig

    from triton_models.e5_small_v2.build import make_demo_checkpoint as minilm_folder

    root = Path(folder) / "caption_demo"
    if fold_checkpoints(root):
        return root
    vocab = minilm_folder(folder)
    config = DebertaConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
                           max_relative_positions=-1, pos_att_type=["c2p", "p2c"], position_biased_input=False)
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(vocab / name, root / "tokenizer" / name)
    config.to_json_file(str(root / "config.json"))
    for fold in range(2):
        torch.manual_seed(fold)
        (root / f"weights/fold{fold}/model").mkdir(parents=True, exist_ok=True)
        torch.save(DebertaLargeModel(config).state_dict(), root / f"weights/fold{fold}/model/model_{fold}.pt")
    return root


def read_options(options: BuildOptions) -> tuple[str, float, int]:
    """folds (all or a fold number; which folds exist is the checkpoint's to say), the threshold (a
    probability) and min_words; triton_models.build checks them before any work."""
    folds = options.extra.get("folds", "0")
    if folds != "all" and not folds.isdigit():
        raise UserError(f"--option folds={folds} must be all or a fold number (default 0).")
    return folds, options.number("threshold", 0.5, 0.0, 1.0), options.number("min_words", 1, 0, 1000, kind=int)


def build(options: BuildOptions) -> list[Path]:
    folder = Path(options.checkpoint)
    if not folder.is_dir():
        raise UserError(f"CAPTION_CHECKPOINT {folder} must be the extracted model folder (with weights/foldK/...); "
                        "for a single .pt file use the converter command directly.")
    fold_option, threshold, min_words = read_options(options)
    folds = _folds(folder, fold_option)
    tokenizer_folder = tokenizer_dir(folder)

    settings = conversion_settings(options, name=CORE, io_json=IO_CONFIG, script=HERE / "model_script.py",
                                   class_name="DebertaLargeModel", sequence_length=MAX_LENGTH,
                                   ckpt_path=folder / "weights", triton_inputs=("input_ids", "input_mask"),
                                   fp8_capable=True)
    core = convert(settings, load_model=lambda: load_model(folder, folds))
    precision = core.precision

    config = python_model_config(
        SELECTION, [tensor("candidates", "TYPE_STRING", [-1])],
        [tensor("caption", "TYPE_STRING", [1]), tensor("score", "TYPE_FP32", [1])], 0,
        {"core_model": CORE, "core_max_batch": str(options.max_batch_size), "max_length": str(MAX_LENGTH),
         "threshold": str(threshold), "min_words": str(min_words)},
        instance_count=gpu_placement(options)[0] * SELECTION_INSTANCES_PER_CORE_INSTANCE)
    sources = {"checkpoint": file_sha256(folder), "model_py": file_sha256(HERE / "caption_selection_model.py"),
               "core": core_fingerprint(core)}
    if companion_is_current(options.repo, config, sources, options.force):
        return [core.model_dir, options.repo / SELECTION]
    fp8_layers = (core.accuracy or {}).get("fp8_layers")  # the layers the fp8 gate published in FP8
    golden = _golden(folder, folds, tokenizer_folder, threshold, min_words, precision, options.device, fp8_layers)
    files = {f"1/{TOKENIZER_FILE}": serving_tokenizer(tokenizer_folder, MAX_LENGTH, pad_to_max_length=True)}
    return [core.model_dir, publish_python_model(options.repo, config, HERE / "caption_selection_model.py", sources=sources,
                                                 golden=golden, files=files, demo=options.demo)]


def _golden(folder, folds, tokenizer_folder, threshold, min_words, precision, device="cpu", fp8_layers=None) -> Golden:
    """The expected selection for a fixed candidate list, computed with PyTorch."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder), local_files_only=True)
    kept = [t for t in GOLDEN_CANDIDATES if t.strip() and len(t.split()) >= min_words]
    tokens = tokenizer(kept, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="np")
    io = parse_io_config(IO_CONFIG)
    feeds = {"input_ids": tokens["input_ids"].astype(np.int64), "input_mask": tokens["attention_mask"].astype(np.float32),
             "input_token_type_ids": np.zeros_like(tokens["attention_mask"], dtype=np.float32)}
    logits = run_as_served(load_model(folder, folds), io, feeds, device, precision, fp8_layers)["output"].reshape(-1)
    probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    best = int(np.argmax(probabilities))
    caption = kept[best] if probabilities[best] >= threshold else ""
    return Golden({"candidates": np.array(GOLDEN_CANDIDATES)},
                  {"caption": np.array([caption]), "score": np.array([probabilities[best]], dtype=np.float32)},
                  TOLERANCES[precision])
