#!/bin/bash
# Further full finetuning of a LLaVA-1.5 checkpoint (MODEL_BASE) on your data (DATA_PATH),
# upstream LLaVA's scripts/v1_5/finetune_task.sh (13B). Environment (defaults are upstream's values):
#   MODEL_BASE, VISION_TOWER, DATA_PATH, IMAGE_FOLDER, OUTPUT_DIR, BATCH_PER_DEVICE, GRAD_ACCUM, LR, SAVE_STEPS,
#   REPORT_TO (default wandb, as upstream), plus _launch.sh's LAUNCHER, REDUCTION, REDUCTION_OVERRIDES, PRINT_ARGS_ONLY.
# Keep BATCH_PER_DEVICE x GRAD_ACCUM x GPUs at upstream's global batch when the GPU count changes.
set -euo pipefail
: "${MODEL_BASE:=liuhaotian/llava-v1.5-13b}" "${VISION_TOWER:=openai/clip-vit-large-patch14-336}"
: "${DATA_PATH:=./playground/data/llava_v1_5_mix665k.json}" "${IMAGE_FOLDER:=./playground/data}"
: "${OUTPUT_DIR:=./checkpoints/llava-v1.5-13b-task}"
: "${BATCH_PER_DEVICE:=16}" "${GRAD_ACCUM:=1}" "${LR:=2e-5}" "${SAVE_STEPS:=50000}" "${REPORT_TO:=wandb}"

ARGS=(
    --deepspeed ./scripts/zero3.json
    --version v1
    --image_aspect_ratio pad
    --group_by_modality_length True
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
