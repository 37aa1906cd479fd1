#!/usr/bin/env bash
# Stage 2 (visual instruction tuning): full finetune on mix665k with `vicuna_v1`, HiDrop on, ZeRO-3.
# Defaults are the LLaVA-1.5-7B recipe on 8 GPUs: global batch 128 = 16 per GPU x 8, lr 2e-5, 1 epoch.
# Keep the global batch (BATCH_PER_DEVICE x GRAD_ACCUM x NPROC) at 128 when changing the GPU count.
#
# Environment variables:
#   RECIPE         paper (default) | tiny  (tiny: the embedded demo on CPU, 2 ranks over gloo)
#   MODEL_BASE     base LLM                 [lmsys/vicuna-7b-v1.5]
#   VISION_TOWER   CLIP vision tower        [openai/clip-vit-large-patch14-336]
#   PROJECTOR      stage-1 mm_projector.bin [./checkpoints/llava-v1.5-7b-hidrop-${REDUCTION}-pretrain/mm_projector.bin];
#                  empty (PROJECTOR=) when MODEL_BASE is a finetuned LLaVA that keeps its own projector
#   DATA_PATH      conversation JSON        [./playground/data/llava_v1_5_mix665k.json]
#   IMAGE_FOLDER   image root of DATA_PATH  [./playground/data]
#   OUTPUT_DIR     checkpoint directory     [./checkpoints/llava-v1.5-7b-hidrop-${REDUCTION}]
#   REDUCTION      token-reduction preset: tok64 (default), tok48, tok80, off (plain LLaVA), ...; voco-80/64/48/2
#                  train VoCo-LLaMA (its <voco> token is added to the tokenizer and embeddings, full finetune, sdpa;
#                  RECIPE=paper then defaults to the authors' 2 epochs at lr 2e-5; RECIPE=tiny keeps its own budget)
#   REDUCTION_OVERRIDES  space-separated single-field overrides, e.g. "topk=hard"
#   LORA           1 for LoRA (r 128, alpha 256, lr 2e-4, projector lr 2e-5), 0 for full finetuning [0]
#   NPROC          processes (GPUs, or CPU ranks)  [all GPUs, or 2 on CPU]
#   BATCH_PER_DEVICE [16]   GRAD_ACCUM [1]   LR [2e-5]   EPOCHS [1]   MAX_STEPS [-1]   MODEL_MAX_LENGTH [2048]
#   SAVE_STEPS [50000]   WORKERS [4]   REPORT_TO [none]   DS_CONFIG [./scripts/zero3.json]
#   ON_BAD_SAMPLE  raise (default) | skip (count and report missing/corrupt images and bad samples)
#   OVERWRITE      1 to start afresh in an OUTPUT_DIR that holds an earlier run (deletes its checkpoints) [0]
#   PRECISION      bf16 (default on GPU) | fp16 | fp32 (default for RECIPE=tiny)
#   PYTHON [python]   MASTER_PORT [29517]
#   NNODES [1]   NODE_RANK [0]   MASTER_ADDR [127.0.0.1]   several machines: run this script on each, with the
#                  same NNODES/MASTER_ADDR/MASTER_PORT (node 0's) and its own NODE_RANK (docs/Training.md)
# Extra arguments are passed to llava.train.train, e.g. `--resume_from_checkpoint ./checkpoints/.../checkpoint-500`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RECIPE:=paper}"
if [[ "$RECIPE" == "tiny" ]]; then
    : "${MODEL_BASE:=./playground/demo/models/llama-tiny}" "${VISION_TOWER:=./playground/demo/models/clip-tiny}"
    : "${DATA_PATH:=./playground/demo/data/llava_v1_5_mix665k.json}" "${IMAGE_FOLDER:=./playground/demo/data}"
    : "${REDUCTION:=tiny}" "${BATCH_PER_DEVICE:=16}" "${LR:=2e-3}" "${MODEL_MAX_LENGTH:=256}" "${WORKERS:=0}"
    : "${PRECISION:=fp32}" "${SAVE_STEPS:=1000}" "${OUTPUT_DIR:=./checkpoints/demo-${REDUCTION}}" "${EPOCHS:=2}"
    : "${PROJECTOR=./checkpoints/demo-${REDUCTION}-pretrain/mm_projector.bin}"
elif [[ "$RECIPE" != "paper" ]]; then
    echo "RECIPE must be 'paper' or 'tiny', got '$RECIPE'" >&2; exit 2
fi
: "${MODEL_BASE:=lmsys/vicuna-7b-v1.5}" "${VISION_TOWER:=openai/clip-vit-large-patch14-336}"
: "${DATA_PATH:=./playground/data/llava_v1_5_mix665k.json}" "${IMAGE_FOLDER:=./playground/data}"
: "${REDUCTION:=tok64}" "${REDUCTION_OVERRIDES:=}" "${LORA:=0}" "${BATCH_PER_DEVICE:=16}" "${GRAD_ACCUM:=1}"
if [[ "$RECIPE" == "paper" && "$REDUCTION" == voco-* ]]; then
    : "${EPOCHS:=2}"  # VoCo-LLaMA's own recipe: 2 epochs at lr 2e-5 (LLaVA-1.5: 1); EPOCHS=1 for LLaVA's budget
    echo "REDUCTION=$REDUCTION: VoCo-LLaMA recipe, EPOCHS=$EPOCHS" >&2
fi
: "${EPOCHS:=1}" "${MAX_STEPS:=-1}" "${MODEL_MAX_LENGTH:=2048}" "${SAVE_STEPS:=50000}" "${WORKERS:=4}"
: "${REPORT_TO:=none}" "${DS_CONFIG:=./scripts/zero3.json}" "${PRECISION:=bf16}" "${ON_BAD_SAMPLE:=raise}"
: "${OUTPUT_DIR:=./checkpoints/llava-v1.5-7b-hidrop-${REDUCTION}}"
: "${PROJECTOR=./checkpoints/llava-v1.5-7b-hidrop-${REDUCTION}-pretrain/mm_projector.bin}"
if [[ "$LORA" == "1" ]]; then : "${LR:=2e-4}"; else : "${LR:=2e-5}"; fi

ARGS=(
    --deepspeed "$DS_CONFIG"
    --model_name_or_path "$MODEL_BASE"
    --version v1
    --data_path "$DATA_PATH"
    --image_folder "$IMAGE_FOLDER"
    --vision_tower "$VISION_TOWER"
    --pretrain_mm_mlp_adapter "$PROJECTOR"
    --mm_projector_type mlp2x_gelu
    --mm_vision_select_layer -2
    --mm_use_im_start_end False
    --mm_use_im_patch_token False
    --image_aspect_ratio pad
    --group_by_modality_length True
    --on_bad_sample "$ON_BAD_SAMPLE"
    --reduction "$REDUCTION"
    --reduction_overrides "$REDUCTION_OVERRIDES"
)
if [[ "$LORA" == "1" ]]; then
    ARGS+=(--lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5)
fi
source ./scripts/_launch.sh
