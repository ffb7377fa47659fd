#!/usr/bin/env bash
# Hugging Face Optimum in a folder of its own, for the producer corpus (tests/producers_corpus.py).
#   bash scripts/optimum-env.sh [DEST]       DEST: default .optimum-env (or $TRTRUN_OPTIMUM_ENV)
# Optimum's ONNX exporter (optimum-onnx) pins transformers < 4.58; trtrun's environment has transformers 5. So
# the pinned packages of scripts/optimum-env.txt go into DEST without their dependencies, and the tests run
# Optimum in a subprocess with DEST first on PYTHONPATH: transformers, tokenizers and huggingface_hub come
# from DEST, torch, onnx and onnxruntime from trtrun's environment. A DEST already holding these pins is kept.
# tqdm is pinned too: huggingface_hub 0.x imports it, and the huggingface_hub 1.x and later that trtrun's
# environment has no longer brings it.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-${TRTRUN_OPTIMUM_ENV:-.optimum-env}}
py=${PYTHON:-python3}
pins=scripts/optimum-env.txt
if [ -f "$dest/.trtrun-pins" ] && cmp -s "$pins" "$dest/.trtrun-pins"; then
  echo "optimum-env: $dest has $(tr '\n' ' ' < "$pins")"
  exit 0
fi
t=$SECONDS
echo "optimum-env: installing $(tr '\n' ' ' < "$pins")into $dest ..."
rm -rf "$dest"
"$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dest" -r "$pins"
# the check the tests rely on: Optimum's exporter imports with this environment first on the path
PYTHONPATH="$dest" "$py" -c 'import sys; sys.modules["kernels"] = None
from optimum.exporters.onnx import main_export
from optimum.onnxruntime import ORTOptimizer'
cp "$pins" "$dest/.trtrun-pins"
echo "optimum-env:   done in $((SECONDS - t)) s"
