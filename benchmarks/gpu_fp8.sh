#!/usr/bin/env bash
# FP8 beside fp16 in the compiled path, one GPU, one run: DeBERTa-large and E5 built by the local
# stack with LOCAL_SERVE_BACKEND=python_compiled at PRECISION=fp16, then fp8 (each with its own
# repository), each `bench`ed (served, raw with CUDA graphs, the fp16 dense limit), then one table
# of both with the fp8 accuracy each build's gate measured (benchmarks.fp8_summary). A model whose
# fp8 build the gate refuses is reported with the gate's sentence.
#
#   benchmarks/gpu_fp8.sh TOKENIZER_DIR OUT_DIR [NUMPY1_DIR]
#
# Environment: CAPTION_BATCHES (64,128), E5_BATCHES (64,256), BENCH_CONCURRENCY (1,4), BENCH_DURATION (3),
# BENCH_RAW_PATHS (eager,graphs: the raw paths `bench` measures; each compile of DeBERTa-large takes minutes),
# FP8_MODELS (caption_classification; e5_small_v2 builds fp16 under PRECISION=fp8: its FP8 misses its bound),
# PRECISIONS ("fp16 fp8"; one of them to split the run over two calls: the summary reads what OUT_DIR holds).
set -euo pipefail
tokenizer=$1 out=$2 numpy1=${3:-}
base=build/gpu_fp8
mkdir -p "$out" "$base"
export PYTHONUNBUFFERED=1 SERVE_BACKEND=python_compiled
[ -f "$base/checkpoints/e5/config.json" ] || python3 -m benchmarks.make_gpu_checkpoints --tokenizer "$tokenizer" \
    --out "$base/checkpoints" --models e5,caption
. benchmarks/gpu_env.sh
declare -A served=([caption_classification]=deberta_large [e5_small_v2]=e5_small_v2)
declare -A batches=([caption_classification]=${CAPTION_BATCHES:-64,128} [e5_small_v2]=${E5_BATCHES:-64,256})
for key in ${FP8_MODELS:-caption_classification}; do
    for precision in ${PRECISIONS:-fp16 fp8}; do
        work=$base/$precision
        PRECISION=$precision write_gpu_env "$work.env" "$base" "$key" 0 "$numpy1"
        echo "LOCAL_REPOSITORY=$work/model_repository" >> "$work.env"
        stack() { python3 -m scripts.stack "$@" --local --env-file "$work.env"; }
        name=${served[$key]}_$precision
        if ! stack up > "$out/up_$name.log" 2>&1; then
            echo "$name: not served: $(grep -h 'error' "$out/up_$name.log" | tail -1)" | tee -a "$out/refused.txt"
            cp "$work/local/build-$key.log" "$out/build_$name.log" 2>/dev/null || true
            stack down > /dev/null 2>&1 || true
            continue
        fi
        cp "$work/local/build-$key.log" "$out/build_$name.log" 2>/dev/null || true
        stack bench "${served[$key]}" --batch-sizes "${batches[$key]}" --concurrency "${BENCH_CONCURRENCY:-1,4}" \
            --duration "${BENCH_DURATION:-3}" --raw-paths "${BENCH_RAW_PATHS:-eager,graphs}" --out "$out/$name" \
            | tee "$out/bench_$name.txt"
        stack down > /dev/null
    done
done
python3 -m benchmarks.fp8_summary "$out" "$base" | tee "$out/summary.md"
