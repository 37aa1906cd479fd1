#!/usr/bin/env bash
# POPE on COCO: adversarial / popular / random; the reported number is the mean of the three F1 scores.
# Labels are joined on (split, image, question), not by line order.
#
# Files under $DATA_ROOT/pope/ (upstream names):
#   llava_pope_test.jsonl            LLaVA question file (eval.zip; category = split)
#   val2014/                         COCO val2014 images
#   coco/coco_pope_adversarial.json, coco/coco_pope_popular.json, coco/coco_pope_random.json
#                                    POPE annotations (AoiDragon/POPE commit e3e3926: random has 2,910 lines)
# Outputs:
#   answers/llava_pope_test/$CKPT/merge.jsonl
#   $RESULTS_DIR/$CKPT/pope.json; prints "POPE mean F1: XX.XX" and each split's metrics
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

BENCH_DIR="$DATA_ROOT/pope"
SPLIT=llava_pope_test
QUESTIONS="$BENCH_DIR/$SPLIT.jsonl"
ANSWERS_DIR="$BENCH_DIR/answers/$SPLIT/$CKPT"
need_file "$QUESTIONS" "POPE question file (llava_pope_test.jsonl, eval.zip)"
need_file "$BENCH_DIR/coco" "POPE annotation folder (coco/coco_pope_<split>.json)"

run_chunks pope "$QUESTIONS" "$BENCH_DIR/val2014" "$ANSWERS_DIR"

$PYTHON -m llava.eval.score \
    "${LIMIT_FLAG[@]}" \
    --bench pope \
    --answers-file "$ANSWERS_DIR/merge.jsonl" \
    --question-file "$QUESTIONS" \
    --annotation-dir "$BENCH_DIR/coco" \
    --result-file "$RESULTS_DIR/$CKPT/pope.json" \
    --label "$LABEL"
