#!/usr/bin/env bash
# Installs trtrun (editable) and everything it needs, on a clean machine like ours or on one that has it all.
#   bash scripts/install.sh [EXTRAS]        EXTRAS: comma list of pyproject extras (default: export,bench,check,serve,gpu,test)
# Installs only what is missing, so it also works offline where the dependencies are present already
# (the GPU machine: see ../shared/GPU.md). Environment: PYTHON (default: the first python3 on PATH; an
# activated virtual environment's, if any). One line a step on stdout, so a slow step is never silent.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-export,bench,check,serve,gpu,test}
py=${PYTHON:-python3}
t_all=$SECONDS
say() { echo "install: $*"; }
pipi() { "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; }
has() { "$py" -c "import $1" 2>/dev/null; }
# step "what it does" command...: one line before, one after with the time it took
step() {
  local what=$1 t=$SECONDS
  shift
  say "$what ..."
  "$@"
  say "  done in $((SECONDS - t)) s"
}

command -v "$py" >/dev/null || { say "no $py on PATH (set PYTHON=/path/to/python3)"; exit 1; }
where=$("$py" - <<'PY'
import sys
venv = sys.prefix != sys.base_prefix
print(f"{sys.executable} (Python {sys.version.split()[0]}, "
      + (f"virtual environment {sys.prefix}" if venv else f"no virtual environment: into {sys.prefix}") + ")")
PY
)
say "into $where, extras [$extras]"

# torch first and pinned: pip then takes the CPU wheel on this machine's disk; an unpinned `torch`
# (also one pulled in by transformers or our `export` extra) would download a CUDA build of several GB.
if [[ ",$extras," == *",export,"* ]]; then
  if has torch; then say "torch: present ($("$py" -c 'import torch; print(torch.__version__)'))"
  else step "torch 2.13.0 (CPU build; ~200 MB)" pipi "torch==2.13.0"; fi
fi
# onnx-graphsurgeon: the wheel in ../shared/wheels where it is there (the GPU machine has no registry)
if has onnx_graphsurgeon; then say "onnx-graphsurgeon: present"
else
  whl=$(ls ../shared/wheels/onnx_graphsurgeon-*.whl 2>/dev/null | head -n 1 || true)
  step "onnx-graphsurgeon (${whl:-from the package index})" pipi "${whl:-onnx-graphsurgeon}"
fi
# build requirements, installed here because the build runs without isolation (it must see nvidia-cublas)
# (setuptools >= 70.1 builds wheels by itself; a venv's bundled setuptools 65 would also need `wheel`)
if "$py" -c "import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split('.')[:2])) < (70, 1))" \
  2>/dev/null; then say "setuptools >= 70.1: present"
else step "setuptools >= 70.1 (build requirement)" pipi "setuptools>=70.1"; fi
if has pybind11; then say "pybind11: present"; else step "pybind11 (build requirement)" pipi "pybind11>=2.12"; fi
if "$py" - <<'PY' 2>/dev/null
import re, shutil, subprocess, sys
exe = shutil.which("cmake")
v = re.search(r"(\d+)\.(\d+)", subprocess.run([exe, "--version"], capture_output=True, text=True).stdout) if exe else None
sys.exit(0 if v and (int(v[1]), int(v[2])) >= (3, 24) else 1)
PY
then say "cmake >= 3.24: present"; else step "cmake >= 3.24 (build requirement)" pipi "cmake>=3.24"; fi
# cuBLAS for the CUDA extension, where nvcc is there but the toolkit has no cuBLAS (development machines, CI)
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [ -x "$nvcc" ]; then
  if [ ! -f "$(dirname "$nvcc")/../include/cublasLt.h" ] \
     && ! "$py" -c "import importlib.metadata as m; m.version('nvidia-cublas')" 2>/dev/null; then
    step "nvidia-cublas 13.1.0.3 (headers and libraries for the CUDA extension; ~500 MB)" pipi "nvidia-cublas==13.1.0.3"
  fi
  ext="with the CUDA extension (nvcc: $nvcc; compiling takes minutes)"
else
  ext="pure Python (no nvcc found: no CUDA extension; trtrun info says why)"
fi
step "trtrun, editable, with extras [$extras], $ext" pipi --no-build-isolation -e ".[$extras]"
say "done in $((SECONDS - t_all)) s; check with: $py -m trtrun info"
