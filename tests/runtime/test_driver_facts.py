"""What the driver says through cuda-python (trtrun.runtime.device), the reasons built from it, and the stream
objects run_device takes. No GPU here: the driver is a stand-in module answering as cuda.bindings.driver does
(a tuple whose first item is the CUresult), plus the real cuda.bindings objects where they need no driver."""

from __future__ import annotations

import types

import pytest

from trtrun.errors import InputError
from trtrun.runtime import device as dev
from trtrun.runtime import extension
from trtrun.runtime.engine import _stream_handle

H200_BYTES = 150_754_820_096  # what an H200 reports (140 GiB)


def _fake_driver(*, init_err=0, count=1, name=b"NVIDIA H200", cc=(9, 0), version=13000):
    attr = types.SimpleNamespace(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR="major",
                                 CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR="minor")
    errors = {0: b"CUDA_SUCCESS", 100: b"CUDA_ERROR_NO_DEVICE", 999: b"CUDA_ERROR_UNKNOWN"}
    return types.SimpleNamespace(
        CUdevice_attribute=attr,
        cuInit=lambda flags: (init_err,),
        cuGetErrorName=lambda e: (0, errors[int(e)]),
        cuDriverGetVersion=lambda: (0, version),
        cuDeviceGetCount=lambda: (0, count),
        cuDeviceGet=lambda i: (0, 100 + i),
        cuDeviceGetName=lambda n, d: (0, name + b"\0" * (n - len(name))),
        cuDeviceGetAttribute=lambda a, d: (0, cc[0] if a == "major" else cc[1]),
        cuDeviceTotalMem=lambda d: (0, H200_BYTES),
    )


def test_driver_facts_name_every_card(monkeypatch):
    monkeypatch.setattr(dev, "_driver_module", lambda: _fake_driver(count=2))
    f = dev.driver_facts()
    assert f.available and f.driver_version == "13.0" and len(f.gpus) == 2
    assert f.gpus[1].index == 1 and f.gpus[1].name == "NVIDIA H200"  # padding after the NUL is dropped
    assert f.gpus[0].sm == "sm_90" and f.gpus[0].memory_bytes == H200_BYTES
    assert f.describe() == ("cuda:0 NVIDIA H200 (sm_90, 140 GiB); cuda:1 NVIDIA H200 (sm_90, 140 GiB); "
                            "driver supports CUDA 13.0")
    assert f.as_dict()["gpus"][0]["compute_capability"] == "9.0"


def test_driver_errors_become_reasons(monkeypatch):
    monkeypatch.setattr(dev, "_driver_module", lambda: _fake_driver(init_err=100))
    f = dev.driver_facts()
    assert not f.available and f.reason == "the CUDA driver answered: cuInit failed: CUDA_ERROR_NO_DEVICE"
    monkeypatch.setattr(dev, "_driver_module", lambda: _fake_driver(count=0, version=12080))
    f = dev.driver_facts()
    assert not f.available and f.reason == "the NVIDIA driver (CUDA 12.8) sees no GPU"

    def broken():
        raise ImportError("No module named 'cuda'")
    monkeypatch.setattr(dev, "_driver_module", broken)
    f = dev.driver_facts()
    assert not f.available and "cuda-python is not installed" in f.reason and "trtrun[gpu]" in f.reason


def test_driver_facts_here_never_raise():
    # this machine: cuda-bindings may be installed without a driver; either way an answer, not an exception
    f = dev.driver_facts()
    assert isinstance(f.available, bool) and (f.available or f.reason)


class _Ext:
    """An extension that loads but whose device probe fails as on a machine with the wrong card."""
    cuda_architectures = "90"

    def __init__(self, problem):
        self.problem = problem

    def device_problem(self, i):
        return self.problem


def test_unusable_reason_names_the_card(monkeypatch):
    monkeypatch.setattr(dev, "_driver_module", lambda: _fake_driver(name=b"NVIDIA A100-SXM4-80GB", cc=(8, 0)))
    monkeypatch.setattr(extension, "load_extension",
                        lambda: _Ext("no kernel image is available for execution on the device"))
    ok, why = extension.gpu_available(0)
    assert not ok
    assert why.startswith("no kernel image is available")
    assert "cuda:0 is NVIDIA A100-SXM4-80GB (sm_80, 140 GiB)" in why and "built for sm_90" in why
    ok, why = extension.gpu_available(3)
    assert not ok and "1 GPU(s), no cuda:3" in why


def test_no_driver_reason_says_which(monkeypatch):
    def no_lib():
        raise type("DynamicLibNotFoundError", (RuntimeError,), {})("libcuda")
    monkeypatch.setattr(dev, "_driver_module", lambda: types.SimpleNamespace(cuInit=lambda f: no_lib()))
    monkeypatch.setattr(extension, "load_extension", lambda: _Ext("cudaErrorInsufficientDriver: ..."))
    ok, why = extension.gpu_available(0)
    assert not ok and why == "no NVIDIA driver installed (libcuda.so.1 not found): cudaErrorInsufficientDriver"


def test_stream_objects():
    assert _stream_handle(7) == 7
    proto = types.SimpleNamespace(__cuda_stream__=lambda: (0, 0xABC))
    assert _stream_handle(proto) == 0xABC
    assert _stream_handle(types.SimpleNamespace(cuda_stream=11)) == 11  # torch.cuda.Stream
    assert _stream_handle(types.SimpleNamespace(ptr=12)) == 12  # cupy Stream
    assert _stream_handle(types.SimpleNamespace(handle=proto)) == 0xABC  # a wrapper whose handle speaks it
    with pytest.raises(InputError, match="stream must be an int"):
        _stream_handle("0")
    with pytest.raises(InputError, match="stream must be an int"):
        _stream_handle(True)
    with pytest.raises(InputError, match="__cuda_stream__"):
        _stream_handle(types.SimpleNamespace(__cuda_stream__=lambda: "nope"))


def test_cuda_bindings_stream_handle():
    driver = pytest.importorskip("cuda.bindings.driver", reason="cuda-bindings is not installed")
    assert _stream_handle(driver.CUstream(0x1234)) == 0x1234  # made without a driver: only the handle value


def test_info_shows_the_driver(monkeypatch):
    from trtrun.cli import info

    monkeypatch.setattr(dev, "_driver_module", lambda: _fake_driver())
    d = info.collect()["driver"]
    assert d["available"] and d["driver_cuda"] == "13.0" and d["gpus"][0]["name"] == "NVIDIA H200"
    assert info._driver_line(d) == ("cuda:0 NVIDIA H200 (compute capability 9.0, 140 GiB); "
                                    "driver supports CUDA 13.0")
