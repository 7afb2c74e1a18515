#!/usr/bin/env bash
# Multi-GPU placement on a GPU host without Docker (the local Triton from nvidia-pytriton, the
# models' PyTorch fp16 paths): every model served by one Triton with its instances on all GPUs
# of TRITON_GPU_IDS, each model process's GPU and memory read from nvidia-smi, then E5 alone on
# 1, 2, 4 ... GPUs, same run, and the scaling summary.
#
#   benchmarks/gpu_multi.sh TOKENIZER_DIR OUT_DIR [NUMPY1_DIR]
#
# Environment: GPU_MODELS, INSTANCE_COUNT (per GPU, default 2), BENCH_BATCHES (256),
# BENCH_CONCURRENCY (4,8,16,32), BENCH_DURATION (3), CHECKPOINTS (e5,caption,yolox,eclair).
set -euo pipefail
tokenizer=$1 out=$2 numpy1=${3:-}
work=build/gpu_multi
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
all=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
[ -f "$work/checkpoints/e5/config.json" ] || python3 -m benchmarks.make_gpu_checkpoints --tokenizer "$tokenizer" \
    --out "$work/checkpoints" --models "${CHECKPOINTS:-e5,caption,yolox,eclair}"
. benchmarks/gpu_env.sh
write_env() { write_gpu_env "$work/gpu.env" "$work" "$1" "$2" "$numpy1"; }  # MODELS TRITON_GPU_IDS
stack() { python3 -m scripts.stack "$@" --local --env-file "$work/gpu.env"; }
bench_e5() {
    stack bench e5_small_v2 --no-raw --batch-sizes "${BENCH_BATCHES:-256}" --concurrency "${BENCH_CONCURRENCY:-4,8,16,32}" \
        --duration "${BENCH_DURATION:-3}" --shared-memory system --out "$out/$1"
}
trap 'cp "$work/local/triton.log" "$out/" 2>/dev/null || true; stack down || true' EXIT
write_env "${GPU_MODELS:-e5_small_v2,caption_classification,yolox,eclair}" "$all"
stack up | tee "$out/up_all_models.log"
python3 -m benchmarks.gpu_placement | tee "$out/placement.txt"
count=$(echo "$all" | tr ',' '\n' | wc -l)
for n in 1 2 4 8; do
    [ "$n" -le "$count" ] || break
    write_env e5_small_v2 "$(echo "$all" | cut -d, -f1-"$n")"
    stack up > "$out/up_e5_${n}gpu.log"
    python3 -m benchmarks.gpu_placement > "$out/placement_e5_${n}gpu.txt"
    bench_e5 "e5_${n}gpu"
done
python3 - "$out" <<'PY' | tee "$out/scaling.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for folder in sorted(out.glob("e5_*gpu"), key=lambda p: int(p.name[3:-3])):
    best = max((p for p in json.loads((folder / "bench.json").read_text())["points"] if p["kind"] == "served"),
               key=lambda p: p["items_per_s"])
    rows.append((int(folder.name[3:-3]), best))
base = rows[0][1]["items_per_s"]
print("GPUs  best seq/s  (batch, concurrency)  p95 ms  vs 1 GPU")
for n, best in rows:
    print(f"{n:>4}  {best['items_per_s']:>10,.0f}  ({best['batch']}, {best['concurrency']:>2})  {best['p95_ms']:>10.1f}  "
          f"{best['items_per_s'] / base:.2f}x")
PY
