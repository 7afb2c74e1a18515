#!/usr/bin/env bash
# ECLAIR at graph speed on one GPU, without Docker: a real-size random-weight ECLAIR
# (benchmarks.make_gpu_checkpoints eclair_large) built and served by the local stack with the graph
# decoder and in-flight batching, then `bench eclair` (generate, graph decoder, served, HBM floor)
# and the latency of a 1-page request while long pages are in flight.
#
#   benchmarks/gpu_eclair.sh TOKENIZER_DIR OUT_DIR [NUMPY1_DIR]
#
# Environment: ECLAIR_BATCH_SIZE (16: decoder slots), ECLAIR_PAGES (64), ECLAIR_LENGTHS (32,512),
# ECLAIR_COMPILE_ENCODER (on), BENCH (1: `bench eclair`), LATENCY (1 from 81 slots: benchmarks.eclair_latency_probe; needs slots for 80 long
# pages (64 and 16 spare: a random-weight page may reach EOS sooner) and the short one, e.g. ECLAIR_BATCH_SIZE=96).
set -euo pipefail
tokenizer=$1 out=$2 numpy1=${3:-}
work=build/gpu_eclair
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
[ -f "$work/checkpoints/eclair_large/config.json" ] || python3 -m benchmarks.make_gpu_checkpoints \
    --tokenizer "$tokenizer" --out "$work/checkpoints" --models eclair_large
{
    echo "MODELS=eclair"
    echo "CHECKPOINTS_DIR=$work/checkpoints"
    echo "ECLAIR_CHECKPOINT=eclair_large"
    echo "ECLAIR_BATCH_SIZE=${ECLAIR_BATCH_SIZE:-16}"
    echo "LOCAL_DEVICE=cuda"
    echo "LOCAL_MODEL_PYTHONPATH=$numpy1"
    echo "LOCAL_REPOSITORY=$work/model_repository"
    echo "READY_TIMEOUT_S=500"
    echo "ECLAIR_COMPILE_ENCODER=${ECLAIR_COMPILE_ENCODER:-on}"
} > "$work/gpu.env"
stack() { python3 -m scripts.stack "$@" --local --env-file "$work/gpu.env"; }
trap 'stack down || true; cp "$work/local/triton.log" "$out/" 2>/dev/null || true' EXIT
stack up > "$out/up.log" 2>&1 || { tail -60 "$out/up.log"; exit 1; }
grep -E "ECLAIR:|verified|eclair " "$out/up.log" "$work/local/triton.log" || true
if [ "${BENCH:-1}" = 1 ]; then
    stack bench eclair --eclair-pages "${ECLAIR_PAGES:-64}" --eclair-lengths "${ECLAIR_LENGTHS:-32,512}" --out "$out" \
        | tee "$out/bench_eclair.txt"
    sleep 11  # the served scheduler's report, written once it goes idle (inflight.IDLE_REPORT_S)
    grep "ECLAIR scheduler:" "$work/local/triton.log" | tail -2 | tee -a "$out/bench_eclair.txt" || true
fi
if [ "${LATENCY:-$(( ${ECLAIR_BATCH_SIZE:-16} > 80 ? 1 : 0 ))}" = 1 ]; then
    python3 -m benchmarks.eclair_latency_probe "$work/gpu.env" | tee "$out/latency.txt"
fi
