"""PyTorch checkpoint -> ONNX -> TensorRT engine + Triton config.

Each step (export, check, build, publish) is a small function returning what it made; every
TensorRT call lives in `converters.tensorrt_backend` so the rest runs and is tested anywhere.
"""
