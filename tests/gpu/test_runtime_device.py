"""Zero-copy runs on device tensors (Context.run_device): torch (__cuda_array_interface__), DLPack-only
objects, cupy; int64 and int32 inputs, row-strided inputs, caller streams, preallocated outputs, defaults for
absent inputs, ids checked on the device. Each result must equal Context.run's bit for bit (same kernels,
same shapes, same CUDA graph)."""

from __future__ import annotations

import numpy as np
import pytest

import rt_helpers as h

pytestmark = pytest.mark.gpu

KIND = "bert-tiny"


@pytest.fixture(scope="module")
def setup():
    h.need_runtime()
    torch = h.need_torch_cuda()
    plan = h.plan_of(KIND, "hybrid")
    engine = h.engine_of(KIND, "hybrid")
    return torch, plan, engine


class DLPackOnly:
    """A device array that only speaks DLPack (as JAX arrays do)."""

    def __init__(self, t):
        self._t = t

    def __dlpack__(self, stream=None):
        return self._t.__dlpack__()

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


def test_torch_inputs_match_host_run(setup):
    torch, plan, engine = setup
    ctx = engine.create_context()
    feeds = h.random_feeds(plan, 4, 37, padded=True, seed=1)
    host = ctx.run(feeds)["last_hidden_state"]

    dev = {k: torch.as_tensor(v).cuda() for k, v in feeds.items()}
    out = ctx.run_device(dev)["last_hidden_state"]
    assert isinstance(out, torch.Tensor) and out.is_cuda and out.dtype == torch.float32
    np.testing.assert_array_equal(out.cpu().numpy(), host)

    # int32 inputs, rows of a wider buffer (row stride 64 elements, sequence axis contiguous)
    wide = {}
    for k, v in feeds.items():
        w = torch.full((4, 64), 7, dtype=torch.int32, device="cuda")
        w[:, :37] = torch.as_tensor(v, dtype=torch.int32).cuda()
        wide[k] = w[:, :37]
    out2 = ctx.run_device(wide)["last_hidden_state"]
    np.testing.assert_array_equal(out2.cpu().numpy(), host)


def test_caller_stream_and_preallocated_output(setup):
    torch, plan, engine = setup
    ctx = engine.create_context()
    feeds = h.random_feeds(plan, 3, 50, padded=True, seed=2)
    host = ctx.run(feeds)["last_hidden_state"]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        dev = {k: torch.as_tensor(v).cuda() for k, v in feeds.items()}
        buf = torch.full(host.shape, float("nan"), device="cuda")
        res = ctx.run_device(dev, outputs_dev={"last_hidden_state": buf}, stream=stream)
        assert res["last_hidden_state"] is buf
        total = buf.sum()  # ordered after the run on the same stream
    stream.synchronize()
    np.testing.assert_array_equal(buf.cpu().numpy(), host)
    assert np.isclose(float(total), host.astype(np.float64).sum(), rtol=1e-4)
    # a raw cudaStream_t int works too
    buf2 = torch.empty_like(buf)
    ctx.run_device(dev, outputs_dev={"last_hidden_state": buf2}, stream=stream.cuda_stream)
    ctx.synchronize()
    np.testing.assert_array_equal(buf2.cpu().numpy(), host)


def test_dlpack_only_inputs_return_device_arrays(setup):
    torch, plan, engine = setup
    from trtrun.runtime import DeviceArray

    ctx = engine.create_context()
    feeds = h.random_feeds(plan, 2, 20, padded=True, seed=3)
    host = ctx.run(feeds)["last_hidden_state"]
    dev = {k: DLPackOnly(torch.as_tensor(v).cuda()) for k, v in feeds.items()}
    out = ctx.run_device(dev)["last_hidden_state"]
    assert isinstance(out, DeviceArray)
    np.testing.assert_array_equal(out.numpy(), host)
    # DeviceArray is readable by torch through __cuda_array_interface__
    np.testing.assert_array_equal(torch.as_tensor(out, device="cuda").cpu().numpy(), host)


def test_cupy_inputs(setup):
    cupy = pytest.importorskip("cupy")
    torch, plan, engine = setup
    ctx = engine.create_context()
    feeds = h.random_feeds(plan, 2, 31, padded=True, seed=4)
    host = ctx.run(feeds)["last_hidden_state"]
    out = ctx.run_device({k: cupy.asarray(v) for k, v in feeds.items()})["last_hidden_state"]
    assert isinstance(out, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(out), host)


def test_absent_optional_inputs_default_like_run(setup):
    torch, plan, engine = setup
    ctx = engine.create_context()
    feeds = h.random_feeds(plan, 2, 16, seed=5)
    only_ids = {"input_ids": feeds["input_ids"]}
    host = ctx.run(only_ids)["last_hidden_state"]  # check_feeds: mask of ones, token types 0
    out = ctx.run_device({"input_ids": torch.as_tensor(feeds["input_ids"]).cuda()})["last_hidden_state"]
    np.testing.assert_array_equal(out.cpu().numpy(), host)


def test_bad_device_inputs_are_clear_errors(setup):
    torch, plan, engine = setup
    from trtrun.errors import InputError, ShapeError

    ctx = engine.create_context()
    feeds = h.random_feeds(plan, 2, 16, seed=6)
    good = ctx.run(feeds)["last_hidden_state"]
    dev = {k: torch.as_tensor(v).cuda() for k, v in feeds.items()}
    with pytest.raises(InputError, match="numpy"):
        ctx.run_device({"input_ids": feeds["input_ids"]})
    with pytest.raises(InputError, match="float32"):
        ctx.run_device({"input_ids": dev["input_ids"].float()})
    with pytest.raises(ShapeError, match="profile"):
        ctx.run_device({"input_ids": torch.ones((33, 4), dtype=torch.int64, device="cuda")})
    with pytest.raises(InputError, match="contiguous"):
        ctx.run_device({"input_ids": dev["input_ids"].t().contiguous().t()})
    with pytest.raises(InputError, match="must be float32"):
        ctx.run_device(dev, outputs_dev={"last_hidden_state": torch.empty((2, 16, 5), device="cuda")})
    bad = dev["input_ids"].clone()
    bad[1, 3] = plan.vocab_size  # one past the vocabulary: detected on the device
    with pytest.raises(InputError, match="outside the vocabulary"):
        ctx.run_device({**dev, "input_ids": bad})
    # the context keeps working, with the same results
    np.testing.assert_array_equal(ctx.run_device(dev)["last_hidden_state"].cpu().numpy(), good)
    np.testing.assert_array_equal(ctx.run(feeds)["last_hidden_state"], good)
