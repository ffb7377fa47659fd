#!/usr/bin/env bash
# Installs trtrun (editable) and everything it needs, on a clean machine like ours or on one that has it all.
#   bash scripts/install.sh [EXTRAS]        EXTRAS: comma list of pyproject extras (default: export,bench,serve,test)
# Installs only what is missing, so it also works offline where the dependencies are present already
# (the GPU machine: see ../shared/GPU.md). Environment: PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-export,bench,serve,test}
py=${PYTHON:-python3}
pipi() { "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }
has() { "$py" -c "import $1" 2>/dev/null; }

# torch first and pinned: pip then takes the CPU wheel on this machine's disk; an unpinned `torch`
# (also one pulled in by transformers or our `export` extra) would download a CUDA build of several GB.
if [[ ",$extras," == *",export,"* ]] && ! has torch; then pipi "torch==2.13.0"; fi
# onnx-graphsurgeon: the wheel in ../shared/wheels where it is there (the GPU machine has no registry)
if ! has onnx_graphsurgeon; then
  whl=$(ls ../shared/wheels/onnx_graphsurgeon-*.whl 2>/dev/null | head -n 1 || true)
  pipi "${whl:-onnx-graphsurgeon}"
fi
# build requirements, installed here because the build runs without isolation (it must see nvidia-cublas)
# (setuptools >= 70.1 builds wheels by itself; a venv's bundled setuptools 65 would also need `wheel`)
"$py" -c "import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split('.')[:2])) < (70, 1))" \
  2>/dev/null || pipi "setuptools>=70.1"
has pybind11 || pipi "pybind11>=2.12"
if ! "$py" - <<'PY' 2>/dev/null
import re, shutil, subprocess, sys
exe = shutil.which("cmake")
v = re.search(r"(\d+)\.(\d+)", subprocess.run([exe, "--version"], capture_output=True, text=True).stdout) if exe else None
sys.exit(0 if v and (int(v[1]), int(v[2])) >= (3, 24) else 1)
PY
then pipi "cmake>=3.24"; fi
# cuBLAS for the CUDA extension, where nvcc is there but the toolkit has no cuBLAS (development machines, CI)
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [ -x "$nvcc" ] && [ ! -f "$(dirname "$nvcc")/../include/cublasLt.h" ] \
   && ! "$py" -c "import importlib.metadata as m; m.version('nvidia-cublas')" 2>/dev/null; then
  pipi "nvidia-cublas==13.1.0.3"
fi
pipi --no-build-isolation -e ".[$extras]"
