# Shared end of scripts/v1_5/{pretrain,finetune,finetune_lora,finetune_task,finetune_task_lora}.sh (sourced, not
# run). Those scripts hold upstream LLaVA's v1.5 training flags as upstream wrote them, in ARGS, with the paths and
# sizes as environment variables; this file starts `llava/train/train_mem.py`, our trainer (llava.train.train).
#
#   LAUNCHER         how to start it (default "deepspeed", as upstream; e.g. "torchrun --nproc_per_node 8")
#   REDUCTION        ours: a token-reduction preset to train with (default off: upstream's plain LLaVA-1.5)
#   REDUCTION_OVERRIDES  ours: key=value schedule overrides
#   PRINT_ARGS_ONLY=1    print the training flags one per line and exit (CI parses every script this way)
#
# Our scripts/pretrain.sh and scripts/finetune.sh are the recipe with our defaults (HiDrop, CPU ranks, resume
# guards); these are for command lines written against upstream.

if [[ -n "${REDUCTION:-}" ]]; then ARGS+=(--reduction "$REDUCTION"); fi
if [[ -n "${REDUCTION_OVERRIDES:-}" ]]; then ARGS+=(--reduction_overrides "$REDUCTION_OVERRIDES"); fi
if [[ "${PRINT_ARGS_ONLY:-0}" == "1" ]]; then
    printf '%s\n' "${ARGS[@]}"
    exit 0
fi
cd "$(dirname "${BASH_SOURCE[0]}")/../.."  # upstream's paths are relative to the repository
# shellcheck disable=SC2086  # LAUNCHER is a command with its own arguments
exec ${LAUNCHER:-deepspeed} llava/train/train_mem.py "${ARGS[@]}" "$@"
