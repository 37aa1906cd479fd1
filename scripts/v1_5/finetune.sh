#!/bin/bash
# Stage 2 (full finetune on the 665K mix, ZeRO-3; PROJECTOR = stage 1's mm_projector.bin),
# upstream LLaVA's scripts/v1_5/finetune.sh (13B). Environment (defaults are upstream's values):
#   MODEL_BASE, VISION_TOWER, DATA_PATH, IMAGE_FOLDER, OUTPUT_DIR, BATCH_PER_DEVICE, GRAD_ACCUM, LR, SAVE_STEPS,
#   REPORT_TO (default wandb, as upstream), plus _launch.sh's LAUNCHER, REDUCTION, REDUCTION_OVERRIDES, PRINT_ARGS_ONLY.
# Keep BATCH_PER_DEVICE x GRAD_ACCUM x GPUs at upstream's global batch when the GPU count changes.
set -euo pipefail
: "${MODEL_BASE:=lmsys/vicuna-13b-v1.5}" "${VISION_TOWER:=openai/clip-vit-large-patch14-336}"
: "${DATA_PATH:=./playground/data/llava_v1_5_mix665k.json}" "${IMAGE_FOLDER:=./playground/data}"
: "${OUTPUT_DIR:=./checkpoints/llava-v1.5-13b}"
: "${PROJECTOR:=./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin}"
: "${BATCH_PER_DEVICE:=16}" "${GRAD_ACCUM:=1}" "${LR:=2e-5}" "${SAVE_STEPS:=50000}" "${REPORT_TO:=wandb}"

ARGS=(
    --deepspeed ./scripts/zero3.json
    --version v1
    --pretrain_mm_mlp_adapter "$PROJECTOR"
    --image_aspect_ratio pad
    --group_by_modality_length True
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
