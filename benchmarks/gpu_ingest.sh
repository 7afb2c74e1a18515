#!/usr/bin/env bash
# Documents through the whole stack on one GPU, without Docker: the four models at real size
# (random weights, benchmarks.make_gpu_checkpoints, ECLAIR as eclair_large; YOLOX-L trained briefly
# on generated pages, so that it finds their tables and figures) served by the local
# stack, then `stack ingest` on a mixed PDF (text, table and figure pages, a quarter scanned), on a
# text-layer-only PDF and on a scanned-only PDF, each into its own store; then each stage alone
# against the same served models (benchmarks.ingest_stage_rates) and end to end against the slowest.
# Each ingest and the stage rates run beside benchmarks.host_load (host_*.txt: CPU and GPU busy,
# each second), which tells a run bound by the host from one bound by the GPU.
#
#   benchmarks/gpu_ingest.sh TOKENIZER_DIR OUT_DIR [NUMPY1_DIR]
#
# Environment: SERVE_BACKEND (python_torch: no compile at build), PAGES (120), TEXT_PAGES (120),
# SCAN_PAGES (32), KINDS (mixed text scan: the PDFs ingested), YOLOX (trained: a YOLOX-L trained
# on generated pages, benchmarks.train_yolox_pages; calibrated: the random-weight YOLOX-L of
# benchmarks.make_gpu_checkpoints; demo: the CI's nano demo),
# ECLAIR_BATCH_SIZE (64), OCR_HOLDS (2: ingest's --ocr-hold; several, "0 2", ingest each PDF once
# per value, the last one's store and figures kept for the stage rates), GPU_IDS (0: TRITON_GPU_IDS; e.g.
# 0,1 with ECLAIR_GPU_IDS=1 for OCR on a GPU of its own), and gpu_env.sh's batch sizes, per-model GPU
# ids and LOCAL_CUDA_MPS.
set -euo pipefail
tokenizer=$1 out=$2 numpy1=${3:-}
work=build/gpu_ingest
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1 SERVE_BACKEND=${SERVE_BACKEND:-python_torch} ECLAIR_BATCH_SIZE=${ECLAIR_BATCH_SIZE:-64}
kinds=${KINDS:-mixed text scan}
declare -A pages=([mixed]=${PAGES:-120} [text]=${TEXT_PAGES:-120} [scan]=${SCAN_PAGES:-32})
for kind in $kinds; do
    [ -n "${pages[$kind]:-}" ] || { echo "KINDS takes mixed, text and scan, not '$kind'" >&2; exit 1; }
    python3 -m benchmarks.ingest_pdf "$work/$kind.pdf" --pages "${pages[$kind]}" --kind "$kind"
done
[ -f "$work/checkpoints/eclair_large/config.json" ] || python3 -m benchmarks.make_gpu_checkpoints \
    --tokenizer "$tokenizer" --out "$work/checkpoints" --models e5,caption,eclair_large
case ${YOLOX:-trained} in
    # YOLOX-L trained briefly on generated pages (another seed than the benchmark's) with known boxes
    trained) grep -qs trained_on_generated_pages "$work/checkpoints/yolox/exp.json" \
        || python3 -m benchmarks.train_yolox_pages "$work/checkpoints/yolox" | tee "$out/train_yolox.txt" ;;
    # random YOLOX-L calibrated on mixed pages and noise: finds ~370 elements on each scan, none elsewhere
    calibrated) grep -qs '"norms_on_pages_and_noise"' "$work/checkpoints/yolox/exp.json" || python3 -m \
        benchmarks.make_gpu_checkpoints --tokenizer "$tokenizer" --out "$work/checkpoints" --models yolox ;;
    demo) ;;
    *) echo "YOLOX must be trained, calibrated or demo, not '$YOLOX'" >&2; exit 1 ;;
esac
. benchmarks/gpu_env.sh
write_gpu_env "$work/gpu.env" "$work" caption_classification,yolox,eclair,e5_small_v2 "${GPU_IDS:-0}" "$numpy1"
echo "ECLAIR_CHECKPOINT=eclair_large" >> "$work/gpu.env"
[ "${YOLOX:-trained}" = demo ] && sed -i '/^YOLOX_CHECKPOINT=/d' "$work/gpu.env"
stack() { python3 -m scripts.stack "$@" --local --env-file "$work/gpu.env"; }
trap 'stack down || true; cp "$work/local/triton.log" "$out/" 2>/dev/null || true' EXIT
stack up > "$out/up.log" 2>&1 || echo "up did not verify every model; see up.log (the ingest runs on what is served)"
grep -E "^\| |verified" "$out/up.log" | tail -12 || true
sampled() {  # sampled NAME COMMAND...: run COMMAND beside benchmarks.host_load into $out/host_NAME.txt
    local name=$1; shift
    python3 -m benchmarks.host_load "$out/host_$name.txt" & local sampler=$!
    local rc=0; "$@" || rc=$?
    kill -TERM "$sampler"; wait "$sampler" || true
    return $rc
}
read -ra holds <<< "${OCR_HOLDS:-2}"
[ ${#holds[@]} -gt 0 ] || holds=(2)  # OCR_HOLDS set but blank
for kind in $kinds; do
    for hold in "${holds[@]}"; do  # with several holds, one run each (ingest_KIND_holdS.txt), the last kept as KIND
        name=$kind; [ ${#holds[@]} -eq 1 ] || name=${kind}_hold$hold
        rm -rf "$work/store_$kind"
        sampled "ingest_$name" stack ingest "$work/$kind.pdf" --out "$work/store_$kind" --ocr-hold "$hold" \
            2> "$out/ingest_${name}_progress.txt" | tee "$out/ingest_$name.txt"  # the report; progress and errors on stderr
        tail -c 300 "$out/ingest_${name}_progress.txt" | tr '\r' '\n' | tail -2
    done
    if [ "$name" != "$kind" ]; then
        cp "$out/ingest_$name.txt" "$out/ingest_$kind.txt"; cp "$out/host_ingest_$name.txt" "$out/host_ingest_$kind.txt"
    fi
done
case " $kinds " in *" mixed "*) ;; *) exit 0 ;; esac  # the stage rates run on the mixed PDF's pages
grpc=$(grep -E '^TRITON_GRPC_PORT=' "$work/gpu.env" | cut -d= -f2 || true)
rate=$(grep -oE "[0-9.]+ pages/s end to end" "$out/ingest_mixed.txt" | cut -d' ' -f1)
sampled stage_rates python3 -m benchmarks.ingest_stage_rates "localhost:${grpc:-8001}" "$work/mixed.pdf" "$work/store_mixed" "$rate" \
    | tee "$out/stage_rates.txt"
