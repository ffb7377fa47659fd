"""fp8 (E4M3) Linear layers: the quantization against an independent numpy computation, the builder's fp8 plans
(round trip, hostile fields, calibration), their lowering for the GPU runtime, and `trtrun build`'s fp8 options."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from trtrun.errors import InputError, PlanError
from trtrun.fp8 import E4M3_MAX, e4m3_dtype, quantize_activation, quantize_e4m3, quantize_weight
from trtrun.reference import ref_linear

F32, F64 = np.float32, np.float64


# ------------------------------------------------------------------------------------------ independent E4M3
def e4m3_round(v) -> np.ndarray:
    """float64 values of round-to-nearest-even onto the E4M3 grid (1 sign, 4 exponent bits with bias 7,
    3 mantissa bits; subnormals below 2^-6 in steps of 2^-9), saturated at +-448; NaN stays NaN. Written from
    the format's definition with frexp, sharing nothing with ml_dtypes."""
    v = np.asarray(v, F64)
    a = np.minimum(np.abs(v), 448.0)
    _, e = np.frexp(a)  # a = m 2^e, m in [0.5, 1): the leading bit is 2^(e-1)
    exp = np.maximum(e - 1, -6)  # below the smallest normal 2^-6 the step stays that of the subnormals
    step = np.ldexp(1.0, exp - 3)
    q = np.round(a / step) * step  # numpy rounds half to even
    return np.where(np.isnan(v), np.nan, np.sign(v) * np.minimum(q, 448.0))


def hard_values(rng, n):
    """Random values over E4M3's whole range and past it: beyond 448, subnormal-sized, exact ties, zeros."""
    mag = np.exp2(rng.uniform(-14, 12, n))  # 6e-5 .. 4096: underflow to 0, subnormals, normals, saturation
    v = mag * rng.choice([-1.0, 1.0], n)
    grid = np.array([0.0, 2.0 ** -9, 1.5 * 2 ** -9, 2.0 ** -10, 464.0, 465.0, 448.0, 1e6, -1e6, 17.0, 1.0625, 0.5])
    return np.concatenate([v, grid, -grid]).astype(F32)


def test_quantize_matches_the_format_definition():
    rng = np.random.default_rng(1)
    v = np.concatenate([hard_values(rng, 20000), np.array([np.nan], F32)])
    got = quantize_e4m3(v)
    assert got.dtype == e4m3_dtype()
    want = e4m3_round(v.astype(F64))
    g = got.astype(F64)
    assert np.array_equal(np.isnan(g), np.isnan(want))
    assert np.array_equal(g[~np.isnan(g)], want[~np.isnan(want)])  # bit-exact: both are the same grid points
    assert np.abs(g[np.isfinite(g)]).max() == 448.0  # saturated, never NaN from a large finite value
    assert (g[(np.abs(v) > 0) & (np.abs(v) < 2.0 ** -10)] == 0).all()  # below half the smallest subnormal
    # ties go to the even mantissa: 1.0625 lies between 1 and 1.125 -> 1; 464 between 448 and (NaN) 480 -> 448
    assert quantize_e4m3(np.array([1.0625, 464.0, 1.5 * 2 ** -9], F32)).astype(F64).tolist() == [1.0, 448.0, 2 ** -8]


def independent_linear(x, w32, bias, kind, x_scale):
    """The fp8 Linear from its definition, in float64 after the fp32 scale arithmetic the spec fixes:
    s = float32(amax) / float32(448), q = E4M3(float32(v) / s), y = sum_k (q_x s_x)(q_w s_w) + bias."""
    x32, w32 = np.asarray(x, F32), np.asarray(w32, F32)
    amax_w = np.abs(w32).max(axis=0) if kind == "channel" else np.full(w32.shape[1], np.abs(w32).max(), F32)
    s_w = np.where(amax_w == 0, F32(1), amax_w / F32(448))
    q_w = e4m3_round(w32 / s_w[None, :])
    if x_scale is None:
        amax_x = np.abs(x32).max(axis=1)
        s_x = np.where(amax_x == 0, F32(1), amax_x / F32(448))[:, None]
    else:
        s_x = np.full((x32.shape[0], 1), F32(x_scale))
    q_x = e4m3_round(x32 / s_x)
    y = (q_x * s_x.astype(F64)) @ (q_w * s_w.astype(F64)[None, :])
    bound = (np.abs(q_x) @ np.abs(q_w)) * (s_x.astype(F64) * s_w.astype(F64)[None, :])
    return y + np.asarray(bias, F64)[None, :], bound


@pytest.mark.parametrize("kind", ["channel", "tensor"])
@pytest.mark.parametrize("static", [False, True])
def test_fp8_linear_matches_independent_numpy(kind, static):
    rng = np.random.default_rng(2 + static + 2 * (kind == "tensor"))
    M, K, N = 64, 96, 48
    x = rng.normal(0, 1, (M, K)).astype(F32)
    x[3, 5] = 900.0  # past the static range: saturates at 448 x s_x
    x[7] = rng.normal(0, 1e-6, K)  # a row of tiny values: per-token scales keep them, a static one flushes them
    x[9] = 0.0  # an all-zero row: its dynamic scale is 1, not 0/0
    w = rng.normal(0, 0.05, (K, N)).astype(F32)
    w[:, 4] *= 300.0  # one channel far larger than the rest: per-tensor scales lose the small ones
    w[:, 6] = 0.0
    b = rng.normal(0, 0.1, N).astype(F32)
    x_scale = F32(4.0) / F32(448) if static else None  # calibrated amax 4
    q, s = quantize_weight(w, kind)
    got = ref_linear(x, q, b, precision="fp8", out_dtype=F32, weight_scale=s,
                     x_scale=None if x_scale is None else np.array([x_scale], F32))
    want, bound = independent_linear(x, w, b, kind, x_scale)
    # fp32 accumulation of K exact fp8 products: |error| <= gamma_K sum_k |terms| (Higham, gamma_K = K u / (1 - K u),
    # u = 2^-24), plus 3 roundings of the scale products and the bias add, each half an ulp of the result
    u = 2.0 ** -24
    tol = (K * u / (1 - K * u)) * bound + 3 * u * (np.abs(want) + np.abs(b)[None, :]) + 1e-30
    err = np.abs(got.astype(F64) - want)
    assert (err <= tol).all(), float((err / tol).max())
    if static:
        assert np.isclose(got[7] - b, 0, atol=1e-6).all()  # 1e-6 / s_x ~ 1e-4: below E4M3's smallest subnormal
    else:
        assert np.abs(got[7] - b).max() > 0  # kept by its own scale
    assert np.allclose(got[9], b)


def test_fp8_linear_rounds_its_output_as_hybrid():
    # the epilogue of an fp8 Linear is hybrid's: the accumulator (+ bias) rounded to the fp16 output, GELU from it
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (16, 32)).astype(np.float16)
    w = rng.normal(0, 0.2, (32, 24)).astype(F32)
    q, s = quantize_weight(w)
    h = ref_linear(x, q, None, precision="fp8", out_dtype=np.float16, weight_scale=s)
    g = ref_linear(x, q, None, precision="fp8", out_dtype=np.float16, weight_scale=s, activation="gelu_tanh")
    from trtrun.reference import ref_gelu
    assert np.array_equal(g, ref_gelu(h, "gelu_tanh", out_dtype=np.float16))


def test_quantize_weight_refuses_bad_input():
    with pytest.raises(ValueError, match="channel, tensor"):
        quantize_weight(np.ones((2, 2), F32), "row")
    with pytest.raises(ValueError, match="K, N"):
        quantize_weight(np.ones(4, F32))
    q, s = quantize_activation(np.full((2, 3), 1e30, F32), np.array([1.0], F32))
    assert (q.astype(F32) == E4M3_MAX).all()  # saturates rather than NaN


# ------------------------------------------------------------------------------------------ plans
@pytest.fixture(scope="module")
def tiny(exported, real_text_batches):
    """The tiny random BERT: onnx path, real-text batches (8 RT sentences, 3 Wikipedia paragraphs)."""
    return exported("bert"), real_text_batches("bert")


@pytest.fixture(scope="module")
def fp8_plans(tiny):
    from trtrun.builder import build

    onnx, batches = tiny
    return {"fp32": build(onnx, precision="fp32"),
            "dynamic": build(onnx, precision="fp8"),
            "static": build(onnx, precision="fp8", fp8_activations="static", calib=batches[:1], calib_name="rt"),
            "tensor": build(onnx, precision="fp8", fp8_weights="tensor")}


def test_fp8_plan_ops_and_fidelity(fp8_plans, tiny):
    from trtrun.builder.precision_search import run_outputs, sample_cosines, worst

    _, batches = tiny
    ref = run_outputs(fp8_plans["fp32"], batches)
    for key in ("dynamic", "static", "tensor"):
        plan = fp8_plans[key]
        assert plan.precision == "fp8"
        lin = [op for op in plan.ops if op["type"] == "Linear"]
        assert lin and all(op["precision"] == "fp8" for op in lin)
        assert all(op["precision"] == "hybrid" for op in plan.ops if op["type"] != "Linear")
        for op in lin:
            assert plan.weights[op["weights"]["weight"]].dtype == e4m3_dtype()
            assert plan.weights[op["weights"]["weight_scale"]].shape == ((1,) if key == "tensor" else
                                                                         (plan.weights[op["weights"]["weight"]].shape[1],))
            assert ("x_scale" in op["weights"]) == (key == "static")
        cos = sample_cosines(run_outputs(plan, batches), ref, batches)
        # fp8 keeps 3 mantissa bits (relative step 2^-4): per-layer errors of a few percent of a Linear's output;
        # over two layers the hidden states stay well correlated with fp32 but far from hybrid's 0.9999+
        assert 0.98 < worst(cos) < 0.99999, (key, worst(cos))


def test_fp8_plan_round_trip(fp8_plans, tiny, tmp_path):
    from trtrun.plan import load_plan
    from trtrun.reference import ReferenceBackend

    _, batches = tiny
    plan = fp8_plans["static"]
    path = plan.save(tmp_path / "s.plan")
    back = load_plan(path)
    assert back.header["ops"] == plan.header["ops"]
    for name, a in plan.weights.items():
        assert back.weights[name].dtype == a.dtype
        assert np.array_equal(back.weights[name].view(np.uint8), np.ascontiguousarray(a).view(np.uint8))
    a = ReferenceBackend(plan).run(batches[1])
    b = ReferenceBackend(back).run(batches[1])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    text = back.summary()
    assert "precision fp8" in text and "fp8 scales: weight per channel, activation static" in text
    assert "fp8: weight scales per channel, activation scales static (calibrated on rt" in text
    d = back.to_dict()
    assert {o["fp8_scales"]["activation"] for o in d["ops"] if o["precision"] == "fp8"} == {"static"}


def _first_linear(plan):
    return next(i for i, op in enumerate(plan.ops) if op["type"] == "Linear")


def _remade(plan, edit):
    """plan's header and weights after edit(header, weights) -> Plan.from_parts (validation) of the result."""
    from trtrun.plan import Plan

    h = copy.deepcopy(plan.header)
    h.pop("weights")
    w = dict(plan.weights)
    edit(h, w)
    return Plan.from_parts(h, w)


@pytest.mark.parametrize("case, match", [
    ("fp8 on a LayerNorm", "fp8 is a Linear op's precision"),
    ("fp16 weight", "must be float8_e4m3fn"),
    ("fp8 weight in a hybrid op", "expected a float dtype"),
    ("no weight_scale", "needs its weight_scale"),
    ("weight_scale too long", "per output channel"),
    ("weight_scale fp16", "a scale is float32"),
    ("x_scale [2]", "static activation scale is \\[1\\]"),
    ("scale on a hybrid op", "only an fp8 Linear has"),
    ("zero scale", "positive and finite"),
    ("NaN x_scale", "positive and finite"),
    ("negative scale", "positive and finite"),
    ("plan precision fp9", "header.precision"),
    ("op precision fp4", "is not one of fp32, fp16, hybrid, fp8"),
])
def test_hostile_fp8_fields_refused(fp8_plans, case, match):
    plan = fp8_plans["static"]
    i = _first_linear(plan)

    def edit(h, w):
        op = h["ops"][i]
        ws = op["weights"]
        if case == "fp8 on a LayerNorm":
            next(o for o in h["ops"] if o["type"] == "LayerNorm")["precision"] = "fp8"
        elif case == "fp16 weight":
            w[ws["weight"]] = w[ws["weight"]].astype(F32).astype(np.float16)
        elif case == "fp8 weight in a hybrid op":
            op["precision"] = "hybrid"
            del ws["weight_scale"], ws["x_scale"]
        elif case == "no weight_scale":
            del ws["weight_scale"]
        elif case == "weight_scale too long":
            w[ws["weight_scale"]] = np.ones(w[ws["weight_scale"]].shape[0] + 1, F32)
        elif case == "weight_scale fp16":
            w[ws["weight_scale"]] = w[ws["weight_scale"]].astype(np.float16)
        elif case == "x_scale [2]":
            w[ws["x_scale"]] = np.ones(2, F32)
        elif case == "scale on a hybrid op":
            op["precision"] = "hybrid"
            w[ws["weight"]] = w[ws["weight"]].astype(F32).astype(np.float16)
        elif case == "zero scale":
            a = np.array(w[ws["weight_scale"]])
            a[3] = 0
            w[ws["weight_scale"]] = a
        elif case == "NaN x_scale":
            w[ws["x_scale"]] = np.array([np.nan], F32)
        elif case == "negative scale":
            w[ws["x_scale"]] = np.array([-1.0], F32)
        elif case == "plan precision fp9":
            h["precision"] = "fp9"
        elif case == "op precision fp4":
            op["precision"] = "fp4"

    with pytest.raises(PlanError, match=match):
        _remade(plan, edit)


def test_hostile_scale_in_a_file_refused_on_load(fp8_plans, tmp_path):
    # the header cannot vouch for a value in the blob: a file whose scale is 0 (fresh checksum) fails to load
    from trtrun.plan import load_plan
    from trtrun.plan.io import write_plan_file

    plan = fp8_plans["static"]
    op = plan.ops[_first_linear(plan)]
    w = dict(plan.weights)
    w[op["weights"]["x_scale"]] = np.zeros(1, F32)
    path = tmp_path / "bad.plan"
    write_plan_file(path, plan.header, w, plan.blob_nbytes, str(path))
    with pytest.raises(PlanError, match=f"{op['name']}.*x_scale must be positive and finite"):
        load_plan(path)
    dtype_lie = copy.deepcopy(plan.header)  # a tensor may not be fp8: only weights are
    t = op["outputs"][0]
    dtype_lie["tensors"][t]["dtype"] = "float8_e4m3fn"
    write_plan_file(path, dtype_lie, plan.weights, plan.blob_nbytes, str(path))
    with pytest.raises(PlanError, match="dtype"):
        load_plan(path)


def test_calibration_is_deterministic(fp8_plans, tiny):
    from trtrun.builder import build
    from trtrun.builder.quantize_fp8 import calibrate

    onnx, batches = tiny
    hybrid = build(onnx, precision="hybrid")
    a = calibrate(hybrid, batches)
    b = calibrate(hybrid, batches[::-1])
    assert a == b and all(v > 0 for v in a.values())
    # one batch's maxima are at most both batches' (a max over more tokens); the scales are amax / 448
    one = calibrate(hybrid, batches[:1])
    assert all(one[k] <= a[k] for k in a)
    again = build(onnx, precision="fp8", fp8_activations="static", calib=batches[:1], calib_name="rt")
    plan = fp8_plans["static"]
    for op in plan.ops:
        if op["type"] == "Linear":
            xs = op["weights"]["x_scale"]
            assert again.weights[xs].tobytes() == plan.weights[xs].tobytes()
            assert math.isclose(float(plan.weights[xs][0]), one[op["name"]] / 448, rel_tol=1e-7)


def test_gpu_lowering_of_fp8_plans(fp8_plans, hybrid):
    """lower_plan hands the runtime each fp8 Linear's E4M3 codes transposed to [N, K] (cuBLASLt's fp8 GEMMs take
    the weight as the transposed operand: native/runtime/gemm.cpp), the codes themselves unchanged; its weight
    scale as the plan has it, except a per-tensor [1] without a static x_scale, broadcast to [N] (outer-vector
    scaling takes one per channel); x_scale [1] as it is; the rest as the hybrid plan's."""
    from trtrun.runtime.lower import check_gpu_support, lower_plan

    for key in ("dynamic", "static", "tensor"):
        plan = fp8_plans[key]
        check_gpu_support(plan)  # no longer refused
        low = lower_plan(plan)
        lw = low["weights"]
        by_name = {op["name"]: op for op in plan.ops}
        lin = [o for o in low["ops"] if o["type"] == "Linear"]
        assert lin and {o["precision"] for o in lin} == {"fp8"}
        assert {o["precision"] for o in low["ops"] if o["type"] != "Linear"} == {"hybrid"}
        for o in lin:
            pw = by_name[o["name"]]["weights"]
            q = np.asarray(plan.weights[pw["weight"]])
            K, N = q.shape
            name, arr = lw[o["weights"]["weight"]]
            assert arr.dtype == e4m3_dtype() and arr.shape == (N, K) and arr.flags["C_CONTIGUOUS"], name
            assert arr.view(np.uint8).tobytes() == np.ascontiguousarray(q.T).view(np.uint8).tobytes()
            s = np.asarray(plan.weights[pw["weight_scale"]], F32)
            _, ls = lw[o["weights"]["weight_scale"]]
            assert ls.dtype == F32
            if key == "tensor":  # dynamic activation scales: the per-tensor scale as N equal ones
                assert s.shape == (1,) and ls.shape == (N,) and (ls == s[0]).all()
            else:
                assert s.shape == (N,) and ls.tobytes() == s.tobytes()
            assert ("x_scale" in o["weights"]) == (key == "static")
            if key == "static":
                _, lx = lw[o["weights"]["x_scale"]]
                assert lx.dtype == F32 and lx.tobytes() == np.asarray(plan.weights[pw["x_scale"]], F32).tobytes()
            y_dt = plan.tensors[by_name[o["name"]]["outputs"][0]]["dtype"]
            _, lb = lw[o["weights"]["bias"]]
            assert lb.dtype == (F32 if y_dt == "float32" else np.float16)
    # per-tensor weight scale with a static activation scale: both scalars, kept [1] (cuBLASLt's scalar scales)
    from trtrun.builder.quantize_fp8 import assign_precisions, linear_ops
    from trtrun.plan import Plan

    hdr = {k: v for k, v in hybrid.header.items() if k != "weights"}
    w32 = {k: np.asarray(v, F32) for k, v in fp8_plans["fp32"].weights.items()}
    choice = {op["name"]: "fp8" for op in linear_ops(hdr)}
    p = Plan.from_parts(*assign_precisions(hdr, dict(hybrid.weights), w32, choice, weight_scale="tensor",
                                           x_amax={name: 2.0 for name in choice}))
    low = lower_plan(p)
    for o in (o for o in low["ops"] if o["type"] == "Linear"):
        assert low["weights"][o["weights"]["weight_scale"]][1].shape == (1,)
        assert low["weights"][o["weights"]["x_scale"]][1].shape == (1,)
    _engine_description_checks(low)


@pytest.fixture(scope="module")
def hybrid(tiny):
    """The tiny BERT's hybrid plan (what assign_precisions gives each Linear its precision in)."""
    from trtrun.builder import build

    return build(tiny[0], precision="hybrid")


def test_gpu_lowering_of_a_mixed_plan(fp8_plans, hybrid):
    """A mixed plan (--precision auto's: fp8, hybrid and fp32 Linears in one plan) lowers with each Linear in its
    own op's precision: fp8 codes transposed, fp16 weights for hybrid ones, fp32 weights (and fp32 x, y) for fp32
    ones; the Engine's description checks take it (on a machine without a GPU they pass before the device error)."""
    from trtrun.builder.quantize_fp8 import assign_precisions, linear_ops
    from trtrun.plan import Plan
    from trtrun.runtime.lower import lower_plan

    hyb = hybrid
    hdr = {k: v for k, v in hyb.header.items() if k != "weights"}
    w32 = {k: np.asarray(v, F32) for k, v in fp8_plans["fp32"].weights.items()}
    kinds = ("fp8", "hybrid", "fp32")
    choice = {op["name"]: kinds[i % 3] for i, op in enumerate(linear_ops(hdr))}
    plan = Plan.from_parts(*assign_precisions(hdr, dict(hyb.weights), w32, choice))
    assert plan.precision == "mixed"
    low = lower_plan(plan)
    want = {"fp8": e4m3_dtype(), "hybrid": np.dtype(np.float16), "fp32": np.dtype(F32)}
    seen = set()
    for o in low["ops"]:
        if o["type"] != "Linear":
            continue
        assert o["precision"] == choice[o["name"]]
        assert low["weights"][o["weights"]["weight"]][1].dtype == want[o["precision"]]
        assert ("weight_scale" in o["weights"]) == (o["precision"] == "fp8")
        if o["precision"] == "fp32":
            assert {low["tensors"][o["inputs"][0]][1], low["tensors"][o["outputs"][0]][1]} == {"float32"}
        seen.add(o["precision"])
    assert seen == set(kinds)
    _engine_description_checks(low)


def _engine_description_checks(low):
    """_C.Engine on the lowered plan: where the extension is importable but no GPU is usable, its description
    checks pass and the first error is the device's; a float8 weight in another role is an InputError naming it."""
    try:
        from trtrun.runtime.extension import load_extension

        c = load_extension()
    except Exception:
        return  # the extension is not built here: the lowering alone is checked
    from trtrun.errors import DeviceError

    args = lambda lw: (low["tensors"], low["ops"], lw, low["inputs"], low["outputs"], low["batch_max"],  # noqa: E731
                       low["seq_max"], low["tf32"], 0)
    if c.device_count() == 0:
        with pytest.raises(DeviceError):
            c.Engine(*args(low["weights"]))
    ln = next(o for o in low["ops"] if o["type"] == "LayerNorm")
    fp8w = next(low["weights"][o["weights"]["weight"]][1] for o in low["ops"] if o["precision"] == "fp8")
    bad = list(low["weights"])
    g = ln["weights"]["gamma"]
    bad[g] = (bad[g][0], np.ascontiguousarray(fp8w.reshape(-1)[:bad[g][1].size]))
    with pytest.raises(InputError, match=f"op '{ln['name']}': weight 'gamma' .* is float8_e4m3fn, which only an "
                                         f"fp8 Linear's weight may be"):
        c.Engine(*args(bad))


def test_build_argument_errors(tiny):
    from trtrun.builder import build

    onnx, batches = tiny
    for kw, match in [({"precision": "hybrid", "calib": batches}, "fp8 or auto only"),
                      ({"precision": "fp8", "fp8_activations": "static"}, "need calibration text"),
                      ({"precision": "fp8", "fp8_weights": "row"}, "channel, tensor"),
                      ({"precision": "fp8", "calib": batches}, "dynamic ones need none"),
                      ({"precision": "fp8", "min_cosine": 0.9}, "belong to precision auto"),
                      ({"precision": "auto", "calib": batches, "holdout": batches}, "needs min_cosine"),
                      ({"precision": "auto", "min_cosine": 1.5, "calib": batches, "holdout": batches}, r"\(0, 1\)"),
                      ({"precision": "auto", "min_cosine": 0.99, "calib": batches}, "held-apart"),
                      ({"precision": "fp8", "save_onnx": "x.onnx"}, "no fp8 form")]:
        with pytest.raises(ValueError, match=match):
            build(onnx, **kw)


# ------------------------------------------------------------------------------------------ CLI
def trtrun_cli(capsys, *args):
    """`trtrun ARGS` in-process -> (exit code, stdout, stderr), through the console script's error handling."""
    from trtrun.cli.main import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fp8_build_and_inspect(tiny, tmp_path, capsys):
    onnx, _ = tiny
    out = tmp_path / "t.fp8.plan"
    code, _, err = trtrun_cli(capsys, "build", onnx, "--precision", "fp8", "--calib", "rt", "--calib-samples", 8,
                              "--fp8-weights", "tensor", "--max", "8,64", "-o", out)
    assert code == 0, err
    assert "calibration text: 8 texts of rt" in err
    assert "fp8: weight scales per tensor, activation scales static (calibrated on rt (seed 0), 8 samples)" in err
    code, text, _ = trtrun_cli(capsys, "inspect", out)
    assert code == 0 and "[fp8 scales: weight per tensor, activation static]" in text
    code, text, _ = trtrun_cli(capsys, "inspect", "--json", out)
    d = json.loads(text)
    assert d["precision"] == "fp8" and d["weights"]["by_dtype"]["float8_e4m3fn"]["count"] == 8


@pytest.mark.parametrize("args, match", [
    (["--calib", "rt"], "--calib applies to --precision fp8 or auto, not hybrid"),
    (["--precision", "fp16", "--min-cosine", "0.9"], "--min-cosine applies to --precision fp8 or auto"),
    (["--precision", "auto"], "needs --min-cosine"),
    (["--precision", "auto", "--min-cosine", "1.2"], "must be a number in \\(0, 1\\)"),
    (["--precision", "auto", "--min-cosine", "high"], "must be a number in \\(0, 1\\)"),
    (["--precision", "fp8", "--min-cosine", "0.99"], "belongs to --precision auto"),
    (["--precision", "fp8", "--fp8-activations", "static"], "needs calibration text"),
    (["--precision", "fp8", "--calib", "rt", "--fp8-activations", "dynamic"], "need no calibration text"),
    (["--precision", "fp8", "--save-onnx", "x.onnx"], "no fp8 form"),
    (["--precision", "fp8", "--calib-samples", "0", "--calib", "rt"], "x>=1"),
])
def test_cli_fp8_usage_errors(tiny, tmp_path, capsys, args, match):
    import re

    onnx, _ = tiny
    code, _, err = trtrun_cli(capsys, "build", onnx, "-o", tmp_path / "x.plan", *args)
    assert code == 2, err
    assert re.search(match, err), err
    assert not (tmp_path / "x.plan").exists()


def test_cli_bad_calibration_file(tiny, tmp_path, capsys):
    onnx, _ = tiny
    code, _, err = trtrun_cli(capsys, "build", onnx, "--precision", "fp8", "--calib", tmp_path / "none.txt",
                              "-o", tmp_path / "x.plan")
    assert code == 1 and "not one of rt, wiki, imdb and no such file" in err, err
    assert "Traceback" not in err
    from trtrun.calibration import text_sets
    with pytest.raises(InputError, match="--calib-samples"):
        text_sets("rt", 0)


def test_check_takes_fp8(tiny, tmp_path, capsys):
    onnx, _ = tiny
    out = tmp_path / "c"
    code, _, err = trtrun_cli(capsys, "check", onnx, "--precision", "fp8,hybrid", "--data", "rt", "-n", 4,
                              "--backend", "reference", "--no-random", "--downstream", "off", "--headroom-samples", 1,
                              "--no-plots", "-o", out, "--min-cosine", "0.99", "--gate", "fp8")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    fp8, hyb = rep["results"]["fp8"]["real"]["cos"], rep["results"]["hybrid"]["real"]["cos"]
    assert fp8["n"] == 4 and 0.99 <= fp8["min"] < hyb["min"]  # fp8 moves the output more than hybrid does


def test_fp8_plans_are_format_version_2(fp8_plans, tmp_path):
    # a plan is written at the version it needs: fp8 plans at 2 (an older trtrun says "newer version", not a
    # field error), every other plan still at 1
    import struct

    from trtrun.plan import load_plan
    from trtrun.plan.io import write_plan_file

    p8 = fp8_plans["dynamic"].save(tmp_path / "a.plan")
    p32 = fp8_plans["fp32"].save(tmp_path / "b.plan")
    assert struct.unpack_from("<I", p8.read_bytes(), 8)[0] == 2 and load_plan(p8).header["version"] == 2
    assert struct.unpack_from("<I", p32.read_bytes(), 8)[0] == 1 and load_plan(p32).header["version"] == 1
    plan = fp8_plans["dynamic"]
    lie = copy.deepcopy(plan.header)
    lie["version"] = 1  # fp8 content declared as version 1
    write_plan_file(tmp_path / "c.plan", lie, plan.weights, plan.blob_nbytes, "c")
    with pytest.raises(PlanError, match="header.version: is 1, expected 2 .*fp8 ops and weights need it"):
        load_plan(tmp_path / "c.plan")
    raw = bytearray(p8.read_bytes())  # preamble 1, header 2: the checksum made fresh
    struct.pack_into("<I", raw, 8, 1)
    import hashlib
    raw[-32:] = hashlib.sha256(bytes(raw[:-32])).digest()
    (tmp_path / "d.plan").write_bytes(bytes(raw))
    with pytest.raises(PlanError, match="the preamble says format version 1, the header 2"):
        load_plan(tmp_path / "d.plan")


def test_fuzzed_fp8_plans_raise_only_plan_errors(tmp_path):
    """scripts/fuzz_plan.py's mutator on tiny fp8 plans (static per-channel and dynamic per-tensor scales): loading
    raises nothing but PlanError, and a mutant that loads runs on a tiny input raising nothing but PlanError or
    InputError (NaN outputs are allowed: a crafted weight may hold anything)."""
    import importlib.util
    import io
    import sys
    from pathlib import Path

    from trtrun.builder.quantize_fp8 import assign_precisions, linear_ops
    from trtrun.plan import Plan

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("fuzz_plan_fp8", repo / "scripts" / "fuzz_plan.py")
    fz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fz)
    sys.path.insert(0, str(repo / "tests"))
    from handmade_plans import tiny_plan

    prof = {"batch": [1, 1, 2], "seq": [1, 4, 8]}
    seeds = []
    for i, (kind, static) in enumerate((("channel", True), ("tensor", False))):
        h = tiny_plan("hybrid", "encoder", hidden=8, heads=2, layers=1, vocab=16, max_pos=8, profile=prof, seed=4 + i)
        hdr = {k: v for k, v in h.header.items() if k != "weights"}
        w32 = {k: np.asarray(v, F32) for k, v in h.weights.items()}
        amax = {op["name"]: 3.0 for op in linear_ops(hdr)} if static else None
        choice = {op["name"]: "fp8" for op in linear_ops(hdr)}
        p = Plan.from_parts(*assign_precisions(hdr, dict(h.weights), w32, choice, weight_scale=kind, x_amax=amax))
        seeds.append(p.save(tmp_path / f"seed{i}.plan").read_bytes())
    out = io.StringIO()  # (the mutants keep their seed's format version, 2 for fp8, unless they mutate it)
    r = fz.fuzz(seeds, execs=1500, seed=24, crashes=tmp_path / "crashes", exec_timeout=20.0, out=out)
    assert r["execs"] == 1500 and not r["crashes"] and not r["hangs"], out.getvalue()[-3000:]
    unexpected = {k: v for k, v in r["outcomes"].items()
                  if not k.startswith(("PlanError", "loaded, ", "engine description: "))}
    assert not unexpected, (unexpected, out.getvalue()[-3000:])
    assert sum(v for k, v in r["outcomes"].items() if k.startswith("loaded, ")) >= 50  # mutants that run the fp8 path


def test_gpu_lowering_refuses_fp8_shapes_cublaslt_cannot_take(fp8_plans):
    """cuBLASLt's fp8 GEMMs need K and N multiples of 16: a plan with another fp8 weight shape is refused at
    lowering, naming the op and the shape (so --backend auto runs it on the reference backend), not at context
    creation. check_gpu_support reads the header only, so a header with one weight's shape changed stands in."""
    import copy
    import types

    from trtrun.errors import PlanError
    from trtrun.runtime.lower import check_gpu_support

    plan = fp8_plans["dynamic"]
    lin = next(op for op in plan.ops if op["type"] == "Linear")
    for change in ((0, 8), (1, 8), (0, 0)):
        header = copy.deepcopy(plan.header)
        shape = header["weights"][lin["weights"]["weight"]]["shape"]
        shape[change[0]] += change[1]
        fake = types.SimpleNamespace(ops=plan.ops, header=header, precision=plan.precision, profile=plan.profile,
                                     tensors=plan.tensors)
        if change[1] == 0:
            check_gpu_support(fake)
            continue
        with pytest.raises(PlanError, match=rf"op '{lin['name']}'.*fp8 weight of {shape[0]} x {shape[1]}.*multiples of 16"):
            check_gpu_support(fake)


def test_linears_cuBLASLt_cannot_run_in_fp8_stay_hybrid(tmp_path, real_text_batches):
    """cuBLASLt's fp8 GEMMs need K and N multiples of 16: with an MLP 200 wide (200 = 12 * 16 + 8), `--precision
    fp8` keeps the two MLP Linears hybrid, names them and why, and the plan is mixed; the precision search never
    gives them fp8. The GPU lowering would refuse them in fp8 (docs/runtime.md)."""
    pytest.importorskip("transformers")
    from conftest import TINY
    from trtrun.builder import build
    from trtrun.export import export_model

    path = export_model("bert-base", tmp_path / "m.onnx", overrides={**TINY, "intermediate_size": 200}, seed=0)
    logs = []
    plan = build(path, precision="fp8", log=logs.append)
    lin = {op["name"]: op for op in plan.ops if op["type"] == "Linear"}
    narrow = {n for n, op in lin.items() if 200 in plan.weights[op["weights"]["weight"]].shape}
    assert len(narrow) == 4  # two layers, up and down projections
    assert all(lin[n]["precision"] == "hybrid" for n in narrow)
    assert all(op["precision"] == "fp8" for n, op in lin.items() if n not in narrow)
    assert plan.precision == "mixed"
    kept = plan.header["builder"]["fp8"]["kept_hybrid"]
    assert set(kept) == narrow and all("multiples of 16" in why for why in kept.values())
    assert any("kept hybrid" in line for line in logs)

    batches = real_text_batches("bert")
    from trtrun.builder.cost_model import CostModel

    # priced by FLOPs, where fp8 is the cheaper (the default roofline prices the runtime's fp8 path above hybrid)
    plan = build(path, precision="auto", min_cosine=0.5, calib=batches[:1], holdout=batches[1:], log=logs.append,
                 cost_table=CostModel(estimate="flops"))
    lin = {op["name"]: op for op in plan.ops if op["type"] == "Linear"}
    assert all(lin[n]["precision"] != "fp8" for n in narrow)
    assert any(op["precision"] == "fp8" for op in lin.values())  # a loose budget: the others take fp8
    per_op = plan.header["builder"]["precision_search"]["ops"]
    assert all("multiples of 16" in per_op[n]["no_fp8"] for n in narrow)
