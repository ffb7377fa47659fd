#!/usr/bin/env bash
# Same-run A/B of the GPU runtime of two source trees on the GPU machine: the checkout (built with
# `pip install -e .`) against OLD_TREE (built with CMake into /tmp/ab-old-*), timing the same points with each
# in turn, ROUNDS times alternated, so clock and thermal drift hit both alike. Timing is tools/profile_point.py's
# (CUDA events around graph replays, random ids, random weights: right for speed only).
#   here:   rm -rf .ab/old && mkdir -p .ab/old && git archive REF | tar -x -C .ab/old   (.ab ignored, carried)
#   there:  bash tools/ab_builds.sh .ab/old            (device: carry [".ab", ".whl"]; logs under $OUT)
# Environment: MODELS ("bert-base gpt2"; an entry ending in .plan is timed as that plan file, e.g. a ModernBERT one
# built there with `trtrun export modernbert` and `trtrun build`), POINTS ("1x128 32x128"), ROUNDS (3), ITERS (300),
# PRECISION (hybrid).
set -uo pipefail
cd "$(dirname "$0")/.."
old=$(cd "${1:?usage: tools/ab_builds.sh OLD_TREE}" && pwd)
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-12}
t0=$SECONDS
log() { echo "== +$((SECONDS - t0))s $*"; }

# the wheels the GPU machine lacks (carried .whl/: onnx-graphsurgeon, which the builder imports), as device_run.sh
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
tool=$PWD/tools/profile_point.py
# a build folder per old tree: CMake refuses a folder configured for another source
bld=/tmp/ab-old-$(printf %s "$old" | md5sum | cut -c1-8)
log "build new (pip install -e .) and old (cmake, $old)"
(python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build-new.log" 2>&1) &
pnew=$!
(cmake -S "$old" -B "$bld" -DPython_EXECUTABLE="$(command -v python3)" >"$OUT/build-old.log" 2>&1 \
  && cmake --build "$bld" -j 6 >>"$OUT/build-old.log" 2>&1) &
pold=$!
wait $pnew || { tail -30 "$OUT/build-new.log"; echo "NEW BUILD FAILED"; exit 2; }
wait $pold || { tail -30 "$OUT/build-old.log"; echo "OLD BUILD FAILED"; exit 2; }
so=$(ls "$bld"/_C*.so | head -1) && cp "$so" "$bld/_build_info.json" "$old/trtrun/" || { echo "no _C in $bld"; exit 2; }
log "builds done"

points=()
for p in ${POINTS:-1x128 32x128}; do points+=(--point "$p"); done
for r in $(seq "${ROUNDS:-3}"); do
  for m in ${MODELS:-bert-base gpt2}; do
    for side in old new; do
      dir=$PWD; [ $side = old ] && dir=$old
      # the old tree first on the path: its own trtrun package and _C, not the editable install's; the timing
      # tool is always the checkout's (an old tree may predate it), so both sides are timed by the same code
      what=(--model "$m" --precision "${PRECISION:-hybrid}")
      [[ "$m" == *.plan ]] && what=(--plan "$(realpath "$m")")
      (cd "$dir" && PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" python3 "$tool" "${what[@]}" \
        "${points[@]}" --iters "${ITERS:-300}" --cache "/tmp/ab-cache-$side" 2>&1) \
        | sed "s/^/$side r$r: /" | tee -a "$OUT/ab.log" | grep -E "POINT|Error|error" 
    done
  done
done
log "A/B done"
echo "---- p50 by side and point (ms)"
python3 - "$OUT/ab.log" <<'PY'
import re, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(old|new) r\d+: POINT (\S+) (\S+) (\S+) .*p50 ([\d.]+) ms", line)
    if m:
        rows.setdefault((m[2], m[3], m[4]), {}).setdefault(m[1], []).append(float(m[5]))
for (model, prec, pt), d in sorted(rows.items()):
    o, n = d.get("old", []), d.get("new", [])
    if o and n:
        print(f"{model:9s} {prec:6s} {pt:7s} old {statistics.median(o):.4f}  new {statistics.median(n):.4f}  "
              f"new/old {statistics.median(n) / statistics.median(o):.3f}   (rounds: old {o}, new {n})")
PY
