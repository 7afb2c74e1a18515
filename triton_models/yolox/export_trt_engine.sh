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
args=(yolox --max-batch-size "${MAX_BATCH_SIZE:-8}" --precision "${PRECISION:-fp16}" --serve-backend tensorrt_plan --device cuda)
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  cd "$root"
  docker compose -f docker-compose.yaml -f docker-compose.gpu.yaml build build-yolox
  docker compose -f docker-compose.yaml -f docker-compose.gpu.yaml run --rm --no-deps \
    -v "$here:/out" -v "$(dirname "$checkpoint"):/ckpt:ro" --entrypoint python build-yolox \
    -m triton_models.build "${args[@]}" --checkpoint "/ckpt/$(basename "$checkpoint")" --repo /out --work-dir /work
else
  cd "$root"
  python -m triton_models.build "${args[@]}" --checkpoint "$checkpoint" --repo "$here" --work-dir "$here/.work"
fi
echo "engine: $here/yolox/1/model.plan"
