#!/usr/bin/env bash
# ScienceQA-IMG: the whole test split is run (4,241 questions, text-only ones without an image); the reported
# number is IMG-Accuracy over the 2,017 image questions, with LLaVA's strict letter parser.
#
# Files under $DATA_ROOT/scienceqa/ (upstream names):
#   llava_test_CQM-A.json     LLaVA question file (eval.zip)
#   images/test/              ScienceQA test images (<pid>/image.png)
#   problems.json, pid_splits.json   from the ScienceQA repository
# Outputs:
#   answers/llava_test_CQM-A/$CKPT/merge.jsonl
#   $RESULTS_DIR/$CKPT/sqa.json; prints "SQA-IMG IMG accuracy: XX.XX"
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

BENCH_DIR="$DATA_ROOT/scienceqa"
QUESTIONS="$BENCH_DIR/llava_test_CQM-A.json"
ANSWERS_DIR="$BENCH_DIR/answers/llava_test_CQM-A/$CKPT"
need_file "$QUESTIONS" "ScienceQA question file (llava_test_CQM-A.json, eval.zip)"
need_file "$BENCH_DIR/problems.json" "ScienceQA problems.json"
need_file "$BENCH_DIR/pid_splits.json" "ScienceQA pid_splits.json"

run_chunks sqa "$QUESTIONS" "$BENCH_DIR/images/test" "$ANSWERS_DIR"

$PYTHON -m llava.eval.score \
    "${LIMIT_FLAG[@]}" \
    --bench sqa \
    --answers-file "$ANSWERS_DIR/merge.jsonl" \
    --question-file "$QUESTIONS" \
    --annotation-dir "$BENCH_DIR" \
    --split test \
    --result-file "$RESULTS_DIR/$CKPT/sqa.json" \
    --label "$LABEL"
