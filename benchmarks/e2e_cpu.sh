#!/usr/bin/env bash
# `ednerf-bench e2e --mode tiny` for two versions of the code on this CPU, one after the other on the same scene:
# the version in .before/ (e.g. `git archive <commit>`, weights linked in) and this checkout. JSON to $OUT.
#
#   OUT=/tmp/e2e-cpu bash benchmarks/e2e_cpu.sh [more ednerf-bench e2e options]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ednerf-e2e-cpu}"
WORK="${E2E_WORK:-/tmp/e2e-cpu-work}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
for NAME in before after; do
    ROOT="$PWD"; [ "$NAME" = before ] && ROOT="$PWD/.before"
    [ -d "$ROOT/ednerf_ns" ] || { echo "no $ROOT/ednerf_ns: skipping $NAME"; continue; }
    (cd /tmp && PYTHONPATH="$ROOT" python -m ednerf_ns.bench.cli e2e --mode tiny --workdir "$WORK" \
        --output "$OUT/$NAME.json" "$@" >"$OUT/$NAME.log" 2>&1)
    echo "== $NAME exit code $?"
done
