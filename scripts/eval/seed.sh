#!/usr/bin/env bash
# SEED-Bench image split (SEED-IMG, 14,233 questions): whole-string letter accuracy. Video questions in the
# question file are skipped, so the video frames are not needed.
#
# Files under $DATA_ROOT/seed_bench/ (upstream names):
#   llava-seed-bench.jsonl     LLaVA question file (eval.zip)
#   SEED-Bench-image/          SEED-Bench v1 images
#   SEED-Bench.json            official annotations (answers, question types)
# Outputs:
#   answers/llava-seed-bench/$CKPT/merge.jsonl
#   answers_upload/$CKPT.jsonl            (optional leaderboard upload)
#   $RESULTS_DIR/$CKPT/seed.json; prints "SEED-IMG image accuracy: XX.XX"
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

BENCH_DIR="$DATA_ROOT/seed_bench"
SPLIT=llava-seed-bench
QUESTIONS="$BENCH_DIR/$SPLIT.jsonl"
ANSWERS_DIR="$BENCH_DIR/answers/$SPLIT/$CKPT"
need_file "$QUESTIONS" "SEED question file (llava-seed-bench.jsonl, eval.zip)"
need_file "$BENCH_DIR/SEED-Bench.json" "SEED-Bench annotations (SEED-Bench.json)"

run_chunks seed "$QUESTIONS" "$BENCH_DIR" "$ANSWERS_DIR"

$PYTHON -m llava.eval.convert \
    --bench seed \
    --answers-file "$ANSWERS_DIR/merge.jsonl" \
    --annotation-file "$BENCH_DIR/SEED-Bench.json" \
    --output "$BENCH_DIR/answers_upload/$CKPT.jsonl"

$PYTHON -m llava.eval.score \
    "${LIMIT_FLAG[@]}" \
    --bench seed \
    --answers-file "$ANSWERS_DIR/merge.jsonl" \
    --question-file "$QUESTIONS" \
    --annotation-file "$BENCH_DIR/SEED-Bench.json" \
    --result-file "$RESULTS_DIR/$CKPT/seed.json" \
    --label "$LABEL"
