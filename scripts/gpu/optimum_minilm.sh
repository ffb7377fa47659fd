#!/usr/bin/env bash
# On the GPU machine: all-MiniLM-L6-v2 (weights rounded to fp16 for transport) through Hugging Face Optimum's own
# ONNX files (the plain export and ORTOptimizer's O1-O3) and, beside them, the plain torch.onnx export and
# onnxruntime's optimizer at O2: built hybrid, run by the Embedder on the GPU runtime on real text against
# onnxruntime fp32 on the fp32 original, then every plan timed at 32x128 in one process
# (scripts/producers_minilm.py --backend gpu --time 32x128). Prepared here by scripts/gpu/optimum-prep.sh.
#   run(command="bash scripts/gpu/optimum_minilm.sh", carry=[".optimum-gpu"])
# Writes $OUT/producers.json (scripts/models_matrix.py --sections-only --minilm-gpu renders it) and producers.log.
# Environment: VARIANTS (the list below), TIME_LIMIT (default 400 s for the script's run). OPTIMUM_DRY=1 runs the
# same steps here without a GPU (no build; the reference backend on 16 texts, untimed) to check the script.
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
t0=$SECONDS
dry=${OPTIMUM_DRY:-0}
[ "$dry" = 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
[ -f .optimum-gpu/gpudata.tar.xz ] || { echo "optimum_minilm: .optimum-gpu/ was not carried (scripts/gpu/optimum-prep.sh)"; exit 2; }
data=/tmp/optimum-gpudata
rm -rf "$data" && mkdir -p "$data" && tar -xJf .optimum-gpu/gpudata.tar.xz -C "$data" || exit 2
tar -xJf .optimum-gpu/optimum-env.tar.xz -C . || exit 2
# That machine has no sentence-transformers (nor scikit-learn and scipy, which it imports): without the folder's
# sentence-transformers files Optimum exports MiniLM as a transformers model (token states). 1_Pooling/config.json
# stays, so the Embedder still mean-pools as the model card says.
rm -f "$data"/minilm/{modules.json,config_sentence_transformers.json,sentence_bert_config.json}
if [ "$dry" = 1 ]; then
  how=(--backend reference --rt 8 --wiki 8)
else
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .optimum-gpu/whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-12}
  python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 2; }
  echo "build done +$((SECONDS - t0)) s"
  how=(--backend gpu --time 32x128 --rounds 3)
fi
TRTRUN_DATA=$data TRTRUN_GEMM_TUNE=0 timeout "${TIME_LIMIT:-400}" python3 scripts/producers_minilm.py "${how[@]}" \
  --variants "${VARIANTS:-torchscript,ort-O2,optimum,optimum-O1,optimum-O2,optimum-O3}" \
  --json "$OUT/producers.json" >"$OUT/producers.log" 2>&1
rc=$?
echo "producers_minilm exit code $rc, +$((SECONDS - t0)) s"
grep -vi "warn" "$OUT/producers.log" | tail -20
exit $rc
