"""The PyTorch runtime of ECLAIR (a VisionEncoderDecoder of the Nougat/Donut family): pixels in,
text out. Used by the Triton python backend on hosts without TensorRT-LLM (CPU, or CUDA in fp16),
and by the builder for golden answers."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EclairRuntime:
    def __init__(self, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32, max_new_tokens: int = 256):
        from transformers import AutoTokenizer, VisionEncoderDecoderModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        folder = Path(folder)
        self.device, self.dtype, self.max_new_tokens = device, dtype, max_new_tokens
        self.model = VisionEncoderDecoderModel.from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        processor = folder / "preprocessor_config.json"
        settings = json.loads(processor.read_text()) if processor.is_file() else {}
        self.mean = np.asarray(settings.get("image_mean", IMAGENET_MEAN), dtype=np.float32)
        self.std = np.asarray(settings.get("image_std", IMAGENET_STD), dtype=np.float32)
        size = self.model.config.encoder.image_size
        self.input_hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    @classmethod
    def for_serving(cls, folder: Path, params: dict[str, str], device: str | None = None) -> "EclairRuntime":
        """As the Triton model runs it: fp16 on the GPU its instance drives (`device`, from
        model_support.ModelArgs.device(); default: the config's `device` parameter), else CPU fp32."""
        wanted = device or params.get("device", "cpu")
        gpu = wanted.startswith("cuda") and torch.cuda.is_available()
        return cls(folder, device=wanted if gpu else "cpu", dtype=torch.float16 if gpu else torch.float32,
                   max_new_tokens=int(params.get("max_new_tokens", "256")))

    def _attention_kernels(self):
        """On CUDA, attention without cuDNN's fused kernel, for ECLAIR's calls only (the process's
        other models keep theirs): it failed on an H100 for small fp16 heads (torch 2.11), and flash
        and memory-efficient attention serve the same calls."""
        if not str(self.device).startswith("cuda"):
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    @property
    def precision(self) -> str:
        return "fp16" if self.dtype == torch.float16 else "fp32"

    def pixel_values(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalised [B, 3, h, w] at the encoder's size."""
        pixels = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if tuple(pixels.shape[-2:]) != self.input_hw:
            pixels = torch.nn.functional.interpolate(pixels, size=self.input_hw, mode="bicubic", align_corners=False)
        mean = torch.as_tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.as_tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return ((pixels - mean) / std).to(self.dtype)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> list[str]:
        config = self.model.config
        with self._attention_kernels():
            tokens = self.model.generate(
                self.pixel_values(images), max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                decoder_start_token_id=config.decoder_start_token_id, pad_token_id=config.pad_token_id,
                eos_token_id=config.eos_token_id)
        # Coordinate and class tokens may be special tokens: keep them, drop only pad/bos/eos.
        drop = {t for t in (self.tokenizer.pad_token, self.tokenizer.eos_token, self.tokenizer.bos_token,
                            self.tokenizer.cls_token, self.tokenizer.sep_token) if t}
        texts = []
        for row in tokens.tolist():
            pieces = [p for p in self.tokenizer.convert_ids_to_tokens(row) if p not in drop]
            texts.append(self.tokenizer.convert_tokens_to_string(pieces).strip())
        return texts
