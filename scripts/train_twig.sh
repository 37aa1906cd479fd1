#!/usr/bin/env bash
# TwigVLM's twig training: a twig of TWIG_LAYERS layers after base layer TWIG_AFTER_LAYER, initialised from the base
# layers after it, trained alone (the LLaVA-1.5 checkpoint stays frozen, bit for bit) by the next-token loss of the
# shallow model (base layers 1..K, then the twig, its norm and head), nothing pruned. Defaults are the authors' recipe
# for LLaVA-1.5-7B: LLaVA-665K, 1 epoch, lr 1e-4 cosine, warmup 0.03, global batch 128 = 4 per GPU x 4 accumulation
# x 8 GPUs, ZeRO-2, no gradient checkpointing. The output is a full checkpoint (base + twig) whose schedule is
# REDUCTION, so it evaluates as it is: MODEL_PATH=<OUTPUT_DIR> SPECULATIVE=1 bash scripts/eval/gqa.sh
#
# Environment variables:
#   RECIPE         paper (default) | tiny  (tiny: the demo's plain-LLaVA checkpoint on CPU, 2 ranks over gloo)
#   MODEL_PATH     the LLaVA-1.5 checkpoint, ours or upstream's layout   [./checkpoints/llava-v1.5-7b]
#   VISION_TOWER   CLIP tower of an upstream-layout MODEL_PATH whose hub id is not reachable (offline); default: the
#                  checkpoint's own tower
#   DATA_PATH      conversation JSON        [./playground/data/llava_v1_5_mix665k.json]
#   IMAGE_FOLDER   image root of DATA_PATH  [./playground/data]
#   OUTPUT_DIR     checkpoint directory     [./checkpoints/llava-v1.5-7b-twig]
#   TWIG_AFTER_LAYER [2]   TWIG_LAYERS [3]   (K and T; tiny: 2 and 1)
#   REDUCTION      the schedule saved with the checkpoint, for evaluation [twigvlm-64; tiny: twigvlm-tiny]
#   REDUCTION_OVERRIDES  single-field overrides of REDUCTION
#   NPROC          processes (GPUs, or CPU ranks)  [all GPUs, or 2 on CPU]
#   BATCH_PER_DEVICE [4]   GRAD_ACCUM [4]   LR [1e-4]   EPOCHS [1]   MAX_STEPS [-1]   MODEL_MAX_LENGTH [2048]
#   SAVE_STEPS [50000]   WORKERS [4]   REPORT_TO [none]   DS_CONFIG [./scripts/zero2.json]
#   GRADIENT_CHECKPOINTING [False]
#   PRECISION      fp16 | bf16 | fp32; default: the base checkpoint's own dtype on GPU (so the frozen base is saved
#                  unchanged; the authors train in bf16), fp32 for RECIPE=tiny
#   ON_BAD_SAMPLE  raise (default) | skip (count and report missing/corrupt images and bad samples)
#   OVERWRITE      1 to start afresh in an OUTPUT_DIR that holds an earlier run (deletes its checkpoints) [0]
#   PYTHON [python]   MASTER_PORT [29517]   NNODES [1]   NODE_RANK [0]   MASTER_ADDR [127.0.0.1]
# Extra arguments are passed to llava.train.train, e.g. `--resume_from_checkpoint ./checkpoints/.../checkpoint-500`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RECIPE:=paper}"
if [[ "$RECIPE" == "tiny" ]]; then
    : "${MODEL_PATH:=./checkpoints/demo-off}" "${DATA_PATH:=./playground/demo/data/llava_v1_5_mix665k.json}"
    : "${IMAGE_FOLDER:=./playground/demo/data}" "${TWIG_LAYERS:=1}" "${REDUCTION:=twigvlm-tiny}"
    : "${BATCH_PER_DEVICE:=16}" "${GRAD_ACCUM:=1}" "${LR:=2e-3}" "${MODEL_MAX_LENGTH:=256}" "${WORKERS:=0}"
    : "${PRECISION:=fp32}" "${SAVE_STEPS:=1000}" "${OUTPUT_DIR:=${MODEL_PATH%/}-twig}"
elif [[ "$RECIPE" != "paper" ]]; then
    echo "RECIPE must be 'paper' or 'tiny', got '$RECIPE'" >&2; exit 2
fi
: "${MODEL_PATH:=./checkpoints/llava-v1.5-7b}" "${VISION_TOWER:=}"
: "${DATA_PATH:=./playground/data/llava_v1_5_mix665k.json}" "${IMAGE_FOLDER:=./playground/data}"
: "${OUTPUT_DIR:=./checkpoints/llava-v1.5-7b-twig}" "${TWIG_AFTER_LAYER:=2}" "${TWIG_LAYERS:=3}"
: "${REDUCTION:=twigvlm-64}" "${REDUCTION_OVERRIDES:=}" "${BATCH_PER_DEVICE:=4}" "${GRAD_ACCUM:=4}" "${LR:=1e-4}"
: "${EPOCHS:=1}" "${MAX_STEPS:=-1}" "${MODEL_MAX_LENGTH:=2048}" "${SAVE_STEPS:=50000}" "${WORKERS:=4}"
: "${REPORT_TO:=none}" "${DS_CONFIG:=./scripts/zero2.json}" "${ON_BAD_SAMPLE:=raise}" "${GRADIENT_CHECKPOINTING:=False}"
: "${PYTHON:=python}"
if [[ -z "${PRECISION:-}" ]]; then
    if [[ "${PRINT_ARGS_ONLY:-0}" == "1" || ! -f "$MODEL_PATH/config.json" ]]; then
        PRECISION=bf16
    else  # the base's own dtype: a frozen fp16 base trained in bf16 would be saved rounded to bf16
        PRECISION=$("$PYTHON" -c "import json,sys; c=json.load(open(sys.argv[1])); d=str(c.get('dtype') or c.get('torch_dtype') or 'float32'); print({'float16':'fp16','bfloat16':'bf16'}.get(d,'fp32'))" "$MODEL_PATH/config.json")
    fi
fi
export GRADIENT_CHECKPOINTING

ARGS=(
    --deepspeed "$DS_CONFIG"
    --model_name_or_path "$MODEL_PATH"
    --version v1
    --data_path "$DATA_PATH"
    --image_folder "$IMAGE_FOLDER"
    --mm_projector_type mlp2x_gelu
    --mm_vision_select_layer -2
    --mm_use_im_start_end False
    --mm_use_im_patch_token False
    --image_aspect_ratio pad
    --group_by_modality_length True
    --on_bad_sample "$ON_BAD_SAMPLE"
    --reduction "$REDUCTION"
    --reduction_overrides "$REDUCTION_OVERRIDES"
    --train_twig True
    --twig_after_layer "$TWIG_AFTER_LAYER"
    --twig_layers "$TWIG_LAYERS"
)
if [[ -n "$VISION_TOWER" ]]; then ARGS+=(--vision_tower "$VISION_TOWER"); fi
source ./scripts/_launch.sh
