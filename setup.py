"""Thin driver: builds the CUDA extension trtrun._C with CMake (CMakeLists.txt holds all build logic).

Everything else (metadata, dependencies, packages) is in pyproject.toml. Without a CUDA toolkit or cuBLASLt,
CMake records why in trtrun/_build_info.json and builds nothing: the package installs as pure Python and
`trtrun.runtime.gpu_available()` reports the reason. Without cmake itself, the same happens.

CMake options pass through the CMAKE_ARGS environment variable, e.g.
    CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=80;90" pip install .
    CMAKE_ARGS="-DTRTRUN_REQUIRE_CUDA=ON" pip install .      # CI: fail when the extension cannot be built
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _find_cmake() -> str | None:
    exe = shutil.which("cmake")
    if exe:
        return exe
    try:  # the `cmake` wheel (a build requirement in pyproject.toml)
        import cmake  # type: ignore

        cand = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        return str(cand) if cand.exists() else None
    except Exception:
        return None


class CMakeExtension(Extension):
    def __init__(self, name: str):
        # optional: setuptools then skips copying a .so that CMake chose not to build (no CUDA toolkit);
        # a failing CMake run still fails the install (the error is not a compiler error setuptools swallows)
        super().__init__(name, sources=[], optional=True)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        pkg_dir = ext_path.parent  # .../trtrun in the build tree
        pkg_dir.mkdir(parents=True, exist_ok=True)
        info = pkg_dir / "_build_info.json"
        cmake = _find_cmake()
        if cmake is None:
            self._record(info, {"extension": False, "reason": "cmake was not found at build time"})
            return
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        args = [
            cmake, "-S", str(ROOT), "-B", str(build_temp),
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={pkg_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DTRTRUN_BUILD_INFO={info}",
        ]
        try:
            import pybind11

            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass  # CMake then reports "pybind11 not found" as the reason
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        subprocess.run(args, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(max(1, os.cpu_count() or 1))
        subprocess.run([cmake, "--build", str(build_temp), "--config", cfg, "--parallel", jobs], check=True)
        if getattr(self, "editable_mode", False) or self.inplace:
            # editable installs import trtrun from the source tree: put the build record there too
            src_info = ROOT / "trtrun" / "_build_info.json"
            if info.exists() and info.resolve() != src_info.resolve():
                shutil.copyfile(info, src_info)

    @staticmethod
    def _record(path: Path, data: dict) -> None:
        path.write_text(json.dumps(data) + "\n")
        print(f"trtrun: the CUDA extension is NOT built: {data.get('reason')}", file=sys.stderr)

    def get_outputs(self):
        # the extension may legitimately be absent (no CUDA toolkit): report only what exists
        outs = [p for p in super().get_outputs() if os.path.exists(p)]
        for ext in self.extensions:
            info = Path(self.get_ext_fullpath(ext.name)).parent / "_build_info.json"
            if info.exists():
                outs.append(str(info))
        return outs


setup(ext_modules=[CMakeExtension("trtrun._C")], cmdclass={"build_ext": CMakeBuild})
