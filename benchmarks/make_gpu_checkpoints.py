"""Real-size random-weight checkpoints for the GPU benchmark, in the layouts the builders take:
an e5-small-v2-sized BERT folder (12 layers x 384), a deberta-large caption folder (fold 0),
a YOLOX-L best_ckpt.pth, a small ECLAIR (the demo's size) and a real-size one (`eclair_large`: a
DonutSwin-B encoder at the contract's 1280x1024 page, 1,280 visual tokens of width 1024, and a
10-layer mBART decoder, d_model 1024, 16 heads, FFN 4096, vocab 50k: the tokenizer padded with
added tokens) with the given tokenizer.
`python -m benchmarks.make_gpu_checkpoints --tokenizer DIR --out DIR` (DIR: a BERT tokenizer's files)."""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel

from triton_models.caption_classification.model_script import DebertaLargeModel
from triton_models.eclair.build import make_demo_checkpoint as make_small_eclair
from triton_models.yolox.build import LABELS, demo_yolox

parser = argparse.ArgumentParser()
parser.add_argument("--tokenizer", type=Path, required=True)
parser.add_argument("--out", type=Path, required=True)
parser.add_argument("--models", default="e5,caption,yolox,eclair", help="which checkpoints to make (also eclair_large)")
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
    # YOLOX-L, initialised as the demo is so that a page has boxes (a plain random YOLOX scores every
    # one of its 21,504 anchors alike), its BatchNorms and head calibrated on the benchmark's own pages:
    # scaled on the demo page alone, its features keep a common part that fp16 rounds the page away
    # from, and the fp16 model found nothing (see demo_yolox). In fp32 on CPU this one finds about
    # 300 elements on each scanned page and none on the others: captions get work, unevenly.
    from benchmarks.ingest_pdf import mixed_pages, write_pdf
    from scripts.ingest.sources import Document
    from triton_models.yolox.page_processing import letterbox

    doc = Document(write_pdf(yolox / "calibration.pdf", mixed_pages(8)))  # the mixed benchmark's first pages
    pages = [letterbox(doc.page(i).pixels)[0] for i in range(min(8, len(doc)))]
    doc.close()
    # and a page of uniform noise, as the builder's parity check sends: calibrated on white pages
    # alone, noise drives the box sizes' exp() to 1e9 and ONNX Runtime and PyTorch part ways
    pages = torch.from_numpy(np.stack(pages + [np.random.default_rng(0).integers(0, 256, pages[0].shape, np.uint8)]))
    torch.save({"model": demo_yolox(depth=1.0, width=1.0, calibration_pages=pages).state_dict()}, yolox / "best_ckpt.pth")
    (yolox / "exp.json").write_text(json.dumps({"depth": 1.0, "width": 1.0, "init": "norms_on_pages_and_noise"}))
if "eclair" in wanted:
    make_small_eclair(args.out, tokenizer_folder=args.tokenizer)  # -> OUT/eclair_demo
if "eclair_large" in wanted:
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from benchmarks.eclair_decoder_probe import build as build_eclair  # its architecture, decoder re-drawn

    folder = args.out / "eclair_large"
    model = build_eclair(SimpleNamespace(vocab=50000, layers=10, seed=0, gain=2.0, device="cpu"))
    model.generation_config.max_length = 512  # new tokens at most: the KV cache's length
    model.save_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer), local_files_only=True)
    tokenizer.add_tokens([f"<t{i}>" for i in range(50000 - len(tokenizer))])
    tokenizer.save_pretrained(str(folder))
print(f"checkpoints in {args.out}")
