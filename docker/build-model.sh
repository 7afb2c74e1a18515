#!/bin/sh
# Builder container entrypoint: `build-model.sh MODEL`, settings from the environment that
# docker-compose.yaml (or the Helm chart's Job) passes from .env. An empty CHECKPOINT builds a demo
# checkpoint. BUILD_RECEIPT (Kubernetes): a file named after the builder Job, written once the build
# succeeded; the Triton pods wait for it.
set -e
model="$1"
set -- "$model" --repo /models --work-dir /work \
  --max-batch-size "${MAX_BATCH_SIZE:?}" --precision "${PRECISION:-fp16}" \
  --serve-backend "${SERVE_BACKEND:-python_onnx}" --device "${DEVICE:-cpu}" --instance-count "${INSTANCE_COUNT:-1}"
if [ -n "${CHECKPOINT:-}" ]; then
  set -- "$@" --checkpoint "/checkpoints/${CHECKPOINT}"
fi
if [ -z "${BUILD_RECEIPT:-}" ]; then
  exec python3 -m triton_models.build "$@"
fi
python3 -m triton_models.build "$@"
date -u +%Y-%m-%dT%H:%M:%SZ > "$BUILD_RECEIPT.tmp" && mv "$BUILD_RECEIPT.tmp" "$BUILD_RECEIPT"
# One receipt per model, for what is published now: a receipt of this model's earlier settings
# (the name ends in another hash) would let Triton start on a stale gate after a switch back.
for receipt in "${BUILD_RECEIPT%-*}"-*; do
  [ "$receipt" = "$BUILD_RECEIPT" ] || rm -f "$receipt"
done
