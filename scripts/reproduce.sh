#!/usr/bin/env bash
# The paper's comparisons at CPU scale (about three hours on 2 cores): the demo's tiny LLaVA and digit-grid data,
# every setting finetuned from one plain-LLaVA projector per seed (FT only, 1 epoch) and evaluated on the demo's
# GQA, for 3 seeds, then the analysis tools on a trained checkpoint, and docs/Reproduction.md written from the
# measurements (tables, training time next to the FLOPs ratio, figures, and each comparison's verdict from paired
# statistics: a bootstrap interval of the accuracy difference over questions and seeds, McNemar per seed).
#
# Settings (the demo model has 8 layers and 64 vision tokens; HiDrop's demo schedule `tiny` keeps 26 on average):
#   off                plain LLaVA
#   hidrop             `tiny`: inject 2, prune after 3 and 5 to 32 and 16, exit 7; differentiable top-k, persistent
#                      positions, last-token (n rounds) scoring with the next layer
#   hidrop-hard        the same with hard top-k
#   fastv-26           FastV-shaped at the same average: one cut after layer 2 to 13 tokens (25.75), scored by the
#                      layer's own attention, hard top-k
#   pdrop-26           PDrop-shaped: cuts after 2, 4, 6 to 26, 10, 4 (one ratio; 26.0), each scored with the next
#                      stage's first layer as PDrop does, hard top-k, compacted positions
#   voco-26            VoCo-LLaMA at the same tokens-visible budget: 26 <voco> tokens after the image (code
#                      visibility, trained like every other setting here); the text sees 26 tokens, the layers
#                      process all 64 + 26 while compressing
#   twigvlm-26         TwigVLM at the same average: a one-layer twig after layer 2 trained alone on `off`'s checkpoint
#                      of the same seed (scripts/train_twig.sh, RECIPE=tiny), then `twigvlm-tiny`: one cut after layer
#                      2 to 20 tokens ranked by the twig, every vision token gone before layer 7 (26.0), hard top-k,
#                      persistent positions; evaluated with self-speculative decoding (SPECULATIVE=1)
#   hidrop-compacted / hidrop-group        the other two position schemes
#   hidrop-last1round / hidrop-alltext / hidrop-alltext-l2   the other scoring strategies
#
#   make reproduce                       # or: bash scripts/reproduce.sh
#   SEEDS="1 2 3 4" EPOCHS=2 bash scripts/reproduce.sh
#   DRY_RUN=1 bash scripts/reproduce.sh  # print the commands
# Environment: SEEDS ["1 2 3"; at least 3 for the seed level of the statistics], EPOCHS [1], BATCH_SIZE (eval) [16], ONLY, CKPT_ROOT [./checkpoints/reproduce],
# DOC [docs/Reproduction.md], FIGURES [docs/figures/reproduction], PYTHON [python]; see scripts/ablations/_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export RECIPE=tiny HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DS_ACCELERATOR=cpu
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/hidrop_torch_ext}"
: "${PYTHON:=python}" "${EPOCHS:=1}" "${BATCH_SIZE:=16}" "${CKPT_ROOT:=./checkpoints/reproduce}"
: "${DOC:=docs/Reproduction.md}" "${FIGURES:=docs/figures/reproduction}" "${DEMO_DIR:=./playground/demo}"
: "${REPORT_DIR:=./reports/reproduce}"
: "${SEEDS:=1 2 3}"
export PYTHON EPOCHS BATCH_SIZE CKPT_ROOT REPORT_DIR SEEDS
source scripts/ablations/_sweep.sh
start=$(date +%s)

if [[ "$DRY_RUN" == "1" ]]; then
    run -- "$PYTHON" -m llava.demo.build_assets --out "$DEMO_DIR"
else
    "$PYTHON" -m llava.demo.build_assets --out "$DEMO_DIR"
fi

setting off ft off ""
setting hidrop ft tiny ""
setting hidrop-hard ft tiny "topk=hard"
setting fastv-26 ft off "prune_layers=2 keep_counts=13 topk=hard score_layer=same"
setting pdrop-26 ft off "prune_layers=2,4,6 keep_counts=26,10,4 topk=hard position_scheme=compacted"
setting voco-26 ft voco-2 "compress_tokens=26"
setting hidrop-compacted ft tiny "position_scheme=compacted"
setting hidrop-group ft tiny "position_scheme=group"
setting hidrop-last1round ft tiny "score_query=last_1round"
setting hidrop-alltext ft tiny "score_query=all_text"
setting hidrop-alltext-l2 ft tiny "score_query=all_text score_weight=l2"
setting twigvlm-26 twig:off twigvlm-tiny ""
sweep reproduce off

# The analysis tools on a trained checkpoint (HiDrop, first seed), on the demo's GQA questions; skipped, saying
# so, when ONLY leaves out the hidrop setting.
read -r first_seed _ <<< "$SEEDS"
analysis="$REPORT_DIR/analysis"
if _selected hidrop; then
    ckpt="$CKPT_ROOT/reproduce/hidrop-s$first_seed"
    gqa="$DATA_ROOT/gqa"
    common=(--model-path "$ckpt" --bench gqa --question-file "$gqa/llava_gqa_testdev_balanced.jsonl"
            --image-folder "$gqa/data/images" --output-dir "$analysis")
    run -- "$PYTHON" -m llava.analysis.layer_dynamics "${common[@]}" --limit 64
    run -- "$PYTHON" -m llava.analysis.early_exit "${common[@]}" --limit 200 \
        --annotation-file "$gqa/data/testdev_balanced_questions.json" --ratios 0.5,0.75,1.0
    run -- "$PYTHON" -m llava.analysis.ilvas "${common[@]}" --limit 64 --ks 5,10,20,50 --ns 1,2
    run -- "$PYTHON" -m llava.analysis.kept_tokens "${common[@]}" --index 0
else
    echo "ONLY leaves out the hidrop setting: the analysis tools (which read its checkpoint) are skipped" >&2
fi

run -- "$PYTHON" -m llava.demo.reproduction --checkpoints "$CKPT_ROOT/reproduce" \
    --results "$RESULTS_ROOT/reproduce" --analysis "$analysis" --baseline off --seeds "$SEEDS" \
    --wall-seconds "$(( $(date +%s) - start ))" --figures "$FIGURES" --output "$DOC"
echo "reproduction finished in $(( $(date +%s) - start )) s; see $DOC" >&2
