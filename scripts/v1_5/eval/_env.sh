# Shared settings of scripts/v1_5/eval/*.sh (sourced, not run). These scripts run upstream LLaVA's v1.5 evaluation
# commands as upstream wrote them (llava.eval.model_vqa_loader & co., scripts/convert_*.py, llava/eval/eval_*.py) on
# this codebase's runner and scorers. Upstream hard-coded the model (liuhaotian/llava-v1.5-13b) and the data root;
# here they are defaults:
#
#   MODEL_PATH           checkpoint folder (default ./checkpoints/llava-v1.5-13b); upstream's or our layout
#   MODEL_BASE           base LLM of a projector-only or LoRA checkpoint (default empty)
#   CKPT                 answers-file name (default: the checkpoint's name, as get_model_name_from_path gives it)
#   EVAL_DIR             benchmark data, upstream's layout (default ./playground/data/eval; docs/Evaluation.md)
#   CONV_MODE            conversation template (default vicuna_v1, as upstream's scripts)
#   REDUCTION            ours: schedule preset replacing the checkpoint's (e.g. tok64, off; default: the checkpoint's)
#   REDUCTION_OVERRIDES  ours: space-separated key=value schedule overrides
#   VISION_TOWER_PATH    ours: local CLIP folder replacing the hub id a checkpoint names
#   PYTHON               python command (default python)
#   MAX_NEW_TOKENS       ours: model_vqa_loader's --max_new_tokens (default: upstream's 128)
#   CUDA_VISIBLE_DEVICES gqa, vqav2, seed: one chunk per listed GPU (default "0": one chunk), as upstream
#
# Unlike upstream's scripts, a failing step stops the script (set -euo pipefail) and a rerun resumes the answers of
# the same run instead of starting over (llava.eval.run_benchmark).

set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"  # scripts/convert_*.py and llava/eval/eval_*.py
MODEL_PATH="${MODEL_PATH:-./checkpoints/llava-v1.5-13b}"
MODEL_BASE="${MODEL_BASE:-}"
CKPT="${CKPT:-$(basename "${MODEL_PATH%/}")}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
PYTHON="${PYTHON:-python}"

# What every runner call gets besides upstream's flags: the model, and ours when they are set.
MODEL_ARGS=(--model-path "$MODEL_PATH")
if [[ -n "$MODEL_BASE" ]]; then MODEL_ARGS+=(--model-base "$MODEL_BASE"); fi
if [[ -n "${REDUCTION:-}" ]]; then MODEL_ARGS+=(--reduction "$REDUCTION"); fi
if [[ -n "${REDUCTION_OVERRIDES:-}" ]]; then MODEL_ARGS+=(--reduction-override "$REDUCTION_OVERRIDES"); fi
if [[ -n "${VISION_TOWER_PATH:-}" ]]; then MODEL_ARGS+=(--vision-tower-path "$VISION_TOWER_PATH"); fi

# model_vqa_loader's flags besides the question, image and answer files.
LOADER_ARGS=(--temperature 0 --conv-mode "$CONV_MODE")
if [[ -n "${MAX_NEW_TOKENS:-}" ]]; then LOADER_ARGS+=(--max_new_tokens "$MAX_NEW_TOKENS"); fi

gpu_list="${CUDA_VISIBLE_DEVICES:-0}"
IFS=',' read -ra GPULIST <<< "$gpu_list"
CHUNKS=${#GPULIST[@]}

# run_loader_chunks ANSWERS_DIR FLAGS...: one model_vqa_loader per GPU (chunk i pinned to GPU i, answers in
# ANSWERS_DIR/{CHUNKS}_{i}.jsonl), then ANSWERS_DIR/merge.jsonl = the chunk files in order, as upstream merges them.
run_loader_chunks() {
    local answers_dir="$1"
    shift
    local idx pids=() failed=0
    mkdir -p "$answers_dir"
    for ((idx = 0; idx < CHUNKS; idx++)); do
        CUDA_VISIBLE_DEVICES="${GPULIST[$idx]}" "$PYTHON" -m llava.eval.model_vqa_loader \
            "${MODEL_ARGS[@]}" \
            --answers-file "$answers_dir/${CHUNKS}_${idx}.jsonl" \
            --num-chunks "$CHUNKS" \
            --chunk-idx "$idx" \
            "$@" &
        pids+=("$!")
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if ((failed)); then echo "error: a chunk failed (see above); rerun to resume" >&2; exit 1; fi
    : > "$answers_dir/merge.jsonl"
    for ((idx = 0; idx < CHUNKS; idx++)); do
        cat "$answers_dir/${CHUNKS}_${idx}.jsonl" >> "$answers_dir/merge.jsonl"
    done
}
