#!/usr/bin/env bash
# MMBench dev, circular evaluation with rule-based option extraction (no GPT judge unless JUDGE is set).
# The TSV holds the images (base64) and, for dev, the answers.
#
# Files under $DATA_ROOT/mmbench/ (upstream names):
#   mmbench_dev_20230712.tsv     the MMBench dev TSV
# Outputs:
#   answers/mmbench_dev_20230712/$CKPT/merge.jsonl
#   $RESULTS_DIR/$CKPT/mmbench.json; prints "MMBench circular accuracy: XX.XX"
#
# Extra environment:
#   JUDGE                optional judge hook "package.module:function" for outputs the rules cannot read
#                        (called as judge(question, options, output) -> letter or None); off by default
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

BENCH_DIR="$DATA_ROOT/mmbench"
SPLIT=mmbench_dev_20230712
QUESTIONS="$BENCH_DIR/$SPLIT.tsv"
ANSWERS_DIR="$BENCH_DIR/answers/$SPLIT/$CKPT"
need_file "$QUESTIONS" "MMBench dev TSV (mmbench_dev_20230712.tsv)"

run_chunks mmbench "$QUESTIONS" "$BENCH_DIR" "$ANSWERS_DIR"

$PYTHON -m llava.eval.score \
    "${LIMIT_FLAG[@]}" \
    --bench mmbench \
    --answers-file "$ANSWERS_DIR/merge.jsonl" \
    --question-file "$QUESTIONS" \
    --judge "${JUDGE:-}" \
    --result-file "$RESULTS_DIR/$CKPT/mmbench.json" \
    --label "$LABEL"
