"""Triton python-backend models copied into published model folders."""
from pathlib import Path

ONNX_RUNNER = Path(__file__).with_name("onnx_runner.py")
TORCH_RUNNER = Path(__file__).with_name("torch_runner.py")
