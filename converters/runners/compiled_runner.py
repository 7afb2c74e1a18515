"""Triton python-backend model: runs `model.pt2` (a `torch.export` program, beside this file)
compiled with `torch.compile`, and on a GPU replays one CUDA graph per bucket shape.

Buckets are the shapes the dynamic batcher can form, rounded up: batch sizes 2, 4, 8, ... up to
`max_batch_size` (1 is padded to 2: torch.compile specialises size 1, which would be a second
compile) and, where the config's `sequence_buckets` parameter lists them, sequence lengths (only
for models whose padding is neutral: E5's ids and mask padded with 0). Every bucket is compiled,
and on a GPU captured with static input buffers, at load; a request is copied into its bucket's
buffers (padding zeroed), the graph replayed, and the rows it sent sliced out. A variable axis
without sequence buckets is never padded: its batch buckets are compiled at load for length 1
and for one other length, which with dynamic shapes serves every length up to the exported
maximum, and its requests run compiled at the length they bring (no CUDA graph). The request
path never compiles: a shape that load did not compile is refused (torch >= 2.6).

The Inductor cache the builder filled (`compile_cache/`, beside this file) makes a warm start load
kernels instead of generating them, with no compile-worker pool; any pool a cold load started is
ended once loading is done, and on a GPU the warm-ups' cached memory is given back.

`Runner` is the whole computation without Triton: the builder warms the cache with it and
checks padded against unpadded answers, and the raw bench runs its three modes (`eager`, the
exported program as is; `compiled`; `graphs`, compiled with CUDA graphs).
"""
import contextlib
import itertools
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


def unpadded_lengths(longest, taken):
    """The lengths a variable axis that is not padded is compiled for at load. torch.compile with
    dynamic shapes gives length 1 its own graph (it specialises 0 and 1) and then one graph serves
    every length from 2 to `longest`, provided the length it first sees is no size in `taken` (the
    batch buckets, the fixed axes): Dynamo gives equal sizes one symbol ("duck sizing"), and a
    request where they differ would recompile. Every length where no such size is left."""
    if longest is None:  # no exported maximum: the smallest free length
        return [1, next(n for n in itertools.count(2) if n not in taken)]
    free = next((n for n in range(longest, 1, -1) if n not in taken), None)
    return [1, free] if free else list(range(1, longest + 1))


def load_shapes(batches, sequences, variable, longest=None, taken=()):
    """Every (batch, sequence) compiled at load, so that no request compiles: each batch bucket with
    each sequence bucket, or where a variable axis is not padded (no `sequence_buckets`) with its
    `unpadded_lengths`; sequence 0 where the inputs have no variable axis."""
    lengths = [0] if not variable else sequences or unpadded_lengths(longest, set(batches) | set(taken))
    return [(batch, length) for batch in batches for length in lengths]


def sequence_limit(program, inputs):
    """The exported upper bound of the inputs' variable axes (`inputs` in the program's order), or
    None where the program names none."""
    values = {node.name: node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder"}
    limits = []
    for name, (_, _, dims) in zip(program.graph_signature.user_inputs, inputs):
        shape = getattr(values.get(name), "shape", ())
        for axis in [i + 1 for i, d in enumerate(dims) if d == -1 and i + 1 < len(shape)]:
            size = shape[axis]
            bound = program.range_constraints.get(size.node.expr) if isinstance(size, torch.SymInt) else None
            if bound is not None and getattr(bound.upper, "is_finite", False):
                limits.append(int(bound.upper))
    return min(limits) if limits else None


def pad_rows(tensor, rows):
    """The tensor with zero rows appended up to `rows` (a batch bucket)."""
    if tensor.shape[0] == rows:
        return tensor
    padded = tensor.new_zeros((rows, *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    return padded


def no_compiling():
    """Calls under it that would compile raise instead (torch >= 2.6; older torch compiles them)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("fail_on_recompile") if set_stance else contextlib.nullcontext()


def compile_threads(count):
    """Inductor's compile threads set to `count` while loading (None: as configured). One thread
    starts no compile-worker pool; it is not part of Inductor's cache key (`compile_threads` is in
    torch/_inductor/config.py's `_cache_config_ignore_prefix`), so a warm cache still hits."""
    from torch._inductor import config

    if count is None or not hasattr(config, "compile_threads"):
        return contextlib.nullcontext()
    return config.patch(compile_threads=count)


def end_compile_workers():
    """End Inductor's compile-worker pool (on a GPU about 25 processes of some 450 MB each): after
    load nothing compiles. Inductor starts a new pool should this process compile again."""
    from torch._inductor import async_compile

    shutdown = getattr(async_compile, "shutdown_compile_workers", None)
    if shutdown is not None:
        shutdown()


def process_tree(pid=None):
    """{pid: resident bytes} of process `pid` (this one) and all its descendants (Linux /proc)."""
    pid = pid or os.getpid()
    table = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # state, ppid, ..., rss (field 24) at 21
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE"))
    tree, parents = {}, [pid]
    while parents:
        parent = parents.pop()
        if parent in table and parent not in tree:
            tree[parent] = table[parent][1]
            parents += [child for child, (ppid, _) in table.items() if ppid == parent]
    return tree


def host_memory_mb(pid=None):
    """Resident host memory of this process and its children (compile workers among them), in MB:
    what a benchmark prints after load."""
    return sum(process_tree(pid).values()) / 2**20


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
        self.half = params.get("precision", "fp32") in ("fp16", "fp8")  # fp8: linear layers only, fp16 around them
        self.cache_dir = use_cache(folder, cache_writable) if self.mode != "eager" else None
        program = torch.export.load(os.path.join(folder, PROGRAM_FILE))
        module = without_device_asserts(move_to_device_pass(program, str(self.device)).module())
        self.call = module if self.mode == "eager" else torch.compile(module, dynamic=True)
        self.inputs = [(i["name"], self._dtype(TORCH_DTYPES[i["data_type"]]), [int(d) for d in i["dims"]])
                       for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.sequences = parse_sizes(params.get("sequence_buckets"))
        self.batches = batch_buckets(int(config.get("max_batch_size", 1)))
        variable = any(-1 in dims for _, _, dims in self.inputs)
        self.padded = bool(self.sequences) or not variable  # False: requests run at the length they bring
        self.longest = sequence_limit(program, self.inputs) if variable else None
        fixed = {d for _, _, dims in self.inputs for d in dims if d != -1}
        self.load_shapes = load_shapes(self.batches, self.sequences, variable, self.longest, fixed)
        self.buffers, self.graphs, self.results = {}, {}, {}
        if self.mode != "eager":
            self._load()

    def _dtype(self, dtype):
        return torch.float16 if self.half and dtype.is_floating_point else dtype

    def _load(self):
        """Every load shape compiled (and captured), largest first: smaller graphs reuse its pool.
        From a warm cache (the builder's, copied) on one compile thread: kernels are loaded, not
        generated, and a compile-worker pool would only hold memory. Any pool is ended after, and on
        a GPU the warm-ups' cached blocks go back to the driver: each model process would otherwise
        keep its largest shape's activations reserved beside the graph pool."""
        self.pool = torch.cuda.graph_pool_handle() if self.mode == "graphs" and self.padded else None
        with compile_threads(1 if os.listdir(self.cache_dir) else None):
            for shape in sorted(self.load_shapes, reverse=True):
                self._prepare(shape)
        end_compile_workers()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _shape(self, dims, bucket):
        batch, sequence = bucket
        return [batch] + [sequence if d == -1 else d for d in dims]

    def _prepare(self, bucket):
        """Static input buffers for the bucket, compiled (and warmed) at load, captured on a GPU. A
        shape whose sequence is not padded is only compiled: requests bring their own length."""
        buffers = [torch.zeros(self._shape(dims, bucket), dtype=dtype, device=self.device)
                   for _, dtype, dims in self.inputs]
        with torch.inference_mode():
            if not self.padded:
                self.call(*buffers)
                return
            if self.mode == "graphs":
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(2):  # compile and autotune outside the capture
                        self.call(*buffers)
                torch.cuda.current_stream(self.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):  # it empties the cache first (torch/cuda/graphs.py)
                    result = self.call(*buffers)
                self.graphs[bucket], self.results[bucket] = graph, result
            else:
                self.call(*buffers)
        self.buffers[bucket] = buffers

    def _bucket_for(self, tensors):
        """The load shape a request runs at: its batch rounded up to a bucket, its sequence rounded
        up to a sequence bucket (or as it came, not padded); refused where load compiled none."""
        lengths = [t.shape[1 + dims.index(-1)] for t, (_, _, dims) in zip(tensors, self.inputs) if -1 in dims]
        longest = max(lengths, default=0)
        batch = round_up(tensors[0].shape[0], self.batches)
        sequence = round_up(longest, self.sequences) if self.sequences and lengths else longest
        limit = self.sequences[-1] if self.sequences else self.longest
        if batch is None or sequence is None or (lengths and limit and longest > limit):
            raise ValueError(f"a batch of {tensors[0].shape[0]} with sequence length {longest} is beyond the shapes "
                             f"compiled at load (batch up to {self.batches[-1]}, sequence length up to {limit}).")
        return batch, sequence

    def tensors(self, feeds):
        """The request's arrays on the device, in the config's order and dtypes (floats in the served precision)."""
        return [torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device, dtype, non_blocking=True)
                for name, dtype, _ in self.inputs]

    def run(self, feeds):
        tensors = self.tensors(feeds)
        batch = tensors[0].shape[0]
        if self.mode == "eager":
            with torch.inference_mode():
                result = self.call(*tensors)
        else:
            result = self._run_compiled(tensors)
        values = result if isinstance(result, (tuple, list)) else [result]
        return {name: value[:batch].float().cpu().numpy() for name, value in zip(self.outputs, values)}

    def _run_compiled(self, tensors):
        bucket = self._bucket_for(tensors)
        if not self.padded:  # the batch padded to its bucket, the sequence as it came; not an
            tensors = [pad_rows(tensor, bucket[0]) for tensor in tensors]  # inference tensor, as at load
        with torch.inference_mode():
            if self.padded:
                for buffer, tensor in zip(self.buffers[bucket], tensors):
                    buffer.zero_()
                    buffer[tuple(slice(0, n) for n in tensor.shape)].copy_(tensor)
                if bucket in self.graphs:
                    self.graphs[bucket].replay()
                    return self.results[bucket]
                tensors = self.buffers[bucket]
            try:
                with no_compiling():
                    return self.call(*tensors)
            except RuntimeError as exc:
                if "fail_on_recompile" not in str(exc):
                    raise
                shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
                raise RuntimeError(f"inputs of shapes {shapes} match nothing compiled at load, and the request "
                                   "path does not compile.") from None


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
