#!/usr/bin/env bash
# Position-encoding schemes (paper Tables 5 and 10) under the full shallow-middle-deep schedule (tok64; tiny:
# the demo's `tiny` preset), PT+FT: persistent (default), compacted (PDrop-style renumbering at every prune and
# at exit) and group (disjoint text and vision ranges). Plus plain LLaVA as the 100% baseline.
#
#   bash scripts/ablations/position_encoding.sh       # RECIPE=tiny for the demo scale, DRY_RUN=1 to print
# Environment: see scripts/ablations/_sweep.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/ablations/_sweep.sh
BASE=tok64
[[ "$RECIPE" == "tiny" ]] && BASE=tiny
setting baseline pt+ft off ""
setting persistent pt+ft "$BASE" "position_scheme=persistent"
setting compacted pt+ft "$BASE" "position_scheme=compacted"
setting group pt+ft "$BASE" "position_scheme=group"
sweep position_encoding baseline
