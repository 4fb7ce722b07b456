#!/usr/bin/env bash
# The GPU benchmark in one command: `ednerf-bench gpu` at Stable Diffusion 1.5 size, for a bare CUDA machine that
# has Python 3.12, torch and transformers but neither nerfstudio nor diffusers (they come as wheels in .whl/,
# which benchmarks/fetch_wheels.sh downloads).
#
#   OUT=/where/results/go bash benchmarks/run_gpu.sh [more ednerf-bench gpu options]
#
# Writes to $OUT: run_gpu.log (everything printed), bench.json (all numbers, rewritten after every section, so an
# interrupted run keeps what it measured) and bench.md (the tables of docs/benchmarks.md). The whole script stays
# within BUDGET_S seconds (default 500): the benchmark runs under `timeout` with what is left after the install.
# Environment knobs: MODE (sd15 | tiny), BUDGET_S, COMPILE (1 = also time torch.compile), SKIP_INSTALL (1 = use the
# packages already importable, e.g. to check this script on a development machine).
set -uo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
BUDGET_S="${BUDGET_S:-500}"
MODE="${MODE:-sd15}"
COMPILE="${COMPILE:-1}"
OUT="${OUT:-/tmp/ednerf-bench-out}"
mkdir -p "$OUT"

elapsed() { echo $(($(date +%s) - START)); }

run() {
    echo "== ednerf-bench gpu ($MODE), $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu \
        --format=csv 2>/dev/null || echo "nvidia-smi: not available"

    # --- packages: the project is not installed; wheels go to /tmp/site, the repository root is on PYTHONPATH.
    if [ "${SKIP_INSTALL:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
        echo "== installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site ($(elapsed) s)"
        timeout 180 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || echo "WARNING: the wheel install failed (exit $?); running with what is there"
    fi
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
    export XDG_CACHE_HOME="${XDG_CACHE_HOME:-/tmp/ednerf-cache}"

    # --- what imports: every module on its own, so one missing package names itself and the rest still runs.
    echo "== imports ($(elapsed) s)"
    timeout 120 python3 - <<'EOF' || echo "WARNING: the import check did not finish"
import importlib, importlib.metadata, sys, time
print("python", sys.version.split()[0])
for dist in ("torch", "diffusers", "transformers", "huggingface-hub", "nerfstudio", "tyro", "viser", "nerfacc", "gsplat"):
    try:
        print(f"  {dist} {importlib.metadata.version(dist)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"  {dist} NOT INSTALLED")
missing = []
for name in ("torch", "diffusers", "transformers", "nerfstudio", "tyro", "ednerf_ns.models2d.diffusion", "ednerf_ns.configs",
             "ednerf_ns.bench.gpu", "tinycudann"):
    t0 = time.time()
    try:
        importlib.import_module(name)
        print(f"  import {name}: ok ({time.time() - t0:.1f} s)")
    except Exception as exc:
        detail = f"missing module '{exc.name}'" if isinstance(exc, ModuleNotFoundError) else f"{type(exc).__name__}: {exc}"
        print(f"  import {name}: FAILED - {detail}")
        missing.append(name)
import torch
print("  cuda:", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "")
if missing:
    print("MISSING:", ", ".join(missing), "(tinycudann is expected to be missing: the torch hash grid is measured)")
EOF

    # --- the benchmark, under a hard limit: what is left of the budget, minus a margin for the report.
    local left=$((BUDGET_S - $(elapsed) - 20))
    if [ "$left" -lt 120 ]; then left=120; fi
    local extra=()
    if [ "$COMPILE" = 1 ]; then extra+=(--compile); fi
    echo "== benchmark: $left s left ($(elapsed) s used)"
    timeout --signal=INT --kill-after=15 "$left" python3 -m ednerf_ns.bench.gpu --mode "$MODE" \
        --output "$OUT/bench.json" --time-budget-s $((left - 40)) ${extra[@]+"${extra[@]}"} "$@"
    echo "== benchmark exit code $? ($(elapsed) s)"

    nvidia-smi --query-gpu=memory.used,clocks.sm,temperature.gpu --format=csv 2>/dev/null || true
    if [ -f "$OUT/bench.json" ]; then
        python3 benchmarks/to_markdown.py "$OUT/bench.json" >"$OUT/bench.md" && cat "$OUT/bench.md"
    else
        echo "no bench.json was written"
    fi
    echo "== done in $(elapsed) s"
}

run "$@" 2>&1 | tee "$OUT/run_gpu.log"
