#!/usr/bin/env bash
# Where the GPU time of a forward pass goes (docs/performance.md), in one device call (~5-7 min on an H200):
#   1. install trtrun (editable build of the CUDA extension; carried wheels from .whl/),
#   2. tools/cuda/gemm_explore.cpp: cuBLASLt candidates for BERT-base's four GEMM shapes at M = 128..16384
#      (the runtime's choice, top-8 timed, against the best of 64 heuristic results + split-K variants),
#   3. tools/profile_point.py: GPU time by CUDA events at PROFILE_POINTS, then one replay of each of
#      NCU_POINTS under ncu (gpu__time_duration per kernel; clocks and caches left alone).
# Logs in $OUT: profile.log, gemm_explore.txt, ncu_<model>_<point>.csv.
# Environment: PROFILE_MODELS ("bert-base gpt2"), PROFILE_PRECISION (hybrid), PROFILE_POINTS
# ("1x128 8x128 32x128 32x512"), NCU_POINTS ("1x128 32x128"), SKIP_GEMM=1, SKIP_INSTALL=1.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/profile}
mkdir -p "$OUT"
exec > >(tee "$OUT/profile.log") 2>&1
export PYTHONUNBUFFERED=1
t0=$SECONDS
log() { echo "[profile.sh +$((SECONDS - t0))s] $*"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-12}
  python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 2; }
  log "installed"
else
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "${SKIP_GEMM:-0}" != 1 ]; then
  nvcc -O2 -std=c++17 -arch=sm_90 -x cu tools/cuda/gemm_explore.cpp -lcublasLt -o /tmp/gemm_explore \
    && /tmp/gemm_explore ${GEMM_WS_MIB:-32} | tee "$OUT/gemm_explore.txt"
  log "gemm explore done"
fi
for m in ${PROFILE_MODELS:-bert-base gpt2}; do
  pts=""; for p in ${PROFILE_POINTS:-1x128 8x128 32x128 32x512}; do pts="$pts --point $p"; done
  python3 tools/profile_point.py --model "$m" --precision "${PROFILE_PRECISION:-hybrid}" $pts
  for p in ${NCU_POINTS:-1x128 32x128}; do
    ncu --profile-from-start off --clock-control none --cache-control none --metrics gpu__time_duration.sum \
      --csv python3 tools/profile_point.py --model "$m" \
      --precision "${PROFILE_PRECISION:-hybrid}" --point "$p" --iters 20 --ncu > "$OUT/ncu_${m}_${p}.csv" 2>&1
    python3 tools/ncu_shares.py "$OUT/ncu_${m}_${p}.csv" --families
    python3 tools/ncu_shares.py "$OUT/ncu_${m}_${p}.csv"
  done
done
log "done"
