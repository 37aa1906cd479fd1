#!/usr/bin/env bash
# Token-scoring strategies (paper Tables 4 and 9): which query rows score the vision tokens and whether their
# attention is weighted by the value norms, in the progressive setup the paper uses for this study (576 -> 64 ->
# 8 -> 1 at evenly spaced layers 8, 16, 24; tiny: 64 -> 16 -> 4 -> 1 at layers 2, 4, 6), PT+FT, differentiable
# top-k. Rows: plain LLaVA (the 100% baseline), last token (1 round), last token (n rounds, the default),
# last token (n rounds, L2), all text tokens, all text tokens (L2).
#
#   bash scripts/ablations/scoring.sh                 # paper scale, 8 GPUs
#   RECIPE=tiny bash scripts/ablations/scoring.sh     # demo scale on CPU
#   DRY_RUN=1 bash scripts/ablations/scoring.sh       # print the commands
# Environment: see scripts/ablations/_sweep.sh (RECIPE, SEEDS, BENCHES, ONLY, DRY_RUN, CKPT_ROOT, ...).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ablations/_sweep.sh
setting baseline pt+ft off ""
setting last-1round pt+ft off "$PROGRESSIVE score_query=last_1round"
setting last-nround pt+ft off "$PROGRESSIVE score_query=last_nround"
setting last-nround-l2 pt+ft off "$PROGRESSIVE score_query=last_nround score_weight=l2"
setting all-text pt+ft off "$PROGRESSIVE score_query=all_text"
setting all-text-l2 pt+ft off "$PROGRESSIVE score_query=all_text score_weight=l2"
sweep scoring baseline
