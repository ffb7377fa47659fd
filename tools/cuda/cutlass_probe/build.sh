#!/usr/bin/env bash
# tools/cuda/cutlass_probe/build.sh WHEEL OUTDIR: builds the probe against the CUTLASS headers of an nvidia-cutlass
# wheel (extracted into OUTDIR, patched by fix_cutlass_4_2.py), the eight configurations in parallel.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -ne 2 ]; then
  echo "usage: $0 nvidia_cutlass-4.2.0.0-py3-none-any.whl OUTDIR (the wheel: pip download --no-deps nvidia-cutlass==4.2.0.0)" >&2
  exit 2
fi
wheel=$1
out=$2
[ -f "$wheel" ] || { echo "$0: no such wheel: $wheel" >&2; exit 2; }
command -v nvcc >/dev/null || { echo "$0: nvcc not on PATH" >&2; exit 2; }
mkdir -p "$out"
python3 - "$wheel" "$out" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    if n.startswith(("cutlass_library/source/include/", "cutlass_library/source/tools/util/include/")):
        z.extract(n, sys.argv[2])
PY
C=$out/cutlass_library/source
python3 "$here/fix_cutlass_4_2.py" "$C/include"
flags=(-std=c++17 -O3 -arch=sm_90a -DCUTLASS_ENABLE_GDC_FOR_SM90=1 --expt-relaxed-constexpr
       -I"$C/include" -I"$C/tools/util/include" ${CUBLAS_INC:+-I"$CUBLAS_INC"})
pids=()
for i in 0 1 2 3 4 5 6 7; do
  nvcc "${flags[@]}" -DCFG=$i -c "$here/cfg.cu" -o "$out/cfg$i.o" & pids+=($!)
done
nvcc "${flags[@]}" -c "$here/main.cu" -o "$out/main.o" & pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
nvcc -arch=sm_90a "$out"/cfg{0,1,2,3,4,5,6,7}.o "$out/main.o" -lcublasLt ${CUBLAS_LIB:+-L"$CUBLAS_LIB"} -o "$out/cutlass_probe"
echo "built $out/cutlass_probe"
