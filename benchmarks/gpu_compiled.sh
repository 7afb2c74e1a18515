#!/usr/bin/env bash
# The compiled GPU path without Docker, one GPU: E5 and DeBERTa-large served by python_compiled
# (torch.compile, one CUDA graph per bucket) through the local Triton, against their raw paths
# (eager, compiled, compiled with CUDA graphs) and the fp16 limit, same run; cold and warm `up`
# against Triton's own load time (from its log, and Triton alone launched by hand); perf_analyzer against bench's load generator on one point.
#
#   benchmarks/gpu_compiled.sh TOKENIZER_DIR OUT_DIR [NUMPY1_DIR] [PERF_ANALYZER]
#
# Environment: SERVE_BACKEND (python_compiled), GPU_MODELS (e5_small_v2,caption_classification),
# CHECKPOINTS (e5,caption), UP_TWICE (1: a cold, then a warm `up`), E5_BATCHES (8,64,256; empty: none),
# CAPTION_BATCHES (32,64,128), YOLOX_BATCHES (16), BENCH_CONCURRENCY (1,4,16), BENCH_DURATION (3),
# BENCH_ARGS (more `stack bench` flags, e.g. --shared-memory system).
set -euo pipefail
tokenizer=$1 out=$2 numpy1=${3:-} perf_analyzer=${4:-}
work=build/gpu_compiled
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 SERVE_BACKEND=${SERVE_BACKEND:-python_compiled}
[ -f "$work/checkpoints/e5/config.json" ] || python3 -m benchmarks.make_gpu_checkpoints --tokenizer "$tokenizer" \
    --out "$work/checkpoints" --models "${CHECKPOINTS:-e5,caption}"
. benchmarks/gpu_env.sh
write_gpu_env "$work/gpu.env" "$work" "${GPU_MODELS:-e5_small_v2,caption_classification}" 0 "$numpy1"
stack() { python3 -m scripts.stack "$@" --local --env-file "$work/gpu.env"; }
timed_up() {  # NAME: `up` to verified-ready, and Triton's own load time of the same start
    local started=$(date +%s.%N)
    stack up > "$out/up_$1.log" 2>&1 || { tail -40 "$out/up_$1.log"; exit 1; }
    echo "$1 up: $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s; Triton's own load: $(python3 -m benchmarks.triton_load_time \
        "$work/local/triton.log") s" | tee -a "$out/up_times.txt"
}
trap 'stack down || true; cp "$work/local/triton.log" "$out/" 2>/dev/null || true' EXIT  # the log with its shutdown
timed_up cold
if [ "${UP_TWICE:-1}" = 1 ]; then  # Triton alone on the built repository, then a warm `up` of the same
    stack down > /dev/null
    echo "Triton alone, launch to ready: $(python3 -m benchmarks.triton_alone_load "$work/gpu.env" | tail -1) s" | tee -a "$out/up_times.txt"
    timed_up warm
fi
concurrency=${BENCH_CONCURRENCY:-1,4,16}
for pair in "e5_small_v2:${E5_BATCHES-8,64,256}" "deberta_large:${CAPTION_BATCHES-32,64,128}" "yolox:${YOLOX_BATCHES-16}"; do
    model=${pair%%:*}
    [ -d "$work/model_repository/$model" ] && [ -n "${pair#*:}" ] || continue
    stack bench "$model" --batch-sizes "${pair#*:}" --concurrency "$concurrency" --duration "${BENCH_DURATION:-3}" \
        --out "$out/$model" ${BENCH_ARGS:-} | tee "$out/bench_$model.txt"
done
if [ -n "$perf_analyzer" ]; then  # the same point by perf_analyzer: E5, batch 8, concurrency 4, gRPC, no shared memory
    grpc=$(grep -E '^TRITON_GRPC_PORT=' "$work/gpu.env" | cut -d= -f2 || true); grpc=${grpc:-8001}
    "$perf_analyzer" -m e5_small_v2 -b 8 --concurrency-range 4 -i grpc -u "localhost:$grpc" \
        --shape input_ids:128 --shape attention_mask:128 --input-data zero --measurement-interval 5000 \
        -f "$out/perf_analyzer.csv" > "$out/perf_analyzer.txt" 2>&1 || tail -20 "$out/perf_analyzer.txt"
    stack bench e5_small_v2 --batch-sizes 8 --concurrency 4 --duration 5 --no-raw --out "$out/e5_b8_c4" \
        | tee "$out/bench_e5_b8_c4.txt"
fi
