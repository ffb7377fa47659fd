"""Bad input on the GPU path (issue 3): a shape outside the profile, a wrong dtype, ids out of range,
out-of-memory (an absurd profile), a build for another GPU architecture. Each is a clear trtrun exception,
and the process and the engine keep working afterwards (same results as before)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rt_helpers as h
from trtrun.errors import DeviceError, InputError, PlanError, ShapeError

pytestmark = pytest.mark.gpu

KIND = "bert-tiny"


@pytest.fixture(scope="module")
def setup():
    h.need_runtime()
    plan = h.plan_of(KIND, "hybrid")
    engine = h.engine_of(KIND, "hybrid")
    ctx = engine.create_context()
    feeds = h.random_feeds(plan, 2, 24, padded=True, seed=7)
    good = ctx.run(feeds)["last_hidden_state"]
    return plan, engine, ctx, feeds, good


def _still_good(ctx, feeds, good):
    np.testing.assert_array_equal(ctx.run(feeds)["last_hidden_state"], good)


def test_shapes_outside_profile(setup):
    plan, engine, ctx, feeds, good = setup
    with pytest.raises(ShapeError, match="sequence length 513"):
        ctx.run({"input_ids": np.ones((1, 513), np.int64)})
    with pytest.raises(ShapeError, match="batch size 33"):
        ctx.run({"input_ids": np.ones((33, 8), np.int64)})
    with pytest.raises(ShapeError, match="rank 2"):
        ctx.run({"input_ids": np.ones((8,), np.int64)})
    _still_good(ctx, feeds, good)


def test_wrong_dtypes_names_and_ids(setup):
    plan, engine, ctx, feeds, good = setup
    with pytest.raises(InputError, match="dtype float32"):
        ctx.run({**feeds, "input_ids": feeds["input_ids"].astype(np.float32)})
    with pytest.raises(InputError, match="unknown input"):
        ctx.run({**feeds, "pixel_values": feeds["input_ids"]})
    bad = feeds["input_ids"].copy()
    bad[0, 0] = plan.vocab_size
    with pytest.raises(InputError, match="token ids must lie"):
        ctx.run({**feeds, "input_ids": bad})
    # int32 feeds are accepted (converted) and give the same result
    np.testing.assert_array_equal(
        ctx.run({k: v.astype(np.int32) for k, v in feeds.items()})["last_hidden_state"], good)
    _still_good(ctx, feeds, good)


def test_out_of_memory_is_a_device_error_and_nothing_leaks(setup):
    plan, engine, ctx, feeds, good = setup
    from trtrun import _C  # type: ignore[attr-defined]
    from trtrun.runtime import Engine

    # An absurd profile: 10^8 sequences of the maximum length need ~10 TB of activations (10^6 fit on an H200).
    huge = h.handmade_plan(profile={"batch": [1, 1, 100_000_000], "seq": [1, 16, 160]})
    big_engine = Engine(huge)  # the weights are small: the engine itself fits
    free0 = _C.mem_get_info(0)[0]
    for _ in range(3):
        with pytest.raises(DeviceError, match="out of memory") as e:
            big_engine.create_context()
    h.report("errors", f"absurd profile -> {type(e.value).__name__}: {e.value}")
    free1 = _C.mem_get_info(0)[0]
    assert free0 - free1 <= 2 << 20, "a failed context must free what it had allocated"
    # the process, the existing context and new contexts of the other engine keep working
    _still_good(ctx, feeds, good)
    _still_good(engine.create_context(), feeds, good)


def test_bad_plan_file_is_a_plan_error(setup, tmp_path):
    from trtrun.runtime import Engine

    p = tmp_path / "broken.plan"
    p.write_bytes(b"TRTRUNPL" + b"\0" * 100)
    with pytest.raises(PlanError):
        Engine.load(p)


def test_build_for_another_architecture(setup, tmp_path):
    """TRTRUN_FOREIGN_EXT: a trtrun._C built for another GPU (e.g. CMAKE_CUDA_ARCHITECTURES=80-real, with no
    PTX to JIT from). Loaded in a fresh process, it must say so clearly instead of failing in a kernel."""
    ext = os.environ.get("TRTRUN_FOREIGN_EXT")
    if not ext:
        pytest.skip("set TRTRUN_FOREIGN_EXT to a trtrun._C built for another architecture")
    plan, engine, ctx, feeds, good = setup
    plan_path = tmp_path / "tiny.plan"
    plan.save(plan_path)
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("trtrun._C", {ext!r})
        mod = importlib.util.module_from_spec(spec)
        sys.modules["trtrun._C"] = mod
        spec.loader.exec_module(mod)
        import trtrun.runtime as rt
        from trtrun.errors import DeviceError
        ok, why = rt.gpu_available()
        print("gpu_available:", ok, why)
        assert not ok and "architecture" in why, why
        try:
            rt.Engine.load({str(plan_path)!r})
        except DeviceError as e:
            print("Engine.load:", type(e).__name__, e)
        else:
            raise SystemExit("no error for a foreign-architecture build")
    """)
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                       timeout=120)
    h.report("errors", f"foreign-architecture build, exit code {r.returncode}:\n{r.stdout.strip()}\n"
                       f"{r.stderr.strip()[-3000:]}")
    assert r.returncode == 0, r.stdout + r.stderr
    _still_good(ctx, feeds, good)
