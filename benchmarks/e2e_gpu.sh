#!/usr/bin/env bash
# `ednerf-bench e2e --mode sd15` on a bare CUDA machine (Python + torch + transformers; nerfstudio, diffusers and
# the rest come as wheels in .whl/, see benchmarks/fetch_wheels.sh). Arguments go to the benchmark; the JSON and
# the commands' logs land in $OUT.
#
#   OUT=/where/results/go NAME=after bash benchmarks/e2e_gpu.sh --edit-variants "no_unet_graph=..."
#
# Another version of the code (e.g. a `git archive` of an earlier commit in .before/) is timed on the same scene
# and model by running its own copy of this script: OUT=... NAME=before bash .before/benchmarks/e2e_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ednerf-e2e-out}"
NAME="${NAME:-e2e}"
mkdir -p "$OUT"
if [ ! -d /tmp/site/nerfstudio ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        || echo "WARNING: wheel install failed"
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 XDG_CACHE_HOME="${XDG_CACHE_HOME:-/tmp/ednerf-cache}"
export NERFSTUDIO_METHOD_CONFIGS="ed-nerf=ednerf_ns.configs:ed_nerf,ed-nerf-edit=ednerf_ns.configs:ed_nerf_edit"
# as a user's install: bytecode compiled once, not on the first import of every module
python3 -m compileall -q /tmp/site "$PWD/ednerf_ns" >/dev/null 2>&1
WORK="${E2E_WORK:-/tmp/e2e-work}"  # shared by invocations: the scene and the model are made once
timeout --signal=INT "${E2E_TIMEOUT:-560}" python3 -m ednerf_ns.bench.cli e2e --mode sd15 --workdir "$WORK" \
    --output "$OUT/$NAME.json" "$@" >"$OUT/$NAME.log" 2>&1
echo "== e2e $NAME exit code $?"
(cd "$WORK" && tar czf "$OUT/$NAME-logs.tgz" ./*.log && rm -f ./*.log) 2>/dev/null
tail -n 5 "$OUT/$NAME.log"
python3 - "$OUT/$NAME.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for key in [k for k in r if k in ("help", "import") or k.startswith(("train", "edit"))]:
    v = r[key]
    print(key, v.get("wall_s", v), v.get("ms_per_step", ""), v.get("phases_s", ""))
PY
