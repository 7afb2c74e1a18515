#!/usr/bin/env bash
# Documents through the whole stack on one GPU, without Docker: the four models at real size
# (random weights; benchmarks.make_gpu_checkpoints, ECLAIR as eclair_large) served by the local
# stack, then `stack ingest` on a mixed PDF (text, table and figure pages, a quarter scanned), on a
# text-layer-only PDF and on a scanned-only PDF, each into its own store; then each stage alone
# against the same served models (benchmarks.ingest_stage_rates) and end to end against the slowest.
#
#   benchmarks/gpu_ingest.sh TOKENIZER_DIR OUT_DIR [NUMPY1_DIR]
#
# Environment: SERVE_BACKEND (python_torch: no compile at build), PAGES (120), TEXT_PAGES (120),
# SCAN_PAGES (32), KINDS (mixed text scan: the PDFs ingested), YOLOX (large: the YOLOX-L below;
# demo: the CI's nano demo, which finds tables on text-layer pages, so captions get calls),
# ECLAIR_BATCH_SIZE (64), and gpu_env.sh's batch sizes and LOCAL_CUDA_MPS.
set -euo pipefail
tokenizer=$1 out=$2 numpy1=${3:-}
work=build/gpu_ingest
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 SERVE_BACKEND=${SERVE_BACKEND:-python_torch} ECLAIR_BATCH_SIZE=${ECLAIR_BATCH_SIZE:-64}
python3 -m benchmarks.ingest_pdf "$work/mixed.pdf" --pages "${PAGES:-120}"
python3 -m benchmarks.ingest_pdf "$work/text.pdf" --pages "${TEXT_PAGES:-120}" --kind text
python3 -m benchmarks.ingest_pdf "$work/scan.pdf" --pages "${SCAN_PAGES:-32}" --kind scan
[ -f "$work/checkpoints/eclair_large/config.json" ] || python3 -m benchmarks.make_gpu_checkpoints \
    --tokenizer "$tokenizer" --out "$work/checkpoints" --models e5,caption,eclair_large
# YOLOX-L calibrated on mixed pages and noise; one from before (calibrated otherwise, or He init
# alone) finds nothing in fp16: remake it
grep -qs norms_on_pages_and_noise "$work/checkpoints/yolox/exp.json" || python3 -m benchmarks.make_gpu_checkpoints \
    --tokenizer "$tokenizer" --out "$work/checkpoints" --models yolox
. benchmarks/gpu_env.sh
write_gpu_env "$work/gpu.env" "$work" caption_classification,yolox,eclair,e5_small_v2 0 "$numpy1"
echo "ECLAIR_CHECKPOINT=eclair_large" >> "$work/gpu.env"
[ "${YOLOX:-large}" = demo ] && sed -i '/^YOLOX_CHECKPOINT=/d' "$work/gpu.env"
stack() { python3 -m scripts.stack "$@" --local --env-file "$work/gpu.env"; }
trap 'stack down || true; cp "$work/local/triton.log" "$out/" 2>/dev/null || true' EXIT
stack up > "$out/up.log" 2>&1 || echo "up did not verify every model; see up.log (the ingest runs on what is served)"
grep -E "^\| |verified" "$out/up.log" | tail -12 || true
for kind in ${KINDS:-mixed text scan}; do
    rm -rf "$work/store_$kind"
    stack ingest "$work/$kind.pdf" --out "$work/store_$kind" 2> "$out/ingest_${kind}_progress.txt" \
        | tee "$out/ingest_$kind.txt"  # the report; the progress bar and any error on stderr
    tail -c 300 "$out/ingest_${kind}_progress.txt" | tr '\r' '\n' | tail -2
done
grpc=$(grep -E '^TRITON_GRPC_PORT=' "$work/gpu.env" | cut -d= -f2 || true)
rate=$(grep -oE "[0-9.]+ pages/s end to end" "$out/ingest_mixed.txt" | cut -d' ' -f1)
python3 -m benchmarks.ingest_stage_rates "localhost:${grpc:-8001}" "$work/mixed.pdf" "$work/store_mixed" "$rate" \
    | tee "$out/stage_rates.txt"
