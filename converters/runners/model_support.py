"""What every python-backend model of this project shares. Published beside each one as
`1/model_support.py`; a model file imports it first, before any third-party package:

    import model_support  # published beside this file
    model_support.use_pythonpath()
    import numpy as np

Standard library only at import time: it runs inside Triton's python stub and, for the raw
bench, outside it.
"""
import importlib.util
import json
import os
import sys


def use_pythonpath(hide=()):
    """Put PYTHONPATH's folders first on sys.path: the PyPI Triton's python stub ignores the
    variable, so a virtualenv's packages would not be found (NVIDIA's images install them
    system-wide). `hide`: modules made unimportable (a package's optional imports the model never
    uses, whose binaries would clash with the stub's)."""
    sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    for name in hide:
        sys.modules.setdefault(name, None)


class ModelArgs:
    """Triton's `initialize(args)`, read once: config, string parameters, the version folder, and
    the instance's kind and device."""

    def __init__(self, args):
        self.config = json.loads(args["model_config"])
        self.params = {k: v["string_value"] for k, v in self.config.get("parameters", {}).items()}
        self.folder = os.path.join(args["model_repository"], args["model_version"])
        self.instance_kind = args.get("model_instance_kind")
        self.device_id = int(args.get("model_instance_device_id", 0) or 0)
        self.instance_name = args.get("model_instance_name", "")
        self.inputs = [i["name"] for i in self.config["input"]]
        self.outputs = [o["name"] for o in self.config["output"]]

    def device(self):
        """`cuda:N` for a GPU instance, else the GPU a CPU instance drives (the PyPI Triton's python
        backend returns empty outputs from GPU instances): with a `devices` parameter
        (`cuda:0,cuda:1`) the instances take its GPUs in turn by their index in the group (Triton
        names them `<group>_<index>`), else the `device` parameter."""
        if self.instance_kind == "GPU":
            return f"cuda:{self.device_id}"
        return instance_device(self.params, self.instance_name)


def instance_device(params, instance_name):
    devices = [d for d in params.get("devices", "").split(",") if d]
    if not devices:
        return params.get("device", "cpu")
    index = instance_name.rsplit("_", 1)[-1]
    return devices[int(index) % len(devices) if index.isdigit() else 0]


def run_in_groups(feeds, run):
    """`feeds`: one dict of input arrays per request. Requests whose inputs share per-sample shapes
    are concatenated into one `run(dict) -> dict` call (so dynamic batching really batches) and
    the outputs split back by rows. Returns per request its outputs, or the exception its group
    raised: one bad group never fails the others."""
    import numpy as np

    groups = {}
    for index, feed in enumerate(feeds):
        key = tuple((name, value.shape[1:]) for name, value in feed.items())
        groups.setdefault(key, []).append(index)
    results = [None] * len(feeds)
    for members in groups.values():
        names = list(feeds[members[0]])
        merged = feeds[members[0]] if len(members) == 1 else {
            name: np.concatenate([feeds[i][name] for i in members]) for name in names}
        try:
            outputs = run(merged)
        except Exception as exc:  # reported per request by the caller
            for index in members:
                results[index] = exc
            continue
        start = 0
        for index in members:
            size = len(feeds[index][names[0]])
            results[index] = {name: np.ascontiguousarray(value[start:start + size]) for name, value in outputs.items()}
            start += size
    return results


def responses(pb_utils, results, failure, cast=None):
    """Triton responses for `run_in_groups` results: outputs (cast to `cast[name]` where given), or
    an error starting with `failure` ("ONNX Runtime failed", ...)."""
    answers = []
    for result in results:
        if isinstance(result, Exception):
            answers.append(error_response(pb_utils, f"{failure}: {result}"))
            continue
        answers.append(pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, value.astype(cast[name], copy=False) if cast else value)
            for name, value in result.items()]))
    return answers


def call_core(pb_utils, core, inputs, outputs):
    """A BLS request to the core model; its error becomes a RuntimeError naming it."""
    response = pb_utils.InferenceRequest(model_name=core, requested_output_names=list(outputs),
                                         inputs=[pb_utils.Tensor(n, v) for n, v in inputs.items()]).exec()
    if response.has_error():
        raise RuntimeError(f"{core}: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


def error_response(pb_utils, message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(message)))


def load_beside(folder, module_name, file_name=None):
    """Import a module published in a model's version folder (the raw bench runs the published
    code itself; inside Triton the folder is already on sys.path)."""
    path = os.path.join(str(folder), file_name or f"{module_name}.py")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # as an import would: dataclasses and pickling look the module up there
    spec.loader.exec_module(module)
    return module
