#!/usr/bin/env bash
# Build the YOLOX TensorRT engine: run inside triton_models/yolox/ (as the original README says).
# Writes yolox/1/model.plan (and the image-in yolox_page_elements model) into this folder.
# Through the builder container where Docker is available, else with the local Python.
#   CHECKPOINT   the upstream training checkpoint (default: best_ckpt.pth here)
#   MAX_BATCH_SIZE (default 8), PRECISION (default fp16)
set -euo pipefail
here=$(pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
checkpoint=${CHECKPOINT:-best_ckpt.pth}
[ -f "$checkpoint" ] || { echo "error: checkpoint $checkpoint not found; run 'git lfs pull --include best_ckpt.pth' or set CHECKPOINT" >&2; exit 1; }
checkpoint=$(cd "$(dirname "$checkpoint")" && pwd)/$(basename "$checkpoint")
# the one builder contract (triton_models/builder_contract.py), as the builder image runs it
export MAX_BATCH_SIZE=${MAX_BATCH_SIZE:-8} PRECISION=${PRECISION:-fp16} INSTANCE_COUNT=1 \
  SERVE_BACKEND=tensorrt_plan DEVICE=cuda CHECKPOINT=$(basename "$checkpoint")
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  cd "$root"
  docker compose -f docker-compose.yaml -f docker-compose.gpu.yaml build build-yolox
  docker compose -f docker-compose.yaml -f docker-compose.gpu.yaml run --rm --no-deps \
    -v "$here:/out" -v "$(dirname "$checkpoint"):/ckpt:ro" \
    -e MAX_BATCH_SIZE -e PRECISION -e INSTANCE_COUNT -e SERVE_BACKEND -e DEVICE -e CHECKPOINT \
    --entrypoint python3 build-yolox \
    -m triton_models.builder_contract yolox --checkpoints-dir /ckpt --repo /out --work-dir /work
else
  cd "$root"
  python -m triton_models.builder_contract yolox --checkpoints-dir "$(dirname "$checkpoint")" \
    --repo "$here" --work-dir "$here/.work"
fi
echo "engine: $here/yolox/1/model.plan"
