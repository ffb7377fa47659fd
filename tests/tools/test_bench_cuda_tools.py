"""The standalone CUDA measurement tools in tools/cuda/ (fp8_modes, gemm_explore, graph_overhead, pdl_probe, smallm_stream,
wgmma_tile, ...) still compile for sm_90 (sm_90a where the tool's build line asks for it: warpgroup MMAs). They are not part of the extension's build, so nothing else would notice one rotting; running
them needs a GPU (tools/README.md says what each measures)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = sorted(p for p in (ROOT / "tools" / "cuda").iterdir() if p.suffix in (".cu", ".cpp"))


def _nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


def _cublas_include():
    """cublasLt.h from the CUDA toolkit or from pip's nvidia-cublas (the places CMakeLists.txt searches)."""
    dirs = ["/usr/local/cuda/include"]
    try:
        import nvidia  # namespace package of pip's nvidia-* wheels

        dirs += [os.path.join(p, d, "include") for p in nvidia.__path__ for d in ("cu13", "cublas", "cu12")]
    except ImportError:
        pass
    for d in dirs:
        if os.path.exists(os.path.join(d, "cublasLt.h")):
            return d
    return None


def test_the_tools_are_found():
    names = {p.name for p in TOOLS}
    assert {"gemm_explore.cpp", "graph_overhead.cu", "pdl_probe.cu", "smallm_stream.cu"} <= names


@pytest.mark.parametrize("tool", TOOLS, ids=[p.name for p in TOOLS])
def test_bench_tool_compiles(tool, tmp_path):
    nvcc, inc = _nvcc(), _cublas_include()
    if nvcc is None or inc is None:
        pytest.skip(f"needs nvcc and cublasLt.h (nvcc: {nvcc}, cublasLt.h include dir: {inc})")
    arch = ("-gencode=arch=compute_90a,code=sm_90a" if "sm_90a" in "".join(tool.read_text().splitlines(True)[:40])
            else "-arch=sm_90")
    cmd = [nvcc, "-std=c++17", "-O1", arch, "-I", inc, "-I", str(ROOT / "tools" / "cuda"),
           "-I", str(ROOT / "native"), "-I", str(ROOT / "native" / "include"), "--expt-relaxed-constexpr", "-c", str(tool),
           "-o", str(tmp_path / (tool.stem + ".o"))]
    if tool.suffix == ".cpp":
        cmd[1:1] = ["-x", "cu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{tool.name} does not compile:\n{r.stderr[-3000:]}"
    assert (tmp_path / (tool.stem + ".o")).stat().st_size > 0
