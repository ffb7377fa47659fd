"""Build the plugin kernels alone into a small pybind11 module, `_trtrun_plugins`, for kernel tests and
microbenchmarks before (or without) the full extension trtrun._C.

    python3 tools/kernels_build.py [--out build/plugins_standalone] [--sass FILE] [--arch 90]

Compiles native/kernels/*/*.cu, native/core/types.cpp (the enum names the entry points parse) and
native/python/kernels.cpp (with TRTRUN_PLUGINS_STANDALONE) with nvcc in parallel,
prints each kernel's registers / spills / stack from ptxas, and with --sass writes a per-kernel count of
the instructions that matter (HMMA tensor-core ops, LDSM, LDGSTS cp.async, MUFU.EX2, local-memory LDL/STL).
tests/gpu/test_plugins.py finds the module through env TRTRUN_PLUGINS_DIR (default: the --out folder).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def nvcc_path() -> str:
    for c in (os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if c and Path(c).exists():
            return c
    sys.exit("nvcc not found (set NVCC or put the CUDA toolkit's bin on PATH)")


def demangle(name: str) -> str:
    """Kernel name without namespaces and parameter list (c++filt when present)."""
    try:
        full = subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    except OSError:
        return name
    full = full.replace("trtrun::(anonymous namespace)::", "").replace("trtrun::", "")
    return re.sub(r"\((?:[^()]|\([^()]*\))*\)$", "", full)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "build" / "plugins_standalone"))
    ap.add_argument("--arch", default="90")
    ap.add_argument("--sass", default=None, help="write a per-kernel SASS instruction summary here")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nvcc = nvcc_path()
    gencode = f"-gencode=arch=compute_{args.arch},code=sm_{args.arch}"
    native = REPO / "native"
    extra = [f"-I{native / 'include'}", f"-I{native}"]  # the include roots CMakeLists.txt gives the core
    sources = sorted((native / "kernels").glob("*/*.cu"))
    procs = []
    for src in sources:
        obj = out / (src.stem + ".o")
        # --expt-relaxed-constexpr as CMakeLists.txt gives it: attention.cu's kernels call constexpr host helpers
        cmd = [nvcc, "-std=c++17", gencode, *extra, "-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas", "-v",
               "-Xcompiler", "-fPIC", "-c", str(src), "-o", str(obj)]
        procs.append((src, obj, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    import pybind11

    inc = [*extra, f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    host = []  # (object, process) of the host-only sources
    for src, obj in [(native / "python" / "kernels.cpp", out / "bind_kernels.o"),
                     (native / "core" / "types.cpp", out / "types.o")]:
        host.append((obj, subprocess.Popen([nvcc, "-std=c++17", "-O2", "-Xcompiler", "-fPIC,-fvisibility=hidden",
                                            "-DTRTRUN_PLUGINS_STANDALONE", *inc, "-c", str(src), "-o", str(obj)],
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    ok = True
    for src, obj, p in procs:
        log = p.communicate()[0]
        if p.returncode != 0:
            print(log)
            ok = False
            continue
        # ptxas: "Compiling entry function 'X'" ... "N bytes stack frame, S bytes spill stores" ... "Used R registers"
        name = None
        for line in log.splitlines():
            m = re.search(r"Compiling entry function '([^']+)'", line)
            if m:
                name = m.group(1)
                continue
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and name:
                stack, spill = m.group(1), m.group(2)
            m = re.search(r"Used (\d+) registers", line)
            if m and name:
                print(f"  {src.stem:10s} regs {m.group(1):>4s} stack {stack:>4s} spill {spill:>4s}  {demangle(name)[:100]}")
                name = None
    for _, p in host:
        log = p.communicate()[0]
        if p.returncode != 0:
            print(log)
            ok = False
    if not ok:
        return 1
    target = out / ("_trtrun_plugins" + sysconfig.get_config_var("EXT_SUFFIX"))
    objs = [str(obj) for _, obj, _ in procs] + [str(obj) for obj, _ in host]
    subprocess.run([nvcc, "-shared", "-o", str(target), *objs], check=True)
    print(f"built {target}")
    if args.sass:
        cuobjdump = str(Path(nvcc).with_name("cuobjdump"))
        keys = ["HGMMA", "HMMA", "LDSM", "LDGSTS", "MUFU.EX2", "LDL", "STL", "FFMA", "LDG.E.128", "STG.E.128", "BAR"]
        with open(args.sass, "w") as f:
            for _, obj, _ in procs:
                sass = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True).stdout
                counts: dict[str, collections.Counter] = {}
                cur = None
                for line in sass.splitlines():
                    m = re.search(r"Function : (\S+)", line)
                    if m:
                        cur = m.group(1)
                        counts[cur] = collections.Counter()
                        continue
                    if cur:
                        for k in keys:
                            if re.search(r"\b" + re.escape(k) + r"\b", line):
                                counts[cur][k] += 1
                for fn, c in counts.items():
                    f.write(f"{obj.stem}: {demangle(fn)[:100]}\n    " + " ".join(f"{k}={c[k]}" for k in keys) + "\n")
        print(open(args.sass).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
