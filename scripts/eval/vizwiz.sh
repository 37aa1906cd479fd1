#!/usr/bin/env bash
# VizWiz. The paper's number is the test split (8,000 questions), scored only by the EvalAI server: this
# script writes the upload file. VIZWIZ_SPLIT=val instead runs the official val.json questions (4,319) and
# scores them locally with the VizWiz algorithm (prediction normalized, GT as stored), as a proxy.
#
# Files under $DATA_ROOT/vizwiz/ (upstream names):
#   llava_test.jsonl     LLaVA question file (eval.zip)
#   test/                VizWiz test images
#   val.json, val/       official val annotations and images (val only)
# Outputs:
#   answers/<split>/$CKPT/merge.jsonl
#   answers_upload/$CKPT.json            (test: [{"image", "answer"}] for the server)
#   $RESULTS_DIR/$CKPT/vizwiz.json       (val: local proxy score)
# Record the server's number for the report with:
#   python -m llava.eval.score --bench vizwiz --manual-score 50.0 --result-file $RESULTS_DIR/$CKPT/vizwiz.json --label $LABEL
#
# Extra environment:
#   VIZWIZ_SPLIT         test (default) or val
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

BENCH_DIR="$DATA_ROOT/vizwiz"
VIZWIZ_SPLIT="${VIZWIZ_SPLIT:-test}"

if [[ "$VIZWIZ_SPLIT" == "val" ]]; then
    QUESTIONS="$BENCH_DIR/val.json"
    ANSWERS_DIR="$BENCH_DIR/answers/val/$CKPT"
    need_file "$QUESTIONS" "VizWiz val annotations (val.json, VizWiz release)"

    run_chunks vizwiz "$QUESTIONS" "$BENCH_DIR/val" "$ANSWERS_DIR"

    $PYTHON -m llava.eval.score \
        "${LIMIT_FLAG[@]}" \
        --bench vizwiz \
        --answers-file "$ANSWERS_DIR/merge.jsonl" \
        --question-file "$QUESTIONS" \
        --annotation-file "$BENCH_DIR/val.json" \
        --result-file "$RESULTS_DIR/$CKPT/vizwiz.json" \
        --label "$LABEL"
elif [[ "$VIZWIZ_SPLIT" == "test" ]]; then
    if [[ -n "$LIMIT" ]]; then
        echo "error: LIMIT is for locally scored splits; the test upload needs every question (VIZWIZ_SPLIT=val scores a subset)" >&2
        exit 2
    fi
    QUESTIONS="$BENCH_DIR/llava_test.jsonl"
    ANSWERS_DIR="$BENCH_DIR/answers/llava_test/$CKPT"
    UPLOAD="$BENCH_DIR/answers_upload/$CKPT.json"
    need_file "$QUESTIONS" "VizWiz test question file (llava_test.jsonl, eval.zip)"

    run_chunks vizwiz "$QUESTIONS" "$BENCH_DIR/test" "$ANSWERS_DIR"

    $PYTHON -m llava.eval.convert \
        --bench vizwiz \
        --answers-file "$ANSWERS_DIR/merge.jsonl" \
        --question-file "$QUESTIONS" \
        --output "$UPLOAD"
    echo "VizWiz test: upload $UPLOAD to the VizWiz EvalAI challenge; no local score"
else
    echo "error: VIZWIZ_SPLIT must be test or val, got '$VIZWIZ_SPLIT'" >&2
    exit 1
fi
