#!/bin/bash
# GQA testdev-balanced, as upstream LLaVA's scripts/v1_5/eval/gqa.sh. Settings: _env.sh (MODEL_PATH, CKPT, EVAL_DIR,
# REDUCTION, CUDA_VISIBLE_DEVICES, ...). The last step is GQA's official eval/eval.py, which upstream expects under
# $EVAL_DIR/gqa/data/eval/ (with LLaVA's patch for the v1.2 release); without it our GQA scorer scores instead.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

SPLIT="llava_gqa_testdev_balanced"
GQADIR="$EVAL_DIR/gqa/data"

run_loader_chunks "$EVAL_DIR/gqa/answers/$SPLIT/$CKPT" \
    --question-file "$EVAL_DIR/gqa/$SPLIT.jsonl" \
    --image-folder "$EVAL_DIR/gqa/data/images" \
    "${LOADER_ARGS[@]}"

"$PYTHON" "$REPO"/scripts/convert_gqa_for_eval.py --src "$EVAL_DIR/gqa/answers/$SPLIT/$CKPT/merge.jsonl" \
    --dst "$GQADIR/testdev_balanced_predictions.json"

if [[ -f "$GQADIR/eval/eval.py" ]]; then
    cd "$GQADIR"
    "$PYTHON" eval/eval.py --tier testdev_balanced
else
    echo "note: $GQADIR/eval/eval.py (GQA's official scorer) is not there; scoring with llava.eval.score" >&2
    "$PYTHON" -m llava.eval.score --bench gqa --answers-file "$GQADIR/testdev_balanced_predictions.json" \
        --annotation-file "$GQADIR/testdev_balanced_questions.json"
fi
