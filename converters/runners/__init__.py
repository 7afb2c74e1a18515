"""Triton python-backend models copied into published model folders, and the helper published
beside every python-backend model of the project (`1/model_support.py`)."""
from pathlib import Path

ONNX_RUNNER = Path(__file__).with_name("onnx_runner.py")
TORCH_RUNNER = Path(__file__).with_name("torch_runner.py")
COMPILED_RUNNER = Path(__file__).with_name("compiled_runner.py")
MODEL_SUPPORT = Path(__file__).with_name("model_support.py")
MODEL_SUPPORT_FILE = "1/model_support.py"
