"""tools/gemm_cache_decode.py: the fields of a stored cuBLASLt algorithm, read on the host (no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gemm_cache_decode.py"
# One entry of a GEMM cache file written on an NVIDIA H200 (the exhaustive search, cuBLASLt 13.1): BERT-base's
# QKV GEMM at 32 x 128 tokens. Its fields, as cuBLASLt 13.1 reads them: algorithm 66, tile 128x144, cluster 2x1x1,
# custom option 1 (the choice docs/performance.md, "GEMMs", discusses). Its enums by name, as format 2 stores them.
ENTRY = {"device": "NVIDIA H200", "cc": 90, "cublaslt": 130100, "m": 4096, "n": 2304, "k": 768,
         "operand_t": "float16", "out_t": "float16", "epilogue": "bias", "tf32": False, "add_c": False,
         "workspace": 4194304, "search": "exhaustive",
         "algo": [1743756722242, 4294967331, 0, 844424930131969, 558775245209601, 8589934594, 292057907202, 0],
         "algo_workspace": 4}


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def _need_cublaslt():
    import importlib.metadata

    try:
        import nvidia.cu13 as cu

        version = importlib.metadata.version("nvidia-cublas")
    except (ImportError, importlib.metadata.PackageNotFoundError):
        pytest.skip("the nvidia-cublas wheel is not installed")
    if not list((Path(list(cu.__path__)[0]) / "lib").glob("libcublasLt.so*")):
        pytest.skip("no libcublasLt in the nvidia-cublas wheel")
    if not version.startswith("13.1."):
        pytest.skip(f"the stored algorithm was written by cuBLASLt 13.1; nvidia-cublas {version} may lay it out "
                    "otherwise")


def test_decodes_a_stored_algorithm(tmp_path):
    _need_cublaslt()
    f = tmp_path / "cache.json"
    f.write_text(json.dumps({"format": "trtrun-gemm-cache", "version": 2, "entries": [ENTRY, dict(ENTRY, m=128)]}))
    r = _run(f, "--m", 4096)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, lines  # --m keeps the one entry
    assert "m=4096 n=2304 k=768" in lines[0]
    assert "algo 66 tile 128x144" in lines[0] and "cluster 2x1x1" in lines[0] and "custom 1" in lines[0], lines[0]


def test_bad_files_are_named(tmp_path):
    _need_cublaslt()  # the library is looked up before the file is read
    r = _run(tmp_path / "missing.json")
    assert r.returncode != 0 and "cannot read" in r.stderr and "missing.json" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "x"}')
    r = _run(bad)
    assert r.returncode != 0 and "not a GEMM cache file" in r.stderr and "bad.json" in r.stderr
