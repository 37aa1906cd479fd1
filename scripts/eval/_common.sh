# Shared setup for scripts/eval/<bench>.sh. Sourced by them, not run on its own.
#
# Environment (all optional; every benchmark script reads these):
#   MODEL_PATH           checkpoint to evaluate (default ./checkpoints/llava-v1.5-7b-hidrop-tok64)
#   MODEL_BASE           base LLM for projector-only and LoRA checkpoints (passed as --model-base; default
#                        empty: MODEL_PATH is a full checkpoint)
#   VISION_TOWER_PATH    local CLIP directory replacing the vision tower the checkpoint names (e.g. upstream's
#                        hub id openai/clip-vit-large-patch14-336 on an offline machine; default empty)
#   CKPT                 name of the answers and results folders (default: basename of MODEL_PATH, plus
#                        "-$REDUCTION" and the overrides when those are set, so schedules never share files)
#   LABEL                row label in the report (default: $CKPT)
#   DATA_ROOT            root of the benchmark data, upstream layout (default ./playground/data/eval)
#   RESULTS_DIR          where score JSONs go, as $RESULTS_DIR/$CKPT/<bench>.json (default $DATA_ROOT/results)
#   CHUNKS               parallel chunks (default: number of GPUs in CUDA_VISIBLE_DEVICES, or 1 without GPUs)
#   CUDA_VISIBLE_DEVICES comma-separated GPU ids; chunk i runs pinned to GPU i (mod the number of GPUs)
#   REDUCTION            schedule preset replacing the checkpoint's saved schedule (e.g. tok64, tok48, off)
#   REDUCTION_OVERRIDES  space-separated key=value single-field schedule overrides (e.g. "exit_layer=24")
#   BATCH_SIZE           questions per generate call (default 1, the reference mode)
#   MAX_NEW_TOKENS       generation cap (default: the benchmark's upstream value, 128 or 1024)
#   SPECULATIVE          1: self-speculative decoding with the checkpoint's twig (TwigVLM; greedy answers are
#                        the plain ones, the run reports the acceptance rate and tokens/s); 0 (default): plain
#   LIMIT                a quick subset: only the first N questions of the question file are answered, merged and
#                        scored (the scorer counts only those and prints a "subset" line); CKPT gets "-limitN", so
#                        a subset never shares files with the full run. Not for the server-scored splits
#                        (VQAv2 test-dev, VizWiz test). Default empty: every question
#   REUSE_IMAGE_CACHE    1: VoCo schedules compress each image once and answer its other questions from its VoCo
#                        cache (--reuse-image-cache); 0 (default): every question compresses its image again
#   PYTHON               python command (default python)
#   ON_MISMATCH          what a chunk does when its answers file comes from another run (other weights, question
#                        file, schedule or decoding): restart (default) moves it aside to
#                        <chunk>.jsonl.stale-<old run_id> and answers afresh; error stops with the differences
#
# A rerun resumes: each chunk skips the questions it already answered with the very same weights, question file,
# schedule and decoding (recorded in <chunk>.jsonl.run.json), then the merge checks that every question has
# exactly one answer. Only one run may write a chunk file at a time (<chunk>.jsonl.lock).

MODEL_PATH="${MODEL_PATH:-./checkpoints/llava-v1.5-7b-hidrop-tok64}"
MODEL_BASE="${MODEL_BASE:-}"
VISION_TOWER_PATH="${VISION_TOWER_PATH:-}"
DATA_ROOT="${DATA_ROOT:-./playground/data/eval}"
REDUCTION="${REDUCTION:-}"
REDUCTION_OVERRIDES="${REDUCTION_OVERRIDES:-}"
BATCH_SIZE="${BATCH_SIZE:-1}"
MAX_NEW_TOKENS="${MAX_NEW_TOKENS:-}"
PYTHON="${PYTHON:-python}"
ON_MISMATCH="${ON_MISMATCH:-restart}"
LIMIT="${LIMIT:-}"
if [[ -n "$LIMIT" && ! "$LIMIT" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: LIMIT must be a whole number >= 1 (the first N questions), got '$LIMIT'" >&2
    exit 2
fi
LIMIT_FLAG=()
if [[ -n "$LIMIT" ]]; then LIMIT_FLAG=(--limit "$LIMIT"); fi
REUSE_IMAGE_CACHE="${REUSE_IMAGE_CACHE:-0}"
case "$REUSE_IMAGE_CACHE" in 0|1) ;; *) echo "REUSE_IMAGE_CACHE must be 0 or 1, got '$REUSE_IMAGE_CACHE'" >&2; exit 2 ;; esac
REUSE_FLAG=()
if [[ "$REUSE_IMAGE_CACHE" == "1" ]]; then REUSE_FLAG=(--reuse-image-cache); fi
SPECULATIVE="${SPECULATIVE:-0}"
case "$SPECULATIVE" in 0|1) ;; *) echo "SPECULATIVE must be 0 or 1, got '$SPECULATIVE'" >&2; exit 2 ;; esac
SPECULATIVE_FLAG=()
if [[ "$SPECULATIVE" == "1" ]]; then SPECULATIVE_FLAG=(--speculative twig); fi

_overrides_tag="$(printf '%s' "$REDUCTION_OVERRIDES" | tr -s ' ' '_' | tr '=,' '-.')"
_spec_tag=""
if [[ "$SPECULATIVE" == "1" ]]; then _spec_tag="-spec"; fi
CKPT="${CKPT:-$(basename "$MODEL_PATH")${REDUCTION:+-$REDUCTION}${_overrides_tag:+-$_overrides_tag}${LIMIT:+-limit$LIMIT}$_spec_tag}"
LABEL="${LABEL:-$CKPT}"
RESULTS_DIR="${RESULTS_DIR:-$DATA_ROOT/results}"

GPULIST=()
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=',' read -ra GPULIST <<< "$CUDA_VISIBLE_DEVICES"
fi
if ((${#GPULIST[@]} > 0)); then
    CHUNKS="${CHUNKS:-${#GPULIST[@]}}"
else
    CHUNKS="${CHUNKS:-1}"
fi

# need_file PATH DESCRIPTION: stop early, naming the missing input and where it comes from.
need_file() {
    if [[ ! -e "$1" ]]; then
        echo "error: missing $2: $1" >&2
        echo "       (see docs/Evaluation.md for where each benchmark's files go under \$DATA_ROOT)" >&2
        exit 1
    fi
}

# run_chunks BENCH QUESTION_FILE IMAGE_FOLDER ANSWERS_DIR
# One background process per chunk (pinned to its GPU when there are GPUs), then a merge that fails on a
# missing or duplicate question id. Leaves $ANSWERS_DIR/merge.jsonl and merge.jsonl.run.json.
run_chunks() {
    local bench="$1" question_file="$2" image_folder="$3" answers_dir="$4"
    local idx pid failed=0
    local pids=()
    mkdir -p "$answers_dir"
    for ((idx = 0; idx < CHUNKS; idx++)); do
        (
            if ((${#GPULIST[@]} > 0)); then
                export CUDA_VISIBLE_DEVICES="${GPULIST[idx % ${#GPULIST[@]}]}"
            fi
            exec $PYTHON -m llava.eval.run_benchmark \
                --bench "$bench" \
                --model-path "$MODEL_PATH" \
                ${MODEL_BASE:+--model-base "$MODEL_BASE"} \
                ${VISION_TOWER_PATH:+--vision-tower-path "$VISION_TOWER_PATH"} \
                --model-id "$CKPT" \
                --question-file "$question_file" \
                --image-folder "$image_folder" \
                --answers-file "$answers_dir/${CHUNKS}_${idx}.jsonl" \
                --num-chunks "$CHUNKS" \
                --chunk-idx "$idx" \
                --batch-size "$BATCH_SIZE" \
                --max-new-tokens "$MAX_NEW_TOKENS" \
                --reduction-preset "$REDUCTION" \
                --reduction-override "$REDUCTION_OVERRIDES" \
                --on-mismatch "$ON_MISMATCH" \
                "${LIMIT_FLAG[@]}" \
                "${REUSE_FLAG[@]}" \
                "${SPECULATIVE_FLAG[@]}"
        ) &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    if ((failed)); then
        echo "error: at least one $bench chunk failed (see above); rerun this script to resume" >&2
        exit 1
    fi
    $PYTHON -m llava.eval.merge \
        --bench "$bench" \
        --question-file "$question_file" \
        --chunks-dir "$answers_dir" \
        --num-chunks "$CHUNKS" \
        "${LIMIT_FLAG[@]}" \
        --output "$answers_dir/merge.jsonl"
}
