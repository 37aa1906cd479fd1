#!/usr/bin/env bash
# The GPU run, in one go, for a freshly lent GPU machine: installs what it needs, then runs the bf16 benchmarks at
# 7B width (hidden 4096, 32 heads, FFN 11008) and the GPU tests, and writes one Markdown table.
#
#   bash benchmarks/gpu_suite.sh                     # results in $OUT (default ./gpu_suite_out)
#
# Steps:
#   1. a CUDA torch (pip's default torch on Linux x86_64 is the CUDA build) and the project into $VENV, unless the
#      current python already imports a CUDA torch; flash-attn where a prebuilt wheel installs (it is optional:
#      without it the flash rows say "not installed").
#   2. as many 7B-width layers as fit (LAYERS, tried 32, 24, 18, 13 on out-of-memory, tok64 scaled to the depth;
#      the table says which).
#   3. training step and prefill, off vs tok64, with sdpa and flash_attention_2 (benchmarks/bench_hidrop_step.py);
#      generation, batch 1 and 8, 128 new tokens (bench_generation.py), and self-speculative against plain
#      decoding (bench_generation.py --speculative, sdpa and flash); ours against transformers' own LLaVA on the
#      same weights, batch 1, 4 and 8 (bench_vs_transformers.py: off must generate transformers' tokens, bf16 here,
#      or that row fails and says where they part); the parallel-decoupling gain with a
#      CLIP-L-shaped tower, forward and training step (bench_parallel_vision.py); the GPU tests (tests/test_gpu.py:
#      the masked reference on the GPU, flash's 2-D mask path against sdpa, cached generation, the side stream).
# Environment: OUT [./gpu_suite_out], VENV [./.venv-gpu], PYTHON [python3], REPS [5], TEXT [160], BATCH [4],
#   LAYERS [32], SKIP_INSTALL [0]
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:=./gpu_suite_out}" "${VENV:=./.venv-gpu}" "${PYTHON:=python3}" "${REPS:=5}" "${TEXT:=160}" "${BATCH:=4}"
: "${LAYERS:=32}" "${SKIP_INSTALL:=0}"
mkdir -p "$OUT"
log="$OUT/gpu_suite.log"
: > "$log"
say() { echo "$*" | tee -a "$log" >&2; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
    say "error: no NVIDIA GPU here (nvidia-smi fails); this suite only runs on a GPU machine"
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"

has_cuda_torch() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }
PY="$PYTHON"
if [[ "$SKIP_INSTALL" != "1" ]] && ! has_cuda_torch "$PY"; then
    say "== installing a CUDA torch and the project into $VENV"
    "$PYTHON" -m venv "$VENV" && PY="$VENV/bin/python"
    "$PY" -m pip install -q --upgrade pip >>"$log" 2>&1
    if ! "$PY" -m pip install -q torch==2.13.0 >>"$log" 2>&1; then
        say "error: cannot install a CUDA torch (no network to PyPI?); set PYTHON to an environment that has one"
        exit 2
    fi
    "$PY" -m pip install -q -e ".[train,dev]" >>"$log" 2>&1 || { say "error: cannot install the project"; exit 2; }
fi
has_cuda_torch "$PY" || { say "error: $PY has no CUDA torch"; exit 2; }
if ! "$PY" -c "import flash_attn" 2>/dev/null; then
    "$PY" -m pip install -q flash-attn --no-build-isolation >>"$log" 2>&1 \
        && say "flash-attn installed" || say "flash-attn: no wheel installs here; its rows are skipped"
fi
FLASH=0
"$PY" -c "import flash_attn" 2>/dev/null && FLASH=1

results="$OUT/results.txt"
: > "$results"
run_bench() {  # run_bench NAME ARGS...: runs a benchmark, trying fewer layers on out-of-memory
    local name="$1" layers="$LAYERS"
    shift
    while :; do
        if "$PY" "benchmarks/$name" --device cuda --dtype bf16 --hidden 4096 --heads 32 --layers "$layers" "$@" \
            > "$OUT/${name%.py}-$layers.out" 2>&1; then
            grep '^RESULT' "$OUT/${name%.py}-$layers.out" | sed "s/^RESULT | /| ${layers}L | /" >> "$results"
            cat "$OUT/${name%.py}-$layers.out" >> "$log"
            return 0
        fi
        # tok64 scaled to fewer layers (benchmarks/timing.py: tok64_for_depth) needs at least 11
        if grep -q "out of memory" "$OUT/${name%.py}-$layers.out" && ((layers * 3 / 4 >= 11)); then
            layers=$((layers * 3 / 4))
            say "$name: out of memory; retrying with $layers layers"
            continue
        fi
        say "$name $*: failed (see $OUT/${name%.py}-$layers.out)"
        return 1
    done
}

say "== training step and prefill (sdpa)"
run_bench bench_hidrop_step.py --attn sdpa --text "$TEXT" --batch "$BATCH" --reps "$REPS" --vocab 32000
if ((FLASH)); then
    say "== training step and prefill (flash_attention_2)"
    run_bench bench_hidrop_step.py --attn flash_attention_2 --text "$TEXT" --batch "$BATCH" --reps "$REPS" --vocab 32000
fi
say "== generation"
run_bench bench_generation.py --text 100 --new 128 --batches 1,8 --reps 3 --vocab 32000
say "== self-speculative decoding (twig agreeing by construction; then a draft kept about 60% of the time)"
run_bench bench_generation.py --speculative --text 100 --new 128 --batches 1,8 --reps 3 --vocab 32000
run_bench bench_generation.py --speculative --draft-disagree 0.15 --text 100 --new 128 --batches 1,8 --reps 3 --vocab 32000
if ((FLASH)); then
    run_bench bench_generation.py --speculative --attn flash_attention_2 --text 100 --new 128 --batches 1,8 --reps 3 \
        --vocab 32000
fi
say "== against transformers' LlavaForConditionalGeneration"
run_bench bench_vs_transformers.py --text 61 --new 32 --batches 1,4,8 --reps "$REPS" --vocab 32000
say "== parallel vision decoupling"
run_bench bench_parallel_vision.py --text "$TEXT" --batch "$BATCH" --reps "$REPS" --vocab 32000
run_bench bench_parallel_vision.py --text "$TEXT" --batch "$BATCH" --reps "$REPS" --vocab 32000 --train
say "== GPU tests"
"$PY" -m pytest -q tests/test_gpu.py > "$OUT/tests.out" 2>&1
tests=$(tail -n 1 "$OUT/tests.out")

{
    echo "GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC'): $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1);"
    echo "$("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'); flash-attn: $( ((FLASH)) && echo installed || echo 'not installed')."
    echo "7B width (hidden 4096, 32 heads, FFN 11008), bf16; the first column is the number of layers that fit."
    echo
    echo "| layers | measurement | off / plain | tok64 / decoupled | ratio | ideal or note |"
    echo "|---|---|---|---|---|---|"
    cat "$results"
    echo
    echo "GPU tests (tests/test_gpu.py): $tests"
} > "$OUT/gpu_suite.md"
cat "$OUT/gpu_suite.md"
