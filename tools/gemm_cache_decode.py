"""Decode the cuBLASLt algorithms in a GEMM cache file (trtrun.runtime.save_gemm_cache) into readable fields.

    python3 tools/gemm_cache_decode.py FILE [--m 4096]

The cache keeps each choice as cuBLASLt's opaque 64-byte cublasLtMatmulAlgo_t; cublasLtMatmulAlgoConfigGetAttribute
reads its fields on the host (no GPU needed), from the libcublasLt of the nvidia-cublas wheel. Prints per entry the
GEMM key (trtrun's m = tokens, n = output features, k = input features) and the algorithm id, tile, stages, split-K,
thread-block cluster shape, custom option and CTA swizzle, with tile and cluster names from cublasLt.h. trtrun calls
cuBLASLt column-major with the weight as A, so cuBLASLt's M is trtrun's n and its N is trtrun's m.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import sys
from pathlib import Path

# (attribute, C type) of cublasLtMatmulAlgoConfigAttributes_t, as cublasLt.h documents them
FIELDS = [("ID", ctypes.c_int32), ("TILE_ID", ctypes.c_uint32), ("STAGES_ID", ctypes.c_uint32),
          ("SPLITK_NUM", ctypes.c_int32), ("CLUSTER_SHAPE_ID", ctypes.c_uint16), ("CUSTOM_OPTION", ctypes.c_uint32),
          ("CTA_SWIZZLING", ctypes.c_uint32)]


def cublas_dir() -> Path:
    try:
        import nvidia.cu13 as cu  # the nvidia-cublas wheel (CUDA 13)
    except ImportError as e:
        raise SystemExit(f"gemm_cache_decode: the nvidia-cublas wheel is not installed ({e})") from None
    return Path(list(cu.__path__)[0])


def enums(header: str, prefix: str) -> dict[int, str]:
    return {int(v): k for k, v in re.findall(rf"{prefix}(\w+)\s*=\s*(\d+)", header)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--m", type=int, default=None, help="only entries with this m (tokens)")
    a = ap.parse_args()
    base = cublas_dir()
    libs = sorted((base / "lib").glob("libcublasLt.so*"))
    if not libs:
        raise SystemExit(f"gemm_cache_decode: no libcublasLt.so under {base / 'lib'}")
    lib = ctypes.CDLL(str(libs[0]))
    header = (base / "include" / "cublasLt.h").read_text()
    attr = {name: int(re.search(rf"CUBLASLT_ALGO_CONFIG_{name}\s*=\s*(\d+)", header).group(1)) for name, _ in FIELDS}
    tiles, stages = enums(header, "CUBLASLT_MATMUL_TILE_"), enums(header, "CUBLASLT_MATMUL_STAGES_")
    clusters = enums(header, "CUBLASLT_CLUSTER_SHAPE_")
    try:
        text = a.file.read_text()
    except OSError as e:
        raise SystemExit(f"gemm_cache_decode: cannot read {a.file}: {e.strerror}") from None
    try:
        entries = json.loads(text)["entries"]
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"gemm_cache_decode: {a.file}: not a GEMM cache file ({type(e).__name__}: {e})") from None

    class Algo(ctypes.Structure):
        _fields_ = [("data", ctypes.c_uint64 * 8)]

    get = lib.cublasLtMatmulAlgoConfigGetAttribute
    for e in entries:
        if a.m is not None and e.get("m") != a.m:
            continue
        algo = Algo()
        algo.data[:] = [int(x) for x in e["algo"]]
        out = {}
        for name, ctype in FIELDS:
            val, written = ctype(0), ctypes.c_size_t(0)
            st = get(ctypes.byref(algo), attr[name], ctypes.byref(val), ctypes.c_size_t(ctypes.sizeof(ctype)),
                     ctypes.byref(written))
            out[name] = val.value if st == 0 else f"status {st}"
        print(f"{e.get('device')} m={e['m']} n={e['n']} k={e['k']} epilogue={e['epilogue']} add_c={e['add_c']} "
              f"out_t={e['out_t']} split={e.get('split', 1)} search={e.get('search')}: algo {out['ID']} "
              f"tile {tiles.get(out['TILE_ID'], out['TILE_ID'])} "
              f"stages {stages.get(out['STAGES_ID'], out['STAGES_ID'])} "
              f"splitK {out['SPLITK_NUM']} cluster {clusters.get(out['CLUSTER_SHAPE_ID'], out['CLUSTER_SHAPE_ID'])} "
              f"custom {out['CUSTOM_OPTION']} swizzle {out['CTA_SWIZZLING']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
