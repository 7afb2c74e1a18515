"""Where a python_compiled model's served throughput goes: one published model served by the local
Triton under several variants (instances, python-backend shared memory, CUDA MPS), each
against the raw paths of the same card in the same run (the CUDA graph replayed alone, and the
runner's whole call with its copies).

    python -m benchmarks.serving_variants_probe REPOSITORY MODEL OUT_FILE [--variants i1,i2,...]

A variant is `i<instances>[-shm][-mps]`: `-shm` starts the python backend with a
64 MB shared-memory region (its default is small and grows per request), `-mps` runs the server
under a CUDA MPS daemon (one GPU context for all instances). Only sequence bucket 128 is captured,
so each variant loads in seconds; the 256x128 graph is the one `python_compiled` serves.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from converters.model_folder import VERSION, read_model_config
from converters.triton_config import config_text
from scripts.bench.load import served_point
from scripts.bench.raw import RawModel, raw_point
from scripts.cuda_mps import MpsDaemon
from scripts.local_triton import LocalTriton, Ports
from scripts.health import wait_until_ready


def variant_repository(source: Path, root: Path, instances: int) -> Path:
    config = read_model_config(source)
    target = root / config.name
    shutil.copytree(source, target, symlinks=True)
    for group in config.instance_group:
        group.count = instances
    config.parameters["sequence_buckets"].string_value = "128"
    (target / "config.pbtxt").write_text(config_text(config))
    return root


def replay_rate(runner, batch: int, seconds: float = 5.0) -> float:
    """Items/s of the bucket's CUDA graph replayed alone: the program's own limit on this card."""
    from benchmarks.compile_shapes_probe import rate

    return rate(runner.graphs[(batch, 128)], batch, seconds)


def run_variant(source: Path, name: str, batches: list[int], concurrencies: list[int], numpy1: str, log) -> None:
    parts = name.split("-")
    instances = int(parts[0][1:])
    extra = ("--backend-config=python,shm-default-byte-size=67108864",) if "shm" in parts else ()
    with tempfile.TemporaryDirectory(prefix="variant-") as scratch:
        root = variant_repository(source, Path(scratch) / "repo", instances)
        model = read_model_config(source).name
        daemon = MpsDaemon(Path(scratch)) if "mps" in parts else None
        server = LocalTriton(root, Ports.free(), log_path=Path(scratch) / "triton.log", extra_args=extra,
                             model_paths_first=tuple(p for p in [numpy1] if p),
                             environment=daemon.environment() if daemon else None)
        started = time.monotonic()
        try:
            if daemon:
                daemon.start()
            server.start()
            wait_until_ready(server.grpc_url, [model], 400)
            log(f"{name}: loaded in {time.monotonic() - started:.1f} s")
            for batch in batches:
                for concurrency in concurrencies:
                    point = served_point(server.grpc_url, root / model, batch, concurrency, 5.0, shared_memory=True)
                    log(f"{name}: batch {batch} concurrency {concurrency}: {point.items_per_s:,.0f} items/s, "
                        f"p50 {point.p50_ms:.2f} ms, server {point.server_ms or 0:.2f} ms "
                        f"(queue {point.server_queue_ms or 0:.2f}, compute {point.server_compute_ms or 0:.2f})")
        except Exception as exc:
            log(f"{name}: failed: {exc}")
            print((Path(scratch) / "triton.log").read_text(errors="replace")[-3000:])
        finally:
            server.stop()
            if daemon:
                daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--variants", default="i1,i2,i4,i2-shm,i2-mps,i4-mps")
    parser.add_argument("--batches", default="256")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--numpy1", default="")
    args = parser.parse_args()
    source = args.repository / args.model

    def log(line: str) -> None:
        print(line, flush=True)
        with open(args.out, "a") as handle:
            handle.write(line + "\n")

    import torch

    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {args.model} from {source / VERSION}")
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="raw-") as scratch:
        folder = variant_repository(source, Path(scratch), 1) / args.model
        raw = RawModel(folder, "graphs")
        for batch in batches:
            log(f"raw batch {batch}: runner call {raw_point(raw, folder, batch, 5.0).items_per_s:,.0f} items/s")
            log(f"raw batch {batch}: graph replay alone {replay_rate(raw.run.__self__, batch):,.0f} items/s")
        del raw
        torch.cuda.empty_cache()
    for name in args.variants.split(","):
        run_variant(source, name, batches, [int(c) for c in args.concurrency.split(",")], args.numpy1, log)


if __name__ == "__main__":
    main()
