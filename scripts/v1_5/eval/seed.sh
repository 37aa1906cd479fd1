#!/bin/bash
# SEED-Bench, as upstream LLaVA's scripts/v1_5/eval/seed.sh: answers, the accuracy (SEED-IMG) and the upload.
# Settings: _env.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

run_loader_chunks "$EVAL_DIR/seed_bench/answers/$CKPT" \
    --question-file "$EVAL_DIR/seed_bench/llava-seed-bench.jsonl" \
    --image-folder "$EVAL_DIR/seed_bench" \
    "${LOADER_ARGS[@]}"

"$PYTHON" "$REPO"/scripts/convert_seed_for_submission.py \
    --annotation-file "$EVAL_DIR/seed_bench/SEED-Bench.json" \
    --result-file "$EVAL_DIR/seed_bench/answers/$CKPT/merge.jsonl" \
    --result-upload-file "$EVAL_DIR/seed_bench/answers_upload/$CKPT.jsonl"
