#!/usr/bin/env bash
# The paper sweep (bench/paper.toml: BERT-base and GPT-2, 6 batch x 6 seq x 3 precisions + baselines,
# 396 points) on the GPU machine, resumable across 10-minute calls.
#
#   run(command="bash scripts/gpu/bench.sh", carry=[".whl"])      (.whl/: the onnx-graphsurgeon wheel,
#                                                                 cp ../shared/wheels/*.whl .whl/)
# Each call:
#   1. installs trtrun (editable, no build isolation, no deps; onnx-graphsurgeon from a wheel folder),
#   2. continues the sweep in $OUT/paper-<card>/ (<config name>-<card>), seeded from results/paper-<card>/results.jsonl
#      in the repository when an earlier call left one there (copy $OUT/paper-<card> back into results/ between
#      calls: that is how a fresh machine picks up where the last call stopped; a finished set is committed
#      without its results.jsonl, and results.csv keeps every point's numbers),
#   3. stops starting points when BENCH_BUDGET seconds (default 540) since the script began are nearly used,
#      writes results.jsonl/.csv, summary.md and plots/, and prints a short table.
# Keep every call on one kind of card (e.g. kind nvidia-h100-x1): results are kept per card, and a call
# on another card starts that card's own folder rather than mixing timings.
# Estimated cost (H100/H200): install 1-3 min on a fresh machine; per model export + 3 builds 1-2 min
# (cached in out/bench-cache while the machine stays warm); 180 trtrun + eager points at 0.3-3 s each;
# 9 torch.compile points at 10-40 s each (compilation); 9 CPU points at 1-20 s each. About 20-25 min in
# all: three or four calls.
# Environment: BENCH_BUDGET (s), BENCH_CONFIG (default bench/paper.toml), BENCH_ARGS (extra trtrun bench
# options, e.g. "--retry-failed"), WHEELS (a folder of wheels), PYTHON (default python3), BENCH_NO_INSTALL=1,
# BENCH_NAME (a new result folder name instead of resuming the newest one for this config and card).
# On a machine without a GPU the script can be tried with a small config and the reference backend:
#   BENCH_NO_INSTALL=1 BENCH_CONFIG=bench/smoke.toml BENCH_ARGS="--backend reference" OUT=/tmp/o bash scripts/gpu/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
t0=$SECONDS
budget=${BENCH_BUDGET:-540}
config=${BENCH_CONFIG:-bench/paper.toml}
py=${PYTHON:-python3}
out=${OUT:-out/gpu-bench}
mkdir -p "$out"

# ---- 1. install (BENCH_NO_INSTALL=1 skips it: a machine where trtrun is installed already)
reference=0
case " ${BENCH_ARGS:-} " in *" --backend reference "*) reference=1 ;; esac
if [ "${BENCH_NO_INSTALL:-0}" != 1 ] && ! "$py" -c "import onnx_graphsurgeon" 2>/dev/null; then
  whl=""
  for d in "${WHEELS:-}" .whl shared/wheels ../shared/wheels; do
    [ -n "$d" ] && [ -d "$d" ] || continue
    whl=$(ls "$d"/onnx_graphsurgeon-*.whl 2>/dev/null | head -n 1 || true)
    [ -n "$whl" ] && break
  done
  if [ -z "$whl" ]; then
    echo "bench.sh: onnx-graphsurgeon is missing and no wheel was found (carry .whl/ with it)" >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --target /tmp/site "$whl"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "${BENCH_NO_INSTALL:-0}" != 1 ]; then
  "$py" -m pip install -q --no-build-isolation --no-deps -e . > "$out/install.log" 2>&1 \
    || { tail -n 40 "$out/install.log"; echo "bench.sh: install failed" >&2; exit 2; }
fi
if [ "$reference" = 0 ]; then
  "$py" - <<'PY'
import sys
from trtrun.runtime import gpu_available
ok, why = gpu_available()
print(f"bench.sh: GPU runtime: {'ok' if ok else 'NOT usable'}: {why}")
sys.exit(0 if ok else 3)
PY
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
echo "bench.sh: install took $((SECONDS - t0)) s"

# ---- 2. where this card's sweep lives (the reference backend, for trying the script on a CPU: "cpu")
card=""
[ "$reference" = 1 ] || card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
slug=$("$py" -c "import sys; from trtrun.bench.meta import card_slug; print(card_slug(sys.argv[1]))" "$card")
kind=$(basename "$config" .toml)
kind=${kind%.json}
prev=""
[ -d "results/$kind-$slug" ] && prev="results/$kind-$slug/"
# BENCH_NAME: a new sweep under that name (resumed only from results/$BENCH_NAME), e.g. to measure the
# same grid again after a change on the same card
if [ -n "${BENCH_NAME:-}" ] && ! [[ "$BENCH_NAME" =~ ^[A-Za-z0-9._-]+$ ]]; then
  # the device tool returns no folder whose name has other characters (a newline in the name loses the whole set)
  echo "bench.sh: BENCH_NAME must be letters, digits, '.', '_' or '-', got $(printf '%q' "$BENCH_NAME")" >&2
  exit 2
fi
if [ -n "${BENCH_NAME:-}" ]; then prev="results/$BENCH_NAME/"; fi
if [ -n "${BENCH_NAME:-}" ]; then
  name=$BENCH_NAME
elif [ -n "$prev" ] && [ -f "$prev/results.jsonl" ]; then
  name=$(basename "$prev")
else
  name="$kind-$slug"
fi
dest="$out/$name"
mkdir -p "$dest"
if [ -n "$prev" ] && [ -f "$prev/results.jsonl" ] && [ ! -f "$dest/results.jsonl" ]; then
  cp "$prev/results.jsonl" "$dest/results.jsonl"
  echo "bench.sh: resuming $prev ($(grep -c '"type": "point"' "$dest/results.jsonl" || true) points there)"
fi

# ---- 3. the sweep, then the report (the tool writes it even when the deadline stops it)
left=$(( budget - (SECONDS - t0) - 45 ))  # 45 s kept for the report and plots
if [ "$left" -lt 30 ]; then
  echo "bench.sh: only $left s left after the install; run again (the next call finds the build)" >&2
  exit 4
fi
export PYTHONUNBUFFERED=1
rc=0
# shellcheck disable=SC2086
"$py" -m trtrun bench --config "$config" --out "$dest" --resume --cache-dir out/bench-cache \
  --deadline "$left" ${BENCH_ARGS:-} 2> >(tee "$dest/bench.log" >&2) || rc=$?
echo
echo "bench.sh: trtrun bench exit code $rc after $((SECONDS - t0)) s; results in $dest"
"$py" - "$dest" <<'PY'
import json, sys
from pathlib import Path
recs = [json.loads(l) for l in open(Path(sys.argv[1]) / "results.jsonl") if l.strip()]
pts = {}
for r in recs:
    if r["type"] == "point":
        pts[(r["model"], r["engine"], r["batch"], r["seq"], r["cuda_graphs"])] = r["status"]
ok = sum(s == "ok" for s in pts.values())
print(f"bench.sh: {len(pts)} points recorded ({ok} measured, {len(pts) - ok} unavailable or failed)")
PY
echo "bench.sh: copy $dest to results/$name in the repository (then run this again if points are left)"
exit $rc
