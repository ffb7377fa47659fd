#!/usr/bin/env bash
# Everything that must pass on the GPU machine before a change to native/ or the GPU path lands:
# build, the runtime tests (tests/gpu/device_run.sh: tests + the foreign-architecture build), the plugin
# kernel tests, the bench GPU smoke test, then compute-sanitizer memcheck on a subset. Logs under $OUT.
# Carry .whl (onnx-graphsurgeon wheel) and .gpudata (MiniLM, texts) with the call.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
bash tests/gpu/device_run.sh foreign tests 2>&1 | tee "$OUT/validate.log"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
[ -d .gpudata ] && export TRTRUN_DATA=$PWD/.gpudata
echo "== plugin kernel tests + bench GPU smoke" | tee -a "$OUT/validate.log"
timeout ${PLUGIN_TIMEOUT:-150} python3 -m pytest -p no:cacheprovider -q -rs -m gpu tests/gpu/test_plugins.py \
  tests/bench/test_bench_gpu.py >"$OUT/plugins.log" 2>&1
echo "plugins+bench exit code $?: $(grep -E '^[=]+ .*(passed|failed)' "$OUT/plugins.log" | tail -1)" | tee -a "$OUT/validate.log"
grep -E "^(FAILED|ERROR)" "$OUT/plugins.log" | head -10 | tee -a "$OUT/validate.log"
SAN_TIMEOUT=${SAN_TIMEOUT:-120} bash tests/gpu/device_run.sh sanitizer 2>&1 | grep -v "^== +" | tail -12 | tee -a "$OUT/validate.log"
