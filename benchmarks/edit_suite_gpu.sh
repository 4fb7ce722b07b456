#!/usr/bin/env bash
# `ednerf-bench edits` on a bare CUDA machine (Python 3.12 + torch + transformers; nerfstudio, diffusers and the
# rest come as wheels in .whl/, see benchmarks/fetch_wheels.sh). Everything the device tool can bring back lands
# in $OUT: suite.json, suite.md, the contact sheets (sheets.tar) and the workers' logs (logs.tar).
#
#   OUT=/where/results/go bash benchmarks/edit_suite_gpu.sh --half tune --variants default before --jobs 8
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ednerf-edits-out}"
mkdir -p "$OUT"
START=$(date +%s)
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "WARNING: wheel install failed"
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-/tmp/ednerf-cache}"
# the project is not installed there: nerfstudio finds the methods through this variable, not entry points
export NERFSTUDIO_METHOD_CONFIGS="ed-nerf=ednerf_ns.configs:ed_nerf,ed-nerf-edit=ednerf_ns.configs:ed_nerf_edit"
echo "== edit suite, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), installed in $(($(date +%s) - START)) s"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
SUITE_DIR="${SUITE_DIR:-/tmp/suite}"
timeout --signal=INT --kill-after=10 "${SUITE_TIMEOUT:-520}" python3 -m ednerf_ns.bench.edits --output-dir "$SUITE_DIR" --device cuda "$@" >"$OUT/suite_stdout.log" 2>&1
echo "== suite exit code $? after $(($(date +%s) - START)) s"
# a suite cut by its time limit still gets a summary of the pairs that finished
[ -f "$SUITE_DIR/suite.json" ] || python3 -m ednerf_ns.bench.edits --output-dir "$SUITE_DIR" --summarize-only "$@" \
    >>"$OUT/suite_stdout.log" 2>&1
cp "$SUITE_DIR"/suite.json "$SUITE_DIR"/suite.md "$OUT"/ 2>/dev/null
(cd "$SUITE_DIR" && tar cf "$OUT/sheets.tar" */contact_sheet.png */result.json 2>/dev/null)
(cd "$SUITE_DIR" && tail -n 60 worker_*.log >"$OUT/workers_tail.log" 2>/dev/null)
tail -n 5 "$OUT/suite_stdout.log"
cat "$SUITE_DIR/suite.md" 2>/dev/null | head -60
