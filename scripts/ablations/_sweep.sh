# Shared driver of the ablation studies (sourced by scripts/ablations/<study>.sh, not run on its own).
#
# A study declares its settings with `setting NAME STAGES PRESET "OVERRIDES"` and calls `sweep`. Per setting and
# seed it trains (stage 1 then stage 2 for STAGES=pt+ft; stage 2 only for ft, from one projector pretrained with
# schedule off and shared by every ft setting), evaluates every benchmark of BENCHES, and finally collects the
# results with llava.eval.report into the paper's table layout (reports/ablations/<study>.{md,csv,png}).
# Everything goes through the real scripts (scripts/pretrain.sh, scripts/finetune.sh, scripts/eval/<bench>.sh).
#
# A rerun continues: a setting whose final checkpoint exists is not retrained, one with checkpoints resumes from
# the newest, and the eval scripts reuse answers of the very same run (and only those).
#
# Environment (all optional):
#   RECIPE        paper (default: Vicuna-7B, 8 GPUs) | tiny (the demo model and data on CPU)
#   SEEDS         training seeds, space-separated [paper: 42; tiny: "1 2"]
#   BENCHES       benchmarks to evaluate [paper: mme mmbench gqa vqav2 vizwiz textvqa mmstar; tiny: gqa]
#   ONLY          comma-separated setting names to run (default: all of the study's settings)
#   CKPT_ROOT     [./checkpoints/ablations]    REPORT_DIR [./reports/ablations]
#   DATA_ROOT     eval data root [paper: ./playground/data/eval; tiny: ./playground/demo/data/eval]
#   RESULTS_ROOT  score JSONs [$DATA_ROOT/results/ablations]
#   DRY_RUN       1 prints every command (one per line) instead of running it; each line carries RECIPE,
#                 DATA_ROOT and the pass-through settings you set (PASS_THROUGH below), so that a line pasted into
#                 a fresh shell runs the same thing
#
# Checked before anything runs (exit 2 with a message): RECIPE, DRY_RUN, every name in ONLY must be a setting of the
# study, every benchmark in BENCHES must have scripts/eval/<bench>.sh, every seed in SEEDS a whole number.
#   ...and everything scripts/pretrain.sh, finetune.sh and eval/*.sh read (NPROC, BATCH_PER_DEVICE, MODEL_BASE,
#   VISION_TOWER, DATA_PATH, IMAGE_FOLDER, CHUNKS, ...), passed through unchanged.

: "${RECIPE:=paper}" "${DRY_RUN:=0}" "${ONLY:=}" "${CKPT_ROOT:=./checkpoints/ablations}" "${REPORT_DIR:=./reports/ablations}"
case "$RECIPE" in
    paper)
        : "${SEEDS:=42}" "${BENCHES:=mme mmbench gqa vqav2 vizwiz textvqa mmstar}" "${DATA_ROOT:=./playground/data/eval}" ;;
    tiny)
        : "${SEEDS:=1 2}" "${BENCHES:=gqa}" "${DATA_ROOT:=./playground/demo/data/eval}" ;;
    *) echo "RECIPE must be 'paper' or 'tiny', got '$RECIPE'" >&2; exit 2 ;;
esac
: "${RESULTS_ROOT:=$DATA_ROOT/results/ablations}"
export RECIPE DATA_ROOT
# The paper's progressive setup of its scoring and top-k studies: evenly spaced cuts, nothing injected late or
# exited (576 -> 64 -> 8 -> 1 after layers 8, 16, 24; the 8-layer demo model: 64 -> 16 -> 4 -> 1 after 2, 4, 6).
if [[ "$RECIPE" == "tiny" ]]; then
    PROGRESSIVE="inject_layer=1 prune_layers=2,4,6 keep_counts=16,4,1 exit_layer=-1"
else
    PROGRESSIVE="inject_layer=1 prune_layers=8,16,24 keep_counts=64,8,1 exit_layer=-1"
fi
if [[ "$DRY_RUN" != "0" && "$DRY_RUN" != "1" ]]; then echo "DRY_RUN must be 0 or 1, got '$DRY_RUN'" >&2; exit 2; fi

SETTINGS=()
# Settings of scripts/pretrain.sh, finetune.sh and eval/*.sh that a sweep passes through from the caller.
PASS_THROUGH=(NPROC NNODES NODE_RANK MASTER_ADDR MASTER_PORT BATCH_PER_DEVICE GRAD_ACCUM EPOCHS MAX_STEPS SAVE_STEPS LR
              MODEL_BASE VISION_TOWER DATA_PATH IMAGE_FOLDER MODEL_MAX_LENGTH PRECISION GRADIENT_CHECKPOINTING WORKERS
              ON_BAD_SAMPLE REPORT_TO DS_CONFIG LORA OVERWRITE CHUNKS CUDA_VISIBLE_DEVICES BATCH_SIZE MAX_NEW_TOKENS
              LIMIT VISION_TOWER_PATH ON_MISMATCH PYTHON)

# setting NAME STAGES PRESET "OVERRIDES": STAGES is pt+ft, ft, or twig:BASE (a TwigVLM twig trained on setting BASE's
# checkpoint, scripts/train_twig.sh, PRESET its evaluation schedule; evaluated with SPECULATIVE=1); PRESET a
# reduction preset; OVERRIDES single fields.
setting() {
    if [[ $# -ne 4 ]]; then echo "setting needs NAME STAGES PRESET OVERRIDES, got: $*" >&2; exit 2; fi
    case "$2" in pt+ft|ft|twig:?*) ;; *) echo "setting $1: STAGES must be pt+ft, ft or twig:BASE, got '$2'" >&2; exit 2 ;; esac
    SETTINGS+=("$1|$2|$3|$4")
}

# run ENV=VALUE... -- COMMAND...: runs (or prints, with DRY_RUN=1) a command with extra environment.
run() {
    local envs=()
    while [[ "$1" != "--" ]]; do envs+=("$1"); shift; done
    shift
    # Every command gets RECIPE and DATA_ROOT (exported above) and the pass-through settings the caller set; the
    # printed line names them all, so that it runs the same in a fresh shell. The command's own settings come last
    # (for `env`, the last assignment of a name wins).
    local name passed=("RECIPE=$RECIPE" "DATA_ROOT=$DATA_ROOT")
    for name in "${PASS_THROUGH[@]}"; do
        if [[ -n "${!name+set}" ]]; then passed+=("$name=${!name}"); fi
    done
    envs=("${passed[@]}" "${envs[@]}")
    if [[ "$DRY_RUN" == "1" ]]; then
        printf '%q ' env "${envs[@]}" "$@"
        printf '\n'
    else
        env "${envs[@]}" "$@"
    fi
}

# The newest checkpoint-N of a folder, or nothing.
_latest_checkpoint() {
    local dir="$1" best="" n max=-1 path
    for path in "$dir"/checkpoint-*; do
        [[ -d "$path" ]] || continue
        n="${path##*-}"
        [[ "$n" =~ ^[0-9]+$ ]] && ((n > max)) && { max=$n; best=$path; }
    done
    printf '%s' "$best"
}

# train STAGE OUT PRESET OVERRIDES SEED [ENV...]: trains unless OUT holds a finished model; resumes from a checkpoint.
_train() {
    local stage="$1" out="$2" preset="$3" overrides="$4" seed="$5"
    shift 5
    local done_marker="$out/config.json" extra=()
    [[ "$stage" == "pretrain" ]] && done_marker="$out/mm_projector.bin"
    if [[ "$DRY_RUN" != "1" && -f "$done_marker" && -f "$out/trainer_state.json" ]]; then
        echo "== $out is trained; skipping" >&2
        return 0
    fi
    local resume
    resume=$(_latest_checkpoint "$out")
    if [[ -n "$resume" ]]; then extra=(--resume_from_checkpoint "$resume"); fi
    run REDUCTION="$preset" REDUCTION_OVERRIDES="$overrides" OUTPUT_DIR="$out" "$@" -- \
        bash scripts/"$stage".sh --seed "$seed" "${extra[@]}"
}

_selected() {
    [[ -z "$ONLY" ]] && return 0
    [[ ",$ONLY," == *",$1,"* ]]
}

# _check_selection STUDY: refuses, before any training, ONLY names that match no setting, BENCHES without an eval
# script, and seeds that are not whole numbers.
_check_selection() {
    local study="$1" entry name wanted bench seed known=()
    for entry in "${SETTINGS[@]}"; do known+=("${entry%%|*}"); done
    if [[ -n "$ONLY" ]]; then
        IFS=',' read -ra wanted <<< "$ONLY"
        for name in "${wanted[@]}"; do
            if [[ " ${known[*]} " != *" $name "* ]]; then
                echo "ONLY: '$name' is no setting of the $study study; its settings: ${known[*]}" >&2
                exit 2
            fi
        done
    fi
    for bench in $BENCHES; do
        if [[ ! -f "scripts/eval/$bench.sh" || "$bench" == _* ]]; then
            echo "BENCHES: no benchmark '$bench' (scripts/eval/$bench.sh); known: $(cd scripts/eval && ls [!_]*.sh | sed 's/\.sh$//' | tr '\n' ' ')" >&2
            exit 2
        fi
    done
    for seed in $SEEDS; do
        if [[ ! "$seed" =~ ^[0-9]+$ ]]; then
            echo "SEEDS: '$seed' is not a whole number (SEEDS is space-separated, e.g. \"1 2 3\")" >&2
            exit 2
        fi
    done
}

# sweep STUDY BASELINE: trains and evaluates every selected setting, then writes the report.
sweep() {
    local study="$1" baseline="$2" entry name stages preset overrides seed first_seed out projector label bench
    local shared="$CKPT_ROOT/shared-off-pretrain"
    _check_selection "$study"
    read -r first_seed _ <<< "$SEEDS"
    # Seed-major order: every setting gets a first result early, and a change of machine load hits all settings.
    for seed in $SEEDS; do
        for entry in "${SETTINGS[@]}"; do
            IFS='|' read -r name stages preset overrides <<< "$entry"
            _selected "$name" || continue
            out="$CKPT_ROOT/$study/$name-s$seed"
            local eval_env=()
            if [[ "$stages" == twig:* ]]; then
                # TwigVLM: a twig trained alone (scripts/train_twig.sh) on setting BASE's checkpoint of this seed,
                # evaluated with self-speculative decoding (its greedy answers are the plain ones)
                local base_out="$CKPT_ROOT/$study/${stages#twig:}-s$seed"
                if [[ "$DRY_RUN" != "1" && ! -f "$base_out/config.json" ]]; then
                    echo "setting $name trains a twig on $base_out, which is not trained: include its base setting" \
                        "(ONLY=${stages#twig:},$name)" >&2
                    exit 2
                fi
                _train train_twig "$out" "$preset" "$overrides" "$seed" MODEL_PATH="$base_out"
                eval_env=(SPECULATIVE=1)
            elif [[ "$stages" == "pt+ft" ]]; then
                _train pretrain "$out-pretrain" "$preset" "$overrides" "$seed"
                projector="$out-pretrain/mm_projector.bin"
            else
                _train pretrain "$shared-s$seed" off "" "$seed"
                projector="$shared-s$seed/mm_projector.bin"
            fi
            if [[ "$stages" != twig:* ]]; then
                _train finetune "$out" "$preset" "$overrides" "$seed" PROJECTOR="$projector"
            fi
            label="$name-s$seed"
            for bench in $BENCHES; do
                run MODEL_PATH="$out" CKPT="$study-$label" LABEL="$label" RESULTS_DIR="$RESULTS_ROOT/$study" \
                    REDUCTION= REDUCTION_OVERRIDES= MODEL_BASE= "${eval_env[@]}" -- bash scripts/eval/"$bench".sh
            done
        done
    done
    local columns
    columns=$(tr ' ' ',' <<< "$BENCHES")
    run -- "${PYTHON:-python}" -m llava.eval.report --results-dir "$RESULTS_ROOT/$study" \
        --baseline "$baseline-s$first_seed" --benches "$columns" --output-dir "$REPORT_DIR" --name "$study"
}
