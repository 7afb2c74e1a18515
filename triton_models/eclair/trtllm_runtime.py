"""The one module that calls TensorRT-LLM's runtime: ECLAIR's token generation from its engines.

Everything around it (pre-processing, limits, token ids, text, batching, the Triton model, its
repository) is `runtime.py` and `eclair_model.py`, shared with the PyTorch generator and tested in
CI with that generator standing in. This module runs only in the TensorRT-LLM image on a GPU; it
has not been run on the machines this project is developed and tested on (TensorRT-LLM cannot be
installed there), which the README says.

It follows TensorRT-LLM's own pipeline for Nougat-style models (`examples/multimodal`, model type
`nougat`): the vision encoder is a plain TensorRT engine run by `Session`; the mBART decoder is an
encoder-decoder engine run by `EncDecModelRunner` with its encoder skipped, the visual features
handed over as the encoder output (through `prompt_embedding_table`, as that pipeline does), and
zero `encoder_input_ids` shaped like those features. Greedy: one beam, no sampling.
"""
from __future__ import annotations

from pathlib import Path

import torch

VISUAL_ENGINE = "visual_encoder.plan"  # written by triton_models.eclair.trtllm.build_encoder
DECODER_FOLDER = "decoder"  # trtllm-build's output (config.json, rank0.engine)


class TrtllmGenerator:
    def __init__(self, engine_dir: Path, device: str) -> None:
        try:
            import tensorrt as trt
            from tensorrt_llm.runtime import EncDecModelRunner, Session
        except ImportError as exc:
            raise RuntimeError(f"the ECLAIR TensorRT-LLM generator needs TensorRT-LLM ({exc}); serve it from the "
                               "triton-trt-llm image, or use the PyTorch runtime") from None
        engine_dir = Path(engine_dir)
        for needed in (engine_dir / VISUAL_ENGINE, engine_dir / DECODER_FOLDER / "config.json"):
            if not needed.exists():
                raise FileNotFoundError(f"ECLAIR's TensorRT-LLM engines are incomplete: {needed} is missing; "
                                        "run the overlay's build-eclair")
        self.device = torch.device(device if device.startswith("cuda") else "cuda")
        torch.cuda.set_device(self.device)
        self.stream = torch.cuda.Stream(self.device)
        self.trt = trt
        self.visual = Session.from_serialized_engine((engine_dir / VISUAL_ENGINE).read_bytes())
        self.decoder = EncDecModelRunner.from_engine("eclair", str(engine_dir), skip_encoder=True, stream=self.stream)

    def _visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        from tensorrt_llm.runtime import TensorInfo

        pixels = pixels.float().contiguous()  # the engine's IO is fp32 (config.pbtxt's contract)
        shape = self.visual.infer_shapes([TensorInfo("pixel_values", self.trt.DataType.FLOAT, tuple(pixels.shape))])
        info = next(i for i in shape if i.name == "encoder_states")
        features = torch.empty(tuple(info.shape), dtype=torch.float32, device=self.device)
        if not self.visual.run({"pixel_values": pixels}, {"encoder_states": features}, self.stream.cuda_stream):
            raise RuntimeError("the ECLAIR vision encoder engine failed to run")
        self.stream.synchronize()
        return features

    def generate(self, pixels: torch.Tensor, max_new_tokens: int, ids) -> list[list[int]]:
        features = self._visual_features(pixels)
        batch, tokens = features.shape[:2]
        dtype = getattr(self.decoder, "dtype", torch.float16)
        encoder_ids = torch.zeros((batch, tokens), dtype=torch.int32)
        decoder_ids = torch.full((batch, 1), ids.start, dtype=torch.int32)
        output = self.decoder.generate(encoder_input_ids=encoder_ids, decoder_input_ids=decoder_ids,
                                       max_new_tokens=max_new_tokens, num_beams=1, bos_token_id=ids.start,
                                       pad_token_id=ids.pad, eos_token_id=ids.eos,
                                       prompt_embedding_table=features.to(dtype), debug_mode=False)
        rows = []
        for row in output[:, 0, :].tolist():  # [batch, beams, tokens]: the one beam
            rows.append(row[:row.index(ids.eos, 1) + 1] if ids.eos in row[1:] else row)
        return rows
