"""Triton python-backend model: runs `model.onnx` (beside this file) with ONNX Runtime.

Published as `<model>/1/model.py` by the converters for hosts whose Triton has no ONNX
Runtime backend (the PyPI Triton) or no GPU. Requests that share per-sample shapes are
concatenated into one session run, so Triton's dynamic batching really batches. `Runner` is
the whole computation, without Triton: the raw bench runs it too.
"""
import os

import model_support  # published beside this file

model_support.use_pythonpath()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the raw bench uses Runner alone
    pb_utils = None

_ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
               "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


class Runner:
    def __init__(self, folder, config, params, device="cpu"):
        options = ort.SessionOptions()
        # ONNX Runtime's CPU arena grows to every new batch shape and never gives memory back: with
        # dynamic batching that kept a YOLOX process climbing past 1 GB. Off unless asked for.
        options.enable_cpu_mem_arena = params.get("cpu_mem_arena", "off") == "on"
        threads = int(params.get("intra_op_threads", "0"))
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}))
        self.session = ort.InferenceSession(os.path.join(folder, params.get("onnx_file", "model.onnx")),
                                            options, providers=providers)
        self.inputs = {i.name: _ONNX_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.outputs = [o["name"] for o in config["output"]]
        missing = [name for name in self.inputs if name not in {i["name"] for i in config["input"]}]
        if missing:
            raise ValueError(f"config.pbtxt of {config['name']} lacks the ONNX inputs {missing}; add them to its "
                             "input list")

    def run(self, feeds):
        merged = {name: feeds[name].astype(dtype, copy=False) for name, dtype in self.inputs.items()}
        return dict(zip(self.outputs, self.session.run(self.outputs, merged)))


class TritonPythonModel:
    def initialize(self, args):
        model = model_support.ModelArgs(args)
        device = model.device() if model.instance_kind == "GPU" else "cpu"
        try:
            self.runner = Runner(model.folder, model.config, model.params, device)
        except ValueError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in model.config["output"]}

    def execute(self, requests):
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.runner.inputs}
                 for request in requests]
        return model_support.responses(pb_utils, model_support.run_in_groups(feeds, self.runner.run),
                                       "ONNX Runtime failed", self.output_dtypes)
