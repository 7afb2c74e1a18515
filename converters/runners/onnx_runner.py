"""Triton python-backend model: runs `model.onnx` (beside this file) with ONNX Runtime.

Published as `<model>/1/model.py` by the converters for hosts whose Triton has no ONNX
Runtime backend (the PyPI Triton) or no GPU. Requests that share per-sample shapes are
concatenated into one session run, so Triton's dynamic batching really batches.
"""
import json
import os
import sys

# The PyPI Triton's embedded python stub ignores PYTHONPATH; honour it so a virtualenv's
# packages (onnxruntime) are found. NVIDIA's images install them system-wide instead.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0"))
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        self.session = ort.InferenceSession(os.path.join(here, params.get("onnx_file", "model.onnx")),
                                            options, providers=providers)
        self.graph_inputs = [i.name for i in self.session.get_inputs()]
        self.inputs = {i["name"]: pb_utils.triton_string_to_numpy(i["data_type"]) for i in config["input"]}
        self.outputs = [o["name"] for o in config["output"]]
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        missing = [name for name in self.graph_inputs if name not in self.inputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"config.pbtxt of {config['name']} lacks the ONNX inputs {missing}; add them to its input list")

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            feeds = {}
            for name in self.graph_inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                feeds[name] = tensor.as_numpy().astype(self.inputs[name], copy=False)
            key = tuple((name, feeds[name].shape[1:]) for name in self.graph_inputs)
            groups.setdefault(key, []).append((index, feeds))
        for members in groups.values():
            try:
                outputs = self._run([feeds for _, feeds in members])
            except Exception as exc:  # one bad group must not fail the others
                error = pb_utils.TritonError(f"ONNX Runtime failed: {exc}")
                for index, _ in members:
                    responses[index] = pb_utils.InferenceResponse(error=error)
                continue
            start = 0
            for index, feeds in members:
                size = feeds[self.graph_inputs[0]].shape[0]
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value[start:start + size].astype(self.output_dtypes[name], copy=False)))
                           for name, value in outputs.items()]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses

    def _run(self, feed_list):
        if len(feed_list) == 1:
            merged = feed_list[0]
        else:
            merged = {name: np.concatenate([f[name] for f in feed_list]) for name in self.graph_inputs}
        values = self.session.run(self.outputs, merged)
        return dict(zip(self.outputs, values))
