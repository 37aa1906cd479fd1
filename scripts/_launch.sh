# Shared launcher for the training scripts (sourced, not run). Runs `python -m llava.train.train` with ARGS.
# torchrun starts one process per GPU, or NPROC CPU ranks over gloo when no GPU is present. torchrun (not the
# deepspeed launcher) is used everywhere: it leaves no shared-memory files behind on CPU machines.
# PRINT_ARGS_ONLY=1 prints the training flags one per line and exits (CI parses every script's flags).
if [[ "${PRINT_ARGS_ONLY:-0}" == "1" ]]; then
    printf '%s\n' "${ARGS[@]}"
    exit 0
fi
: "${PYTHON:=python}"
: "${MASTER_PORT:=29517}"
if [[ -z "${NPROC:-}" ]]; then
    NPROC=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 2)")
fi
export TOKENIZERS_PARALLELISM=false
exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" --master_port "$MASTER_PORT" \
    -m llava.train.train "${ARGS[@]}" "$@"
