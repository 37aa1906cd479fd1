#!/usr/bin/env bash
# Equal-depth window sweep (paper Fig. 7 right, Table 7): a window of constant length [inject, exit) slides over
# the depth (8-24, 9-25, 10-26; tiny: 1-6, 2-7, 3-8), no pruning, PT+FT. Plus plain LLaVA as the baseline.
#
#   bash scripts/ablations/window.sh                  # RECIPE=tiny for the demo scale, DRY_RUN=1 to print
# Environment: see scripts/ablations/_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ablations/_sweep.sh
if [[ "$RECIPE" == "tiny" ]]; then WINDOWS="1:6 2:7 3:8"; else WINDOWS="8:24 9:25 10:26"; fi
setting baseline pt+ft off ""
for w in $WINDOWS; do
    setting "window-${w/:/-}" pt+ft off "inject_layer=${w%:*} exit_layer=${w#*:}"
done
sweep window baseline
