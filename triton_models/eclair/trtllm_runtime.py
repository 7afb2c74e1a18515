"""The one module that calls TensorRT-LLM's runtime: ECLAIR's token generation from its engines.

Everything around it (pre-processing, limits, token ids, text, batching, the Triton model, its
repository) is `runtime.py` and `eclair_model.py`, shared with the PyTorch generator and tested in
CI with that generator standing in. `TrtllmGenerator` runs only in the TensorRT-LLM image on a GPU;
it has not been run on the machines this project is developed and tested on (TensorRT-LLM cannot
be installed there), which the README says. What it decides (the GPU, the decoder's
`encoder_output`, the encoder ids) is in plain functions, tested on CPU against upstream's code.

It follows TensorRT-LLM's own pipeline for Nougat-style models (`examples/multimodal`, model type
`nougat`; NVIDIA/TensorRT-LLM tensorrt_llm/runtime/multimodal_model_runner.py): the vision encoder
is a plain TensorRT engine run by `Session`; the mBART decoder is an encoder-decoder engine run by
`EncDecModelRunner` with its encoder skipped, the visual features handed over as the encoder output
(through `prompt_embedding_table`, packed to [B*T, H] in the decoder's dtype as that pipeline's
`ptuning_setup` does), and [B, T] `encoder_input_ids` that only set how many tokens each page has.
Greedy: one beam, no sampling.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

VISUAL_ENGINE = "visual_encoder.plan"  # written by triton_models.eclair.trtllm.build_encoder
DECODER_FOLDER = "decoder"  # trtllm-build's output (config.json, rank0.engine)
# trtllm-build's `pretrained_config.dtype` names (upstream tensorrt_llm/_utils.py str_dtype_to_torch).
ENGINE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def serving_gpu(device: str, device_count: int, runner_rank: int = 0) -> int:
    """The index of the GPU that serves: `cuda:N` -> N, `cuda` -> 0.

    Upstream `EncDecModelRunner.__init__` (NVIDIA/TensorRT-LLM tensorrt_llm/runtime/
    enc_dec_model_runner.py) calls `torch.cuda.set_device(mpi_rank() % torch.cuda.device_count())`
    itself, whatever was current; any other GPU would split the vision encoder and the decoder
    across two devices, so it is refused."""
    if device_count < 1:
        raise RuntimeError(f"the ECLAIR TensorRT-LLM generator needs a GPU, and this process sees none (device '{device}')")
    text = str(device)
    if text == "cuda":
        index = 0
    elif text.startswith("cuda:") and text[5:].isdigit():
        index = int(text[5:])
    else:
        raise RuntimeError(f"the ECLAIR TensorRT-LLM generator runs on a GPU, and device '{device}' names none "
                           "(expected cuda or cuda:N)")
    if index >= device_count:
        raise RuntimeError(f"ECLAIR's device {text} does not exist here: this process sees {device_count} GPU(s)")
    runner = runner_rank % device_count
    if index != runner:
        raise RuntimeError(f"ECLAIR was given cuda:{index}, but TensorRT-LLM's EncDecModelRunner always runs on "
                           f"cuda:{runner} (MPI rank {runner_rank} modulo {device_count} GPUs), so give this instance "
                           f"cuda:{runner} or make its GPU the only one visible (CUDA_VISIBLE_DEVICES, compose device_ids)")
    return index


@dataclass(frozen=True)
class DecoderSettings:
    """What the decoder engine declares for `encoder_output` (upstream tensorrt_llm/models/enc_dec/
    model.py DecoderModel.prepare_inputs): [-1, encoder_hidden_size] in the engine's dtype when
    built with remove_input_padding, else [-1, -1, encoder_hidden_size]."""
    dtype_name: str
    packed: bool  # build_config.plugin_config.remove_input_padding
    encoder_hidden: int | None

    @property
    def dtype(self) -> torch.dtype:
        return ENGINE_DTYPES[self.dtype_name]


def decoder_settings(decoder_dir: Path) -> DecoderSettings:
    """From the config.json trtllm-build writes beside the decoder engine, with the keys upstream's
    `enc_dec_model_runner.read_config` reads (`pretrained_config.dtype`,
    `build_config.plugin_config.remove_input_padding`)."""
    path = Path(decoder_dir) / "config.json"
    config = json.loads(path.read_text())
    pretrained = config.get("pretrained_config") or {}
    plugins = (config.get("build_config") or {}).get("plugin_config") or {}
    name = pretrained.get("dtype")
    if name not in ENGINE_DTYPES:
        raise RuntimeError(f"ECLAIR's decoder engine config {path} has pretrained_config.dtype {name!r}, not one of "
                           f"{', '.join(ENGINE_DTYPES)}; rebuild the engines with the overlay's build-eclair")
    hidden = pretrained.get("encoder_hidden_size")
    return DecoderSettings(name, bool(plugins.get("remove_input_padding", False)), int(hidden) if hidden else None)


def encoder_output(features: torch.Tensor, settings: DecoderSettings) -> torch.Tensor:
    """[B, T, H] visual features -> the decoder's `encoder_output`, [B*T, H] in its dtype.

    With the encoder skipped, upstream `EncDecModelRunner.generate` hands `prompt_embedding_table`
    to the decoder unchanged when the packed encoder ids are 1-D (remove_input_padding), and only
    unsqueezes it to [1, ...] otherwise, which is one sequence, not a batch: so packed engines only."""
    if features.dim() != 3:
        raise RuntimeError(f"ECLAIR's vision encoder returned features of shape {tuple(features.shape)}, not [B, T, H]")
    if not settings.packed:
        raise RuntimeError("ECLAIR's decoder engine was built without remove_input_padding, with which TensorRT-LLM "
                           "hands a batch's visual features over as one sequence; rebuild it with build-eclair")
    if settings.encoder_hidden is not None and features.shape[-1] != settings.encoder_hidden:
        raise RuntimeError(f"ECLAIR's vision encoder gives {features.shape[-1]} features per token, but the decoder "
                           f"engine expects encoder_hidden_size {settings.encoder_hidden}; rebuild both with build-eclair")
    return features.reshape(-1, features.shape[-1]).to(settings.dtype).contiguous()


def runner_lengths(ids: torch.Tensor, pad: int) -> torch.Tensor:
    """The encoder lengths `EncDecModelRunner.process_input` counts (upstream
    enc_dec_model_runner.py): the first token always, then every token that is not `pad`."""
    return 1 + (ids[:, 1:] != pad).sum(dim=1)


def encoder_input_ids(batch: int, tokens: int, pad: int) -> torch.Tensor:
    """[B, T] int32 ids for the skipped encoder: never read as tokens, they only make the runner
    count T encoder tokens per page (and pack B*T, matching `encoder_output`). Upstream's Nougat
    path fills zeros, which works only because Nougat's pad id is 1: the fill here is any id but
    the checkpoint's pad id."""
    if isinstance(pad, bool) or not isinstance(pad, int):
        raise RuntimeError(f"ECLAIR's checkpoint pad_token_id {pad!r} is not a token id, and TensorRT-LLM counts "
                           "encoder tokens by it")
    ids = torch.full((batch, tokens), 0 if pad != 0 else 1, dtype=torch.int32)
    check_encoder_lengths(ids, pad)
    return ids


def check_encoder_lengths(ids: torch.Tensor, pad: int) -> None:
    counted = runner_lengths(ids, pad)
    if bool((counted != ids.shape[1]).any()):
        raise RuntimeError(f"with pad id {pad}, TensorRT-LLM would count {int(counted.min())} of the {ids.shape[1]} "
                           "visual tokens of a page, so the decoder would not see the whole page")


class TrtllmGenerator:
    def __init__(self, engine_dir: Path, device: str) -> None:
        try:
            import tensorrt as trt
            from tensorrt_llm._utils import mpi_rank
            from tensorrt_llm.runtime import EncDecModelRunner, Session
        except ImportError as exc:
            raise RuntimeError(f"the ECLAIR TensorRT-LLM generator needs TensorRT-LLM ({exc}); serve it from the "
                               "triton-trt-llm image, or use the PyTorch runtime") from None
        engine_dir = Path(engine_dir)
        for needed in (engine_dir / VISUAL_ENGINE, engine_dir / DECODER_FOLDER / "config.json"):
            if not needed.exists():
                raise FileNotFoundError(f"ECLAIR's TensorRT-LLM engines are incomplete: {needed} is missing; "
                                        "run the overlay's build-eclair")
        self.settings = decoder_settings(engine_dir / DECODER_FOLDER)
        index = serving_gpu(device, torch.cuda.device_count(), mpi_rank())
        self.device = torch.device("cuda", index)
        torch.cuda.set_device(self.device)  # current before the engines load; the runner sets the same one
        self.stream = torch.cuda.Stream(self.device)
        self.trt = trt
        self.visual = Session.from_serialized_engine((engine_dir / VISUAL_ENGINE).read_bytes())
        self.decoder = EncDecModelRunner.from_engine("eclair", str(engine_dir), skip_encoder=True, stream=self.stream)
        if torch.cuda.current_device() != index:  # serving_gpu's premise, checked once against the real runner
            raise RuntimeError(f"TensorRT-LLM's EncDecModelRunner moved ECLAIR to cuda:{torch.cuda.current_device()} "
                               f"from cuda:{index}; serve it with that GPU as the only one visible")
        # upstream ModelConfig.dtype is read_config's pretrained_config["dtype"], the same string
        runner_dtype = getattr(getattr(self.decoder, "decoder_model_config", None), "dtype", None)
        if isinstance(runner_dtype, str) and runner_dtype != self.settings.dtype_name:
            raise RuntimeError(f"ECLAIR's decoder engine runs in {runner_dtype}, but its config.json says "
                               f"{self.settings.dtype_name}; rebuild the engines with build-eclair")
        print(f"ECLAIR TensorRT-LLM generator: serving on {self.device} ({torch.cuda.get_device_name(index)}), "
              f"decoder {self.settings.dtype_name}", file=sys.stderr, flush=True)

    def _visual_features(self, pixels: torch.Tensor) -> torch.Tensor:
        from tensorrt_llm.runtime import TensorInfo

        pixels = pixels.to(self.device).float().contiguous()  # the engine's IO is fp32 (config.pbtxt's contract)
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
        decoder_ids = torch.full((batch, 1), ids.start, dtype=torch.int32)
        output = self.decoder.generate(encoder_input_ids=encoder_input_ids(batch, tokens, ids.pad),
                                       decoder_input_ids=decoder_ids, max_new_tokens=max_new_tokens, num_beams=1,
                                       bos_token_id=ids.start, pad_token_id=ids.pad, eos_token_id=ids.eos,
                                       prompt_embedding_table=encoder_output(features, self.settings), debug_mode=False)
        rows = []
        for row in output[:, 0, :].tolist():  # [batch, beams, tokens]: the one beam
            rows.append(row[:row.index(ids.eos, 1) + 1] if ids.eos in row[1:] else row)
        return rows
