"""Which engines one build makes: one per GPU type (compute capability), since a TensorRT engine
runs only on the type it was built for. NVIDIA's TensorRT builds for the GPU it runs on, so each
type needs a visible GPU of that type; TensorRT for RTX is told the type and needs no GPU.

The first target's engine is written at --engine-path and published as `model.plan`; each
further one beside it as `<stem>.sm<NN><suffix>` and `model.sm<NN>.plan`, and config.pbtxt's
`cc_model_filenames` tells Triton which file each GPU type loads."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError

# The types TensorRT for RTX 1.x can be told to build for (its `ComputeCapability` enum).
RTX_BUILD_TYPES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


@dataclass(frozen=True)
class VisibleGpu:
    index: int  # CUDA device index in this process
    name: str
    compute_capability: str


@dataclass(frozen=True)
class EngineTarget:
    compute_capability: str | None  # None: one engine, for whatever the builder defaults to
    device: int | None  # the visible GPU NVIDIA's TensorRT builds on; None for TensorRT for RTX or no GPU
    engine_path: Path
    model_file: str  # its file name in the published version folder

    @property
    def label(self) -> str:
        return f"compute capability {self.compute_capability}" if self.compute_capability else "this builder's default GPU type"


def parse_gpu_types(text: str | None) -> tuple[str, ...]:
    """`8.0,9.0` -> ("8.0", "9.0"), in order, each once."""
    if not text:
        return ()
    types = tuple(dict.fromkeys(t for t in text.replace(" ", "").split(",") if t))
    bad = [t for t in types if not re.fullmatch(r"\d+\.\d+", t)]
    if bad or not types:
        raise UserError(f"--gpu-types must be compute capabilities such as 8.0,9.0 (nvidia-smi --query-gpu=compute_cap), "
                        f"got '{text}'.")
    return types


def sm_suffix(compute_capability: str) -> str:
    return "sm" + compute_capability.replace(".", "")


def engine_targets(requested: tuple[str, ...], visible: list[VisibleGpu], rtx: bool, engine_path: Path,
                   model_file: str = "model.plan") -> list[EngineTarget]:
    """The engines to build: the requested types, else one per type of the visible GPUs (first GPU
    of each), else one for the builder's default."""
    first_of_type: dict[str, VisibleGpu] = {}
    for gpu in visible:
        first_of_type.setdefault(gpu.compute_capability, gpu)
    types = requested or tuple(first_of_type)
    if not types:
        return [EngineTarget(None, None, Path(engine_path), model_file)]
    targets = []
    for position, cc in enumerate(types):
        if rtx and cc not in RTX_BUILD_TYPES:
            raise UserError(f"--gpu-types names {cc}, which TensorRT for RTX cannot build for "
                            f"(it builds for {', '.join(RTX_BUILD_TYPES)}); drop it or build with NVIDIA's TensorRT.")
        if not rtx and cc not in first_of_type:
            have = ", ".join(f"{g.index} {g.name} ({g.compute_capability})" for g in visible) or "none"
            raise UserError(f"--gpu-types names {cc}, but TensorRT builds an engine for the GPU it runs on and no "
                            f"visible GPU has compute capability {cc} (visible: {have}); give the builder a GPU of "
                            "that type or drop it.")
        device = None if rtx else first_of_type[cc].index  # RTX builds for a type, not on a GPU
        path, file = Path(engine_path), model_file
        if position:  # further types sit beside the first under a name that says their type
            path = path.with_name(f"{path.stem}.{sm_suffix(cc)}{path.suffix}")
            stem, dot, suffix = model_file.rpartition(".")
            file = f"{stem}.{sm_suffix(cc)}.{suffix}" if dot else f"{model_file}.{sm_suffix(cc)}"
        targets.append(EngineTarget(cc, device, path, file))
    return targets


def cc_model_filenames(targets: list[EngineTarget]) -> dict[str, str]:
    """config.pbtxt's map from GPU type to engine file, where there is more than one engine."""
    if len(targets) < 2:
        return {}
    return {t.compute_capability: t.model_file for t in targets}


def built_types(engine_entry: dict | None, builder_gpu: dict) -> list[str]:
    """The GPU types a manifest's engines were built for (older manifests: the builder's GPU)."""
    if engine_entry and engine_entry.get("compute_capabilities"):
        return list(engine_entry["compute_capabilities"])
    return [builder_gpu["compute_capability"]] if builder_gpu.get("compute_capability") else []
