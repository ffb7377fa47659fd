"""Loading the C++/CUDA extension trtrun._C, and saying why the GPU runtime is missing or unusable.

Nothing here touches the GPU at import time: the extension loads on the first call that needs it.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from ..errors import RuntimeUnavailableError

_ext_lock = threading.Lock()
_ext = None


def load_extension():
    """The extension module, or RuntimeUnavailableError saying why it is missing."""
    global _ext
    if _ext is not None:
        return _ext
    with _ext_lock:
        if _ext is None:
            try:
                from .. import _C  # type: ignore[attr-defined]
            except ImportError as e:
                raise RuntimeUnavailableError(missing_reason(e)) from None
            _ext = _C
    return _ext


def missing_reason(err: Exception) -> str:
    """Why `import trtrun._C` failed, from the build record setup.py writes beside it."""
    info = Path(__file__).parent.parent / "_build_info.json"  # trtrun/_build_info.json, beside _C
    if info.exists():
        try:
            data = json.loads(info.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("extension") is False:
            return f"the CUDA extension was not built: {data.get('reason', 'no reason recorded')}"
        return f"the CUDA extension was built but cannot be loaded: {err}"
    return (f"the CUDA extension trtrun._C is not built ({err}); install with a CUDA toolkit and cuBLAS "
            f"present (`pip install .`; see docs/runtime.md)")


def gpu_available(device: int = 0) -> tuple[bool, str]:
    """(True, description) when the extension is built and can run on `device`; else (False, why not).

    Asks the extension (CUDA runtime and a probe of this build's kernels), not torch. Where the extension is
    missing or cannot run, the reason also says what the driver sees (through cuda-python, without the
    extension): the card, its architecture and memory, or that there is no driver.
    """
    try:
        c = load_extension()
    except RuntimeUnavailableError as e:
        return False, _with_driver(str(e), device)
    problem = c.device_problem(int(device))
    if problem:
        code = re.search(r"cudaError(InsufficientDriver|NoDevice)\b", problem)
        if code:
            # what those codes mean on a machine without a GPU, in one short line; the code names the detail
            problem = f"no NVIDIA GPU or driver on this machine: {code.group(0)}"
            from .device import driver_facts

            facts = driver_facts()  # which of the two, where cuda-python can tell
            if not facts.available and not facts.reason.startswith("cuda-python is not installed"):
                return False, f"{facts.reason}: {code.group(0)}"
        return False, _with_driver(problem, device, built_for=getattr(c, "cuda_architectures", None))
    return True, f"{c.device_name(int(device))}; trtrun._C built for sm_{c.cuda_architectures}"


def _with_driver(reason: str, device: int, built_for=None) -> str:
    """`reason`, followed by what the driver says about `device` where cuda-python can ask it."""
    from .device import driver_facts

    facts = driver_facts()
    if not facts.available:
        if facts.reason.startswith("cuda-python is not installed"):
            return reason  # nothing to add that the reason does not say
        return f"{reason} (driver: {facts.reason})"
    if not 0 <= device < len(facts.gpus):
        return f"{reason} (driver: {len(facts.gpus)} GPU(s), no cuda:{device})"
    g = facts.gpus[device]
    what = f"{reason} (driver: cuda:{device} is {g.describe()}, driver supports CUDA {facts.driver_version}"
    archs = re.findall(r"\d+", str(built_for or ""))  # "90", "80;90", "80-real;90"
    if archs and g.sm[3:] not in archs:
        what += f"; trtrun._C was built for {', '.join('sm_' + a for a in archs)}"
    return what + ")"
