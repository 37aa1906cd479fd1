#!/usr/bin/env bash
# MME: acc + acc+ per subtask; prints the perception total (the paper's MME-P) and the cognition total.
#
# Files under $DATA_ROOT/MME/ (upstream names):
#   llava_mme.jsonl                  LLaVA question file (eval.zip)
#   MME_Benchmark_release_version/   the MME release: <subtask>/ with images and question txt files
#                                    (images/ + questions_answers_YN/, or side by side)
# Outputs:
#   answers/llava_mme/$CKPT/merge.jsonl
#   $RESULTS_DIR/$CKPT/mme.json; prints "MME perception total: XXXX.XX"
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

BENCH_DIR="$DATA_ROOT/MME"
SPLIT=llava_mme
QUESTIONS="$BENCH_DIR/$SPLIT.jsonl"
ANSWERS_DIR="$BENCH_DIR/answers/$SPLIT/$CKPT"
need_file "$QUESTIONS" "MME question file (llava_mme.jsonl, eval.zip)"
need_file "$BENCH_DIR/MME_Benchmark_release_version" "MME release folder (MME_Benchmark_release_version)"

run_chunks mme "$QUESTIONS" "$BENCH_DIR/MME_Benchmark_release_version" "$ANSWERS_DIR"

$PYTHON -m llava.eval.score \
    "${LIMIT_FLAG[@]}" \
    --bench mme \
    --answers-file "$ANSWERS_DIR/merge.jsonl" \
    --question-file "$QUESTIONS" \
    --annotation-dir "$BENCH_DIR/MME_Benchmark_release_version" \
    --result-file "$RESULTS_DIR/$CKPT/mme.json" \
    --label "$LABEL"
