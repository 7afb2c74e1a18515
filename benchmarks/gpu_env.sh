# Sourced by the GPU benchmark scripts: write_gpu_env FILE WORK MODELS GPU_IDS NUMPY1_DIR writes the
# stack's .env for the local Triton serving the models' PyTorch fp16 paths on CUDA, with the
# checkpoints that exist under WORK/checkpoints (made by benchmarks.make_gpu_checkpoints).
# Environment: E5_BATCH_SIZE (256), CAPTION_BATCH_SIZE (128), YOLOX_BATCH_SIZE (16),
# ECLAIR_BATCH_SIZE (16), INSTANCE_COUNT (2: one instance's python-side work overlaps the other's GPU work).
# SERVE_BACKEND (python_torch; python_compiled for torch.compile with CUDA graphs), LOCAL_CUDA_MPS (off),
# PRECISION (fp16; fp8 with python_compiled on compute capability 8.9+), ECLAIR_COMPILE_ENCODER (on; off
# for a quicker start, the encoder captured uncompiled), and E5_GPU_IDS, CAPTION_GPU_IDS, YOLOX_GPU_IDS,
# ECLAIR_GPU_IDS where set (a model on some of GPU_IDS only).
write_gpu_env() {
    local file=$1 work=$2 models=$3 gpus=$4 numpy1=$5 pair key  # the loops' names too: a caller's own `key` stays
    {
        echo "MODELS=$models"
        echo "TRITON_GPU_IDS=$gpus"
        echo "CHECKPOINTS_DIR=$work/checkpoints"
        for pair in E5=e5 CAPTION=caption YOLOX=yolox/best_ckpt.pth ECLAIR=eclair_demo; do
            [ -e "$work/checkpoints/${pair#*=}" ] && echo "${pair%%=*}_CHECKPOINT=${pair#*=}"
        done
        echo "E5_BATCH_SIZE=${E5_BATCH_SIZE:-256}"
        echo "CAPTION_BATCH_SIZE=${CAPTION_BATCH_SIZE:-128}"
        echo "YOLOX_BATCH_SIZE=${YOLOX_BATCH_SIZE:-16}"
        echo "ECLAIR_BATCH_SIZE=${ECLAIR_BATCH_SIZE:-16}"
        echo "LOCAL_SERVE_BACKEND=${SERVE_BACKEND:-python_torch}"
        echo "LOCAL_DEVICE=cuda"
        echo "LOCAL_MODEL_PYTHONPATH=$numpy1"
        echo "LOCAL_REPOSITORY=$work/model_repository"
        echo "READY_TIMEOUT_S=400"
        echo "INSTANCE_COUNT=${INSTANCE_COUNT:-2}"
        echo "PRECISION=${PRECISION:-fp16}"
        echo "LOCAL_CUDA_MPS=${LOCAL_CUDA_MPS:-off}"
        echo "ECLAIR_COMPILE_ENCODER=${ECLAIR_COMPILE_ENCODER:-on}"
        for key in E5_GPU_IDS CAPTION_GPU_IDS YOLOX_GPU_IDS ECLAIR_GPU_IDS; do
            if [ -n "${!key:-}" ]; then echo "$key=${!key}"; fi
        done
    } > "$file"
}
