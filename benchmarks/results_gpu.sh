#!/usr/bin/env bash
# docs/results.md's numbers on a bare CUDA machine in one call: `ednerf-bench ablations` (the three claims) runs
# beside the edit suite's held-out half (edit_suite_gpu.sh; arguments go to it). Results land in $OUT.
#
#   OUT=/where/results/go bash benchmarks/results_gpu.sh --half held_out --jobs 14 --variants before default
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ednerf-results-out}"
mkdir -p "$OUT"
(
    sleep 20  # edit_suite_gpu.sh installs the wheels first
    NERFSTUDIO_METHOD_CONFIGS="ed-nerf=ednerf_ns.configs:ed_nerf,ed-nerf-edit=ednerf_ns.configs:ed_nerf_edit" \
    PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/tmp/ednerf-cache \
        timeout --signal=INT "${ABLATIONS_TIMEOUT:-400}" python3 -m ednerf_ns.bench.cli ablations --device cuda \
        --output-dir /tmp/ablations >"$OUT/ablations.log" 2>&1
    echo "== ablations exit code $?" >>"$OUT/ablations.log"
    (cd /tmp/ablations && tar cf "$OUT/ablations.tar" ablations.json ablations.md scene_*/contact_sheet.png 2>/dev/null)
) &
bash benchmarks/edit_suite_gpu.sh "$@"
wait
tail -n 12 "$OUT/ablations.log"
