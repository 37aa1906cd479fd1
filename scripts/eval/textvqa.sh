#!/usr/bin/env bash
# TextVQA val (5,000 questions) with Rosetta OCR tokens in the prompt; EvalAI/m4c VQA accuracy, local.
#
# Files under $DATA_ROOT/textvqa/ (upstream names):
#   llava_textvqa_val_v051_ocr.jsonl   LLaVA question file with the OCR line (eval.zip)
#   train_images/                      TextVQA images (val questions use train_images)
#   TextVQA_0.5.1_val.json             official val annotations
# Outputs:
#   answers/llava_textvqa_val_v051_ocr/$CKPT/merge.jsonl
#   $RESULTS_DIR/$CKPT/textvqa.json; prints "TextVQA accuracy: XX.XX"
#
# Environment (all optional):
#   MODEL_PATH           checkpoint to evaluate (default ./checkpoints/llava-v1.5-7b-hidrop-tok64)
#   MODEL_BASE           base LLM for projector-only and LoRA checkpoints (default empty: full checkpoint)
#   VISION_TOWER_PATH    local CLIP directory replacing the tower the checkpoint names (offline hub ids)
#   CKPT                 answers/results folder name (default: basename of MODEL_PATH, plus -$REDUCTION and
#                        the overrides when set)
#   LABEL                row label in the report (default: $CKPT)
#   DATA_ROOT            benchmark data root (default ./playground/data/eval)
#   RESULTS_DIR          score JSONs go to $RESULTS_DIR/$CKPT/<bench>.json (default $DATA_ROOT/results)
#   CHUNKS               parallel chunks (default: number of GPUs in CUDA_VISIBLE_DEVICES, or 1 on CPU)
#   CUDA_VISIBLE_DEVICES GPUs to use; chunk i is pinned to the i-th one
#   REDUCTION            schedule preset replacing the checkpoint's saved schedule (e.g. tok64, off)
#   REDUCTION_OVERRIDES  space-separated key=value schedule overrides (e.g. "exit_layer=24")
#   BATCH_SIZE           questions per generate call (default 1, the reference mode)
#   MAX_NEW_TOKENS       generation cap (default: the benchmark's upstream value, 128 or 1024)
#   SPECULATIVE          1: self-speculative decoding with the checkpoint's twig (TwigVLM; greedy answers are
#                        the plain ones, the run reports the acceptance rate and tokens/s); 0 (default): plain
#   LIMIT                quick subset: the first N questions only, scored as such (see _common.sh)
#   PYTHON               python command (default python)
#   ON_MISMATCH          answers from another run (other weights/questions/schedule): restart (default, moves
#                        them aside to <chunk>.stale-<run_id>) or error
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

BENCH_DIR="$DATA_ROOT/textvqa"
SPLIT=llava_textvqa_val_v051_ocr
QUESTIONS="$BENCH_DIR/$SPLIT.jsonl"
ANSWERS_DIR="$BENCH_DIR/answers/$SPLIT/$CKPT"
need_file "$QUESTIONS" "TextVQA question file (llava_textvqa_val_v051_ocr.jsonl, eval.zip)"
need_file "$BENCH_DIR/TextVQA_0.5.1_val.json" "TextVQA val annotations (TextVQA_0.5.1_val.json)"

run_chunks textvqa "$QUESTIONS" "$BENCH_DIR/train_images" "$ANSWERS_DIR"

$PYTHON -m llava.eval.score \
    "${LIMIT_FLAG[@]}" \
    --bench textvqa \
    --answers-file "$ANSWERS_DIR/merge.jsonl" \
    --question-file "$QUESTIONS" \
    --annotation-file "$BENCH_DIR/TextVQA_0.5.1_val.json" \
    --result-file "$RESULTS_DIR/$CKPT/textvqa.json" \
    --label "$LABEL"
