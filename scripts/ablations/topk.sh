#!/usr/bin/env bash
# Hard vs differentiable top-k (paper Tables 3 and 8) in the progressive setup (576 -> 64 -> 8 -> 1 at layers 8,
# 16, 24; tiny: 64 -> 16 -> 4 -> 1 at 2, 4, 6), trained PT+FT (both stages with the schedule) or FT only (stage 2
# with the schedule, from a projector pretrained as plain LLaVA). Plus plain LLaVA as the 100% baseline.
#
#   bash scripts/ablations/topk.sh                    # RECIPE=tiny for the demo scale, DRY_RUN=1 to print
# Environment: see scripts/ablations/_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ablations/_sweep.sh
setting baseline pt+ft off ""
setting hard-ptft pt+ft off "$PROGRESSIVE topk=hard"
setting diff-ptft pt+ft off "$PROGRESSIVE topk=diff"
setting hard-ft ft off "$PROGRESSIVE topk=hard"
setting diff-ft ft off "$PROGRESSIVE topk=diff"
sweep topk baseline
