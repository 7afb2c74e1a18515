"""ECLAIR's runtime (a VisionEncoderDecoder of the Nougat/Donut family): pixels in, text out.

Everything but the token generation is shared by both serving paths: reading the checkpoint's
settings, pre-processing (resize, normalise), the generation limits and token ids, and turning
tokens into text. The generator is the one swappable part:
  - `GraphGenerator` (the served default): the checkpoint's decoder through `graph_decoder.py`'s
    SlotDecoder, with a static KV cache, one CUDA graph per batch bucket on a GPU, token-identical
    to `generate`;
  - `TorchGenerator`: the Hugging Face model's greedy `generate` (CPU fp32, or CUDA fp16): the
    reference, and the raw baseline `bench` compares against;
  - `TrtllmGenerator` (`trtllm_runtime.py`, the only module that calls TensorRT-LLM): the vision
    encoder engine and the mBART decoder engine, greedy, in the TensorRT-LLM image.
The config's `generator` parameter picks one (`graph` as the builder publishes it; `pytorch` where
the parameter is absent). Used by the Triton python model,
by the builders for golden answers, and by `bench`'s raw path.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GENERATORS = ("pytorch", "tensorrt_llm", "graph")


@dataclass(frozen=True)
class TokenIds:
    start: int  # decoder_start_token_id
    pad: int
    eos: int


def checkpoint_settings(folder: Path) -> tuple[tuple[int, int], TokenIds]:
    """The encoder's input size and the decoding token ids, from config.json alone (no weights)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    size = config["encoder"]["image_size"]
    input_hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    decoder = config.get("decoder", {})

    def token(name: str) -> int:
        value = config.get(name, decoder.get(name))
        if value is None:
            raise ValueError(f"{Path(folder) / 'config.json'} has no {name}")
        return int(value)

    return input_hw, TokenIds(token("decoder_start_token_id"), token("pad_token_id"), token("eos_token_id"))


COMPILE_ENCODER_DEFAULT = "on"


def parse_compile_encoder(value: str | None, where: str, fix: str) -> bool:
    """ECLAIR's compile_encoder setting, the one rule wherever it is read: "on" (the vision encoder
    compiled, then captured, on a GPU; also when the setting is absent, None) or "off" (captured
    only) -> whether to compile. Anything else is a ValueError naming the setting as its reader
    knows it (`where`) and what to do (`fix`)."""
    value = COMPILE_ENCODER_DEFAULT if value is None else value
    if value not in ("on", "off"):
        raise ValueError(f"{where} is '{value}', not on or off; {fix}")
    return value == "on"


class TorchGenerator:
    """Greedy decoding with the Hugging Face model."""

    def __init__(self, folder: Path, device: str, dtype: torch.dtype) -> None:
        from transformers import VisionEncoderDecoderModel

        self.device = device
        self.model = VisionEncoderDecoderModel.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
        self.model = self.model.to(device).eval()

    def _attention_kernels(self):
        """On CUDA, attention without cuDNN's fused kernel, for ECLAIR's calls only (the process's
        other models keep theirs): it failed on an H100 for small fp16 heads (torch 2.11), and flash
        and memory-efficient attention serve the same calls."""
        if not str(self.device).startswith("cuda"):
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def generate(self, pixels: torch.Tensor, max_new_tokens: int, ids: TokenIds) -> list[list[int]]:
        with self._attention_kernels():
            tokens = self.model.generate(pixels, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                         decoder_start_token_id=ids.start, pad_token_id=ids.pad, eos_token_id=ids.eos)
        return tokens.tolist()


class GraphGenerator:
    """Drop-in for `runtime.TorchGenerator`: the checkpoint's weights through `SlotDecoder`, a static
    batch of up to `slots` pages at a time. Rows as HF `generate` returns them: start token first,
    then the new tokens up to and including eos; rows that stopped early padded with pad to the
    longest row of the call (max_new_tokens + 1 at most)."""

    def __init__(self, folder: Path, device: str, dtype: torch.dtype, slots: int = 16, max_new_tokens: int = 256,
                 use_graphs: bool | None = None, encoder_graph_batch: int = 0, *, compile_encoder: bool):
        # compile_encoder has no default here: the default is parse_compile_encoder's, where the setting is
        # read (make_generator, EclairRuntime); a default here once drifted from it.
        from transformers import VisionEncoderDecoderModel

        self.device, self.dtype, self.slots, self.use_graphs = device, dtype, slots, use_graphs
        self.encoder_graph_batch, self.compile_encoder = encoder_graph_batch, compile_encoder
        self.model = VisionEncoderDecoderModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
        self.model = self.model.to(device).eval()
        _, ids = checkpoint_settings(Path(folder))
        self.decoder = self._decoder(max_new_tokens, ids)

    def _decoder(self, max_new_tokens: int, ids):
        return _sibling("graph_decoder").SlotDecoder(self.model, self.slots, max_new_tokens, ids, self.device,
                                                     self.dtype, self.use_graphs, self.encoder_graph_batch,
                                                     compile_encoder=self.compile_encoder)

    def reserve(self, max_new_tokens: int, ids):
        """The decoder, reallocated (and recaptured) for exactly `max_new_tokens` if loaded for another
        limit, with these ids: what a scheduler calls once with the runtime's limit and ids."""
        if max_new_tokens != self.decoder.max_new_tokens:
            self.decoder = None
            if str(self.device).startswith("cuda"):
                torch.cuda.empty_cache()
            self.decoder = self._decoder(max_new_tokens, ids)
        self.decoder.set_ids(ids)
        return self.decoder

    def generate(self, pixels: torch.Tensor, max_new_tokens: int, ids) -> list[list[int]]:
        if max_new_tokens > self.decoder.max_new_tokens:  # a longer limit than loaded: reallocate once
            log.warning("ECLAIR graph decoder: reallocating for %d new tokens", max_new_tokens)
            self.reserve(max_new_tokens, ids)
        decoder = self.decoder
        decoder.set_ids(ids)
        rows: list[list[int]] = []
        for chunk in pixels.split(self.slots):
            count = len(chunk)
            decoder.admit(list(range(count)), decoder.encode(chunk), limit=max_new_tokens)
            part = [[ids.start] for _ in range(count)]
            live = set(range(count))
            for tokens in steps_ahead(decoder, count):
                for slot in list(live):
                    part[slot].append(tokens[slot])
                    if tokens[slot] == ids.eos or len(part[slot]) > max_new_tokens:
                        live.discard(slot)
                if not live:
                    break
            rows += part
        width = max(len(row) for row in rows)
        return [row + [ids.pad] * (width - len(row)) for row in rows]


def steps_ahead(decoder, active: int):
    """Each step's new tokens of slots [0, active), read on the host while the next step already runs
    (the GPU is never idle waiting for the host). Stopping leaves one step in flight: it advances only
    pages not yet finished, and the next admit replaces them."""
    pending = decoder.launch(active)
    while True:
        following = decoder.launch(active)
        yield decoder.collect(pending)[0]
        pending = following


def _sibling(name: str):
    """A module of this folder, published beside this file as eclair_<name>.py (graph_decoder.py
    has the same rule: each file is published on its own, so neither imports the other's)."""
    return importlib.import_module(f"eclair_{name}" if __name__ == "eclair_runtime"
                                   else f"triton_models.eclair.{name}")


def make_generator(kind: str, folder: Path, device: str, dtype: torch.dtype, engine_dir: Path | None = None,
                   slots: int = 16, max_new_tokens: int = 256, compile_encoder: bool = True):
    if kind == "pytorch":
        return TorchGenerator(folder, device, dtype)
    if kind == "tensorrt_llm":
        seam = _sibling("trtllm_runtime")  # imported only where it is chosen
        return seam.TrtllmGenerator(Path(engine_dir), device)
    if kind == "graph":
        # The encoder captured for 1..4 pages on a GPU (in-flight batching admits a few pages at a
        # time), compiled first unless the config says not: one Swin-B page took 14.8 ms eager,
        # 9.6 captured and 5.8 compiled and captured (H200, docs/results/h200/eclair/2026-12-02/run6).
        cuda = str(device).startswith("cuda")
        return GraphGenerator(folder, device, dtype, slots=slots, max_new_tokens=max_new_tokens,
                              encoder_graph_batch=min(4, slots) if cuda else 0, compile_encoder=cuda and compile_encoder)
    raise ValueError(f"ECLAIR generator '{kind}' is not one of {', '.join(GENERATORS)}")


class EclairRuntime:
    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32, max_new_tokens: int = 256,
                 generator: str = "pytorch", engine_dir: Path | None = None, slots: int = 16,
                 compile_encoder: bool = True):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        folder = Path(folder)
        self.device, self.dtype, self.max_new_tokens = device, dtype, max_new_tokens
        self.input_hw, self.ids = checkpoint_settings(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        processor = folder / "preprocessor_config.json"
        settings = json.loads(processor.read_text()) if processor.is_file() else {}
        self.mean = np.asarray(settings.get("image_mean", IMAGENET_MEAN), dtype=np.float32)
        self.std = np.asarray(settings.get("image_std", IMAGENET_STD), dtype=np.float32)
        self.generator_kind = generator
        self.generator = make_generator(generator, folder, device, dtype, engine_dir, slots, max_new_tokens,
                                        compile_encoder)

    @classmethod
    def for_serving(cls, folder: Path, params: dict[str, str], device: str | None = None,
                    engine_dir: Path | None = None) -> "EclairRuntime":
        """As the Triton model runs it: fp16 on the GPU its instance drives (`device`, from
        model_support.ModelArgs.device(); default: the config's `device` parameter), else CPU fp32;
        the config's `generator`, with TensorRT-LLM's engines at `engine_dir`."""
        wanted = device or params.get("device", "cpu")
        compile_encoder = parse_compile_encoder(params.get("compile_encoder"),
                                                "ECLAIR's config parameter compile_encoder",
                                                "rebuild the model (ECLAIR_COMPILE_ENCODER in .env)")
        gpu = wanted.startswith("cuda") and torch.cuda.is_available()
        return cls(folder, device=wanted if gpu else "cpu", dtype=torch.float16 if gpu else torch.float32,
                   max_new_tokens=int(params.get("max_new_tokens", "256")), generator=params.get("generator", "pytorch"),
                   engine_dir=engine_dir, slots=int(params.get("slots", "16")),
                   compile_encoder=compile_encoder)

    @property
    def precision(self) -> str:
        return "fp16" if self.dtype == torch.float16 else "fp32"

    def staged(self, pages: np.ndarray):
        """A request's uint8 pages [B, H, W, 3], copied into pinned host memory on a GPU (on the
        calling thread: Triton's, in the served model, not the scheduler's), ready for `pixel_values`
        to move without a further host copy; unchanged on a CPU."""
        if not str(self.device).startswith("cuda"):
            return pages
        return torch.from_numpy(np.ascontiguousarray(pages)).pin_memory()

    def pixel_values(self, images) -> torch.Tensor:
        """uint8 pages [B, H, W, 3] (an array, or a list of [H, W, 3] pages, `staged` or not) ->
        normalised [B, 3, h, w] at the encoder's size."""
        if isinstance(images, np.ndarray):
            pages = self._on_device(torch.from_numpy(np.ascontiguousarray(images)))
        else:  # each page to the device on its own: a staged page is copied once, straight from pinned memory
            pages = torch.stack([self._on_device(torch.as_tensor(page)) for page in images])
        pixels = pages.permute(0, 3, 1, 2).float() / 255.0
        if tuple(pixels.shape[-2:]) != self.input_hw:
            pixels = torch.nn.functional.interpolate(pixels, size=self.input_hw, mode="bicubic", align_corners=False)
        mean = self._on_device(torch.as_tensor(self.mean)).view(1, 3, 1, 1)
        std = self._on_device(torch.as_tensor(self.std)).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(self.dtype)

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """The in-flight batcher admits pages while the decoder's step runs: not waiting for it."""
        return _sibling("graph_decoder").to_device(tensor, torch.device(self.device))

    def texts(self, rows: list[list[int]]) -> list[str]:
        """Token ids -> text. Coordinate and class tokens may be special tokens: keep them, drop
        only pad/bos/eos."""
        drop = {t for t in (self.tokenizer.pad_token, self.tokenizer.eos_token, self.tokenizer.bos_token,
                            self.tokenizer.cls_token, self.tokenizer.sep_token) if t}
        texts = []
        for row in rows:
            pieces = [p for p in self.tokenizer.convert_ids_to_tokens(row) if p not in drop]
            texts.append(self.tokenizer.convert_tokens_to_string(pieces).strip())
        return texts

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> list[str]:
        return self.texts(self.generator.generate(self.pixel_values(images), self.max_new_tokens, self.ids))
