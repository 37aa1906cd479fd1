#!/usr/bin/env bash
# Filter-layer sweep (paper Fig. 8, Table 11): the concave-pyramid keep counts of tok64 (215, 10, 5, 1; tiny:
# 32, 16) fixed, the prune layers varied: the ILVAS choice {10,14,16,18}, the control {12,15,18,21}, the second
# slot swept over 12-15 and the middle pair over {13,14} x {18,19}. Inject 9, exit 25 (tiny: 2 and 7), PT+FT.
#
#   bash scripts/ablations/filter_layers.sh           # RECIPE=tiny for the demo scale, DRY_RUN=1 to print
# Environment: see scripts/ablations/_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ablations/_sweep.sh
if [[ "$RECIPE" == "tiny" ]]; then
    BASE=tiny
    SETS="3,5 2,5 3,4 4,6 3,6 2,6"
else
    BASE=tok64
    SETS="10,14,16,18 12,15,18,21 10,12,16,18 10,13,16,18 10,15,16,18 10,13,16,19 10,14,16,19"
fi
setting baseline pt+ft off ""
for layers in $SETS; do
    setting "layers-${layers//,/-}" pt+ft "$BASE" "prune_layers=$layers"
done
sweep filter_layers baseline
