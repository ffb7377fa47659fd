#!/usr/bin/env bash
# Issue 5's reports (`trtrun check`) on the GPU machine, in about 8 minutes:
#   1. all-MiniLM-L6-v2 (real weights) on 2,000 real texts (1,000 Rotten Tomatoes sentences + 1,000 Wikipedia
#      paragraphs, up to 256 tokens) and 2,000 random-id samples of the same lengths; fp16 and hybrid against
#      onnxruntime fp32; overflow headroom; the Rotten Tomatoes sentiment head (fp32 / fp16 / hybrid);
#      budgets --min-cosine 0.9998 --max-nan-rate 0 on hybrid (the paper's claim),
#   2. a GPT-2-shaped model (random weights) on Wikipedia paragraphs: fidelity, headroom, next-token check,
#   3. a BERT-base-shaped model (random weights) on rt + wiki: fidelity and headroom,
#   then summary.md (fp16 vs hybrid, random vs real, downstream tables) over the three.
# Estimated on an H100/H200 with the GPU runtime (not yet measured): install 1-3 min; MiniLM 2-4 min
# (onnxruntime fp32 on 4,000 samples and the RT train split dominates, headroom on the reference backend
# next); GPT-2 and BERT-base 1.5-3 min each (export + two builds, onnxruntime, reference headroom, GPT-2's
# 50257-way logits in numpy). If the budget runs out, the models left are skipped and named in the log: run
# again with CHECK_MODELS="gpt2 bert-base" and merge the archives (summary: python -m trtrun.check.summary).
#
#   run(command="bash scripts/gpu/check.sh", carry=[".whl", ".gpudata"])
#
# Needs: .whl/ with the onnx-graphsurgeon wheel (cp ../shared/wheels/*.whl .whl/) and a data folder
# ($TRTRUN_DATA, else .gpudata/, else .data/) with minilm/, rt_polarity.tsv, wiki.txt and, for GPT-2 on
# real text, gpt2-tokenizer/ (without it GPT-2 runs on random ids only, and says so).
# Writes to $OUT (the device tool brings back at most 8 files): reports.tar.gz (reports/check/<model>/:
# report.json, report.md, cosine_hist.png, nan_by_length.png, headroom.png; unpack it in the repository
# root), summary.md (also inside the archive) and check.log.
# Environment: CHECK_BACKEND (auto|gpu|reference; auto = gpu when trtrun.runtime.gpu_available()),
# CHECK_BUDGET (s, default 480: later models are skipped when too little is left), CHECK_NO_INSTALL=1,
# CHECK_MODELS (default "minilm gpt2 bert-base": a subset, to split the work over two calls),
# PYTHON; CHECK_MINI_N/_LEN/_DS, CHECK_BIG_N/_LEN/_HEAD override the sample counts. Without a usable GPU runtime every model runs on the numpy reference backend with far fewer
# samples (the reports say which backend ran). Try it on a CPU machine with:
#   CHECK_NO_INSTALL=1 CHECK_BACKEND=reference CHECK_BUDGET=3000 OUT=/tmp/o bash scripts/gpu/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
t0=$SECONDS
py=${PYTHON:-python3}
OUT=${OUT:-$PWD/out/check}
budget=${CHECK_BUDGET:-480}
backend=${CHECK_BACKEND:-auto}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee "$OUT/check.log") 2>&1
log() { echo "== +$((SECONDS - t0))s $*"; }

# ---- 1. install (per ../shared/GPU.md: no registry there; onnx-graphsurgeon from a carried wheel)
if [ "${CHECK_NO_INSTALL:-0}" != 1 ]; then
  if ! "$py" -c "import onnx_graphsurgeon" 2>/dev/null; then
    whl=""
    for d in .whl shared/wheels ../shared/wheels; do
      whl=$(ls "$d"/onnx_graphsurgeon-*.whl 2>/dev/null | head -n 1 || true)
      [ -n "$whl" ] && break
    done
    [ -n "$whl" ] || { echo "check.sh: onnx-graphsurgeon is missing and no wheel was found (carry .whl/)"; exit 2; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$whl" || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  log "installing trtrun (builds the CUDA extension)"
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
  if ! "$py" -m pip install -q --no-build-isolation --no-deps -e . > /tmp/trtrun-check-install.log 2>&1; then
    tail -n 30 /tmp/trtrun-check-install.log
    echo "check.sh: install failed"
    exit 2
  fi
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$py" -c "import sklearn; print('scikit-learn', sklearn.__version__)" 2>/dev/null \
  || echo "scikit-learn missing: the sentiment head uses trtrun's numpy Newton solver (same objective)"

# ---- 2. data and backend
if [ -z "${TRTRUN_DATA:-}" ]; then
  for d in .gpudata .data; do
    if [ -f "$d/rt_polarity.tsv" ]; then export TRTRUN_DATA=$PWD/$d; break; fi
  done
fi
echo "data folder: ${TRTRUN_DATA:-none}"
ls "${TRTRUN_DATA:-/nonexistent}" 2>/dev/null || true
if [ "$backend" = auto ]; then
  if "$py" -c "import sys; from trtrun.runtime import gpu_available as g; ok, why = g(); print('GPU runtime:', ok, why); sys.exit(0 if ok else 1)"; then
    backend=gpu
  else
    backend=reference
  fi
fi
log "backend: $backend"
if [ "$backend" = gpu ]; then
  MINI_N=2000; MINI_LEN=256; MINI_DS="--headroom-samples 48"; BIG_N=192; BIG_LEN=128; BIG_HEAD=8
else  # the numpy reference backend: same checks, far fewer samples
  MINI_N=256; MINI_LEN=128; MINI_DS="--downstream-train 2000 --downstream-test 500"; BIG_N=24; BIG_LEN=128; BIG_HEAD=8
fi
# overrides, for trying the script quickly (CHECK_MINI_N=8 CHECK_BIG_N=4 CHECK_MINI_DS="--downstream-test 40 ...")
MINI_N=${CHECK_MINI_N:-$MINI_N}; MINI_LEN=${CHECK_MINI_LEN:-$MINI_LEN}; MINI_DS=${CHECK_MINI_DS:-$MINI_DS}
BIG_N=${CHECK_BIG_N:-$BIG_N}; BIG_LEN=${CHECK_BIG_LEN:-$BIG_LEN}; BIG_HEAD=${CHECK_BIG_HEAD:-$BIG_HEAD}

work=/tmp/trtrun-check
rep=$work/reports/check
rm -rf "$rep"
mkdir -p "$rep"
done_models=()

stage() {  # stage NAME MIN_SECONDS_LEFT ARGS...: one `trtrun check`, skipped when too little time is left
  local name=$1 need=$2
  shift 2
  local left=$((budget - (SECONDS - t0)))
  if [ "$left" -lt "$need" ]; then
    log "$name: skipped ($left s left of the budget, it needs about $need)"
    return 0
  fi
  log "$name: trtrun check $*"
  local rc=0
  timeout --signal=INT --kill-after=20 "$left" "$py" -m trtrun check "$@" --backend "$backend" \
    -o "$rep/$name" --work-dir "$work/work-$name" || rc=$?
  case $rc in
    0) log "$name: done (budgets held)" ;;
    3) log "$name: done, a budget broke (see its report)" ;;
    124|130|137) log "$name: stopped at the time budget (no report)" ;;
    *) log "$name: failed (exit $rc)" ;;
  esac
  [ -f "$rep/$name/report.json" ] && done_models+=("$name=$rep/$name")
  return 0
}

data=${TRTRUN_DATA:-.data}
models=" ${CHECK_MODELS:-minilm gpt2 bert-base} "
if [[ "$models" != *" minilm "* ]]; then
  log "minilm: not asked for (CHECK_MODELS)"
elif [ -f "$data/minilm/config.json" ]; then
  # shellcheck disable=SC2086
  stage minilm 120 "$data/minilm" --data rt,wiki -n "$MINI_N" --max-length "$MINI_LEN" \
    --min-cosine 0.9998 --max-nan-rate 0 --gate hybrid --downstream on $MINI_DS
else
  log "minilm: skipped (no $data/minilm)"
fi
gpt_data=wiki
[ -f "$data/gpt2-tokenizer/merges.txt" ] || { gpt_data=random; log "gpt2: no gpt2-tokenizer/ in $data: random ids only"; }
[[ "$models" == *" gpt2 "* ]] && stage gpt2 90 gpt2 --data "$gpt_data" -n "$BIG_N" --max-length "$BIG_LEN" --headroom-samples "$BIG_HEAD" \
  --min-cosine 0.9998 --max-nan-rate 0 --gate hybrid
[[ "$models" == *" bert-base "* ]] && stage bert-base 90 bert-base --data rt,wiki -n "$BIG_N" --max-length "$BIG_LEN" --headroom-samples "$BIG_HEAD" \
  --min-cosine 0.9998 --max-nan-rate 0 --gate hybrid --downstream off

# ---- 3. summary and the archive the lead commits
if [ ${#done_models[@]} -gt 0 ]; then
  "$py" -m trtrun.check.summary "$rep/summary.md" "${done_models[@]}" && cp "$rep/summary.md" "$OUT/summary.md"
  cat "$rep/summary.md"
fi
rm -rf "$work"/work-*
tar czf "$OUT/reports.tar.gz" -C "$work" reports
log "wrote $OUT/reports.tar.gz ($(du -h "$OUT/reports.tar.gz" | cut -f1)): ${done_models[*]:-no report}"
