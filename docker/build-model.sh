#!/bin/sh
# Builder container entrypoint: `build-model.sh MODEL`. The settings come from the environment that
# docker-compose.yaml (or the Helm chart's Job) passes from .env, read by the one builder contract
# (triton_models/builder_contract.py). An empty CHECKPOINT builds a demo checkpoint.
# BUILD_RECEIPT (Kubernetes): a file named after the builder Job, written once the build succeeded;
# the Triton pods wait for it.
set -e
model="$1"
set -- "$model" --repo /models --work-dir /work --checkpoints-dir /checkpoints
if [ -z "${BUILD_RECEIPT:-}" ]; then
  exec python3 -m triton_models.builder_contract "$@"
fi
python3 -m triton_models.builder_contract "$@"
date -u +%Y-%m-%dT%H:%M:%SZ > "$BUILD_RECEIPT.tmp" && mv "$BUILD_RECEIPT.tmp" "$BUILD_RECEIPT"
# One receipt per model, for what is published now: a receipt of this model's earlier settings
# (the name ends in another hash) would let Triton start on a stale gate after a switch back.
for receipt in "${BUILD_RECEIPT%-*}"-*; do
  [ "$receipt" = "$BUILD_RECEIPT" ] || rm -f "$receipt"
done
