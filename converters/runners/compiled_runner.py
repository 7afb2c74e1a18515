"""Triton python-backend model: runs `model.pt2` (a `torch.export` program, beside this file)
compiled with `torch.compile`, and on a GPU replays one CUDA graph per bucket shape.

Buckets are the shapes the dynamic batcher can form, rounded up: batch sizes 2, 4, 8, ... up to
`max_batch_size` (1 is padded to 2: torch.compile specialises size 1, which would be a second
compile) and, where the config's `sequence_buckets` parameter lists them, sequence lengths (only
for models whose padding is neutral: E5's ids and mask padded with 0). Every bucket is compiled,
and on a GPU captured with static input buffers, at load; a request is copied into its bucket's
buffers (padding zeroed), the graph replayed, and the rows it sent sliced out. The request path
never compiles. The Inductor cache the builder filled (`compile_cache/`, beside this file) makes
a warm start load kernels instead of generating them.

`Runner` is the whole computation without Triton: the builder warms the cache with it and
checks padded against unpadded answers, and the raw bench runs its three modes (`eager`, the
exported program as is; `compiled`; `graphs`, compiled with CUDA graphs).
"""
import locale
import os
import shutil
import tempfile

import model_support  # published beside this file

model_support.use_pythonpath()
# Triton's python stub runs under the server's locale; under C/POSIX, Python reads files as ASCII and
# torch.compile's UTF-8 templates fail to load. The stub is this model's own process.
try:
    locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
except locale.Error:
    pass

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.export.passes import move_to_device_pass  # noqa: E402

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: the builder and the raw bench use Runner alone
    pb_utils = None

PROGRAM_FILE = "model.pt2"
CACHE_FOLDER = "compile_cache"
MODES = ("eager", "compiled", "graphs")
TORCH_DTYPES = {"TYPE_FP32": torch.float32, "TYPE_FP16": torch.float16, "TYPE_INT64": torch.int64,
                "TYPE_INT32": torch.int32, "TYPE_UINT8": torch.uint8, "TYPE_BOOL": torch.bool}


def batch_buckets(max_batch_size):
    """2, 4, 8, ... up to and including `max_batch_size` (just [1] where that is 1)."""
    if max_batch_size <= 1:
        return [1]
    sizes, size = [], 2
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return sizes + [max_batch_size]


def parse_sizes(text):
    return sorted({int(part) for part in str(text or "").split(",") if part.strip()})


def round_up(value, sizes):
    return next((size for size in sizes if size >= value), None)


def use_cache(folder, writable):
    """Point Inductor at the published cache. Triton may mount the repository read-only, and two
    instances must not race on one folder, so a serving process works on its own copy."""
    published = os.path.join(folder, CACHE_FOLDER)
    if writable:
        os.makedirs(published, exist_ok=True)
        target = published
    else:
        target = tempfile.mkdtemp(prefix="inductor-")
        if os.path.isdir(published):
            shutil.copytree(published, target, dirs_exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = target
    return target


def without_device_asserts(module):
    """The program's input metadata asserts name the device it was exported on ("cuda", "cuda:0");
    moved to another GPU they would fail a correct input, and they check nothing the config does not."""
    assert_metadata = torch.ops.aten._assert_tensor_metadata.default
    for node in [n for n in module.graph.nodes if n.target is assert_metadata and not n.users]:
        module.graph.erase_node(node)
    module.recompile()
    return module


class Runner:
    def __init__(self, folder, config, params, device, mode=None, cache_writable=False):
        gpu = device.startswith("cuda") and torch.cuda.is_available()
        self.device = torch.device(device if gpu else "cpu")
        if gpu and self.device.index is not None:  # graphs are captured on the current device: make it this one
            torch.cuda.set_device(self.device)
        self.mode = mode or ("graphs" if gpu else "compiled")
        if self.mode not in MODES or (self.mode == "graphs" and not gpu):
            raise ValueError(f"mode {self.mode} is not one of {', '.join(MODES)} or needs a GPU")
        self.half = params.get("precision", "fp32") == "fp16"
        self.cache_dir = use_cache(folder, cache_writable) if self.mode != "eager" else None
        program = torch.export.load(os.path.join(folder, PROGRAM_FILE))
        module = without_device_asserts(move_to_device_pass(program, str(self.device)).module())
        self.call = module if self.mode == "eager" else torch.compile(module, dynamic=True)
        self.inputs = [(i["name"], TORCH_DTYPES[i["data_type"]], [int(d) for d in i["dims"]]) for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.sequences = parse_sizes(params.get("sequence_buckets"))
        self.batches = batch_buckets(int(config.get("max_batch_size", 1)))
        self.buffers, self.graphs, self.results = {}, {}, {}
        if self.mode != "eager":
            self.pool = torch.cuda.graph_pool_handle() if self.mode == "graphs" else None
            for bucket in sorted(self.bucket_shapes(), reverse=True):  # largest first: smaller graphs reuse its pool
                self._prepare(bucket)

    def bucket_shapes(self):
        """(batch, sequence) per bucket; sequence 0 where the inputs have no variable axis."""
        variable = any(-1 in dims for _, _, dims in self.inputs)
        if variable and not self.sequences:
            return []  # shapes are not padded: compiled calls without graphs
        return [(b, s) for b in self.batches for s in (self.sequences if variable else [0])]

    def _shape(self, dims, bucket):
        batch, sequence = bucket
        return [batch] + [sequence if d == -1 else d for d in dims]

    def _prepare(self, bucket):
        """Static input buffers for the bucket, compiled (and warmed) at load, captured on a GPU."""
        buffers = [torch.zeros(self._shape(dims, bucket), dtype=torch.float16 if self.half and dtype.is_floating_point
                               else dtype, device=self.device) for _, dtype, dims in self.inputs]
        with torch.inference_mode():
            if self.mode == "graphs":
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(2):  # compile and autotune outside the capture
                        self.call(*buffers)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    result = self.call(*buffers)
                self.graphs[bucket], self.results[bucket] = graph, result
            else:
                self.call(*buffers)
        self.buffers[bucket] = buffers

    def _bucket_for(self, tensors):
        batch = tensors[0].shape[0]
        variable = [t.shape[1 + dims.index(-1)] for t, (_, _, dims) in zip(tensors, self.inputs) if -1 in dims]
        sequence = round_up(max(variable), self.sequences) if variable else 0
        bucket = (round_up(batch, self.batches), sequence)
        return bucket if bucket in self.buffers else None

    def tensors(self, feeds):
        """The request's arrays on the device, in the config's order, floats in the served precision."""
        tensors = []
        for name, _, _ in self.inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device, non_blocking=True)
            tensors.append(tensor.half() if self.half and tensor.is_floating_point() else tensor)
        return tensors

    def run(self, feeds):
        tensors = self.tensors(feeds)
        batch = tensors[0].shape[0]
        bucket = self._bucket_for(tensors)
        with torch.inference_mode():
            if bucket is None:  # eager mode, or a shape no bucket holds (dynamic: no recompile)
                result = self.call(*tensors)
            else:
                for buffer, tensor in zip(self.buffers[bucket], tensors):
                    buffer.zero_()
                    buffer[tuple(slice(0, n) for n in tensor.shape)].copy_(tensor)
                if bucket in self.graphs:
                    self.graphs[bucket].replay()
                    result = self.results[bucket]
                else:
                    result = self.call(*self.buffers[bucket])
        values = result if isinstance(result, (tuple, list)) else [result]
        return {name: value[:batch].float().cpu().numpy() for name, value in zip(self.outputs, values)}


class TritonPythonModel:
    def initialize(self, args):
        model = model_support.ModelArgs(args)
        self.runner = Runner(model.folder, model.config, model.params, model.device())

    def execute(self, requests):
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name, _, _ in self.runner.inputs}
                 for request in requests]
        return model_support.responses(pb_utils, model_support.run_in_groups(feeds, self.runner.run),
                                       "compiled PyTorch failed")

    def finalize(self):
        if self.runner.cache_dir and os.path.basename(self.runner.cache_dir).startswith("inductor-"):
            shutil.rmtree(self.runner.cache_dir, ignore_errors=True)
