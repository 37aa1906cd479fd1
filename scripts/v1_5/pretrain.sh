#!/bin/bash
# Stage 1 (projector only, LCS-558K, ZeRO-2), upstream LLaVA's scripts/v1_5/pretrain.sh (13B; for 7B set
# MODEL_BASE=lmsys/vicuna-7b-v1.5). Environment (defaults are upstream's values):
#   MODEL_BASE, VISION_TOWER, DATA_PATH, IMAGE_FOLDER, OUTPUT_DIR, BATCH_PER_DEVICE, GRAD_ACCUM, LR, SAVE_STEPS,
#   REPORT_TO (default wandb, as upstream), plus _launch.sh's LAUNCHER, REDUCTION, REDUCTION_OVERRIDES, PRINT_ARGS_ONLY.
# Keep BATCH_PER_DEVICE x GRAD_ACCUM x GPUs at upstream's global batch when the GPU count changes.
set -euo pipefail
: "${MODEL_BASE:=lmsys/vicuna-13b-v1.5}" "${VISION_TOWER:=openai/clip-vit-large-patch14-336}"
: "${DATA_PATH:=./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
: "${IMAGE_FOLDER:=./playground/data/LLaVA-Pretrain/images}" "${OUTPUT_DIR:=./checkpoints/llava-v1.5-13b-pretrain}"
: "${BATCH_PER_DEVICE:=32}" "${GRAD_ACCUM:=1}" "${LR:=1e-3}" "${SAVE_STEPS:=24000}" "${REPORT_TO:=wandb}"

ARGS=(
    --deepspeed ./scripts/zero2.json
    --version plain
    --tune_mm_mlp_adapter True
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
