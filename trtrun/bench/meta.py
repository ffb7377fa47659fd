"""What a session ran on: card, driver, CUDA, host, library versions, date, command line."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path


def _run(cmd, timeout=10) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 - not installed
        return None


def host_cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info(device: int = 0) -> dict:
    """{card, driver, gpu_memory, gpu_uuid, cuda} from nvidia-smi (falls back on torch for the name). The UUID tells
    two cards of one model apart: sweeps on two hosts of the same card can differ by a few percent."""
    info: dict = {}
    out = None
    for fields in ("name,driver_version,memory.total,uuid", "name,driver_version,memory.total"):
        out = _run(["nvidia-smi", f"--id={device}", f"--query-gpu={fields}", "--format=csv,noheader"])
        if out:  # an nvidia-smi that refuses a field refuses the whole query: ask again without the uuid
            break
    if out:
        parts = [p.strip() for p in out.splitlines()[0].split(",")]
        if len(parts) >= 3:
            info.update(card=parts[0], driver=parts[1], gpu_memory=parts[2])
        if len(parts) >= 4 and parts[3]:
            info["gpu_uuid"] = parts[3]
    smi = _run(["nvidia-smi"])
    m = re.search(r"CUDA Version:\s*([\d.]+)", smi or "")
    cuda = []
    if m:
        cuda.append(f"driver supports {m.group(1)}")
    try:
        import torch

        if torch.version.cuda:
            cuda.append(f"torch built with {torch.version.cuda}")
        if "card" not in info and torch.cuda.is_available():
            info["card"] = torch.cuda.get_device_name(device)
    except ImportError:
        pass
    nvcc = _run(["nvcc", "--version"]) or _run(["/usr/local/cuda/bin/nvcc", "--version"])
    m = re.search(r"release ([\d.]+)", nvcc or "")
    if m:
        cuda.append(f"nvcc {m.group(1)}")
    if cuda:
        info["cuda"] = "; ".join(cuda)
    return info


def card_slug(card: str | None) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3' (for folder and file names)."""
    if not card:
        return "cpu"
    s = re.sub(r"^nvidia\s+", "", card.strip(), flags=re.I).lower()
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-") or "gpu"


def collect(backend: str, command: str, device: int = 0) -> dict:
    meta: dict = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "backend": backend}
    if backend == "gpu":
        meta.update(gpu_info(device))
    else:
        meta["card"] = None
    meta["host_cpu"] = host_cpu()
    meta["host_cores"] = os.cpu_count()
    meta["python"] = platform.python_version()
    from .._version import __version__

    meta["trtrun"] = __version__
    for mod in ("torch", "transformers", "onnxruntime", "numpy"):
        meta[mod] = _version(mod)
    try:
        import torch

        # torch's fp32 eager baseline: TF32 matrix products off unless these say otherwise
        meta["torch_fp32_matmul"] = (f"allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
                                     f"float32_matmul_precision={torch.get_float32_matmul_precision()}")
    except (ImportError, AttributeError):
        pass
    root = Path(__file__).resolve().parents[2]
    # TRTRUN_GIT_COMMIT: the commit measured, for copies of the checkout whose .git is not current (the device
    # machine gets the working tree with a stale .git); otherwise asked of git.
    meta["git"] = os.environ.get("TRTRUN_GIT_COMMIT") or _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    meta["command"] = command
    meta["pid"] = os.getpid()
    meta["argv0"] = os.path.basename(sys.argv[0]) if sys.argv else None
    return meta
