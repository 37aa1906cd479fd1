#!/bin/bash
# Stage 2 with LoRA (r 128, alpha 256; PROJECTOR = stage 1's mm_projector.bin),
# upstream LLaVA's scripts/v1_5/finetune_lora.sh (13B). Environment (defaults are upstream's values):
#   MODEL_BASE, VISION_TOWER, DATA_PATH, IMAGE_FOLDER, OUTPUT_DIR, BATCH_PER_DEVICE, GRAD_ACCUM, LR, SAVE_STEPS,
#   REPORT_TO (default wandb, as upstream), plus _launch.sh's LAUNCHER, REDUCTION, REDUCTION_OVERRIDES, PRINT_ARGS_ONLY.
# Keep BATCH_PER_DEVICE x GRAD_ACCUM x GPUs at upstream's global batch when the GPU count changes.
set -euo pipefail
: "${MODEL_BASE:=lmsys/vicuna-13b-v1.5}" "${VISION_TOWER:=openai/clip-vit-large-patch14-336}"
: "${DATA_PATH:=./playground/data/llava_v1_5_mix665k.json}" "${IMAGE_FOLDER:=./playground/data}"
: "${OUTPUT_DIR:=./checkpoints/llava-v1.5-13b-lora}"
: "${PROJECTOR:=./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin}"
: "${BATCH_PER_DEVICE:=16}" "${GRAD_ACCUM:=1}" "${LR:=2e-4}" "${SAVE_STEPS:=50000}" "${REPORT_TO:=wandb}"

ARGS=(
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5
    --deepspeed ./scripts/zero3.json
    --version v1
    --pretrain_mm_mlp_adapter "$PROJECTOR"
    --image_aspect_ratio pad
    --group_by_modality_length True
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
