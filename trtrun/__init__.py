"""trtrun: ONNX transformer models to engine plans, run on a numpy reference backend or a CUDA runtime.

`import trtrun` is cheap: the public names below are imported on first use (PEP 562), so neither
numpy-heavy builder code, onnxruntime, torch, transformers nor the CUDA extension load until a caller
touches them, and nothing queries the GPU at import time.
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .errors import (
    BuildError,
    DeviceError,
    InputError,
    ModelError,
    ModelTooLargeError,
    PlanError,
    RuntimeUnavailableError,
    ShapeError,
    TrtrunError,
    UnsupportedOpError,
)

# public name -> module that defines it (relative to this package)
_LAZY = {
    "Engine": "runtime",
    "gpu_available": "runtime",
    "Plan": "plan",
    "load_plan": "plan",
    "ReferenceBackend": "reference",
    "build": "builder",
    "export_model": "export",
    "load_texts": "data",
    "load_rt_labeled": "data",
    "tokenizer_for": "data",
    "encode": "data",
    "data_dir": "data",
    "Embedder": "embed",
}
# submodules reachable as attributes without an explicit import (trtrun.plan, trtrun.data, ...)
_SUBMODULES = {"builder", "cli", "data", "embed", "errors", "export", "plan", "reference", "runtime", "serve"}

__all__ = [
    "__version__",
    "TrtrunError", "ModelError", "UnsupportedOpError", "BuildError", "PlanError",
    "InputError", "ShapeError", "ModelTooLargeError", "RuntimeUnavailableError", "DeviceError",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'trtrun' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
