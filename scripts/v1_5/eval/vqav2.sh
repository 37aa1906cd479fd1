#!/bin/bash
# VQAv2 test-dev, as upstream LLaVA's scripts/v1_5/eval/vqav2.sh: answers, then the EvalAI upload
# $EVAL_DIR/vqav2/answers_upload/$SPLIT/$CKPT.json (scored by the EvalAI server). Settings: _env.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

SPLIT="llava_vqav2_mscoco_test-dev2015"

run_loader_chunks "$EVAL_DIR/vqav2/answers/$SPLIT/$CKPT" \
    --question-file "$EVAL_DIR/vqav2/$SPLIT.jsonl" \
    --image-folder "$EVAL_DIR/vqav2/test2015" \
    "${LOADER_ARGS[@]}"

"$PYTHON" "$REPO"/scripts/convert_vqav2_for_submission.py --split "$SPLIT" --ckpt "$CKPT" --dir "$EVAL_DIR/vqav2"
