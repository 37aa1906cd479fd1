#!/bin/bash
# MME (perception), as upstream LLaVA's scripts/v1_5/eval/mme.sh. Settings: _env.sh. The scoring steps are
# eval.zip's convert_answer_to_mme.py and MME's eval_tool/calculation.py, which upstream expects under
# $EVAL_DIR/MME/; without them our MME scorer scores the same answers instead.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

"$PYTHON" -m llava.eval.model_vqa_loader \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/MME/llava_mme.jsonl" \
    --image-folder "$EVAL_DIR/MME/MME_Benchmark_release_version" \
    --answers-file "$EVAL_DIR/MME/answers/$CKPT.jsonl" \
    "${LOADER_ARGS[@]}"

if [[ -f "$EVAL_DIR/MME/convert_answer_to_mme.py" && -f "$EVAL_DIR/MME/eval_tool/calculation.py" ]]; then
    cd "$EVAL_DIR/MME"
    "$PYTHON" convert_answer_to_mme.py --experiment "$CKPT"
    cd eval_tool
    "$PYTHON" calculation.py --results_dir "answers/$CKPT"
else
    echo "note: MME's convert_answer_to_mme.py / eval_tool/calculation.py are not in $EVAL_DIR/MME; scoring with llava.eval.score" >&2
    "$PYTHON" -m llava.eval.score --bench mme --answers-file "$EVAL_DIR/MME/answers/$CKPT.jsonl" \
        --question-file "$EVAL_DIR/MME/llava_mme.jsonl" --annotation-dir "$EVAL_DIR/MME/MME_Benchmark_release_version"
fi
