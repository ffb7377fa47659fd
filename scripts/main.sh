#!/usr/bin/env bash
# The main job, on a fresh machine: install trtrun, fetch the real data, export all-MiniLM-L6-v2 (real
# weights) to ONNX, build a hybrid-precision plan, run it on real sentences and paragraphs -- on the GPU
# where the runtime can use one, on the numpy reference backend otherwise -- and print the cosine
# similarity of every sample against onnxruntime fp32 on the original graph (failing below 0.9998).
#   bash scripts/main.sh            (TRTRUN_NO_INSTALL=1 skips the install step; OUT sets the output folder)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/main}
trtrun() { "${PYTHON:-python3}" -m trtrun "$@"; }

[ "${TRTRUN_NO_INSTALL:-0}" = 1 ] || bash scripts/install.sh export
data=${TRTRUN_DATA:-.data}
if [ ! -f "$data/minilm/model.safetensors" ] || [ ! -f "$data/rt_polarity.tsv" ] || [ ! -f "$data/wiki.txt" ]; then
  bash ../shared/data/get-data.sh "$data"
fi
export TRTRUN_DATA=$data
mkdir -p "$out"

trtrun info
trtrun export "$data/minilm" -o "$out/minilm.onnx"
trtrun build "$out/minilm.onnx" --hybrid --max 16,256 -o "$out/minilm.hybrid.plan"
trtrun inspect "$out/minilm.hybrid.plan"
# 16 Rotten Tomatoes sentences and 8 Wikipedia paragraphs (truncated to 256 tokens), padded batches
trtrun run "$out/minilm.hybrid.plan" --data rt -n 16 --compare "$out/minilm.onnx" --min-cosine 0.9998 \
  -o "$out/rt.npy"
trtrun run "$out/minilm.hybrid.plan" --data wiki -n 8 --compare "$out/minilm.onnx" --min-cosine 0.9998
echo "main job done: outputs in $out"
