"""The python_compiled runner's load, on the CPU with a tiny exported program: every shape a
request can bring is compiled at load (Dynamo with the eager backend stands in for Inductor: the
guards that decide a recompile are Dynamo's, and Inductor on the CPU takes a minute), a request
never compiles, the compile-worker pool is gone after load (a warm cache starts none), and on a
GPU the cache is emptied after the warm-ups (the calls' order, with torch.cuda stubbed)."""
from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.compiled_step import runner_module

runner = runner_module()
LONGEST = 64
CONFIG = {"input": [{"name": "ids", "data_type": "TYPE_INT64", "dims": ["-1"]},
                    {"name": "mask", "data_type": "TYPE_INT64", "dims": ["-1"]}],
          "output": [{"name": "pooled"}], "max_batch_size": 8}
PADDED = {"sequence_buckets": "16,64"}  # a model built with --pad-sequence


class Pooler(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.project = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 4)

    def forward(self, ids, mask):
        states = self.project(self.embed(ids)) * mask.unsqueeze(-1).float()
        return states.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Pooler().eval()


@pytest.fixture(scope="module")
def program_file(model, tmp_path_factory):
    """model.pt2 as compiled_step.export_program writes it: batch and one shared sequence Dim."""
    batch, sequence = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("sequence", min=1, max=LONGEST)
    ids, mask = torch.randint(0, 50, (3, 7)), torch.ones(3, 7, dtype=torch.int64)
    program = torch.export.export(model, (ids, mask), dynamic_shapes=({0: batch, 1: sequence}, {0: batch, 1: sequence}),
                                  strict=False)
    path = tmp_path_factory.mktemp("program") / runner.PROGRAM_FILE
    torch.export.save(program, str(path))
    return path


@pytest.fixture
def folder(program_file, tmp_path, monkeypatch):
    """A version folder of its own (the runner points TORCHINDUCTOR_CACHE_DIR into it: restored after)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "unused"))
    (tmp_path / runner.PROGRAM_FILE).symlink_to(program_file)
    torch._dynamo.reset()
    yield tmp_path
    torch._dynamo.reset()


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.fixture
def eager_backend(monkeypatch):
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, dynamic: compile_(module, dynamic=dynamic, backend="eager"))


def _feeds(batch, length, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int64)
    mask[0, length // 2:] = 0 if length > 1 else 1
    return {"ids": rng.integers(0, 50, (batch, length)).astype(np.int64), "mask": mask}


def test_without_sequence_buckets_load_compiles_and_requests_never_do(folder, model, eager_backend):
    before = _graphs()
    loaded = runner.Runner(str(folder), CONFIG, {}, "cpu", mode="compiled", cache_writable=True)
    assert loaded.longest == LONGEST and not loaded.padded
    assert loaded.load_shapes == [(b, n) for b in (2, 4, 8) for n in (1, LONGEST)]
    compiled_at_load = _graphs() - before
    assert compiled_at_load >= 2  # before: nothing was compiled at load, and every request compiled

    for batch in range(1, 9):
        for length in (1, 2, 3, 8, 17, 63, LONGEST):
            feeds = _feeds(batch, length, seed=batch * 100 + length)
            with torch.no_grad():
                expected = model(*(torch.from_numpy(feeds[n]) for n in ("ids", "mask"))).numpy()
            np.testing.assert_allclose(loaded.run(feeds)["pooled"], expected, rtol=1e-5, atol=1e-6)
    assert _graphs() - before == compiled_at_load  # 56 request shapes, no compile

    with pytest.raises(ValueError, match=r"^a batch of 2 with sequence length 65 is beyond the shapes compiled at "
                                         r"load \(batch up to 8, sequence length up to 64\)\.$"):
        loaded.run(_feeds(2, LONGEST + 1))
    with pytest.raises(ValueError, match="a batch of 9 with sequence length 3 is beyond"):
        loaded.run(_feeds(9, 3))


def test_a_shape_load_did_not_compile_is_refused_not_compiled(folder, eager_backend, monkeypatch):
    if not hasattr(torch.compiler, "set_stance"):
        pytest.skip("torch < 2.6 has no fail_on_recompile stance: such a request compiles")
    monkeypatch.setattr(runner, "load_shapes", lambda *args: [(8, LONGEST)])  # length 1 left out
    loaded = runner.Runner(str(folder), CONFIG, {}, "cpu", mode="compiled", cache_writable=True)
    before = _graphs()
    loaded.run(_feeds(3, 5))
    with pytest.raises(RuntimeError, match=r"^inputs of shapes \(4, 1\), \(4, 1\) match nothing compiled at load, "
                                           r"and the request path does not compile\.$"):
        loaded.run(_feeds(3, 1))
    assert _graphs() == before


def test_padded_buckets_still_compile_every_bucket_at_load(folder, eager_backend):
    loaded = runner.Runner(str(folder), CONFIG, PADDED, "cpu", mode="compiled", cache_writable=True)
    assert loaded.padded and sorted(loaded.buffers) == [(2, 16), (2, 64), (4, 16), (4, 64), (8, 16), (8, 64)]
    before = _graphs()
    for batch, length in ((1, 1), (3, 16), (5, 17), (8, 64)):
        loaded.run(_feeds(batch, length))
    assert _graphs() == before


def test_sequence_limit_reads_the_exported_maximum(program_file):
    inputs = [("ids", torch.int64, [-1]), ("mask", torch.int64, [-1])]
    assert runner.sequence_limit(torch.export.load(str(program_file)), inputs) == LONGEST


# -- the compile-worker pool -------------------------------------------------------------------

def _pool_starting_compile(seen):
    """torch.compile whose compile asks for Inductor's compile-worker pool as a Triton kernel's
    compile does on a GPU (AsyncCompile.use_process_pool: a real SubprocPool where compile_threads > 1)."""
    from torch._inductor import async_compile

    def compile_(module, dynamic):
        def call(*args):
            if "threads" not in seen:
                seen["threads"] = async_compile.get_compile_threads()
                async_compile.AsyncCompile.use_process_pool()  # starts the pool where threads > 1
                seen["pool"] = bool(async_compile._pool_set) and bool(_children())
            return module(*args)
        return call
    return compile_


def _children() -> set[int]:
    """This process's descendants, read from /proc here (not with the runner's own helper)."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
    found, frontier = set(), [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier += children
    return found


@pytest.fixture
def pool_starting_compile(monkeypatch):
    from torch._inductor import config

    seen = {}
    monkeypatch.setattr(torch, "compile", _pool_starting_compile(seen))
    with config.patch(compile_threads=2):  # as on any multi-core host (monkeypatch would delete the option)
        yield seen


def test_a_cold_load_ends_the_compile_worker_pool_it_started(folder, pool_starting_compile):
    from torch._inductor import async_compile

    before = _children()
    loaded = runner.Runner(str(folder), CONFIG, PADDED, "cpu", mode="compiled", cache_writable=True)
    assert pool_starting_compile == {"threads": 2, "pool": True}  # the cache was empty: a parallel compile
    assert not async_compile._pool_set and _children() <= before  # before: ~25 workers stayed beside each stub
    assert loaded.run(_feeds(2, 3))["pooled"].shape == (2, 4)


def test_a_warm_load_starts_no_compile_worker_pool(folder, pool_starting_compile):
    from torch._inductor import config

    (folder / runner.CACHE_FOLDER).mkdir()
    (folder / runner.CACHE_FOLDER / "fxgraph").mkdir()  # what the builder published
    before = _children()
    loaded = runner.Runner(str(folder), CONFIG, PADDED, "cpu", mode="compiled")
    try:
        assert pool_starting_compile == {"threads": 1, "pool": False}
        assert _children() <= before and config.compile_threads == 2  # one thread for the load only
    finally:
        assert os.path.basename(loaded.cache_dir).startswith("inductor-")
        shutil.rmtree(loaded.cache_dir)


def test_compile_threads_is_not_part_of_inductors_cache_key():
    """Upstream contract the warm load relies on (torch/_inductor/config.py): a cache the builder
    filled with many compile threads is hit by a load on one."""
    from torch._inductor import config

    assert "compile_threads" in config._cache_config_ignore_prefix


def test_host_memory_counts_this_process_and_its_children():
    alone = runner.host_memory_mb()
    child = subprocess.Popen(["python3", "-c", "import time; b = bytearray(64 << 20); time.sleep(30)"])
    try:
        for _ in range(100):
            tree = runner.process_tree()
            if tree.get(child.pid, 0) > 60 << 20:
                break
            time.sleep(0.05)
        assert child.pid in tree and os.getpid() in tree and set(tree) - {os.getpid()} == _children()
        assert runner.host_memory_mb() > alone + 50
    finally:
        child.kill()
        child.wait()


# -- GPU memory after the warm-ups (torch.cuda stubbed: no GPU here) ----------------------------

def test_the_cache_is_emptied_after_the_warm_ups_and_the_workers_ended(tmp_path, monkeypatch):
    calls = []
    loaded = runner.Runner.__new__(runner.Runner)
    loaded.mode, loaded.padded, loaded.cache_dir = "compiled", True, str(tmp_path)
    loaded.device, loaded.load_shapes = torch.device("cuda", 0), [(2, 0), (8, 0), (4, 0)]
    monkeypatch.setattr(loaded, "_prepare", lambda shape: calls.append(("warm-up", shape)), raising=False)
    monkeypatch.setattr(runner, "end_compile_workers", lambda: calls.append("end compile workers"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("synchronize"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    loaded._load()
    assert calls == [("warm-up", (8, 0)), ("warm-up", (4, 0)), ("warm-up", (2, 0)), "end compile workers",
                     "synchronize", "empty_cache"]
    calls.clear()
    loaded.device = torch.device("cpu")
    loaded._load()
    assert "empty_cache" not in calls


def test_a_capture_empties_the_cache_before_it_starts():
    """Upstream contract (torch/cuda/graphs.py, `graph.__enter__`): each bucket's warm-up memory goes
    back to the driver before its graph is captured into the pool, so only the last load step's
    blocks stay cached, and `_load` empties those."""
    source = inspect.getsource(torch.cuda.graphs.graph.__enter__)
    assert source.index("torch.cuda.synchronize()") < source.index("torch.cuda.empty_cache()")
