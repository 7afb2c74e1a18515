"""fp8 beside fp16 from one run of benchmarks/gpu_fp8.sh: per model and batch, served items/s in
each precision and their ratio, the best raw path (CUDA graphs on a GPU) in each and their ratio,
the fraction of the fp16 dense limit (the yardstick for both, so the gain shows), the input shapes,
and the accuracy fp8's gate measured.

    python -m benchmarks.fp8_summary OUT_DIR BUILD_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _summary(out: Path, name: str) -> dict[int, dict]:
    path = out / name / "bench.json"
    return {row["batch"]: row for row in json.loads(path.read_text())["summary"]} if path.is_file() else {}


def _cell(row: dict, key: str, fmt: str = ",.0f") -> str:
    return format(row[key], fmt) if row.get(key) is not None else "-"


def _raw_cell(row: dict) -> str:
    """The best raw path's items/s, named (the baseline `bench` chose: graphs on a GPU)."""
    return f"{_cell(row, 'raw_items_per_s')} ({row['raw_path']})" if row.get("raw_items_per_s") else "-"


def _ratio(fp16: dict, fp8: dict, key: str) -> str:
    return f"{fp8[key] / fp16[key]:.2f}x" if fp16.get(key) and fp8.get(key) else "-"


def main(out: Path, build: Path) -> None:
    print("| model | batch | inputs | fp16 served/s | fp8 served/s | fp8/fp16 served | fp16 raw/s | fp8 raw/s | "
          "fp8/fp16 raw | fp16 of limit | fp8 of fp16 limit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model in ("deberta_large", "e5_small_v2"):
        fp16, fp8 = _summary(out, f"{model}_fp16"), _summary(out, f"{model}_fp8")
        for batch in sorted(set(fp16) | set(fp8)):
            a, b = fp16.get(batch, {}), fp8.get(batch, {})
            shapes = ", ".join(f"{k} {v}" for k, v in (a or b)["input_shapes"].items())
            print(f"| {model} | {batch} | {shapes} | {_cell(a, 'served_items_per_s')} | "
                  f"{_cell(b, 'served_items_per_s')} | {_ratio(a, b, 'served_items_per_s')} | "
                  f"{_raw_cell(a)} | {_raw_cell(b)} | {_ratio(a, b, 'raw_items_per_s')} | "
                  f"{_cell(a, 'served_over_fp16_limit', '.2f')} | {_cell(b, 'served_over_fp16_limit', '.2f')} |")
    print("\nfp8 accuracy against fp32, as each build's gate measured it (manifest `accuracy`):")
    for manifest in sorted(build.glob("fp8/model_repository/*/manifest.json")):
        accuracy = json.loads(manifest.read_text()).get("accuracy") or {}
        for row in accuracy.get("fp8", []):
            print(f"- {manifest.parent.name}: " + json.dumps(row))
        for group, why in (accuracy.get("kept_in_fp16") or {}).items():
            print(f"- {manifest.parent.name}: kept in fp16: {group} ({why})")
    refused = out / "refused.txt"
    if refused.is_file():
        print("\nrefused:\n" + refused.read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
