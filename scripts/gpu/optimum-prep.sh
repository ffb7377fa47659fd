#!/usr/bin/env bash
# Prepares here what scripts/gpu/optimum_minilm.sh needs on the GPU machine, in one folder small enough for one
# device call beside the checkout, and prints the call.
#   bash scripts/gpu/optimum-prep.sh        (then the call it prints; docs/runtime.md, "What a GPU run carries")
# Writes .optimum-gpu/ (ignored by git):
#   gpudata.tar.xz     .gpudata/ (tools/gpudata.py: all-MiniLM-L6-v2 with its weights rounded to fp16, Rotten
#                      Tomatoes, Wikipedia), xz-compressed: ~42 MB
#   optimum-env.tar.xz the folder scripts/optimum-env.sh installs (Optimum and its pinned transformers 4): ~16 MB
#   whl/               onnx-graphsurgeon, which that machine lacks
set -euo pipefail
cd "$(dirname "$0")/../.."
LIMIT=$((64 * 1048576))
[ -d .gpudata/minilm ] || python3 tools/gpudata.py
bash scripts/optimum-env.sh .optimum-env >/dev/null
rm -rf .optimum-gpu && mkdir -p .optimum-gpu
tar -C .gpudata -cf - minilm rt_polarity.tsv wiki.txt | xz -6 -T0 > .optimum-gpu/gpudata.tar.xz
tar -cf - .optimum-env | xz -6 -T0 > .optimum-gpu/optimum-env.tar.xz
bash scripts/gpu/fetch-wheels.sh .optimum-gpu/whl onnx-graphsurgeon==0.6.1 >/dev/null
carry=$(du -sb --apparent-size .optimum-gpu | cut -f1)
checkout=$(git archive HEAD | wc -c)
total=$((carry + checkout))
printf 'carry .optimum-gpu: %s bytes + checkout %s = %s (%s 64 MiB)\n' "$carry" "$checkout" "$total" \
  "$( ((total <= LIMIT)) && echo within || echo OVER)"
echo 'call: run(command="bash scripts/gpu/optimum_minilm.sh", carry=[".optimum-gpu"])'
((total <= LIMIT))
