"""Triton python-backend model: runs `model.pt` (TorchScript, beside this file) with PyTorch.

The GPU path of hosts without TensorRT: on a GPU instance (or the GPU its `device` parameter
names) the module runs there, in fp16 when the config's `precision` parameter says so (float
inputs are cast; outputs come back fp32). Requests sharing per-sample shapes are concatenated
into one call; the only host/device copies are the batch in and the outputs back. `Runner` is
the whole computation, without Triton: the raw bench runs it too.
"""
import os

import model_support  # published beside this file

model_support.use_pythonpath()

import torch  # noqa: E402

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the raw bench uses Runner alone
    pb_utils = None


class Runner:
    def __init__(self, folder, config, params, device):
        gpu = device.startswith("cuda") and torch.cuda.is_available()
        self.device = torch.device(device if gpu else "cpu")
        self.half = gpu and params.get("precision", "fp32") == "fp16"
        # Traced in its precision, on this GPU where the builder made a trace for it (`model.cuda1.pt`:
        # a trace records the device of the tensors it creates), else on the first GPU (`model.pt`).
        own = os.path.join(folder, f"model.{str(self.device).replace(':', '')}.pt")
        path = own if os.path.isfile(own) else os.path.join(folder, "model.pt")
        self.model = torch.jit.load(path, map_location=self.device).eval()
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        torch.backends.cuda.matmul.allow_tf32 = True

    def run(self, feeds):
        tensors = []
        for name in self.inputs:
            tensor = torch.from_numpy(feeds[name]).to(self.device, non_blocking=True)
            tensors.append(tensor.half() if self.half and tensor.is_floating_point() else tensor)
        # Run the graph as traced: TorchScript's profiling executor re-optimises for every new input
        # shape, which stalled the first DeBERTa-large call of each batch size ~5 s on an H100, and
        # dynamic batching makes every batch size a new shape.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            result = self.model(*tensors)
        values = result if isinstance(result, (tuple, list)) else [result]
        return {name: value.float().cpu().numpy() for name, value in zip(self.outputs, values)}


class TritonPythonModel:
    def initialize(self, args):
        model = model_support.ModelArgs(args)
        self.runner = Runner(model.folder, model.config, model.params, model.device())

    def execute(self, requests):
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.runner.inputs}
                 for request in requests]
        return model_support.responses(pb_utils, model_support.run_in_groups(feeds, self.runner.run), "PyTorch failed")
