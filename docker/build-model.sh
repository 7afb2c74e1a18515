#!/bin/sh
# Builder container entrypoint: `build-model.sh MODEL`, settings from the environment that
# docker-compose.yaml passes from .env. An empty CHECKPOINT builds a demo checkpoint.
set -e
model="$1"
set -- "$model" --repo /models --work-dir /work \
  --max-batch-size "${MAX_BATCH_SIZE:?}" --precision "${PRECISION:-fp16}" \
  --serve-backend "${SERVE_BACKEND:-python_onnx}" --device "${DEVICE:-cpu}" --instance-count "${INSTANCE_COUNT:-1}"
if [ -n "${CHECKPOINT:-}" ]; then
  set -- "$@" --checkpoint "/checkpoints/${CHECKPOINT}"
fi
exec python3 -m triton_models.build "$@"
