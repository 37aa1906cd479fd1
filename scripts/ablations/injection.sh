#!/usr/bin/env bash
# Late-injection sweep (paper Fig. 7 left, Table 7): the injection layer varies with the exit fixed (25; tiny:
# 7), no pruning, on the base model, PT+FT. Plus plain LLaVA as the 100% baseline.
#
#   bash scripts/ablations/injection.sh               # RECIPE=tiny for the demo scale, DRY_RUN=1 to print
# Environment: see scripts/ablations/_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ablations/_sweep.sh
if [[ "$RECIPE" == "tiny" ]]; then LAYERS="1 2 3 4"; EXIT=7; else LAYERS="1 5 7 8 9 10 11 13"; EXIT=25; fi
setting baseline pt+ft off ""
for l in $LAYERS; do
    setting "inject-$l" pt+ft off "inject_layer=$l exit_layer=$EXIT"
done
sweep injection baseline
