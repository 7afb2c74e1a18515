"""Triton python-backend model: runs `model.pt` (TorchScript, beside this file) with PyTorch.

The GPU path of hosts without TensorRT: on a GPU instance the module runs on that GPU, in fp16
when the config's `precision` parameter says so (float inputs are cast; outputs come back fp32).
Requests sharing per-sample shapes are concatenated into one call; the only host/device copies
are the batch in and the outputs back.
"""
import json
import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        # CPU instances that drive a GPU: the PyPI Triton's python backend returns empty outputs
        # from GPU instances, so the GPU is named by the `device` parameter instead.
        wanted = params.get("device", "cpu")
        if args.get("model_instance_kind") == "GPU":
            wanted = f"cuda:{args['model_instance_device_id']}"
        gpu = wanted.startswith("cuda") and torch.cuda.is_available()
        self.device = torch.device(wanted if gpu else "cpu")
        self.half = gpu and params.get("precision", "fp32") == "fp16"
        self.model = torch.jit.load(os.path.join(here, "model.pt"), map_location=self.device).eval()  # traced in its precision
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        torch.backends.cuda.matmul.allow_tf32 = True

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            feeds = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs]
            groups.setdefault(tuple(f.shape[1:] for f in feeds), []).append((index, feeds))
        for members in groups.values():
            try:
                outputs = self._run([feeds for _, feeds in members])
            except RuntimeError as exc:  # one bad group must not fail the others
                for index, _ in members:
                    responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"PyTorch failed: {exc}"))
                continue
            start = 0
            for index, feeds in members:
                size = feeds[0].shape[0]
                responses[index] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(value[start:start + size])) for name, value in outputs.items()])
                start += size
        return responses

    def _run(self, feed_list):
        tensors = []
        for position in range(len(self.inputs)):
            batch = np.concatenate([feeds[position] for feeds in feed_list]) if len(feed_list) > 1 else feed_list[0][position]
            tensor = torch.from_numpy(batch).to(self.device, non_blocking=True)
            if self.half and tensor.is_floating_point():
                tensor = tensor.half()
            tensors.append(tensor)
        # Run the graph as traced: TorchScript's profiling executor re-optimises for every new input
        # shape, which stalled the first DeBERTa-large call of each batch size ~5 s on an H100, and
        # dynamic batching makes every batch size a new shape.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            result = self.model(*tensors)
        values = result if isinstance(result, (tuple, list)) else [result]
        return {name: value.float().cpu().numpy() for name, value in zip(self.outputs, values)}
