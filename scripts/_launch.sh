# Shared launcher for the training scripts (sourced, not run). Runs `python -m llava.train.train` with ARGS.
# torchrun starts one process per GPU, or NPROC CPU ranks over gloo when no GPU is present. torchrun (not the
# deepspeed launcher) is used everywhere: it leaves no shared-memory files behind on CPU machines.
# PRINT_ARGS_ONLY=1 prints the training flags one per line and exits (CI parses every script's flags).
# OVERWRITE=1 starts afresh in an OUTPUT_DIR holding an earlier run's checkpoints or model (they are deleted);
# without it such a run is refused unless it resumes (--resume_from_checkpoint).

# Flags both stages share (LLaVA-1.5: 1 epoch, cosine, warmup 0.03, no weight decay, checkpointing, ...).
# GRADIENT_CHECKPOINTING [True] (train_twig.sh: False, as TwigVLM trains).
ARGS+=(
    --output_dir "$OUTPUT_DIR"
    --num_train_epochs "$EPOCHS"
    --max_steps "$MAX_STEPS"
    --per_device_train_batch_size "$BATCH_PER_DEVICE"
    --per_device_eval_batch_size 4
    --gradient_accumulation_steps "$GRAD_ACCUM"
    --eval_strategy no
    --save_strategy steps
    --save_steps "$SAVE_STEPS"
    --save_total_limit 1
    --learning_rate "$LR"
    --weight_decay 0.
    --warmup_ratio 0.03
    --lr_scheduler_type cosine
    --logging_steps 1
    --model_max_length "$MODEL_MAX_LENGTH"
    --gradient_checkpointing "${GRADIENT_CHECKPOINTING:-True}"
    --dataloader_num_workers "$WORKERS"
    --lazy_preprocess True
    --report_to "$REPORT_TO"
)
case "${OVERWRITE:-0}" in
    1) ARGS+=(--overwrite_output_dir True) ;;
    0) ;;
    *) echo "OVERWRITE must be 0 or 1, got '$OVERWRITE'" >&2; exit 2 ;;
esac
case "$PRECISION" in
    bf16) ARGS+=(--bf16 True --tf32 True) ;;
    fp16) ARGS+=(--fp16 True) ;;
    fp32) ;;
    *) echo "PRECISION must be bf16, fp16 or fp32, got '$PRECISION'" >&2; exit 2 ;;
esac
if [[ "${PRINT_ARGS_ONLY:-0}" == "1" ]]; then
    printf '%s\n' "${ARGS[@]}"
    exit 0
fi
: "${PYTHON:=python}"
# Several machines: run the same script on each with NNODES, its own NODE_RANK, and the MASTER_ADDR/MASTER_PORT
# of node 0 (torchrun's static rendezvous). OUTPUT_DIR must be on a filesystem every node sees.
: "${MASTER_PORT:=29517}" "${MASTER_ADDR:=127.0.0.1}" "${NNODES:=1}" "${NODE_RANK:=0}"
for var in NNODES NODE_RANK MASTER_PORT; do
    if [[ ! "${!var}" =~ ^[0-9]+$ ]]; then echo "$var must be a whole number, got '${!var}'" >&2; exit 2; fi
done
if ((NODE_RANK >= NNODES)); then echo "NODE_RANK=$NODE_RANK must be below NNODES=$NNODES" >&2; exit 2; fi
if [[ -z "${NPROC:-}" ]]; then
    NPROC=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() or 2)")
fi
echo "global batch = BATCH_PER_DEVICE $BATCH_PER_DEVICE x GRAD_ACCUM $GRAD_ACCUM x NPROC $NPROC x NNODES $NNODES" \
    "= $((BATCH_PER_DEVICE * GRAD_ACCUM * NPROC * NNODES))" >&2
export TOKENIZERS_PARALLELISM=false
# exec keeps this shell's pid for torchrun; each rank checks that its parent is still this pid and arms
# SIGKILL-on-parent-death, so killing the launcher (even with SIGKILL) takes the ranks down with it.
export HIDROP_LAUNCHER_PID=$$
# DeepSpeed calls deprecated torch.distributed functions every step; keep the progress bars readable.
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" --nnodes "$NNODES" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m llava.train.train "${ARGS[@]}" "$@"
