# Shared end of scripts/v1_5/{pretrain,finetune,finetune_lora,finetune_task,finetune_task_lora}.sh (sourced, not
# run). Those scripts hold, in ARGS, the flags in which upstream LLaVA's five v1.5 training scripts differ; the
# flags all five share, with upstream's values, are added here, with the paths and sizes as environment variables.
# This file then starts `llava/train/train_mem.py`, our trainer (llava.train.train).
#
#   LAUNCHER         how to start it (default "deepspeed", as upstream; e.g. "torchrun --nproc_per_node 8")
#   REDUCTION        ours: a token-reduction preset to train with (default off: upstream's plain LLaVA-1.5)
#   REDUCTION_OVERRIDES  ours: key=value schedule overrides
#   PRINT_ARGS_ONLY=1    print the training flags one per line and exit (CI parses every script this way)
#
# Our scripts/pretrain.sh and scripts/finetune.sh are the recipe with our defaults (HiDrop, CPU ranks, resume
# guards); these are for command lines written against upstream.

ARGS+=(
    --model_name_or_path "$MODEL_BASE" --data_path "$DATA_PATH" --image_folder "$IMAGE_FOLDER"
    --vision_tower "$VISION_TOWER" --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2
    --mm_use_im_start_end False --mm_use_im_patch_token False --bf16 True --tf32 True
    --output_dir "$OUTPUT_DIR" --num_train_epochs 1 --per_device_train_batch_size "$BATCH_PER_DEVICE"
    --per_device_eval_batch_size 4 --gradient_accumulation_steps "$GRAD_ACCUM" --evaluation_strategy no
    --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit 1 --learning_rate "$LR" --weight_decay 0.
    --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1 --model_max_length 2048
    --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True --report_to "$REPORT_TO"
)
if [[ -n "${REDUCTION:-}" ]]; then ARGS+=(--reduction "$REDUCTION"); fi
if [[ -n "${REDUCTION_OVERRIDES:-}" ]]; then ARGS+=(--reduction_overrides "$REDUCTION_OVERRIDES"); fi
if [[ "${PRINT_ARGS_ONLY:-0}" == "1" ]]; then
    printf '%s\n' "${ARGS[@]}"
    exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/../.."  # upstream's paths are relative to the repository
# shellcheck disable=SC2086  # LAUNCHER is a command with its own arguments
exec ${LAUNCHER:-deepspeed} llava/train/train_mem.py "${ARGS[@]}" "$@"
