#!/usr/bin/env bash
# One pass of the GPU runtime's checks on the GPU machine (../shared/GPU.md): build trtrun._C with
# `pip install -e .`, then the steps named as arguments (default: all, in this order):
#   tests      pytest -m gpu tests/gpu/test_runtime_*.py (reports under $OUT/report)
#   sanitizer  compute-sanitizer memcheck on the hand-made plans (tests/gpu/test_runtime_handmade.py; not the
#              exhaustive GEMM search tests: thousands of cuBLASLt launches are too slow under memcheck)
#   foreign    a second build for sm_80 only (80-real, no PTX), for test_build_for_another_architecture
#   racecheck  (not in the default) compute-sanitizer racecheck on the plugin kernels' tests: the attention
#              kernel in every forced configuration and with query tiles sharing K/V, layernorm, embedding.
#              Shared-memory hazards that memcheck does not see (one was found this way);
#              RACE_TIMEOUT (default 300)
#   build      nothing after the build (a name no step has: scripts that only need trtrun._C built)
# Logs go to $OUT (the device tool's folder) or ./out. Carried along: .whl/ (wheels missing there, e.g.
# onnx-graphsurgeon) and .gpudata/ (data folder: MiniLM, texts; tools/gpudata.py writes it), both ignored by git.
# Environment: TEST_FILES ("name:seconds ..."; the default list takes longer than one 10-minute device call: split it), SAN_TIMEOUT (default 200), PYTEST_ARGS (extra pytest args).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=${*:-foreign tests sanitizer}
t0=$SECONDS
log() { echo "== +$((SECONDS - t0))s $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpudata ] && export TRTRUN_DATA=$PWD/.gpudata

log "build (pip install -e .)"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-12}
if ! python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "BUILD FAILED"
  exit 2
fi
grep -iE "warning|error" "$OUT/build.log" | grep -v "^WARNING: Running pip" | head -20
python3 -c "import trtrun.runtime as r; print('gpu_available:', r.gpu_available())"
log "build done"

fpid=""
if [[ " $steps " == *" foreign "* ]]; then
  # in the background while the tests run; the foreign-architecture test waits for it
  (cmake -S . -B /tmp/foreign -DCMAKE_CUDA_ARCHITECTURES=80-real -DPython_EXECUTABLE="$(command -v python3)" \
     -DTRTRUN_BUILD_INFO=/tmp/foreign/info.json >/tmp/foreign.log 2>&1 \
   && cmake --build /tmp/foreign -j 4 >>/tmp/foreign.log 2>&1) &
  fpid=$!
fi

if [[ " $steps " == *" tests "* ]]; then
  log "tests"
  export TRTRUN_REPORT_DIR=$OUT/report
  export TRTRUN_TEST_CACHE=/tmp/trtrun-test-cache  # models and plans shared by the pytest processes below
  # one pytest process per file (a crash in one loses only that file), each under its own time limit
  for spec in ${TEST_FILES:-basics:30 handmade:450 device:50 errors:50 stress:80 models:240 heads:120 decoders:400 encoders:600 fp8:300}; do
    f=tests/gpu/test_runtime_${spec%%:*}.py
    # -v: one line per test, so a file cut off by its time limit still shows which tests ran and which did not
    timeout "${spec##*:}" python3 -m pytest -p no:cacheprovider -v -rfEs --durations=5 "$f" ${PYTEST_ARGS:-} \
      >>"$OUT/pytest.log" 2>&1
    rc=$?
    echo "$f: exit code $rc, $(grep -E '^[=]+ .*(passed|failed|error|skipped)' "$OUT/pytest.log" | tail -1)"
    [ $rc -ne 0 ] && grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | tail -8
  done
  log "tests done"
fi

if [[ " $steps " == *" sanitizer "* ]]; then
  log "compute-sanitizer memcheck"
  # TRTRUN_GEMM_TUNE=0: cuBLASLt's first proposal, untimed. memcheck is for our kernels and buffers; the default
  # focused search would time ~300 cuBLASLt configurations a shape under the tool (hours).
  TRTRUN_GEMM_TUNE=0 TRTRUN_STRESS_SCALE=0.02 timeout "${SAN_TIMEOUT:-200}" compute-sanitizer --tool memcheck --error-exitcode 3 \
    --print-limit 20 python3 -m pytest -p no:cacheprovider -q -rs tests/gpu/test_runtime_handmade.py \
    tests/gpu/test_runtime_errors.py \
    -k "(not test_handmade_vs_reference or ((plain or x32 or causal-tanh) and (hybrid or fp32))) and not gemm_search_beyond and not gemm_cache" \
    >"$OUT/sanitizer.log" 2>&1
  echo "compute-sanitizer exit code $?"
  tail -8 "$OUT/sanitizer.log"
  log "sanitizer done"
fi
if [[ " $steps " == *" racecheck "* ]]; then
  log "compute-sanitizer racecheck (plugin kernels)"
  # --kernel-name-exclude: PyTorch's cuDNN attention (the tests' same-precision baseline) draws hazards of its own
  # (81 reported in its wgmma/TMA kernels on an H100, none in ours); the report is about our kernels
  timeout "${RACE_TIMEOUT:-300}" compute-sanitizer --tool racecheck --error-exitcode 3 --print-limit 10 \
    --kernel-name-exclude kns=cudnn \
    python3 -m pytest -p no:cacheprovider -q tests/gpu/test_plugins.py \
    -k "every_configuration or share_kv or test_layernorm or test_embedding" >"$OUT/racecheck.log" 2>&1
  echo "racecheck exit code $? (3: hazards; 1: a test failed; 4: pytest usage)"
  grep -E "RACECHECK SUMMARY|passed|failed" "$OUT/racecheck.log" | tail -3
  log "racecheck done"
fi
if [ -n "$fpid" ]; then
  log "foreign-architecture check"
  if wait "$fpid" && TRTRUN_FOREIGN_EXT=$(ls /tmp/foreign/_C*.so 2>/dev/null | head -1) && [ -n "$TRTRUN_FOREIGN_EXT" ]; then
    echo "sm_80 build: $TRTRUN_FOREIGN_EXT"
    TRTRUN_FOREIGN_EXT=$TRTRUN_FOREIGN_EXT TRTRUN_REPORT_DIR=$OUT/report timeout 120 python3 -m pytest \
      -p no:cacheprovider -q -rs tests/gpu/test_runtime_errors.py -k test_build_for_another_architecture 2>&1 \
      | grep -vE "^\s*$" | tail -30
  else
    echo "the sm_80 build failed:"; tail -5 /tmp/foreign.log
  fi
fi
echo "---- reports"
cat "$OUT"/report/*.txt 2>/dev/null | tail -120
