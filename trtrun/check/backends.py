"""What `trtrun check` runs: the fp32 reference (onnxruntime on the original ONNX, or the fp32 plan) and
each precision's plan (GPU runtime or numpy reference backend), behind one `run(feeds) -> outputs` shape."""

from __future__ import annotations

import inspect

import numpy as np

from .. import backends
from ..errors import TrtrunError


class OnnxRuntimeFp32:
    """onnxruntime (CPU, fp32) on the original ONNX graph: the independent fp32 reference."""

    kind = "onnxruntime"

    def __init__(self, onnx_path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
            raise TrtrunError("the fp32 reference needs onnxruntime (pip install onnxruntime)") from e
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        from .._ort import session

        self.session = session(onnx_path, opts)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.describe = f"onnxruntime {ort.__version__} (CPU, fp32) on {onnx_path}"

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise TrtrunError(f"the ONNX model needs inputs {missing} that the plan's feeds lack")
        outs = self.session.run(None, {n: np.ascontiguousarray(feeds[n], dtype=np.int64) for n in self.input_names})
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(self.output_names, outs)}


class ReferencePlan:
    """A plan on the numpy reference backend; `run(feeds, capture=True)` also returns every tensor."""

    kind = "reference"
    can_capture = True

    def __init__(self, plan):
        from ..reference import ReferenceBackend

        self.plan = plan
        self.names = {i["name"] for i in plan.inputs}
        self.backend = ReferenceBackend(plan)
        self.describe = f"numpy reference backend, {plan.precision} plan"

    def run(self, feeds: dict, capture: bool = False):
        return self.backend.run({k: v for k, v in feeds.items() if k in self.names}, capture=capture)


class GpuPlan:
    """A plan on trtrun's CUDA runtime (trtrun.runtime). Capture of intermediates is used if the runtime
    offers it (a `capture` argument of Context.run); otherwise `can_capture` is False."""

    kind = "gpu"

    def __init__(self, plan, device: int = 0):
        from .. import runtime

        self.plan = plan
        self.names = {i["name"] for i in plan.inputs}
        self.engine = runtime.Engine(plan, device=device)
        self.ctx = self.engine.create_context()
        try:
            self.can_capture = "capture" in inspect.signature(self.ctx.run).parameters
        except (TypeError, ValueError):  # pragma: no cover
            self.can_capture = False
        self.describe = f"trtrun CUDA runtime, {plan.precision} plan on cuda:{device}"

    def run(self, feeds: dict, capture: bool = False):
        feeds = {k: v for k, v in feeds.items() if k in self.names}
        if capture:
            return self.ctx.run(feeds, capture=True)
        return self.ctx.run(feeds)


def choose_backend(backend: str, plan=None) -> tuple[str, str]:
    """'gpu' | 'reference' | 'auto' -> (the backend to use, why), by trtrun.backends.choose_backend. --backend
    gpu without a usable GPU (or for a `plan` the GPU runtime cannot run) is an error; auto falls back to the
    reference backend and says why."""
    name, why = backends.choose_backend(backend, plan=plan)
    if name == "gpu":
        return "gpu", why or "GPU runtime usable"
    if backend != "reference":
        return "reference", f"GPU runtime not usable ({why})"
    return name, why


def plan_runner(plan, backend: str):
    return GpuPlan(plan) if backend == "gpu" else ReferencePlan(plan)
