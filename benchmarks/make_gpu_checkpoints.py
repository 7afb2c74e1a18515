"""Real-size random-weight checkpoints for the GPU benchmark, in the layouts the builders take:
an e5-small-v2-sized BERT folder (12 layers x 384), a deberta-large caption folder (fold 0),
a YOLOX-L best_ckpt.pth and a small ECLAIR (the demo's size) with the given tokenizer.
`python -m benchmarks.make_gpu_checkpoints --tokenizer DIR --out DIR` (DIR: a BERT tokenizer's files)."""
import argparse
import shutil
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from third_party.yolox import build_yolox
from triton_models.caption_classification.model_script import DebertaLargeModel
from triton_models.eclair.build import make_demo_checkpoint as make_small_eclair
from triton_models.yolox.build import LABELS

parser = argparse.ArgumentParser()
parser.add_argument("--tokenizer", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--models", default="e5,caption,yolox,eclair", help="which checkpoints to make")
args = parser.parse_args()
wanted = set(args.models.split(","))
torch.manual_seed(0)
if "e5" in wanted:
    e5 = args.out / "e5"
    BertModel(BertConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536),
              add_pooling_layer=False).save_pretrained(str(e5))
    shutil.copytree(args.tokenizer, e5, dirs_exist_ok=True)
if "caption" in wanted:
    caption = args.out / "caption"
    (caption / "weights/fold0/model").mkdir(parents=True, exist_ok=True)
    torch.save(DebertaLargeModel().state_dict(), caption / "weights/fold0/model/model_0.pt")
    shutil.copytree(args.tokenizer, caption / "tokenizer", dirs_exist_ok=True)
if "yolox" in wanted:
    yolox = args.out / "yolox"
    yolox.mkdir(parents=True, exist_ok=True)
    torch.save({"model": build_yolox(1.0, 1.0, len(LABELS)).state_dict()}, yolox / "best_ckpt.pth")  # YOLOX-L
if "eclair" in wanted:
    make_small_eclair(args.out, tokenizer_folder=args.tokenizer)  # -> OUT/eclair_demo
print(f"checkpoints in {args.out}")
