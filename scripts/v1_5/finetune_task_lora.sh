#!/bin/bash
# Further LoRA finetuning of a LLaVA-1.5 checkpoint (MODEL_BASE) on your data (DATA_PATH),
# upstream LLaVA's scripts/v1_5/finetune_task_lora.sh (13B). Environment (defaults are upstream's values):
#   MODEL_BASE, VISION_TOWER, DATA_PATH, IMAGE_FOLDER, OUTPUT_DIR, BATCH_PER_DEVICE, GRAD_ACCUM, LR, SAVE_STEPS,
#   REPORT_TO (default wandb, as upstream), plus _launch.sh's LAUNCHER, REDUCTION, REDUCTION_OVERRIDES, PRINT_ARGS_ONLY.
# Keep BATCH_PER_DEVICE x GRAD_ACCUM x GPUs at upstream's global batch when the GPU count changes.
set -euo pipefail
: "${MODEL_BASE:=liuhaotian/llava-v1.5-13b}" "${VISION_TOWER:=openai/clip-vit-large-patch14-336}"
: "${DATA_PATH:=./playground/data/llava_v1_5_mix665k.json}" "${IMAGE_FOLDER:=./playground/data}"
: "${OUTPUT_DIR:=./checkpoints/llava-v1.5-13b-task-lora}"
: "${BATCH_PER_DEVICE:=16}" "${GRAD_ACCUM:=1}" "${LR:=2e-4}" "${SAVE_STEPS:=50000}" "${REPORT_TO:=wandb}"

ARGS=(
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
    --deepspeed ./scripts/zero3.json \
    --model_name_or_path "$MODEL_BASE" \
    --version v1 \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_TOWER" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$BATCH_PER_DEVICE" \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps "$SAVE_STEPS" \
    --save_total_limit 1 \
    --learning_rate "$LR" \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to "$REPORT_TO"
)
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
