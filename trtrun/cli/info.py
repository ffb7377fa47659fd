"""`trtrun info`: versions, whether the GPU runtime is built (and why not), the GPU, the data folder."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata

import click

from .options import json_option

# distributions whose versions matter to trtrun (read from metadata: nothing is imported)
PACKAGES = ("numpy", "onnx", "onnx-graphsurgeon", "onnxruntime", "click", "torch", "transformers", "onnxscript",
            "matplotlib", "scikit-learn", "starlette", "uvicorn", "pybind11", "nvidia-cublas", "cuda-bindings")


def _missing(dist: str) -> str:
    """A missing distribution, with the extra that installs it where one does."""
    from .._optional import EXTRAS

    extra = {d: e for d, e in EXTRAS.values()}.get(dist)
    return f"{dist} ('trtrun[{extra}]')" if extra else dist


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gpu_runtime() -> dict:
    """Ask the extension (not torch) whether the GPU runtime is usable, and which GPU it sees."""
    from importlib.util import find_spec

    out = {"built": find_spec("trtrun._C") is not None, "usable": False, "reason": "", "gpu": None}
    try:
        from .. import runtime

        ok, reason = runtime.gpu_available()
    except Exception as e:  # info must always answer, whatever state the extension is in
        ok, reason = False, f"{type(e).__name__}: {e}"
    out["usable"], out["reason"] = bool(ok), str(reason)
    if ok:  # gpu_available's description: "<device name>; trtrun._C built for sm_XX"
        out["gpu"] = str(reason).split(";")[0]
    return out


def _driver() -> dict:
    """What the CUDA driver says through cuda-python (cards, compute capability, memory), without the extension."""
    from ..runtime.device import driver_facts

    return driver_facts().as_dict()


def _driver_line(d: dict) -> str | None:
    if not d["available"]:
        return None
    cards = "; ".join(f"cuda:{g['index']} {g['name']} (compute capability {g['compute_capability']}, "
                      f"{g['memory_bytes'] / 2 ** 30:.0f} GiB)" for g in d["gpus"])
    return f"{cards}; driver supports CUDA {d['driver_cuda']}"


def _nvidia_smi() -> str | None:
    """GPU names from nvidia-smi, as a second opinion when the extension cannot tell."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    return "; ".join(lines) if r.returncode == 0 and lines else None


def _data() -> dict:
    from .. import data

    d = data.data_dir()
    wanted = ("rt_polarity.tsv", "imdb.tsv", "wiki.txt", "minilm", "gpt2-tokenizer")
    return {"dir": str(d), "present": [w for w in wanted if (d / w).exists()],
            "missing": [w for w in wanted if not (d / w).exists()]}


def collect() -> dict:
    from .. import __file__ as pkg_file
    from .._version import __version__

    info = {
        "trtrun": __version__,
        "location": str(pkg_file).rsplit("/", 1)[0],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "gpu_runtime": _gpu_runtime(),
        "driver": _driver(),
        "nvidia_smi": _nvidia_smi(),
        "data": _data(),
    }
    return info


@click.command("info")
@json_option
def command(as_json: bool):
    """Versions, whether the GPU runtime is built and usable (and why not), the GPUs the driver sees, the data
    folder."""
    info = collect()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    g = info["gpu_runtime"]
    lines = [
        f"trtrun {info['trtrun']} ({info['location']})",
        f"python {info['python']} on {info['platform']}",
        "packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v)
        + ("; missing: " + ", ".join(_missing(k) for k, v in info["packages"].items() if not v)
           if any(v is None for v in info["packages"].values()) else ""),
        "GPU runtime: " + ("extension built, " if g["built"] else "extension not built, ")
        + ("usable" if g["usable"] else "not usable") + (f" ({g['reason']})" if g["reason"] else ""),
        "GPU: " + (_driver_line(info["driver"]) or g["gpu"] or info["nvidia_smi"]
                   or f"none found ({info['driver']['reason']})"),
        f"data folder: {info['data']['dir']}"
        + (f" (missing: {', '.join(info['data']['missing'])}; fetch with ../shared/data/get-data.sh DEST)"
           if info["data"]["missing"] else " (complete)"),
    ]
    click.echo("\n".join(lines))
