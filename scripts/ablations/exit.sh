#!/usr/bin/env bash
# Fixed-entry span sweep (paper Fig. 7 middle, Table 7): injection fixed (9; tiny: 2), the exit layer varies,
# no pruning, PT+FT. exit -1 means vision never leaves. Plus plain LLaVA as the 100% baseline.
#
#   bash scripts/ablations/exit.sh                    # RECIPE=tiny for the demo scale, DRY_RUN=1 to print
# Environment: see scripts/ablations/_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ablations/_sweep.sh
if [[ "$RECIPE" == "tiny" ]]; then INJECT=2; EXITS="5 6 7 8 -1"; else INJECT=9; EXITS="21 23 24 25 26 27 29 -1"; fi
setting baseline pt+ft off ""
for e in $EXITS; do
    setting "exit-${e/-1/none}" pt+ft off "inject_layer=$INJECT exit_layer=$e"
done
sweep exit baseline
