#!/usr/bin/env bash
# Packs Ray (ray[data,serve]) and what it needs beyond the GPU machine's Python into one xz archive small enough
# for a GPU run to carry (64 MiB), or in parts when it is not.
#   bash scripts/pack_ray.sh [OUT_DIR]       (default: .ray-pack; needs the package registry: run it here)
# Environment: PY_VERSION (312: the GPU machine's python3), RAY_VERSION (2.60.0), RAY_EXTRAS (data,serve; "serve"
# alone, for Ray Serve without the corpus job, leaves out pyarrow and pandas), PART_MB (48).
# PART_MB: a GPU call carries the checkout (tracked files, ~4.6 MiB) beside what it names in carry, 64 MiB in all;
# 48 leaves room for the checkout and for the data that scripts/gpu/ray.sh's call carries beside the last part
# (docs/ray.md, "Ray on the GPU machine": the bytes of each call).
#
# Why: the Ray wheel alone is ~79 MB, and the GPU machine has no network. Its zip compression is weak, and
# much of it is never used by trtrun (the Java jars, RLlib, the dashboard's web client, tests), so the wheels'
# files are installed into a folder for the GPU machine's Python, that ballast is dropped, and the folder is
# compressed with xz -9e. On the GPU machine:
#   tar -xJf ray-site.tar.xz -C /tmp && export PYTHONPATH=/tmp/ray-site:$PYTHONPATH
# (parts: cat ray-site.tar.xz.part-* > ray-site.tar.xz first, after the runs that carried them, and check it
# against ray-site.tar.xz.sha256; scripts/gpu/ray.sh does both; docs/ray.md).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.ray-pack}
pyv=${PY_VERSION:-312}
rayv=${RAY_VERSION:-2.60.0}
extras=${RAY_EXTRAS:-data,serve}
part_mb=${PART_MB:-48}
py=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
site="$out/ray-site"
rm -rf "$site" "$out"/wheels "$out"/ray-site.tar.xz*
# What the GPU machine has already (../shared/GPU.md): left out, so that its own builds are the ones used.
have="numpy torch transformers tokenizers huggingface-hub safetensors onnx onnxruntime click pytest matplotlib
  cupy cuda-bindings pybind11 cmake ninja setuptools filelock jinja2 markupsafe fsspec sympy mpmath networkx
  typing-extensions packaging pyyaml regex tqdm pillow"
# wheels for the GPU machine's Python (manylinux x86_64), with their dependencies
"$py" -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version "$pyv" \
  --implementation cp --abi "cp$pyv" --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform any -d "$out/wheels" "ray[$extras]==$rayv" $([[ ",$extras," == *",data,"* ]] && echo "pyarrow>=17")
keep=()
for w in "$out"/wheels/*.whl; do
  name=$(basename "$w" | cut -d- -f1 | tr '_' '-' | tr 'A-Z' 'a-z')
  skip=0
  for h in $have; do [[ "$name" == "$h" ]] && skip=1; done
  [[ $skip == 0 ]] && keep+=("$w")
done
"$py" -m pip install -q --disable-pip-version-check --no-deps --no-compile --only-binary=:all: \
  --python-version "$pyv" --implementation cp --abi "cp$pyv" --abi abi3 --abi none --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
  --target "$site" "${keep[@]}"
# ballast trtrun never loads
rm -rf "$site"/ray/jars "$site"/ray/rllib "$site"/ray/dashboard/client/build "$site"/bin "$site"/pyarrow/include
# pyarrow's Arrow Flight (RPC) and Substrait modules, and a library of theirs where nothing that stays links it
# (pyarrow 26 links libarrow_substrait into libarrow_python and every module: it stays)
rm -f "$site"/pyarrow/_flight*.so "$site"/pyarrow/libarrow_python_flight.so* "$site"/pyarrow/_substrait*.so \
  "$site"/pyarrow/*.pyx "$site"/pyarrow/*.pxd
# (readelf fails on the odd non-ELF name matching *.so*: what it printed for the rest still counts)
needed() {
  { find "$site" -name '*.so*' -type f -exec readelf -d {} + 2>/dev/null || true; } \
    | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort -u
}
linked=$(needed)  # once, into a variable: `needed | grep -q` would end the pipe early and fail under pipefail
for lib in "$site"/pyarrow/libarrow_flight.so* "$site"/pyarrow/libarrow_substrait.so*; do
  [ -e "$lib" ] || continue
  grep -qx "$(basename "$lib")" <<<"$linked" || rm -f "$lib"
done
# every library a kept one links, where the pack itself shipped it, must still be there: the GPU machine has no
# other copy, and a missing one fails only at import there (one device call lost)
shipped=$(cd "$site" && find . -name '*.so*' -printf '%f\n' | sort -u)
missing=$(comm -13 <(echo "$shipped") <(needed | grep -E '^lib(arrow|parquet|ray)' || true))
if [ -n "$missing" ]; then
  echo "pack_ray: kept libraries link ones the pack dropped: $missing" >&2
  exit 1
fi
find "$site" -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} +
find "$site" -name '*.js.map' -delete
tar -C "$out" -cf - ray-site | xz -9e -T0 > "$out/ray-site.tar.xz"
size=$(stat -c %s "$out/ray-site.tar.xz")
# the parts travel in separate calls: the checksum says that what was put together there is what was packed here
(cd "$out" && sha256sum ray-site.tar.xz > ray-site.tar.xz.sha256)
echo "pack_ray: ${#keep[@]} wheels, $(du -sm "$site" | cut -f1) MiB unpacked -> ray-site.tar.xz $((size / 1048576)) MiB ($size bytes)"
if (( size > part_mb * 1048576 )); then
  split -b "${part_mb}M" -d "$out/ray-site.tar.xz" "$out/ray-site.tar.xz.part-"
  echo "pack_ray: over ${part_mb} MiB: split into $(ls "$out"/ray-site.tar.xz.part-* | wc -l) parts (ray-site.tar.xz.part-*)"
  stat -c '  %n %s bytes' "$out"/ray-site.tar.xz.part-*
fi
