#!/usr/bin/env bash
# Server variants one after another under the same load, on the GPU machine (issue 6 tuning; through the device
# tool): install (carried .whl) and build trtrun, export all-MiniLM-L6-v2 (.gpudata/minilm) and build a hybrid plan,
# then for each variant line read from stdin
#     NAME [ENV=VALUE ...] -- trtrun serve arguments
# start `trtrun serve` with those arguments, load it with bench/loadgen.py (64 clients, 8 client processes,
# 1 Rotten Tomatoes sentence a request, every response checked against its single-request embedding), print the
# loadgen row and, from /metrics, windows, requests a window, engine ms a call and queue ms a request; SIGTERM it.
# Results: $OUT/lg_NAME.json, $OUT/m_NAME.txt. Environment: DUR (12 s, after 4 s of warm-up), CTX (2 contexts).
#   printf '%s\n' "se4 -- --workers 4 --shared-engine" "w4 -- --workers 4" | OUT=$OUT bash scripts/gpu/serve_variants.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/variants}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRTRUN_DATA=$PWD/.gpudata
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site CMAKE_BUILD_PARALLEL_LEVEL=12
python3 -m pip install -q --no-build-isolation --no-deps -e . > /tmp/build.log 2>&1 || { tail -20 /tmp/build.log; exit 2; }
W=$(mktemp -d /tmp/trtrun-variants.XXXXXX)
python3 -m trtrun export .gpudata/minilm -o "$W/model.onnx" -q \
  && python3 -m trtrun build "$W/model.onnx" --hybrid --min 1,1 --opt 32,64 --max 128,256 -o "$W/m.plan" -q || exit 3
echo "CPU: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'); $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
while read -r name rest; do
  [ -z "$name" ] && continue
  envs=(); set -- $rest
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" python3 -m trtrun serve "$W/m.plan" --tokenizer .gpudata/minilm --port 8400 --contexts "${CTX:-2}" \
    --max-inputs 64 --log-level warning "$@" < /dev/null > "$OUT/srv_$name.log" 2>&1 &
  sp=$!
  for _ in $(seq 300); do
    python3 -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:8400/health').status_code!=200)" < /dev/null 2>/dev/null && break
    sleep 0.2
  done
  sleep 2
  python3 bench/loadgen.py --target "$name=http://127.0.0.1:8400" --clients 64 --duration "${DUR:-12}" --warmup 4 --procs 8 \
    --n-texts 500 --out "$OUT/lg_$name.json" < /dev/null 2>&1 | grep -A1 "^ *target" | tail -1
  python3 -c "import httpx; print(httpx.get('http://127.0.0.1:8400/metrics').text)" < /dev/null > "$OUT/m_$name.txt"
  python3 - "$OUT/m_$name.txt" <<'PY'
import sys
m = {}
for ln in open(sys.argv[1]):
    if ln.startswith("trtrun_") and " " in ln and "{" not in ln:
        k, v = ln.rsplit(" ", 1)
        m[k] = float(v)
w = max(1.0, m.get("trtrun_batch_requests_count", 0.0))
print(f"   windows {m.get('trtrun_batch_requests_count', 0):.0f}, req/window {m.get('trtrun_batch_requests_sum', 0) / w:.1f}, "
      f"engine ms/call {1e3 * m.get('trtrun_engine_seconds_sum', 0) / max(1.0, m.get('trtrun_engine_seconds_count', 0)):.2f}, "
      f"queue ms/req {1e3 * m.get('trtrun_queue_time_seconds_sum', 0) / max(1.0, m.get('trtrun_queue_time_seconds_count', 0)):.2f}")
PY
  kill -TERM "$sp"; wait "$sp"; echo "   exit $?"
done
rm -rf "$W"
