#!/bin/bash
# VizWiz test, as upstream LLaVA's scripts/v1_5/eval/vizwiz.sh: answers, then the EvalAI upload. Settings: _env.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

"$PYTHON" -m llava.eval.model_vqa_loader \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/vizwiz/llava_test.jsonl" \
    --image-folder "$EVAL_DIR/vizwiz/test" \
    --answers-file "$EVAL_DIR/vizwiz/answers/$CKPT.jsonl" \
    "${LOADER_ARGS[@]}"

"$PYTHON" "$REPO"/scripts/convert_vizwiz_for_submission.py \
    --annotation-file "$EVAL_DIR/vizwiz/llava_test.jsonl" \
    --result-file "$EVAL_DIR/vizwiz/answers/$CKPT.jsonl" \
    --result-upload-file "$EVAL_DIR/vizwiz/answers_upload/$CKPT.json"
