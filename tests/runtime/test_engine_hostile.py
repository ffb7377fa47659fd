"""The Engine's description checks (native/runtime/engine.cpp) against hostile or unsupported descriptions, on the host:
each is an InputError naming the op and what is wrong, raised before any device work (so on a machine without a GPU it
comes instead of the device's DeviceError), and none ends the process.

The descriptions are lowered hand-made plans (trtrun.runtime.lower.lower_plan) edited the way a caller of trtrun._C.Engine
could: a zero-width weight, inner dimensions whose product overflows, fp8 GEMM shapes cuBLASLt refuses, head sizes the
attention kernel has no code for, a score bias for sequences past what its table indexes, a negative position offset.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import engine_args, native_extension
from handmade_plans import tiny_plan

from trtrun.errors import DeviceError, InputError
from trtrun.plan import Plan
from trtrun.runtime.lower import lower_plan

REPO = Path(__file__).resolve().parents[2]


def _engine(low, change=None):
    """_C.Engine on `low` after change(ops by name, weights list, desc) edits a copy; returns the exception raised."""
    c = native_extension()
    desc = json.loads(json.dumps({k: v for k, v in low.items() if k != "weights"}))
    weights = list(low["weights"])
    if change is not None:
        change({o["name"]: o for o in desc["ops"]}, weights, desc)
    try:
        c.Engine(*engine_args(dict(desc, weights=weights)))
    except Exception as e:  # noqa: BLE001 - the test inspects whatever came
        return e
    raise AssertionError("the Engine took the description")  # without a GPU the device refuses it; with one, built


def _refused(low, change) -> str:
    e = _engine(low, change)
    assert isinstance(e, InputError), repr(e)
    return str(e)


def _plan(**kw) -> Plan:
    return tiny_plan("hybrid", **{"hidden": 64, "heads": 2, "layers": 1, **kw})


def _accepted(low) -> None:
    """The description passes the checks: without a GPU the device's DeviceError follows them, with one it is built."""
    c = native_extension()
    if c.device_count() == 0:
        with pytest.raises(DeviceError):
            c.Engine(*engine_args(low))
    else:
        c.Engine(*engine_args(low))


def test_a_valid_description_reaches_the_device():
    _accepted(lower_plan(_plan()))


@pytest.mark.parametrize("dim", ["K", "N"])
def test_a_zero_width_weight_is_refused_not_a_crash(dim):
    """A Linear weight [0, N] used to reach `inner(x) % K`: an integer division by zero, SIGFPE, the process gone.
    Run in a child process, so the old behaviour fails this test instead of ending the test run."""
    native_extension()
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.path[:0] = ["tests", "tests/runtime"]
        from conftest import engine_args
        from handmade_plans import tiny_plan
        from trtrun.runtime.extension import load_extension
        from trtrun.runtime.lower import lower_plan
        low = lower_plan(tiny_plan("hybrid", hidden=64, heads=2, layers=1))
        i = next(o for o in low["ops"] if o["name"] == "l0.fc1")["weights"]["weight"]
        name, w = low["weights"][i]
        low["weights"][i] = (name, np.zeros((0, w.shape[1]) if {dim!r} == "K" else (w.shape[0], 0), w.dtype))
        try:
            load_extension().Engine(*engine_args(low))
        except Exception as e:
            print(type(e).__name__, e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, f"the child ended with {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.strip() == "InputError op 'l0.fc1': weight must have K >= 1 and N >= 1", r.stdout


def test_inner_dimensions_that_overflow():
    """Positive inner dimensions whose product passes 2^64 (the plan format allows 6 of up to 2^31 - 1; a caller of
    _C.Engine any int64) wrapped around in the shape checks; now an InputError naming the tensor."""
    low = lower_plan(_plan())

    def huge(ops, weights, desc):
        t = ops["l0.attn"]["outputs"][0]
        desc["tensors"][t][2] = [-1, -2, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1, 64]

    msg = _refused(low, huge)
    assert msg == "size overflow computing the inner size of tensor 'l0.ctx'", msg


def _lower_unchecked(plan) -> dict:
    """lower_plan without check_gpu_support's refusals (which name head sizes and fp8 shapes first): the description
    a caller building it by hand could give the Engine, whose own checks are the subject here."""
    from unittest import mock

    from trtrun.runtime import lower

    with mock.patch.object(lower, "check_gpu_support", lambda plan: None):
        return lower.lower_plan(plan)


def _fp8_low(inter: int, fp8_ops) -> dict:
    from trtrun.builder.quantize_fp8 import assign_precisions

    h = _plan(inter=inter)
    w32 = tiny_plan("fp32", hidden=64, heads=2, layers=1, inter=inter).weights
    hdr = {k: v for k, v in h.header.items() if k != "weights"}
    return _lower_unchecked(Plan.from_parts(*assign_precisions(hdr, dict(h.weights), dict(w32),
                                                               {n: "fp8" for n in fp8_ops})))


def test_fp8_linear_shapes_cublaslt_refuses():
    """cuBLASLt's fp8 GEMMs need K and N multiples of 16: such a Linear reached context creation, whose error blamed the
    GPU ("fp8 GEMMs need compute capability 8.9 or 9.0+"). The Engine names the op and the shape now."""
    _accepted(_fp8_low(128, ["l0.qkv", "l0.fc1", "l0.fc2"]))  # K, N in {64, 128, 192}
    tail = "; build this Linear in another precision or run the plan on the reference backend"
    assert _refused(_fp8_low(72, ["l0.fc1"]), None) == (
        f"op 'l0.fc1': an fp8 Linear needs K and N multiples of 16 (cuBLASLt's fp8 GEMMs), got K=64 N=72{tail}")
    assert _refused(_fp8_low(72, ["l0.fc2"]), None) == (
        f"op 'l0.fc2': an fp8 Linear needs K and N multiples of 16 (cuBLASLt's fp8 GEMMs), got K=72 N=64{tail}")
    _accepted(lower_plan(_plan(inter=72)))  # the same shapes in hybrid: fp16 GEMMs take them


@pytest.mark.parametrize("hidden,heads,D", [(16, 2, 8), (96, 2, 48), (224, 2, 112), (1024, 2, 512)])
def test_head_sizes_the_attention_kernel_lacks(hidden, heads, D):
    """The attention kernel is built for heads of 32, 64, 80, 96, 128 and 256; another head size passed the Engine and the context
    and failed at the first run, inside the launcher ("attention: head_size must be ..."), naming no op."""
    low = _lower_unchecked(_plan(hidden=hidden, heads=heads))
    assert _refused(low, None) == (f"op 'l0.attn': the attention kernel takes head_size 32, 64, 80, 96, 128 or 256, got "
                                   f"{D}; run this plan on the reference backend")


def test_a_normed_head_past_both_limits():
    """Qwen3's q/k norm and the attention kernel both take heads up to 256: a normed head of 512 in a description
    built by hand (lowering refuses it by head size first) is refused by the Engine naming the attention's limit
    (checked before the norm's)."""
    plan = _plan(hidden=1024, heads=2)
    hdr = json.loads(json.dumps({k: v for k, v in plan.header.items() if k != "weights"}))
    att = next(o for o in hdr["ops"] if o["type"] == "Attention")
    att["weights"].update(q_norm="qn", k_norm="kn")
    att["attrs"]["qk_norm_epsilon"] = 1e-6
    w = dict(plan.weights, qn=np.ones(512, np.float32), kn=np.ones(512, np.float32))
    low = _lower_unchecked(Plan.from_parts(hdr, w))
    assert _refused(low, None).startswith("op 'l0.attn': the attention kernel takes head_size 32, 64, 80, 96, 128 or "
                                          "256, got 512")


def test_score_bias_past_its_longest_sequence():
    """A score-bias table serves sequences up to 2^30 (the launcher's limit: 2 * max - 1 entries a head in an int);
    lowering refuses such tables by size first, a caller of _C.Engine is refused by name before the table's shape."""
    plan = _plan()
    hdr = json.loads(json.dumps({k: v for k, v in plan.header.items() if k != "weights"}))
    att = next(o for o in hdr["ops"] if o["type"] == "Attention")
    att["weights"]["alibi_slopes"] = "slopes"
    low = lower_plan(Plan.from_parts(hdr, dict(plan.weights, slopes=np.array([0.5, 0.25], np.float32))))

    def long(ops, weights, desc):
        del ops["emb"]["weights"]["position"]  # no position table bounds the length
        desc["seq_max"] = 2 ** 30 + 1

    assert _refused(low, long) == ("op 'l0.attn': a score bias serves sequences up to 2^30, the profile's maximum is "
                                   f"{2 ** 30 + 1}")


def test_negative_position_offset():
    low = lower_plan(_plan())

    def negative(ops, weights, desc):
        ops["emb"]["position_offset"] = -1

    assert _refused(low, negative) == "op 'emb': position_offset must be >= 0"


@pytest.mark.parametrize("op,eps", [("l0.ln1", float("nan")), ("l0.ln2", -1e-5), ("emb", float("inf"))])
def test_normalisation_epsilon(op, eps):
    """A NaN, negative or infinite epsilon of a LayerNorm or an Embedding's LayerNorm passed the Engine and the context
    and was refused by the launcher at the first run (found by scripts/fuzz_plan.py's edited descriptions)."""
    low = lower_plan(_plan())

    def bad(ops, weights, desc):
        ops[op]["epsilon"] = eps

    assert _refused(low, bad) == f"op '{op}': epsilon must be finite and >= 0"
