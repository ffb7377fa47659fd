#!/usr/bin/env bash
# Where fp8 stands on this card, in one device call (~6-7 min on an H100; docs/precision.md "Measured: speed on an
# H100" reads the results):
#   1. build trtrun._C and run the fp8 GPU tests (tests/gpu/test_runtime_fp8.py, device_run.sh),
#   2. the fp8 sweep beside hybrid and torch.compile (bench/fp8.toml through scripts/gpu/bench.sh),
#   3. BERT-base hybrid and fp8 with both scale kinds at 1x128, 32x128 and 32x512 by CUDA events (tools/profile_point.py):
#      per-channel weight / per-token activation scales (the default, cuBLASLt's fallback on Hopper) and
#      per-tensor weight / static activation scales (cuBLASLt's scalar scales, fused into the GEMM),
#   4. which fp8 GEMM forms cuBLASLt offers here (tools/cuda/fp8_modes.cpp),
#   5. (ncu) where per-tensor static fp8's time goes at 32x128 (one replay under ncu, kernel families):
#      its fp8 GEMMs with the fused fp16 epilogue against hybrid's GEMMs, and its quantize passes, the share that
#      producer-written E4M3 codes would remove.
#
#   run(command="bash scripts/gpu/fp8_probe.sh", carry=[".whl"])
#   run(command="FP8_STEPS=ncu bash scripts/gpu/fp8_probe.sh", carry=[".whl"])      (step 5 alone, ~4 min)
# Logs and results in $OUT (fp8_probe.log; bench/; fp8_modes.txt; ncu_*.csv). Environment: FP8_TEST_TIMEOUT (170),
# FP8_BENCH_BUDGET (200), FP8_STEPS (the steps by name: "tests sweep kinds modes" by default; add or choose "ncu";
# without "tests", the extension is built first all the same).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/fp8-probe}
mkdir -p "$OUT"
exec > >(tee "$OUT/fp8_probe.log") 2>&1
export PYTHONUNBUFFERED=1
t0=$SECONDS
log() { echo "== +$((SECONDS - t0))s $*"; }

steps=" ${FP8_STEPS:-tests sweep kinds modes} "
if [[ $steps == *" tests "* ]]; then
  log "build and fp8 tests"
  TEST_FILES="fp8:${FP8_TEST_TIMEOUT:-170}" PYTEST_ARGS="-n 4" bash tests/gpu/device_run.sh tests
else
  log "build"
  bash tests/gpu/device_run.sh build  # a step name device_run.sh does not run: the build alone
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}  # device_run.sh put the carried wheels there
if [[ $steps == *" sweep "* ]]; then
  log "fp8 sweep"
  BENCH_NO_INSTALL=1 BENCH_CONFIG=bench/fp8.toml BENCH_BUDGET=${FP8_BENCH_BUDGET:-200} OUT=$OUT/bench \
    timeout $(( ${FP8_BENCH_BUDGET:-200} + 30 )) bash scripts/gpu/bench.sh | grep -A6 "p50 ms (GPU"
fi
if [[ $steps == *" kinds "* ]]; then
  log "scale kinds by CUDA events"
  for v in "hybrid" "fp8 --fp8-scales channel-dynamic" "fp8 --fp8-scales tensor-static"; do
    timeout 120 python3 tools/profile_point.py --model bert-base --precision $v --point 1x128 --point 32x128 \
      --point 32x512 --cache /tmp/fp8-probe 2>&1 | grep -E "POINT|rror"
  done
fi
if [[ $steps == *" modes "* ]]; then
  log "cuBLASLt's fp8 forms"
  nvcc -std=c++17 -arch=sm_90 tools/cuda/fp8_modes.cpp -lcublasLt -o /tmp/fp8_modes && /tmp/fp8_modes \
    | tee "$OUT/fp8_modes.txt" | grep -E "version|outer_vec epilogue none|alpha vector"
fi
if [[ $steps == *" ncu "* ]]; then
  for v in "hybrid" "fp8 --fp8-scales tensor-static"; do
    tag=${v##* }  # hybrid, tensor-static
    log "ncu bert-base $v 32x128"
    timeout 200 ncu --profile-from-start off --clock-control none --cache-control none --metrics gpu__time_duration.sum \
      --csv python3 tools/profile_point.py --model bert-base --precision $v --point 32x128 --iters 20 --ncu \
      --cache /tmp/fp8-probe > "$OUT/ncu_bert-base_32x128_$tag.csv" 2>&1
    python3 tools/ncu_shares.py "$OUT/ncu_bert-base_32x128_$tag.csv" --families
  done
fi
log "done"
