"""What the CUDA driver says about this machine's GPUs, asked through cuda-python (cuda.bindings), not through
trtrun's extension: it answers where the extension is not built, was built for another architecture or fails
to load, so `trtrun info` and the reason the GPU runtime is unusable can name the card, its compute
capability, the driver and the memory.

Every function here returns an answer and never raises: a missing cuda-bindings, a missing driver library
or a driver error becomes the `reason` of an unavailable result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._optional import install_hint


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    compute_capability: tuple[int, int]
    memory_bytes: int

    @property
    def sm(self) -> str:
        """The architecture name nvcc uses: sm_90 for compute capability 9.0."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def describe(self) -> str:
        return f"{self.name} ({self.sm}, {self.memory_bytes / 2 ** 30:.0f} GiB)"


@dataclass(frozen=True)
class DriverFacts:
    available: bool  # a driver answered and sees at least one GPU
    reason: str  # why not, when not available
    driver_version: str | None = None  # the CUDA version the driver supports, e.g. "13.0"
    gpus: tuple[GPU, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        if not self.available:
            return self.reason
        cards = "; ".join(f"cuda:{g.index} {g.describe()}" for g in self.gpus)
        return f"{cards}; driver supports CUDA {self.driver_version}"

    def as_dict(self) -> dict:
        return {"available": self.available, "reason": self.reason, "driver_cuda": self.driver_version,
                "gpus": [{"index": g.index, "name": g.name, "compute_capability": ".".join(map(str, g.compute_capability)),
                          "memory_bytes": g.memory_bytes} for g in self.gpus]}


def _driver_module():
    """cuda.bindings.driver (cuda-bindings >= 12.6), or the older cuda.cuda spelling of the same module."""
    try:
        from cuda.bindings import driver
        return driver
    except ImportError:
        from cuda import cuda as driver  # type: ignore[no-redef]
        return driver


def _check(drv, result, what: str):
    """The values after a driver call's CUresult; raises _DriverError naming the call and the error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        try:
            name = drv.cuGetErrorName(err)[1].decode()
        except Exception:
            name = f"CUresult {int(err)}"
        raise _DriverError(f"{what} failed: {name}")
    return values[0] if len(values) == 1 else values


class _DriverError(Exception):
    pass


def driver_facts() -> DriverFacts:
    """The driver's CUDA version and every GPU it sees, or why none can be asked."""
    try:
        drv = _driver_module()
    except ImportError:
        return DriverFacts(False, "cuda-python is not installed, so the driver was not asked"
                                  f" ({install_hint('cuda')})")
    try:
        _check(drv, drv.cuInit(0), "cuInit")
        v = int(_check(drv, drv.cuDriverGetVersion(), "cuDriverGetVersion"))
        count = int(_check(drv, drv.cuDeviceGetCount(), "cuDeviceGetCount"))
        gpus = []
        attr = drv.CUdevice_attribute
        for i in range(count):
            dev = _check(drv, drv.cuDeviceGet(i), "cuDeviceGet")
            name = _check(drv, drv.cuDeviceGetName(256, dev), "cuDeviceGetName")
            name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
            major = _check(drv, drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
                           "cuDeviceGetAttribute")
            minor = _check(drv, drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
                           "cuDeviceGetAttribute")
            mem = _check(drv, drv.cuDeviceTotalMem(dev), "cuDeviceTotalMem")
            gpus.append(GPU(i, name, (int(major), int(minor)), int(mem)))
    except _DriverError as e:
        return DriverFacts(False, f"the CUDA driver answered: {e}")
    except Exception as e:  # the driver library itself is missing (no NVIDIA driver installed), or unloadable
        if type(e).__name__ == "DynamicLibNotFoundError":  # cuda-pathfinder's: libcuda.so.1 is not there
            return DriverFacts(False, "no NVIDIA driver installed (libcuda.so.1 not found)")
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return DriverFacts(False, f"the NVIDIA driver could not be loaded ({type(e).__name__}: {msg})")
    version = f"{v // 1000}.{v % 1000 // 10}"
    if not gpus:
        return DriverFacts(False, f"the NVIDIA driver (CUDA {version}) sees no GPU", version)
    return DriverFacts(True, "", version, tuple(gpus))
