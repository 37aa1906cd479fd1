#!/usr/bin/env bash
# VQAv2. The paper's number is test-dev (107,394 questions), scored only by the EvalAI server (challenge 830,
# phase test-dev2015): this script writes the upload file. VQAV2_SPLIT=val2014 instead runs the official
# val questions and scores them locally with the official VQAv2 algorithm, as a development proxy (val
# numbers are not comparable to test-dev).
#
# Files under $DATA_ROOT/vqav2/ (upstream names):
#   llava_vqav2_mscoco_test-dev2015.jsonl    LLaVA question file (eval.zip)
#   llava_vqav2_mscoco_test2015.jsonl        all test2015 questions; the upload must list every one
#   test2015/                                COCO test2015 images
#   val2014/, v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json   (val2014 only)
# Outputs:
#   answers/<split>/$CKPT/merge.jsonl
#   answers_upload/llava_vqav2_mscoco_test-dev2015/$CKPT.json    (test-dev: upload to EvalAI)
#   $RESULTS_DIR/$CKPT/vqav2.json                                (val2014: local proxy score)
# Record the server's test-dev number for the report with:
#   python -m llava.eval.score --bench vqav2 --manual-score 78.5 --result-file $RESULTS_DIR/$CKPT/vqav2.json --label $LABEL
#
# Extra environment:
#   VQAV2_SPLIT          test-dev2015 (default) or val2014
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

BENCH_DIR="$DATA_ROOT/vqav2"
VQAV2_SPLIT="${VQAV2_SPLIT:-test-dev2015}"

if [[ "$VQAV2_SPLIT" == "val2014" ]]; then
    QUESTIONS="$BENCH_DIR/v2_OpenEnded_mscoco_val2014_questions.json"
    ANSWERS_DIR="$BENCH_DIR/answers/val2014/$CKPT"
    need_file "$QUESTIONS" "VQAv2 val questions (v2_OpenEnded_mscoco_val2014_questions.json)"
    need_file "$BENCH_DIR/v2_mscoco_val2014_annotations.json" "VQAv2 val annotations (v2_mscoco_val2014_annotations.json)"

    run_chunks vqav2 "$QUESTIONS" "$BENCH_DIR/val2014" "$ANSWERS_DIR"

    $PYTHON -m llava.eval.score \
        "${LIMIT_FLAG[@]}" \
        --bench vqav2 \
        --answers-file "$ANSWERS_DIR/merge.jsonl" \
        --question-file "$QUESTIONS" \
        --annotation-file "$BENCH_DIR/v2_mscoco_val2014_annotations.json" \
        --result-file "$RESULTS_DIR/$CKPT/vqav2.json" \
        --label "$LABEL"
elif [[ "$VQAV2_SPLIT" == "test-dev2015" ]]; then
    if [[ -n "$LIMIT" ]]; then
        echo "error: LIMIT is for locally scored splits; the test-dev upload needs every question (VQAV2_SPLIT=val2014 scores a subset)" >&2
        exit 2
    fi
    SPLIT=llava_vqav2_mscoco_test-dev2015
    QUESTIONS="$BENCH_DIR/$SPLIT.jsonl"
    ANSWERS_DIR="$BENCH_DIR/answers/$SPLIT/$CKPT"
    UPLOAD="$BENCH_DIR/answers_upload/$SPLIT/$CKPT.json"
    need_file "$QUESTIONS" "VQAv2 test-dev question file (llava_vqav2_mscoco_test-dev2015.jsonl, eval.zip)"
    need_file "$BENCH_DIR/llava_vqav2_mscoco_test2015.jsonl" "VQAv2 full test2015 list (llava_vqav2_mscoco_test2015.jsonl, eval.zip)"

    run_chunks vqav2 "$QUESTIONS" "$BENCH_DIR/test2015" "$ANSWERS_DIR"

    $PYTHON -m llava.eval.convert \
        --bench vqav2 \
        --answers-file "$ANSWERS_DIR/merge.jsonl" \
        --question-file "$BENCH_DIR/llava_vqav2_mscoco_test2015.jsonl" \
        --output "$UPLOAD"
    echo "VQAv2 test-dev: upload $UPLOAD to EvalAI (challenge 830, phase test-dev2015); no local score"
else
    echo "error: VQAV2_SPLIT must be test-dev2015 or val2014, got '$VQAV2_SPLIT'" >&2
    exit 1
fi
