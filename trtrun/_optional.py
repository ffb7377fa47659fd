"""Optional packages: which pyproject extra brings each, and one error line saying what to install.

A feature whose package is missing fails with `TrtrunError("<feature> needs <package>: pip install
'trtrun[<extra>]'")`, never with a bare ModuleNotFoundError; the CLI's error handler uses `install_hint`
for an import that slipped through.
"""

from __future__ import annotations

import importlib

from .errors import TrtrunError

# import name -> (distribution name, extra of pyproject.toml that installs it)
EXTRAS = {
    "torch": ("torch", "export"),
    "transformers": ("transformers", "text"),
    "tokenizers": ("tokenizers", "text"),
    "onnxscript": ("onnxscript", "export"),
    "onnx_ir": ("onnxscript", "export"),
    "gguf": ("gguf", "export"),
    "accelerate": ("accelerate", "export"),
    "matplotlib": ("matplotlib", "bench"),
    "sklearn": ("scikit-learn", "check"),
    "starlette": ("starlette", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "prometheus_client": ("prometheus-client", "serve"),
    "httpx": ("httpx", "test"),
    "pyarrow": ("pyarrow", "embed"),
    "ray": ("ray", "ray"),
    "cuda": ("cuda-bindings", "gpu"),
}


def install_hint(module: str | None) -> str | None:
    """"pip install 'trtrun[extra]'" for an optional package (a submodule's name counts as its package), or None."""
    top = (module or "").split(".")[0]
    if top not in EXTRAS:
        return None
    dist, extra = EXTRAS[top]
    hint = f"pip install 'trtrun[{extra}]'"
    if dist == "torch":  # an unpinned torch from the index is a CUDA build of several GB
        hint += " (install torch==2.13.0 first for the CPU build)"
    return hint


def missing(module: str, feature: str) -> TrtrunError:
    """The error for `feature` lacking optional `module`: one line with what to install."""
    dist = EXTRAS.get(module.split(".")[0], (module.split(".")[0], None))[0]
    hint = install_hint(module) or f"pip install {dist}"
    return TrtrunError(f"{feature} needs {dist}, which is not installed: {hint}")


def require(module: str, feature: str):
    """Import `module`, or raise `missing(module, feature)`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        # a package present but broken (one of its own imports fails) names that module instead
        raise missing(getattr(e, "name", None) or module, feature) from e
