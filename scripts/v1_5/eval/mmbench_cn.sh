#!/bin/bash
# MMBench-CN dev, as upstream LLaVA's scripts/v1_5/eval/mmbench_cn.sh (the upload folder is mmbench_cn's, where
# upstream's mkdir made mmbench's). Settings: _env.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

SPLIT="mmbench_dev_cn_20231003"

"$PYTHON" -m llava.eval.model_vqa_mmbench \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/mmbench_cn/$SPLIT.tsv" \
    --answers-file "$EVAL_DIR/mmbench_cn/answers/$SPLIT/$CKPT.jsonl" \
    --lang cn \
    --single-pred-prompt \
    --temperature 0 \
    --conv-mode "$CONV_MODE"

mkdir -p "$EVAL_DIR/mmbench_cn/answers_upload/$SPLIT"

"$PYTHON" "$REPO"/scripts/convert_mmbench_for_submission.py \
    --annotation-file "$EVAL_DIR/mmbench_cn/$SPLIT.tsv" \
    --result-dir "$EVAL_DIR/mmbench_cn/answers/$SPLIT" \
    --upload-dir "$EVAL_DIR/mmbench_cn/answers_upload/$SPLIT" \
    --experiment "$CKPT"
