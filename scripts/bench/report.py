"""The bench report: per-model summary (best served throughput, its ratio to raw, the overhead
split), JSON, CSV and plots. `python -m scripts.bench plot REPORT.json` redraws the plots."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from scripts.bench.limits import fp16_limit
from scripts.bench.points import BenchPoint


def summary(points: list[BenchPoint], device: str = "") -> list[dict]:
    """Per model and batch: the best served throughput (over concurrencies), its ratio to the best
    raw path (a compiled model has several: eager, compiled, CUDA graphs) and to the fp16 limit."""
    rows = []
    for model in sorted({p.model for p in points}):
        flops = next((p.flops_per_item for p in points if p.model == model and p.flops_per_item), None)
        limit = fp16_limit(flops, device)
        for batch in sorted({p.batch for p in points if p.model == model}):
            served = [p for p in points if p.model == model and p.batch == batch and p.kind == "served"]
            raw = sorted((p for p in points if p.model == model and p.batch == batch and p.kind.startswith("raw")),
                         key=lambda p: -p.items_per_s)  # the best raw path first
            if not served:
                continue
            best = max(served, key=lambda p: p.items_per_s)
            single = next((p for p in served if p.concurrency == 1), None)
            # At concurrency 1 (nothing queued), the overhead per request over the raw model, and how
            # it splits: the client and gRPC (outside Triton), and the backend (copies into and out of
            # the python stub, its IPC, and anything the model file does beyond the raw call).
            overhead = single.p50_ms - raw[0].p50_ms if raw and single else None
            backend = (single.server_compute_ms - raw[0].p50_ms
                       if raw and single and single.server_compute_ms is not None else None)
            transport = single.p50_ms - single.server_ms if single and single.server_ms is not None else None
            rows.append({"model": model, "batch": batch, "best_concurrency": best.concurrency,
                         "input_shapes": best.input_shapes,
                         "server_overhead_ms": overhead, "backend_overhead_ms": backend, "transport_ms": transport,
                         "served_items_per_s": best.items_per_s, "p95_ms": best.p95_ms,
                         "raw_items_per_s": raw[0].items_per_s if raw else None, "raw_path": raw[0].kind if raw else None,
                         "raw_paths_items_per_s": {p.kind: p.items_per_s for p in raw},
                         "served_over_raw": best.items_per_s / raw[0].items_per_s if raw else None,
                         "gflop_per_item": flops / 1e9 if flops else None, "fp16_limit_items_per_s": limit,
                         "served_over_fp16_limit": best.items_per_s / limit if limit else None})
    return rows


def write_report(points: list[BenchPoint], out_dir: Path, meta: dict) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "points": [asdict(p) for p in points], "summary": summary(points, meta.get("device", ""))}
    paths = [out_dir / "bench.json", out_dir / "bench.csv"]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    with open(paths[1], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    try:
        return paths + plot(points, out_dir, meta.get("device", ""))
    except ImportError:  # a GPU box without matplotlib: `python -m scripts.bench plot REPORT` draws them later
        return paths


def plot(points: list[BenchPoint], out_dir: Path, device: str) -> list[Path]:
    """Throughput and p95 latency against batch size, one PNG per model, raw model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for model in sorted({p.model for p in points}):
        mine = [p for p in points if p.model == model]
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for kind, concurrency in sorted({(p.kind, p.concurrency) for p in mine}, key=lambda k: (k[0] != "served", k)):
            line = sorted((p for p in mine if (p.kind, p.concurrency) == (kind, concurrency)), key=lambda p: p.batch)
            raw = kind.startswith("raw")
            label = f"{kind} (no server)" if raw else f"served, concurrency {concurrency}"
            style = "--o" if raw else "-o"
            left.plot([p.batch for p in line], [p.items_per_s for p in line], style, label=label)
            right.plot([p.batch for p in line], [p.p95_ms for p in line], style, label=label)
        for axis, title, unit in ((left, "throughput", "items/s"), (right, "p95 latency", "ms")):
            axis.set_xscale("log", base=2)
            axis.set_xlabel("batch size")
            axis.set_ylabel(unit)
            axis.set_title(f"{model}: {title}")
            axis.grid(True, alpha=0.3)
        limit = fp16_limit(next((p.flops_per_item for p in mine if p.flops_per_item), None), device)
        if limit:
            left.axhline(limit, color="k", linestyle=":", label=f"fp16 limit {limit:,.0f}/s")
        left.legend(fontsize=8)
        figure.suptitle(device, fontsize=9)
        figure.tight_layout()
        path = out_dir / f"bench_{model}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths
