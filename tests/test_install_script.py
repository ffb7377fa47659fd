"""scripts/install.sh with a stand-in python: it says where it installs and prints a line a step, installs
only what is missing (so it works offline where everything is present), and keeps torch pinned."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A python3 that answers the script's probes: `-c "import X"` succeeds unless X is in $MISSING, the
# interpreter description (stdin with sys.prefix) is printed, every `-m pip ...` is logged to $PIPLOG.
FAKE_PY = r"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "${*:3}" >> "$PIPLOG"; exit 0; fi
if [ "$1" = "-" ]; then
  src=$(cat)
  case "$src" in *sys.prefix*) echo "/fake/venv/bin/python3 (Python 3.11.7, virtual environment /fake/venv)";; esac
  exit 0
fi
if [ "$1" = "-c" ]; then
  for m in $MISSING; do case "$2" in *"import $m"*) exit 1;; esac; done
  case "$2" in *torch.__version__*) echo 2.13.0+cpu;; esac
  exit 0
fi
exit 0
"""


def _run(tmp_path, missing="", extras=None):
    if not Path("/bin/bash").exists():
        pytest.skip("no bash")
    py = tmp_path / "python3"
    py.write_text(FAKE_PY)
    py.chmod(0o755)
    log = tmp_path / "pip.log"
    env = dict(os.environ, PYTHON=str(py), PIPLOG=str(log), MISSING=missing)
    r = subprocess.run(["bash", "scripts/install.sh", *([extras] if extras else [])], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines(), (log.read_text().splitlines() if log.exists() else [])


def test_everything_present_installs_only_trtrun_and_says_each_step(tmp_path):
    lines, pip = _run(tmp_path)
    assert lines[0] == ("install: into /fake/venv/bin/python3 (Python 3.11.7, virtual environment /fake/venv), "
                        "extras [export,bench,check,serve,gpu,test]")
    for what in ("torch: present (2.13.0+cpu)", "onnx-graphsurgeon: present", "setuptools >= 70.1: present",
                 "pybind11: present", "cmake >= 3.24: present"):
        assert f"install: {what}" in lines
    assert any(ln.startswith("install: trtrun, editable, with extras [export,bench,check,serve,gpu,test]") for ln in lines)
    assert lines[-1].startswith("install: done in ") and "trtrun info" in lines[-1]
    assert len(pip) == 1 and pip[0].endswith("--no-build-isolation -e .[export,bench,check,serve,gpu,test]")


def test_missing_packages_are_installed_with_a_line_each_and_torch_pinned(tmp_path):
    lines, pip = _run(tmp_path, missing="torch pybind11", extras="export,test")
    assert "install: torch 2.13.0 (CPU build; ~200 MB) ..." in lines
    assert "install: pybind11 (build requirement) ..." in lines
    assert sum(ln.startswith("install:   done in ") for ln in lines) == 3  # torch, pybind11, trtrun
    assert [p.split()[-1] for p in pip] == ["torch==2.13.0", "pybind11>=2.12", ".[export,test]"]
