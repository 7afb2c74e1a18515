"""A sweep: every model at every batch size (capped at its max) and concurrency, served through
Triton, then the same batch sizes on the raw model."""
from __future__ import annotations

from pathlib import Path

from converters.errors import UserError
from converters.model_folder import read_model_config
from scripts.bench.load import served_point
from scripts.bench.points import DEFAULT_SEQUENCE_LENGTH, BenchPoint
from scripts.bench.raw import RawModel, raw_paths, raw_point


def sweep(grpc_url: str, model_dirs: list[Path], batches: list[int], concurrencies: list[int], duration_s: float,
          raw: bool = True, shared_memory: bool = False,
          sequence_length: int | None = DEFAULT_SEQUENCE_LENGTH, raw_modes: frozenset[str] | None = None) -> list[BenchPoint]:
    """`raw_modes`: the compiled runner's raw paths to measure (None: every one the card runs;
    each compile of a large model takes minutes)."""
    from tqdm import tqdm

    plan = []
    for model_dir in model_dirs:
        max_batch = read_model_config(model_dir).max_batch_size
        if max_batch == 0:
            continue  # not batched: one request is one item
        sizes = [b for b in batches if b <= max_batch]
        plan += [(model_dir, b, c) for b in sizes for c in concurrencies]
        if raw:
            runs = raw_paths(model_dir)
            modes = [m for m in runs if m is None or raw_modes is None or m in raw_modes]
            if not modes:
                raise UserError(f"--raw-paths {','.join(sorted(raw_modes))} leaves {model_dir.name} no raw baseline: "
                                f"this card runs it as {','.join(runs)}.")
            plan += [(model_dir, b, mode) for mode in modes for b in sizes]
    points, raw_models = [], {}
    for model_dir, batch, concurrency in tqdm(plan, desc="bench", unit="point"):
        if not isinstance(concurrency, int):  # a raw path: None, or a compiled model's mode
            if (model_dir, concurrency) not in raw_models:  # loaded once per path; only one held at a time
                raw_models = {(model_dir, concurrency): RawModel(model_dir, concurrency, sequence_length)}
            points.append(raw_point(raw_models[(model_dir, concurrency)], model_dir, batch, duration_s, sequence_length))
        else:
            points.append(served_point(grpc_url, model_dir, batch, concurrency, duration_s, shared_memory,
                                       sequence_length))
    return points
