#!/bin/bash
# MMBench dev, as upstream LLaVA's scripts/v1_5/eval/mmbench.sh: answers, then the .xlsx for the OpenCompass server.
# Settings: _env.sh. (Our scripts/eval/mmbench.sh also scores dev locally, circular.)
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

SPLIT="mmbench_dev_20230712"

"$PYTHON" -m llava.eval.model_vqa_mmbench \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/mmbench/$SPLIT.tsv" \
    --answers-file "$EVAL_DIR/mmbench/answers/$SPLIT/$CKPT.jsonl" \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode "$CONV_MODE"

mkdir -p "$EVAL_DIR/mmbench/answers_upload/$SPLIT"

"$PYTHON" "$REPO"/scripts/convert_mmbench_for_submission.py \
    --annotation-file "$EVAL_DIR/mmbench/$SPLIT.tsv" \
    --result-dir "$EVAL_DIR/mmbench/answers/$SPLIT" \
    --upload-dir "$EVAL_DIR/mmbench/answers_upload/$SPLIT" \
    --experiment "$CKPT"
