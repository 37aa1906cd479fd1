#!/bin/bash
# POPE (adversarial, popular, random), as upstream LLaVA's scripts/v1_5/eval/pope.sh. Settings: _env.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

"$PYTHON" -m llava.eval.model_vqa_loader \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/pope/llava_pope_test.jsonl" \
    --image-folder "$EVAL_DIR/pope/val2014" \
    --answers-file "$EVAL_DIR/pope/answers/$CKPT.jsonl" \
    "${LOADER_ARGS[@]}"

"$PYTHON" "$REPO"/llava/eval/eval_pope.py \
    --annotation-dir "$EVAL_DIR/pope/coco" \
    --question-file "$EVAL_DIR/pope/llava_pope_test.jsonl" \
    --result-file "$EVAL_DIR/pope/answers/$CKPT.jsonl"
