#!/bin/bash
# ScienceQA test (IMG accuracy), as upstream LLaVA's scripts/v1_5/eval/sqa.sh. Settings: _env.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

"$PYTHON" -m llava.eval.model_vqa_science \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/scienceqa/llava_test_CQM-A.json" \
    --image-folder "$EVAL_DIR/scienceqa/images/test" \
    --answers-file "$EVAL_DIR/scienceqa/answers/$CKPT.jsonl" \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode "$CONV_MODE"

"$PYTHON" "$REPO"/llava/eval/eval_science_qa.py \
    --base-dir "$EVAL_DIR/scienceqa" \
    --result-file "$EVAL_DIR/scienceqa/answers/$CKPT.jsonl" \
    --output-file "$EVAL_DIR/scienceqa/answers/${CKPT}_output.jsonl" \
    --output-result "$EVAL_DIR/scienceqa/answers/${CKPT}_result.json"
