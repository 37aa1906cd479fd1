#!/usr/bin/env bash
# GQA, testdev-balanced (12,578 questions): exact-match accuracy, scored locally.
#
# Files under $DATA_ROOT/gqa/ (upstream names):
#   llava_gqa_testdev_balanced.jsonl        LLaVA question file (eval.zip)
#   data/images/                            GQA images
#   data/testdev_balanced_questions.json    official GQA v1.2 questions with answers ({qid: {"answer": ...}})
# Outputs:
#   answers/llava_gqa_testdev_balanced/$CKPT/{CHUNKS}_{IDX}.jsonl, merge.jsonl
#   answers/llava_gqa_testdev_balanced/$CKPT/testdev_balanced_predictions.json   (GQA eval.py format)
#   $RESULTS_DIR/$CKPT/gqa.json; prints "GQA accuracy: XX.XX"
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

BENCH_DIR="$DATA_ROOT/gqa"
SPLIT=llava_gqa_testdev_balanced
QUESTIONS="$BENCH_DIR/$SPLIT.jsonl"
ANSWERS_DIR="$BENCH_DIR/answers/$SPLIT/$CKPT"
need_file "$QUESTIONS" "GQA question file (llava_gqa_testdev_balanced.jsonl, LLaVA eval.zip)"
need_file "$BENCH_DIR/data/testdev_balanced_questions.json" "GQA testdev_balanced_questions.json (GQA v1.2 release)"

run_chunks gqa "$QUESTIONS" "$BENCH_DIR/data/images" "$ANSWERS_DIR"

$PYTHON -m llava.eval.convert \
    --bench gqa \
    --answers-file "$ANSWERS_DIR/merge.jsonl" \
    --output "$ANSWERS_DIR/testdev_balanced_predictions.json"

$PYTHON -m llava.eval.score \
    "${LIMIT_FLAG[@]}" \
    --bench gqa \
    --answers-file "$ANSWERS_DIR/testdev_balanced_predictions.json" \
    --run-info "$ANSWERS_DIR/merge.jsonl.run.json" \
    --question-file "$QUESTIONS" \
    --annotation-file "$BENCH_DIR/data/testdev_balanced_questions.json" \
    --result-file "$RESULTS_DIR/$CKPT/gqa.json" \
    --label "$LABEL"
