#!/usr/bin/env bash
# Stage 1 (feature alignment): train the projector on LCS-558K with the `plain` template, HiDrop on.
# Defaults are the LLaVA-1.5-7B recipe on 8 GPUs: global batch 256 = 32 per GPU x 8, lr 1e-3, 1 epoch, ZeRO-2.
#
# Environment variables (every path and count can be overridden):
#   RECIPE         paper (default) | tiny  (tiny: the embedded demo on CPU, 2 ranks over gloo)
#   MODEL_BASE     base LLM                 [lmsys/vicuna-7b-v1.5]
#   VISION_TOWER   CLIP vision tower        [openai/clip-vit-large-patch14-336]
#   DATA_PATH      caption JSON             [./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json]
#   IMAGE_FOLDER   images of DATA_PATH      [./playground/data/LLaVA-Pretrain/images]
#   OUTPUT_DIR     where mm_projector.bin goes [./checkpoints/llava-v1.5-7b-hidrop-${REDUCTION}-pretrain]
#   REDUCTION      token-reduction preset: tok64 (default), tok48, tok80, off (plain LLaVA), ...
#   REDUCTION_OVERRIDES  space-separated single-field overrides, e.g. "topk=hard exit_layer=24"
#   NPROC          processes (GPUs, or CPU ranks)  [all GPUs, or 2 on CPU]
#   BATCH_PER_DEVICE [32]   GRAD_ACCUM [1]   LR [1e-3]   EPOCHS [1]   MAX_STEPS [-1]   MODEL_MAX_LENGTH [2048]
#   SAVE_STEPS [24000]   WORKERS [4]   REPORT_TO [none] (wandb to log there)   DS_CONFIG [./scripts/zero2.json]
#   ON_BAD_SAMPLE  raise (default) | skip (count and report missing/corrupt images and bad samples)
#   OVERWRITE      1 to start afresh in an OUTPUT_DIR that holds an earlier run (deletes its checkpoints) [0]
#   PRECISION      bf16 (default on GPU) | fp16 | fp32 (default for RECIPE=tiny)
#   PYTHON [python]   MASTER_PORT [29517]
#   NNODES [1]   NODE_RANK [0]   MASTER_ADDR [127.0.0.1]   several machines: run this script on each, with the
#                  same NNODES/MASTER_ADDR/MASTER_PORT (node 0's) and its own NODE_RANK (docs/Training.md)
# Extra arguments are passed to llava.train.train, e.g. `bash scripts/pretrain.sh --resume_from_checkpoint DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RECIPE:=paper}"
if [[ "$RECIPE" == "tiny" ]]; then
    : "${MODEL_BASE:=./playground/demo/models/llama-tiny}" "${VISION_TOWER:=./playground/demo/models/clip-tiny}"
    : "${DATA_PATH:=./playground/demo/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
    : "${IMAGE_FOLDER:=./playground/demo/data/LLaVA-Pretrain/images}"
    : "${REDUCTION:=tiny}" "${BATCH_PER_DEVICE:=16}" "${LR:=1e-3}" "${MODEL_MAX_LENGTH:=256}" "${WORKERS:=0}"
    : "${PRECISION:=fp32}" "${SAVE_STEPS:=1000}" "${OUTPUT_DIR:=./checkpoints/demo-${REDUCTION}-pretrain}"
elif [[ "$RECIPE" != "paper" ]]; then
    echo "RECIPE must be 'paper' or 'tiny', got '$RECIPE'" >&2; exit 2
fi
: "${MODEL_BASE:=lmsys/vicuna-7b-v1.5}" "${VISION_TOWER:=openai/clip-vit-large-patch14-336}"
: "${DATA_PATH:=./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
: "${IMAGE_FOLDER:=./playground/data/LLaVA-Pretrain/images}"
: "${REDUCTION:=tok64}" "${REDUCTION_OVERRIDES:=}" "${BATCH_PER_DEVICE:=32}" "${GRAD_ACCUM:=1}" "${LR:=1e-3}"
: "${EPOCHS:=1}" "${MAX_STEPS:=-1}" "${MODEL_MAX_LENGTH:=2048}" "${SAVE_STEPS:=24000}" "${WORKERS:=4}"
: "${REPORT_TO:=none}" "${DS_CONFIG:=./scripts/zero2.json}" "${PRECISION:=bf16}" "${ON_BAD_SAMPLE:=raise}"
: "${OUTPUT_DIR:=./checkpoints/llava-v1.5-7b-hidrop-${REDUCTION}-pretrain}"

ARGS=(
    --deepspeed "$DS_CONFIG"
    --model_name_or_path "$MODEL_BASE"
    --version plain
    --data_path "$DATA_PATH"
    --image_folder "$IMAGE_FOLDER"
    --vision_tower "$VISION_TOWER"
    --mm_projector_type mlp2x_gelu
    --tune_mm_mlp_adapter True
    --on_bad_sample "$ON_BAD_SAMPLE"
    --mm_vision_select_layer -2
    --mm_use_im_start_end False
    --mm_use_im_patch_token False
    --reduction "$REDUCTION"
    --reduction_overrides "$REDUCTION_OVERRIDES"
)
source ./scripts/_launch.sh
