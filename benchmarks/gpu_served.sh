#!/usr/bin/env bash
# The served-vs-raw GPU measurement without Docker: real-size random-weight checkpoints, the local Triton
# (nvidia-pytriton's binary) serving the models' PyTorch fp16 paths on CUDA, then bench and tune.
#
#   benchmarks/gpu_served.sh TOKENIZER_DIR OUT_DIR [NUMPY1_DIR] [BENCH_MODEL ...]
#
# TOKENIZER_DIR: a BERT tokenizer's files. NUMPY1_DIR: a folder holding NumPy 1 (pip install
# --target), needed where the environment has NumPy 2: the wheel's python stub is built against
# NumPy 1. The report (JSON, CSV, PNG), the run's log and Triton's log land in OUT_DIR.
# Environment: GPU_MODELS, INSTANCE_COUNT (default 2: one instance's python-side work overlaps the
# other's GPU work), BENCH_BATCHES, BENCH_CONCURRENCY, BENCH_DURATION, BENCH_SHARED_MEMORY
# (system|none), TUNE_BUDGET_MS, and the max batch sizes E5_BATCH_SIZE (256), CAPTION_BATCH_SIZE
# (128), YOLOX_BATCH_SIZE (16), ECLAIR_BATCH_SIZE (16).
set -euo pipefail
tokenizer=$1 out=$2 numpy1=${3:-}
shift $(( $# < 3 ? $# : 3 ))
work=build/gpu_served
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
[ -f "$work/checkpoints/e5/config.json" ] ||
    python3 -m benchmarks.make_gpu_checkpoints --tokenizer "$tokenizer" --out "$work/checkpoints"
. benchmarks/gpu_env.sh
write_gpu_env "$work/gpu.env" "$work" "${GPU_MODELS:-e5_small_v2,caption_classification,yolox,eclair}" \
    "${TRITON_GPU_IDS:-0}" "$numpy1"
stack() { python3 -m scripts.stack "$@" --local --env-file "$work/gpu.env"; }
trap 'cp "$work/local/triton.log" "$out/" 2>/dev/null || true; stack down || true' EXIT
stack up
for model in "${@:-}"; do  # no models named: one sweep of every core model, then tune
    stack bench $model --batch-sizes "${BENCH_BATCHES:-1,4,16,64,256}" --concurrency "${BENCH_CONCURRENCY:-1,2,4}" \
        --duration "${BENCH_DURATION:-3}" --shared-memory "${BENCH_SHARED_MEMORY:-system}" --out "$out/${model:-all}"
done
if [ $# -eq 0 ]; then
    cp "$work/gpu.env" "$work/tuned.env"
    python3 -m scripts.stack tune --local --env-file "$work/tuned.env" --out "$out/all" \
        --latency-budget-ms "${TUNE_BUDGET_MS:-100}"
    grep _BATCH_SIZE "$work/tuned.env" > "$out/tuned_batch_sizes.env"
fi
