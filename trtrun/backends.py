"""Which backend runs a plan: the one chooser `trtrun run`, `check`, `bench`, `serve`, `embed` and the
Embedder use.

"auto" takes the GPU runtime where it is usable and falls back to the numpy reference backend, "gpu"
insists on the GPU runtime (a RuntimeUnavailableError saying why not), "reference" takes the reference
backend without asking the GPU anything. Nothing here loads the extension before it is asked.
"""

from __future__ import annotations

from .errors import RuntimeUnavailableError, TrtrunError
from .types import BACKEND_CHOICES


def gpu_status(device: int = 0) -> tuple[bool, str]:
    """(True, the device's description) when the GPU runtime can run on `device`; else (False, why not).
    Any failure to ask counts as not usable, with its reason."""
    try:
        from . import runtime
    except ImportError as e:
        return False, f"trtrun.runtime cannot be imported: {e}"
    try:
        return runtime.gpu_available(device)
    except Exception as e:  # noqa: BLE001 - any failure to ask means: not usable, and why
        return False, f"{type(e).__name__}: {e}"


def choose_backend(backend: str, device: int = 0, *, option: str = "--backend gpu",
                   hint: str = "", plan=None) -> tuple[str, str]:
    """'auto' | 'gpu' | 'reference' -> (the backend to run: 'gpu' or 'reference', why).

    why is the GPU's description when the GPU runtime is chosen, "asked for" for 'reference', and why the GPU
    runtime is not usable when 'auto' falls back. 'gpu' without a usable GPU raises RuntimeUnavailableError
    "{option}: the GPU runtime is not usable: {why}{hint}" (option names the setting as the caller's user
    wrote it; hint says what to do instead). Given the `plan` to run, a plan the GPU runtime cannot run (an
    op or precision it has no kernels for: fp8, Pool, ...) counts as not usable too: 'auto' falls back with
    that reason, 'gpu' raises the PlanError naming the op."""
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    if backend == "reference":
        return "reference", "asked for"
    ok, why = gpu_status(device)
    if ok and plan is not None:
        from .errors import PlanError
        from .runtime.lower import check_gpu_support

        try:
            check_gpu_support(plan)
        except PlanError as e:
            if backend == "gpu":
                raise
            return "reference", f"this plan: {e}"
    if ok:
        return "gpu", why
    if backend == "gpu":
        raise RuntimeUnavailableError(f"{option}: the GPU runtime is not usable: {why}{hint}")
    return "reference", why


def ray_connect(address: str | None) -> bool:
    """ray.init unless Ray is initialized in this process already -> whether this call started it. address "" or
    None: RAY_ADDRESS, else a running local cluster, else a new local Ray. A Ray started here has no dashboard: it
    lives as long as this command, and the dashboard's start is most of a local Ray's start-up (a minute where its
    web files are missing, as in a pip install without ray[default]'s client build); connecting to a running
    cluster keeps whatever it has (Ray ignores the flag then)."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address or None, logging_level=logging.WARNING, log_to_driver=True, include_dashboard=False)
    return True


def choose_cluster_backend(backend: str, gpus: int) -> str:
    """The backend of the actors or replicas on a Ray cluster with `gpus` GPUs (ray.cluster_resources()): 'auto'
    takes the GPU runtime where the cluster has a GPU (the actors check it themselves), 'gpu' on a cluster
    without one is an error."""
    if backend == "gpu" or (backend == "auto" and gpus > 0):
        if gpus < 1:
            raise TrtrunError("--backend gpu: the Ray cluster has no GPU (ray.cluster_resources() lists none)")
        return "gpu"
    return "reference"
