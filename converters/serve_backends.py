"""How a model is served: one row per serve backend, read wherever the difference matters (what is
published, the config's platform or backend, instances, what the manifest's fingerprint covers,
which backends `--serve-backend` and `LOCAL_SERVE_BACKEND` offer). Every Triton build loads the
python backend, the PyPI one too; `python` is the companions' row (their own model.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError
from converters.runners import COMPILED_RUNNER, ONNX_RUNNER, TORCH_RUNNER


@dataclass(frozen=True)
class ServeBackend:
    name: str
    platform: str  # config.pbtxt `platform` ("" where `backend` is used)
    backend: str  # config.pbtxt `backend` ("" where `platform` is used)
    artifact: str  # what goes into 1/: "engine" | "onnx" | "torchscript" | "exported" (torch.export) | "python"
    runner: Path | None  # the python-backend model published as 1/model.py
    engine: bool  # a TensorRT engine: it depends on TensorRT and the GPU, and the compatibility gate applies
    gpu_instances: str  # "always" | "with-cuda" (KIND_GPU when --device cuda) | "never" (CPU instances drive the GPU)
    runner_parameters: bool = False  # the runner reads `precision` and `device` from the config's parameters
    core: bool = True  # serves a converted model (a `--serve-backend` choice); False: companions' python models
    local: bool = False  # runs on Triton from PyPI, without TensorRT (a `LOCAL_SERVE_BACKEND` choice)

    @property
    def model_file(self) -> str:
        return {"engine": "model.plan", "onnx": "model.onnx", "torchscript": "model.pt", "exported": "model.pt2",
                "python": "model.py"}[self.artifact]

    def instance_kind(self, device: str) -> str:
        if self.gpu_instances == "always" or (self.gpu_instances == "with-cuda" and device == "cuda"):
            return "KIND_GPU"
        return "KIND_CPU"


SERVE_BACKENDS: dict[str, ServeBackend] = {b.name: b for b in (
    ServeBackend("tensorrt_plan", "tensorrt_plan", "", "engine", None, engine=True, gpu_instances="always"),
    ServeBackend("onnxruntime_onnx", "onnxruntime_onnx", "", "onnx", None, engine=False, gpu_instances="with-cuda"),
    ServeBackend("python_onnx", "", "python", "onnx", ONNX_RUNNER, engine=False, gpu_instances="with-cuda", local=True),
    # TorchScript on PyTorch (CUDA fp16 without TensorRT); CPU instances drive the GPU named by `device`.
    ServeBackend("python_torch", "", "python", "torchscript", TORCH_RUNNER, engine=False, gpu_instances="never",
                 runner_parameters=True, local=True),
    # The exported program compiled by torch.compile at load (from the published Inductor cache),
    # one CUDA graph per bucket shape on a GPU; CPU instances drive the GPU named by `device`.
    ServeBackend("python_compiled", "", "python", "exported", COMPILED_RUNNER, engine=False, gpu_instances="never",
                 runner_parameters=True, local=True),
    # A companion (tokenizer, pre- or post-processing, ECLAIR's runtime): its own model.py; instances
    # as its builder says (`converters.triton_config.companion_config`).
    ServeBackend("python", "", "python", "python", None, engine=False, gpu_instances="with-cuda", core=False),
)}
CORE_SERVE_BACKENDS = tuple(name for name, backend in SERVE_BACKENDS.items() if backend.core)
LOCAL_SERVE_BACKENDS = tuple(name for name, backend in SERVE_BACKENDS.items() if backend.local)


def serve_backend(name: str) -> ServeBackend:
    if name not in CORE_SERVE_BACKENDS:
        raise UserError(f"--serve-backend must be one of {', '.join(CORE_SERVE_BACKENDS)}, got {name}.")
    return SERVE_BACKENDS[name]


def serves_engine(name: str) -> bool:
    """True for a backend that serves a TensorRT engine (False for companions' `python`)."""
    return name in SERVE_BACKENDS and SERVE_BACKENDS[name].engine
