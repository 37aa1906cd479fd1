#!/bin/bash
# MMStar val, the paper's eleventh benchmark. Upstream LLaVA has no MMStar script or runner; this one follows the
# others' shape with our runner and scorer (the file is the OpenCompass MMStar.tsv; it holds the answers too).
# Settings: _env.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

# run_benchmark names the preset flag --reduction-preset; the other flags are the runners'.
RUNNER_ARGS=()
for arg in "${MODEL_ARGS[@]}"; do
    if [[ "$arg" == "--reduction" ]]; then RUNNER_ARGS+=(--reduction-preset); else RUNNER_ARGS+=("$arg"); fi
done

"$PYTHON" -m llava.eval.run_benchmark \
    --bench mmstar \
    "${RUNNER_ARGS[@]}" \
    --question-file "$EVAL_DIR/mmstar/MMStar.tsv" \
    --image-folder "$EVAL_DIR/mmstar" \
    --answers-file "$EVAL_DIR/mmstar/answers/$CKPT.jsonl" \
    --model-id "$CKPT" \
    --conv-mode "$CONV_MODE"

"$PYTHON" -m llava.eval.score \
    --bench mmstar \
    --answers-file "$EVAL_DIR/mmstar/answers/$CKPT.jsonl" \
    --question-file "$EVAL_DIR/mmstar/MMStar.tsv"
