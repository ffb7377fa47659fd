"""The numpy reference backend, checked against independent implementations.

Every op function is compared with torch's float64 functional ops (layer_norm, scaled_dot_product_attention,
gelu, embedding, linear) on fresh random inputs, several shapes including the odd sizes 1, 7 and 129.

Tolerances are error bounds, not tuned numbers. Notation: u = unit roundoff (float32: 2^-24, fp16: 2^-11).
- A dot product of length K accumulated in float32 in any order (BLAS blocking, FMA) is within
  gamma_K * sum|x_i w_i|, gamma_K = K u / (1 - K u) (Higham, Accuracy and Stability, eq. 3.5).
- Each further rounding (bias add, cast to the output dtype, GELU rounding) adds u_dtype * |value|.
- Sums in fp16 are pairwise trees in the reference, pairwise sums with 8-wide leaves in numpy float32:
  relative error <= (ceil(log2 n) + 8) u of the sum of magnitudes.
The fp16-emulating modes are judged against the error that fp16 rounding itself implies (u16 = 4.9e-4),
and each such test also shows the rounding really happens (the error exceeds what fp32 alone would give).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from trtrun.errors import InputError, ShapeError
from trtrun.plan import Plan, load_plan
from trtrun.reference import (ReferenceBackend, ref_attention, ref_embedding, ref_gelu, ref_layernorm,
                              ref_linear)

torch = pytest.importorskip("torch")
F = torch.nn.functional

from handmade_plans import tiny_plan  # noqa: E402  (tests/handmade_plans.py)

U32 = 2.0 ** -24
U16 = 2.0 ** -11
F32_MIN = float(np.finfo(np.float32).min)
UNIT = {np.dtype(np.float32): U32, np.dtype(np.float16): U16}


def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def gamma_k(k, u):
    return k * u / (1 - k * u)


def rng_for(request):
    """A generator seeded per test (from its node id), so each test draws its own fresh inputs."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ================================================================================= Linear / GELU
LINEAR_SHAPES = [(1, 1, 1, 1), (2, 7, 129, 7), (1, 129, 16, 33), (3, 5, 64, 96)]


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("precision,out", [("fp32", np.float32), ("hybrid", np.float16), ("hybrid", np.float32),
                                           ("fp16", np.float16)])
@pytest.mark.parametrize("activation", ["none", "gelu_erf", "gelu_tanh"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_against_torch(request, shape, precision, out, activation, with_bias):
    rng = rng_for(request)
    B, S, K, N = shape
    in_dt = np.float32 if precision == "fp32" else np.float16
    x = rng.normal(0, 1.5, (B, S, K)).astype(in_dt)
    w = rng.normal(0, 1 / math.sqrt(K), (K, N)).astype(in_dt)
    b = rng.normal(0, 0.5, N).astype(in_dt) if with_bias else None
    y = ref_linear(x, w, b, activation=activation, precision=precision, out_dtype=out)
    assert y.dtype == out and y.shape == (B, S, N)

    # float64 truth on the operands the op is specified to use (here already fp16 values in fp16/hybrid)
    xr, wr = t64(x), t64(w)
    br = t64(b) if with_bias else None
    acc = F.linear(xr, wr.T, br).numpy()
    # accumulation bound: treat the bias as one more product term
    mag = (t64(np.abs(x)) @ t64(np.abs(w))).numpy() + (np.abs(b.astype(np.float64)) if with_bias else 0)
    e_acc = gamma_k(K + 1, U32) * mag
    u_out = UNIT[np.dtype(out)]
    if activation == "none":
        truth = acc
        bound = e_acc + u_out * np.abs(truth)
    else:
        truth = F.gelu(torch.from_numpy(acc), approximate="none" if activation == "gelu_erf" else "tanh").numpy()
        # |gelu'| <= 1.13; fp32 rounds acc once (fp32), fp16/hybrid round it to out first (spec), then the
        # GELU value is rounded to float32 and to out.
        pre = U32 if precision == "fp32" else u_out
        bound = 1.13 * (e_acc + pre * np.abs(acc)) + (U32 + u_out) * np.abs(truth)
    err = np.abs(y.astype(np.float64) - truth)
    tiny = 2.0 ** -24 if out == np.float16 else 1e-38  # fp16 subnormal spacing near zero
    assert (err <= bound + tiny).all(), f"max excess {(err - bound).max()}"


def test_linear_hybrid_rounds_operands(request):
    """Hybrid really rounds fp32 operands to fp16: its error vs exact fp32-operand math exceeds the
    fp32-only bound, but stays within the bound fp16 operand rounding implies."""
    rng = rng_for(request)
    K, N = 129, 33
    x = rng.normal(0, 1, (4, 7, K)).astype(np.float32)
    w = rng.normal(0, 1 / math.sqrt(K), (K, N)).astype(np.float32)
    truth = (t64(x) @ t64(w)).numpy()
    mag = (t64(np.abs(x)) @ t64(np.abs(w))).numpy()
    y32 = ref_linear(x, w, precision="fp32")
    yh = ref_linear(x, w, precision="hybrid")
    assert (np.abs(y32 - truth) <= gamma_k(K, U32) * mag + U32 * np.abs(truth)).all()
    errh = np.abs(yh - truth)
    assert errh.max() > 10 * np.abs(y32 - truth).max()  # fp16 operand rounding dominates fp32 rounding
    # each operand product picks up <= 2 u16 relative error from rounding x and w
    assert (errh <= (2 * U16 + U16 ** 2 + gamma_k(K, U32)) * mag + U32 * np.abs(truth)).all()


def test_linear_fp16_mode_is_hybrid_gemm(request):
    """docs/plan-format.md: fp16-mode Linear computes as hybrid (what any fp16 GEMM library does)."""
    rng = rng_for(request)
    x = rng.normal(0, 1, (2, 7, 33)).astype(np.float16)
    w = rng.normal(0, 0.2, (33, 65)).astype(np.float16)
    b = rng.normal(0, 0.2, 65).astype(np.float16)
    for act in ("none", "gelu_erf"):
        np.testing.assert_array_equal(ref_linear(x, w, b, activation=act, precision="fp16", out_dtype=np.float16),
                                      ref_linear(x, w, b, activation=act, precision="hybrid", out_dtype=np.float16))


def test_linear_tf32(request):
    """With the plan's tf32 flag, fp32 GEMM operands are rounded to 10 mantissa bits (u = 2^-11)."""
    rng = rng_for(request)
    K = 129
    x = rng.normal(0, 1, (3, K)).astype(np.float32)
    w = rng.normal(0, 0.1, (K, 7)).astype(np.float32)
    truth = (t64(x) @ t64(w)).numpy()
    mag = (t64(np.abs(x)) @ t64(np.abs(w))).numpy()
    y = ref_linear(x, w, precision="fp32", tf32=True)
    err = np.abs(y - truth)
    assert err.max() > 10 * np.abs(ref_linear(x, w, precision="fp32") - truth).max()
    assert (err <= (2 * U16 + U16 ** 2 + gamma_k(K, U32)) * mag + U32 * np.abs(truth)).all()


@pytest.mark.parametrize("activation,approx", [("gelu_erf", "none"), ("gelu_tanh", "tanh")])
@pytest.mark.parametrize("out", [np.float32, np.float16])
def test_gelu_against_torch(request, activation, approx, out):
    rng = rng_for(request)
    x = np.concatenate([rng.normal(0, 3, 1000), np.linspace(-12, 12, 129), [0.0, -0.0, 1e-30, -1e-30]])
    x = x.astype(np.float32)
    y = ref_gelu(x, activation, out_dtype=out)
    truth = F.gelu(t64(x), approximate=approx).numpy()
    # GELU is evaluated in float64 and rounded once (to float32) and once more for fp16 output:
    # within half an ulp of each (u * |y|). torch evaluates 0.5 x (1 + erf/tanh(..)) literally, whose
    # 1 + (-1 + tiny) cancels for x << 0: absolute error up to a few float64 ulps of |x| (8e-16 |x|).
    # Plus the fp16 subnormal spacing for fp16 output.
    tiny = 2.0 ** -25 if out == np.float16 else 1e-44
    u = U32 if out == np.float32 else U32 + U16
    bound = u * np.abs(truth) + 8 * 2.0 ** -53 * np.abs(x) + tiny
    assert (np.abs(y.astype(np.float64) - truth) <= bound).all()


# ================================================================================= LayerNorm
def ln_bound(s, gamma, y_truth, u, n, input_err=0.0):
    """First-order error bound of LayerNorm computed with unit roundoff `u` (rows of length n).

    s: the exact input (after the residual add), float64 [M, n]. input_err: |error| of the input values
    before the LayerNorm (e.g. the rounding of x + residual). With k = ceil(log2 n) + 8 (pairwise sums):
      mean:  |dmean| <= k u mean|s| + u |mean|              (sum, then divide)
      d=s-m: |dd|    <= |dmean| + input_err + u |d|
      var:   |dvar|/var <= 2 max|dd|/sigma + (k + 2) u     (squares, sum, divide)
      rstd:  rel err <= |dvar|/(2 var) + 2 u               (+eps, sqrt, divide)
      y:     |dy| <= |gamma| (|dd|/sigma + |z| rel_rstd) + 2 u |y| (+ u |gamma z|)
    """
    k = math.ceil(math.log2(max(n, 2))) + 8
    mean = s.mean(-1, keepdims=True)
    d = s - mean
    sigma = np.sqrt((d * d).mean(-1, keepdims=True))
    z = d / sigma
    dmean = k * u * np.abs(s).mean(-1, keepdims=True) + u * np.abs(mean)
    dd = dmean + 2 * input_err + u * np.abs(d)
    dvar = 2 * dd.max(-1, keepdims=True) / sigma + (k + 2) * u
    rel_rstd = dvar / 2 + 2 * u
    g = np.abs(gamma)
    return g * (dd / sigma + np.abs(z) * rel_rstd) + u * g * np.abs(z) + 2 * u * np.abs(y_truth)


LN_SHAPES = [(1, 1, 7), (2, 7, 129), (3, 5, 16), (1, 3, 768)]


@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("precision,x_dt,r_dt,out_dt,p_dt", [
    ("fp32", np.float32, np.float32, np.float32, np.float32),
    ("hybrid", np.float32, np.float32, np.float16, np.float32),   # residual stream fp32 -> fp16 for a GEMM
    ("hybrid", np.float32, np.float16, np.float32, np.float32),   # fp16 LN output read as the residual
    ("fp16", np.float16, np.float16, np.float16, np.float16),
])
@pytest.mark.parametrize("with_residual", [True, False])
def test_layernorm_against_torch(request, shape, precision, x_dt, r_dt, out_dt, p_dt, with_residual):
    rng = rng_for(request)
    n = shape[-1]
    x = (rng.normal(0, 2, shape) + 0.5).astype(x_dt)
    r = rng.normal(0, 1, shape).astype(r_dt) if with_residual else None
    gamma = (1 + rng.normal(0, 0.2, n)).astype(p_dt)
    beta = rng.normal(0, 0.2, n).astype(p_dt)
    eps = 1e-5
    y, s = ref_layernorm(x, r, gamma, beta, epsilon=eps, precision=precision, out_dtype=out_dt,
                         sum_dtype=np.float32 if precision != "fp16" else np.float16)
    assert y.dtype == out_dt and y.shape == shape

    s64 = x.astype(np.float64) + (r.astype(np.float64) if with_residual else 0)
    truth = F.layer_norm(t64(s64), (n,), t64(gamma), t64(beta), eps).numpy()
    u = U16 if precision == "fp16" else U32
    input_err = u * np.abs(s64) if with_residual else 0.0  # the x + residual add rounds once
    bound = ln_bound(s64.reshape(-1, n), gamma.astype(np.float64), truth.reshape(-1, n), u, n,
                     np.broadcast_to(input_err, s64.shape).reshape(-1, n) if with_residual else 0.0)
    bound = bound.reshape(shape) + UNIT[np.dtype(out_dt)] * np.abs(truth)  # output rounding
    err = np.abs(y.astype(np.float64) - truth)
    assert (err <= bound).all(), f"max excess {(err - bound).max()}"
    # the sum output is x + residual rounded once in the compute dtype
    cdt = np.float16 if precision == "fp16" else np.float32
    expect_s = (x.astype(cdt) + r.astype(cdt)) if with_residual else x.astype(cdt)
    np.testing.assert_array_equal(s, expect_s.astype(s.dtype))
    if precision == "fp16" and n >= 16:
        # the fp16 statistics really are fp16. Hybrid on the same fp16 inputs with an fp16 output rounds
        # once; fp16 mode rounds the add, mean, variance, rstd and ~4 elementwise steps, so its mean error
        # must be clearly larger (independent roundings: ~sqrt(5) = 2.2x; measured 2.5-3.3x; we ask 1.8x).
        yh, _ = ref_layernorm(x, r, gamma, beta, epsilon=eps, precision="hybrid", out_dtype=np.float16)
        assert err.mean() > 1.8 * np.abs(yh.astype(np.float64) - truth).mean()


def test_layernorm_fp16_sum_overflow_gives_nan_hybrid_does_not(request):
    """fp16 mode exists to show where naive fp16 breaks: a row whose sum passes 65504 (768 values near
    100, like a BERT residual stream with outlier-free but large activations) makes mean = inf and the
    output NaN; hybrid (fp32 statistics) on the very same fp16 input is finite and correct."""
    rng = rng_for(request)
    n = 768
    x = (100 + rng.normal(0, 5, (2, 3, n))).astype(np.float16)
    gamma = np.ones(n, np.float16)
    beta = np.zeros(n, np.float16)
    y16, _ = ref_layernorm(x, None, gamma, beta, epsilon=1e-12, precision="fp16", out_dtype=np.float16)
    assert np.isnan(y16).all()
    yh, _ = ref_layernorm(x, None, gamma.astype(np.float32), beta.astype(np.float32), epsilon=1e-12,
                          precision="hybrid", out_dtype=np.float32)
    truth = F.layer_norm(t64(x), (n,), None, None, 1e-12).numpy()
    assert np.isfinite(yh).all()
    bound = ln_bound(x.astype(np.float64).reshape(-1, n), np.ones(n), truth.reshape(-1, n), U32, n)
    assert (np.abs(yh - truth).reshape(-1, n) <= bound + U32 * np.abs(truth).reshape(-1, n)).all()


def test_layernorm_fp16_square_overflow_is_silently_wrong(request):
    """Deviations beyond ~256 square past 65504: var = inf, every output collapses to beta (finite, but
    wrong): the other failure mode of fp16 statistics. Hybrid gets +-1."""
    n = 64
    x = np.tile(np.array([300.0, -300.0], np.float16), (1, 4, n // 2))
    gamma = np.ones(n, np.float16)
    beta = np.full(n, 0.25, np.float16)
    y16, _ = ref_layernorm(x, None, gamma, beta, epsilon=1e-5, precision="fp16", out_dtype=np.float16)
    np.testing.assert_array_equal(y16, np.full_like(y16, 0.25))
    yh, _ = ref_layernorm(x, None, gamma.astype(np.float32), beta.astype(np.float32), epsilon=1e-5,
                          precision="hybrid")
    np.testing.assert_allclose(yh, np.sign(x.astype(np.float32)) + 0.25, rtol=1e-6)


# ================================================================================= Attention
def torch_attention(q, k, v, mask_bool, scale):
    """float64 SDPA with Hugging Face's additive mask (float32 min on masked keys): in float64, scores of a
    fully masked row all equal -3.4e38 (their differences are below its spacing), so the row is uniform."""
    add = torch.zeros(mask_bool.shape, dtype=torch.float64)
    add[~mask_bool] = F32_MIN
    return F.scaled_dot_product_attention(q, k, v, attn_mask=add, scale=scale)


def split_heads(qkv, H, D):
    B, S, _ = qkv.shape
    x = t64(qkv).reshape(B, S, 3, H, D).permute(2, 0, 3, 1, 4)  # [3, B, H, S, D]
    return x[0], x[1], x[2]


def make_mask(rng, B, S, kind):
    m = np.ones((B, S), np.int64)
    if kind in ("padding", "left-padding"):
        for b in range(B):
            n = int(rng.integers(1, S + 1)) if b else S  # batch 0 unpadded, others random lengths
            if kind == "padding":
                m[b, n:] = 0
            else:
                m[b, :S - n] = 0
    elif kind == "all-masked":
        m[-1] = 0
    return m


ATTN_SHAPES = [(1, 1, 1, 1), (2, 7, 3, 5), (1, 129, 2, 16), (3, 33, 4, 8)]


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("precision,in_dt,out_dt", [("fp32", np.float32, np.float32),
                                                    ("hybrid", np.float16, np.float16),
                                                    ("fp16", np.float16, np.float16)])
@pytest.mark.parametrize("mask_kind,causal", [("none", False), ("padding", False), ("all-masked", False),
                                              ("none", True), ("padding", True), ("left-padding", True)])
def test_attention_against_torch(request, shape, precision, in_dt, out_dt, mask_kind, causal):
    rng = rng_for(request)
    B, S, H, D = shape
    qkv = rng.normal(0, 1.5, (B, S, 3 * H * D)).astype(in_dt)
    mask = make_mask(rng, B, S, mask_kind)
    scale = 1 / math.sqrt(D)
    y = ref_attention(qkv, mask if mask_kind != "none" else None, num_heads=H, head_size=D, scale=scale,
                      causal=causal, precision=precision, out_dtype=out_dt)
    assert y.dtype == out_dt and y.shape == (B, S, H * D)

    q, k, v = split_heads(qkv, H, D)
    allowed = torch.from_numpy(mask.astype(bool))[:, None, None, :].expand(B, 1, S, S).clone()
    if causal:
        allowed &= torch.ones(S, S, dtype=torch.bool).tril()
    truth = torch_attention(q, k, v, allowed, scale).permute(0, 2, 1, 3).reshape(B, S, H * D).numpy()

    # bound: |dy| <= max|v| * sum_j |dP_j| <= 2 max|v| * (max relative error of the unnormalized p_j)
    vmax = np.abs(qkv[..., 2 * H * D:]).astype(np.float64).max()
    smax = scale * float((q.abs() @ k.abs().transpose(-1, -2)).max())
    e_scores = gamma_k(D, U32) * smax + U32 * smax  # fp32 dot product of length D, then * scale
    if precision == "fp16":
        # scores rounded to fp16, s - max rounded (|s - max| <= 2 smax), exp, tree sum, divide: all fp16
        rel = e_scores + U16 * smax + 2 * U16 * smax + U16 + (math.ceil(math.log2(S)) + 1) * U16 + U16
    else:
        # fp32 softmax (exp, pairwise sum, divide); hybrid then rounds P to fp16 (one more u16)
        rel = e_scores + 2 * U32 * smax + (math.ceil(math.log2(S)) + 10) * U32
        if precision == "hybrid":
            rel += U16
    bound = 2 * vmax * rel + gamma_k(S, U32) * vmax + UNIT[np.dtype(out_dt)] * np.abs(truth)
    err = np.abs(y.astype(np.float64) - truth)
    assert (err <= bound).all(), f"max err {err.max()} bound {bound.min()}"

    # contract: a query whose keys are all masked attends uniformly to all keys
    for b in range(B):
        for i in range(S):
            if not allowed[b, 0, i].any():
                uniform = v[b].mean(dim=1).permute(1, 0)  # [D, H] -> mean over keys per head
                expect = v[b].mean(dim=1).reshape(-1).numpy() if H == 1 else uniform.T.reshape(-1).numpy()
                np.testing.assert_allclose(y[b, i].astype(np.float64), expect,
                                           atol=float(2 * vmax * rel + gamma_k(S, U32) * vmax + U16 * vmax))


def test_attention_rounding_is_emulated(request):
    """hybrid rounds P to fp16 and fp16 mode keeps scores/softmax in fp16: with float32 outputs (no output
    rounding) both are far from float64 than fp32 mode is on the same inputs, yet within the u16 bound."""
    rng = rng_for(request)
    B, S, H, D = 2, 65, 2, 16
    qkv = rng.normal(0, 1.5, (B, S, 3 * H * D)).astype(np.float16)
    q, k, v = split_heads(qkv, H, D)
    allowed = torch.ones(B, 1, S, S, dtype=torch.bool)
    truth = torch_attention(q, k, v, allowed, 0.25).permute(0, 2, 1, 3).reshape(B, S, H * D).numpy()
    err = {p: np.abs(ref_attention(qkv, None, num_heads=H, head_size=D, scale=0.25, precision=p) - truth).max()
           for p in ("fp32", "hybrid", "fp16")}
    vmax = float(np.abs(qkv).max())
    assert err["hybrid"] > 10 * err["fp32"] and err["fp16"] > 10 * err["fp32"], err
    assert err["hybrid"] <= 2 * U16 * vmax + 1e-5, err  # P rounded: sum_j |dP_j| <= u16, times max|v|


def test_attention_masks_exclude_keys(request):
    """A masked key's value cannot influence any output (padding and causal): change it, nothing moves."""
    rng = rng_for(request)
    B, S, H, D = 2, 9, 2, 4
    qkv = rng.normal(0, 1, (B, S, 3 * H * D)).astype(np.float32)
    mask = np.ones((B, S), np.int64)
    mask[1, 6:] = 0
    for precision in ("fp32", "hybrid", "fp16"):
        y1 = ref_attention(qkv, mask, num_heads=H, head_size=D, scale=0.5, causal=True, precision=precision)
        q2 = qkv.copy()
        q2[1, 6:, H * D:] = 1e3 * rng.normal(size=(3, 2 * H * D))  # K and V of masked keys
        q2[0, 5:, H * D:] = 1e3 * rng.normal(size=(4, 2 * H * D))  # future keys of batch 0 ...
        y2 = ref_attention(q2, mask, num_heads=H, head_size=D, scale=0.5, causal=True, precision=precision)
        np.testing.assert_array_equal(y1[1, :6], y2[1, :6])
        np.testing.assert_array_equal(y1[0, :5], y2[0, :5])  # ... only change rows >= 5


def test_attention_fp16_score_overflow_gives_nan_hybrid_does_not(request):
    """Scores past 65504 overflow in fp16 mode (inf - inf = NaN in the softmax); hybrid keeps fp32 scores."""
    rng = rng_for(request)
    B, S, H, D = 1, 8, 1, 64
    qkv = rng.normal(0, 1, (B, S, 3 * D)).astype(np.float16)
    qkv[..., :2 * D] = 100.0  # q.k = 64 * 1e4 = 6.4e5, * scale 1/8 = 8e4 > 65504
    y16 = ref_attention(qkv, None, num_heads=H, head_size=D, scale=1 / 8, precision="fp16", out_dtype=np.float16)
    assert np.isnan(y16).all()
    yh = ref_attention(qkv, None, num_heads=H, head_size=D, scale=1 / 8, precision="hybrid", out_dtype=np.float16)
    assert np.isfinite(yh).all()
    # all scores equal -> uniform average of V
    np.testing.assert_allclose(yh[0], np.broadcast_to(qkv[0, :, 2 * D:].astype(np.float64).mean(0), (S, D)),
                               atol=4 * U16 * float(np.abs(qkv[..., 2 * D:]).max()))


def test_attention_fully_masked_row_is_uniform_in_every_mode(request):
    rng = rng_for(request)
    S, D = 6, 4
    qkv = rng.normal(0, 1, (1, S, 3 * D)).astype(np.float16)
    mask = np.zeros((1, S), np.int64)
    v = qkv[0, :, 2 * D:].astype(np.float64)
    for precision in ("fp32", "hybrid", "fp16"):
        y = ref_attention(qkv, mask, num_heads=1, head_size=D, scale=0.5, causal=True, precision=precision)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y[0], np.broadcast_to(v.mean(0), (S, D)), atol=4 * U16 * np.abs(v).max())


# ================================================================================= Embedding
@pytest.mark.parametrize("B,S,N", [(1, 1, 7), (2, 7, 129), (3, 33, 16)])
@pytest.mark.parametrize("precision,tab_dt,ln_dt,out_dt", [("fp32", np.float32, np.float32, np.float32),
                                                           ("hybrid", np.float16, np.float32, np.float16),
                                                           ("fp16", np.float16, np.float16, np.float16)])
@pytest.mark.parametrize("variant", ["bert", "bert-no-token-types-given", "gpt2", "offset"])
def test_embedding_against_torch(request, B, S, N, precision, tab_dt, ln_dt, out_dt, variant):
    rng = rng_for(request)
    V, P, T = 31, 40, 2
    word = rng.normal(0, 1, (V, N)).astype(tab_dt)
    pos = rng.normal(0, 0.5, (P, N)).astype(tab_dt)
    tt = rng.normal(0, 0.5, (T, N)).astype(tab_dt) if variant != "gpt2" else None
    ln = variant != "gpt2"
    gamma = (1 + rng.normal(0, 0.2, N)).astype(ln_dt) if ln else None
    beta = rng.normal(0, 0.2, N).astype(ln_dt) if ln else None
    off = 2 if variant == "offset" else 0
    ids = rng.integers(0, V, (B, S))
    tids = rng.integers(0, T, (B, S)) if variant in ("bert", "offset") else None
    y = ref_embedding(ids, tids, word=word, position=pos, token_type=tt, gamma=gamma, beta=beta,
                      epsilon=1e-12 if ln else None, position_offset=off, precision=precision, out_dtype=out_dt)
    assert y.dtype == out_dt and y.shape == (B, S, N)

    tid_t = torch.from_numpy(tids if tids is not None else np.zeros_like(ids))
    e = F.embedding(torch.from_numpy(ids), t64(word)) + t64(pos)[off:off + S][None]
    mag = F.embedding(torch.from_numpy(ids), t64(np.abs(word))) + t64(np.abs(pos))[off:off + S][None]
    if tt is not None:
        e = e + F.embedding(tid_t, t64(tt))
        mag = mag + F.embedding(tid_t, t64(np.abs(tt)))
    e, mag = e.numpy(), mag.numpy()
    u = U16 if precision == "fp16" else U32
    sum_err = 2 * u * mag  # two additions, each rounded in the compute dtype
    if not ln:
        truth = e
        bound = sum_err + UNIT[np.dtype(out_dt)] * np.abs(truth)
    else:
        truth = F.layer_norm(torch.from_numpy(e), (N,), t64(gamma), t64(beta), 1e-12).numpy()
        bound = ln_bound(e.reshape(-1, N), gamma.astype(np.float64), truth.reshape(-1, N), u, N,
                         sum_err.reshape(-1, N)).reshape(truth.shape)
        bound = bound + UNIT[np.dtype(out_dt)] * np.abs(truth)
    err = np.abs(y.astype(np.float64) - truth)
    assert (err <= bound).all(), f"max excess {(err - bound).max()}"


# ================================================================================= the backend
def torch_forward(plan: Plan, feeds: dict) -> np.ndarray:
    """An independent float64 interpreter of a plan with torch functional ops (no trtrun code)."""
    env = {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in feeds.items()}
    W = {k: t64(v) for k, v in plan.weights.items()}
    for op in plan.ops:
        a, w = op.get("attrs", {}), {r: W[n] for r, n in op.get("weights", {}).items() if n}
        ins = [env[t] if t else None for t in op["inputs"]] + [None, None]
        if op["type"] == "Embedding":
            ids = ins[0]
            S = ids.shape[1]
            off = a.get("position_offset", 0)
            e = F.embedding(ids, w["word"]) + w["position"][off:off + S][None]
            if "token_type" in w:
                e = e + F.embedding(ins[1] if ins[1] is not None else torch.zeros_like(ids), w["token_type"])
            y = F.layer_norm(e, (e.shape[-1],), w["gamma"], w["beta"], a["epsilon"]) if "gamma" in w else e
            outs = [y]
        elif op["type"] == "Linear":
            y = F.linear(ins[0], w["weight"].T, w.get("bias"))
            act = a.get("activation", "none")
            outs = [y if act == "none" else F.gelu(y, approximate="none" if act == "gelu_erf" else "tanh")]
        elif op["type"] == "Attention":
            H, D = a["num_heads"], a["head_size"]
            B, S, _ = ins[0].shape
            x = ins[0].reshape(B, S, 3, H, D).permute(2, 0, 3, 1, 4)
            allowed = torch.ones(B, 1, S, S, dtype=torch.bool)
            if ins[1] is not None:
                allowed &= (ins[1] != 0)[:, None, None, :]
            if a.get("causal"):
                allowed &= torch.ones(S, S, dtype=torch.bool).tril()
            y = torch_attention(x[0], x[1], x[2], allowed, a["scale"])
            outs = [y.permute(0, 2, 1, 3).reshape(B, S, H * D)]
        elif op["type"] == "LayerNorm":
            s = ins[0] + ins[1] if ins[1] is not None else ins[0]
            outs = [F.layer_norm(s, (s.shape[-1],), w["gamma"], w["beta"], a["epsilon"]), s]
        for name, val in zip(op["outputs"], outs):
            if name:
                env[name] = val
    return env[plan.outputs[0]["name"]].numpy()


def cosines(a, b):
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def random_feeds(rng, plan, B, S):
    ids = rng.integers(0, plan.vocab_size, (B, S))
    mask = np.ones((B, S), np.int64)
    for b in range(1, B):
        mask[b, int(rng.integers(1, S + 1)):] = 0
    f = {"input_ids": ids, "attention_mask": mask}
    if any(i["name"] == "token_type_ids" for i in plan.inputs):
        f["token_type_ids"] = rng.integers(0, 2, (B, S))
    return f


# Acceptance bars of issue 2 (per sample cosine vs an fp32/float64 reference): fp32 >= 0.99999, hybrid
# >= 0.9998. fp16 mode on these small, well-scaled models has the same rounding as hybrid plus fp16
# statistics (~log2(N) u16 relative), so it must meet the hybrid bar too. The fp32 bar is far looser than
# the fp32 plan's real error (~1e-6 relative per op); the max-abs bound below checks that tighter.
@pytest.mark.parametrize("arch", ["encoder", "decoder"])
@pytest.mark.parametrize("precision", ["fp32", "hybrid", "fp16"])
def test_backend_against_torch_float64(request, arch, precision):
    rng = rng_for(request)
    plan = tiny_plan(precision, arch, hidden=32, heads=4, layers=2, seed=int(rng.integers(1 << 30)))
    feeds = random_feeds(rng, plan, 4, 23)
    y = ReferenceBackend(plan).run(feeds)["last_hidden_state"]
    assert y.dtype == np.float32 and y.shape == (4, 23, 32)
    truth = torch_forward(plan, feeds)
    cos = cosines(y, truth)
    if precision == "fp32":
        assert cos.min() >= 0.99999
        # ~15 fp32 ops, each within ~1e-6 relative (bounds above); LayerNorm renormalizes, outputs are O(1-3):
        # 1e-4 absolute leaves a 5x margin over 15 ops * 1e-6 * gain ~1-3 * |y| ~3
        assert np.abs(y - truth).max() <= 1e-4
    else:
        assert cos.min() >= 0.9998, cos.min()
        # and the rounding is really there: fp16-level error, not fp32-level
        assert np.abs(y - truth).max() > 1e-4


def test_backend_capture_dtypes_shapes_and_consistency(request):
    rng = rng_for(request)
    plan = tiny_plan("hybrid", "decoder", layers=2)
    feeds = random_feeds(rng, plan, 3, 9)
    be = ReferenceBackend(plan)
    out, tensors = be.run(feeds, capture=True)
    assert set(tensors) == set(plan.tensors)
    for name, t in plan.tensors.items():
        assert tensors[name].dtype == np.dtype(t["dtype"]), name
        assert tensors[name].shape == plan.resolve_shape(t["shape"], 3, 9), name
    np.testing.assert_array_equal(out["last_hidden_state"], be.run(feeds)["last_hidden_state"])
    # each captured tensor is what the public op function gives on the captured inputs
    op = next(o for o in plan.ops if o["type"] == "Attention")
    a = op["attrs"]
    y = ref_attention(tensors[op["inputs"][0]], tensors[op["inputs"][1]], num_heads=a["num_heads"],
                      head_size=a["head_size"], scale=a["scale"], causal=a["causal"], precision="hybrid",
                      out_dtype=np.float16)
    np.testing.assert_array_equal(y, tensors[op["outputs"][0]])
    op = next(o for o in plan.ops if o["type"] == "LayerNorm" and len(o["outputs"]) == 2)
    y, s = ref_layernorm(tensors[op["inputs"][0]], tensors[op["inputs"][1]], plan.weights[op["weights"]["gamma"]],
                         plan.weights[op["weights"]["beta"]], epsilon=op["attrs"]["epsilon"], precision="hybrid",
                         out_dtype=np.float16, sum_dtype=np.float32)
    np.testing.assert_array_equal(y, tensors[op["outputs"][0]])
    np.testing.assert_array_equal(s, tensors[op["outputs"][1]])


def test_backend_on_loaded_plan_matches_in_memory(request, tmp_path):
    rng = rng_for(request)
    plan = tiny_plan("fp16", "encoder", layers=2)
    feeds = random_feeds(rng, plan, 2, 12)
    a = ReferenceBackend(plan).run(feeds)["last_hidden_state"]
    b = ReferenceBackend(load_plan(plan.save(tmp_path / "x.plan"))).run(feeds)["last_hidden_state"]
    np.testing.assert_array_equal(a, b)


def test_backend_checks_feeds():
    plan = tiny_plan()
    be = ReferenceBackend(plan)
    with pytest.raises(ShapeError, match="outside the plan's profile"):
        be.run({"input_ids": np.zeros((9, 4), np.int64)})
    with pytest.raises(InputError, match="token ids must lie in"):
        be.run({"input_ids": np.full((1, 4), 50)})


def test_backend_padding_does_not_leak(request):
    """Encoder outputs at real positions do not depend on what sits in padded positions."""
    rng = rng_for(request)
    plan = tiny_plan("hybrid", "encoder")
    f = random_feeds(rng, plan, 1, 10)
    f["attention_mask"][0, 6:] = 0
    be = ReferenceBackend(plan)
    y1 = be.run(f)["last_hidden_state"]
    f["input_ids"][0, 6:] = rng.integers(0, plan.vocab_size, 4)
    y2 = be.run(f)["last_hidden_state"]
    np.testing.assert_array_equal(y1[0, :6], y2[0, :6])


def test_backend_largest_profile_shape_runs(request):
    """B=32, S=512 (the default profile's max) in bounded memory/time on a narrow model."""
    rng = rng_for(request)
    plan = tiny_plan("hybrid", "encoder", hidden=16, heads=2, max_pos=512,
                     profile={"batch": [1, 8, 32], "seq": [1, 128, 512]})
    y = ReferenceBackend(plan).run(random_feeds(rng, plan, 32, 512))["last_hidden_state"]
    assert y.shape == (32, 512, 16) and np.isfinite(y).all()


# ================================================================================= real weights, real text
def _data_dir() -> Path:
    return Path(os.environ.get("TRTRUN_DATA", Path(__file__).resolve().parents[1] / ".data"))


def minilm_plan(precision: str) -> Plan:
    """all-MiniLM-L6-v2 (BERT) as a plan, written by hand from its safetensors (independent of the builder)."""
    from safetensors.numpy import load_file
    import json
    d = _data_dir() / "minilm"
    cfg = json.loads((d / "config.json").read_text())
    sd = load_file(str(d / "model.safetensors"))
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    N, H, L, I = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    eps = cfg["layer_norm_eps"]
    wdt = {"fp32": ("float32", "float32"), "hybrid": ("float16", "float32"), "fp16": ("float16", "float16")}
    lin_dt, ln_dt = wdt[precision]
    W, ops = {}, []
    emb = "embeddings."
    W.update({"word": sd[emb + "word_embeddings.weight"].astype(lin_dt),
              "pos": sd[emb + "position_embeddings.weight"].astype(lin_dt),
              "tt": sd[emb + "token_type_embeddings.weight"].astype(lin_dt),
              "emb.g": sd[emb + "LayerNorm.weight"].astype(ln_dt), "emb.b": sd[emb + "LayerNorm.bias"].astype(ln_dt)})
    ops.append({"type": "Embedding", "name": "emb", "inputs": ["input_ids", "token_type_ids"], "outputs": ["h0"],
                "weights": {"word": "word", "position": "pos", "token_type": "tt", "gamma": "emb.g", "beta": "emb.b"},
                "attrs": {"epsilon": eps}})
    half = "float16" if precision != "fp32" else "float32"
    resid = {"fp32": "float32", "hybrid": "float32", "fp16": "float16"}[precision]
    tensors = {n: {"dtype": "int64", "shape": ["B", "S"]} for n in ("input_ids", "attention_mask", "token_type_ids")}
    tensors["h0"] = {"dtype": half, "shape": ["B", "S", N]}

    def lin(name, x, w, b, y, width, dt, act="none"):
        W[name + ".w"] = np.ascontiguousarray(w.T).astype(lin_dt)
        W[name + ".b"] = b.astype(lin_dt)
        tensors[y] = {"dtype": dt, "shape": ["B", "S", width]}
        ops.append({"type": "Linear", "name": name, "inputs": [x], "outputs": [y],
                    "weights": {"weight": name + ".w", "bias": name + ".b"}, "attrs": {"activation": act}})

    h = "h0"
    for l in range(L):
        p = f"encoder.layer.{l}."
        qkv_w = np.concatenate([sd[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")], 0)
        qkv_b = np.concatenate([sd[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")], 0)
        lin(f"l{l}.qkv", h, qkv_w, qkv_b, f"l{l}.qkv", 3 * N, half)
        tensors[f"l{l}.ctx"] = {"dtype": half, "shape": ["B", "S", N]}
        ops.append({"type": "Attention", "name": f"l{l}.attn", "inputs": [f"l{l}.qkv", "attention_mask"],
                    "outputs": [f"l{l}.ctx"], "weights": {},
                    "attrs": {"num_heads": H, "head_size": N // H, "scale": 1 / math.sqrt(N // H), "causal": False}})
        lin(f"l{l}.o", f"l{l}.ctx", sd[p + "attention.output.dense.weight"], sd[p + "attention.output.dense.bias"],
            f"l{l}.o", N, resid)
        for name, x, res, y, key in ((f"l{l}.ln1", f"l{l}.o", h, f"l{l}.h1", "attention.output.LayerNorm"),):
            W[name + ".g"], W[name + ".b"] = sd[p + key + ".weight"].astype(ln_dt), sd[p + key + ".bias"].astype(ln_dt)
        tensors[f"l{l}.h1"] = {"dtype": half, "shape": ["B", "S", N]}
        ops.append({"type": "LayerNorm", "name": f"l{l}.ln1", "inputs": [f"l{l}.o", h], "outputs": [f"l{l}.h1"],
                    "weights": {"gamma": f"l{l}.ln1.g", "beta": f"l{l}.ln1.b"}, "attrs": {"epsilon": eps}})
        lin(f"l{l}.fc1", f"l{l}.h1", sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"],
            f"l{l}.i", I, half, "gelu_erf")
        lin(f"l{l}.fc2", f"l{l}.i", sd[p + "output.dense.weight"], sd[p + "output.dense.bias"], f"l{l}.f", N, resid)
        out = "last_hidden_state" if l == L - 1 else f"l{l}.h2"
        W[f"l{l}.ln2.g"], W[f"l{l}.ln2.b"] = (sd[p + "output.LayerNorm.weight"].astype(ln_dt),
                                              sd[p + "output.LayerNorm.bias"].astype(ln_dt))
        tensors[out] = {"dtype": "float32" if out == "last_hidden_state" else half, "shape": ["B", "S", N]}
        ops.append({"type": "LayerNorm", "name": f"l{l}.ln2", "inputs": [f"l{l}.f", f"l{l}.h1"], "outputs": [out],
                    "weights": {"gamma": f"l{l}.ln2.g", "beta": f"l{l}.ln2.b"}, "attrs": {"epsilon": eps}})
        h = out
    for op in ops:
        op["precision"] = precision
    header = {"precision": precision, "profile": {"batch": [1, 8, 32], "seq": [1, 128, 512]},
              "model": {"arch": "encoder", "hidden": N, "num_heads": H, "num_layers": L,
                        "vocab_size": cfg["vocab_size"], "max_position": cfg["max_position_embeddings"]},
              "inputs": [{"name": n, **tensors[n]} for n in ("input_ids", "attention_mask", "token_type_ids")],
              "outputs": [{"name": "last_hidden_state", **tensors["last_hidden_state"]}],
              "tensors": tensors, "ops": ops}
    return Plan.from_parts(header, W)


@pytest.mark.parametrize("precision", ["fp32", "hybrid"])
def test_minilm_real_text_against_transformers(precision):
    """Real weights and real sentences (Rotten Tomatoes, mixed lengths, padded batch) against Hugging Face's
    own torch BertModel in fp32 - the acceptance bars of issue 2 (fp32 cos >= 0.99999, hybrid >= 0.9998)."""
    d = _data_dir()
    if not (d / "minilm" / "model.safetensors").exists() or not (d / "rt_polarity.tsv").exists():
        pytest.skip(f"real data not found under {d} (fetch it with ../shared/data/get-data.sh)")
    pytest.importorskip("safetensors")
    transformers = pytest.importorskip("transformers")
    lines = (d / "rt_polarity.tsv").read_text(encoding="utf-8").splitlines()
    rng = np.random.default_rng(7)
    texts = [lines[i].split("\t", 1)[1] for i in rng.choice(len(lines), 8, replace=False)]
    texts[0] = texts[0][:20]  # make the lengths really mixed
    tok = transformers.AutoTokenizer.from_pretrained(str(d / "minilm"))
    enc = tok(texts, padding=True, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    model = transformers.AutoModel.from_pretrained(str(d / "minilm"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        truth = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    y = ReferenceBackend(minilm_plan(precision)).run(feeds)["last_hidden_state"]
    assert np.isfinite(y).all()
    m = feeds["attention_mask"].astype(bool)
    for b in range(len(texts)):  # per sample, over its real (unpadded) tokens
        c = cosines(y[b][m[b]][None], truth[b][m[b]][None])[0]
        assert c >= (0.99999 if precision == "fp32" else 0.9998), (b, c)
