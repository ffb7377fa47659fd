"""GPU tests of each kernel alone (native/kernels/*): layernorm, attention, embedding, gelu.

Every kernel runs on fresh random inputs (never zeros; outputs poisoned with NaN first, so an unwritten
element shows) and is compared with
  - float64 (numpy/torch on the same stored input values): the truth;
  - a same-precision baseline: PyTorch at that precision (fp32 ops with TF32 off; fp16 SDPA for hybrid
    attention, whose softmax is fp32 with P rounded to fp16 as the contract says), or, for the fp16 mode's
    naive fp16 statistics that PyTorch does not have, trtrun.reference's numpy emulation of that mode;
  - trtrun.reference's ref_* function at the same precision.
Acceptance (issue 3): the kernel's error against float64 is at most twice the baseline's own error (relative
L2 and max-abs/max norms), plus a floor of a fraction of an ulp of the output dtype so that a baseline that
lands exactly does not demand the impossible.

The helpers at the top are also used by tools/kernels_*.py. The binding is found as the kernels' Python binding: `trtrun._C.plugins` (the full extension) or, before/without it, the
standalone module `_trtrun_plugins` that tools/kernels_build.py builds (folder: env TRTRUN_PLUGINS_DIR,
default <repo>/build/plugins_standalone). Device buffers are torch CUDA tensors.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def load_plugins():
    """(module with .layernorm/.attention/.embedding/.gelu, None) or (None, reason)."""
    reasons = []
    try:
        from trtrun import _C  # type: ignore[attr-defined]

        if hasattr(_C, "plugins"):
            return _C.plugins, None
        reasons.append("trtrun._C has no 'plugins' submodule")
    except Exception as e:  # ImportError, or the extension failing to load
        reasons.append(f"trtrun._C not importable ({type(e).__name__}: {e})")
    d = os.environ.get("TRTRUN_PLUGINS_DIR", str(REPO / "build" / "plugins_standalone"))
    if Path(d).is_dir():
        if d not in sys.path:
            sys.path.insert(0, d)
        try:
            return importlib.import_module("_trtrun_plugins").plugins, None
        except Exception as e:
            reasons.append(f"_trtrun_plugins in {d} not importable ({type(e).__name__}: {e})")
    else:
        reasons.append(f"no standalone build in {d} (python3 tools/kernels_build.py)")
    return None, "; ".join(reasons)


def gpu_reason():
    """None when torch sees a CUDA GPU, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (the kernel tests use torch CUDA tensors as device buffers)"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


def dtype_name(t) -> str:
    """The kernels' name of a float dtype (the entry points take dtypes and precisions by name)."""
    import torch

    if t in (torch.float32, np.float32):
        return "float32"
    if t in (torch.float16, np.float16):
        return "float16"
    raise ValueError(f"no plugin dtype for {t}")


F16, F32 = "float16", "float32"


def ptr(t) -> int:
    return 0 if t is None else int(t.data_ptr())


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """||a - ref|| / ||ref|| in float64 over every element (NaN if a has NaN)."""
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm((a - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-300))


def max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max |ref| (NaN propagates)."""
    a = np.asarray(a, np.float64)
    ref = np.asarray(ref, np.float64)
    d = np.abs(a - ref)
    if np.isnan(d).any():
        return float("nan")
    return float(d.max() / max(np.abs(ref).max(), 1e-300))


# Error floors: the smallest error a correct result in that output dtype can be asked for (about half a unit
# in the last place, relative), so a baseline that happens to land exactly (error 0) does not demand the
# impossible. fp16: 2^-11; fp32: 2^-24.
FLOOR_MAX = {np.float16: 2.0 ** -11, np.float32: 2.0 ** -24}
FLOOR_L2 = {np.float16: 2.0 ** -15, np.float32: 2.0 ** -28}


def assert_within_twice(name: str, ours: np.ndarray, base: np.ndarray, ref64: np.ndarray, out_dtype) -> dict:
    """The acceptance rule for every kernel: its error against float64 is at most twice the error of a
    same-precision baseline (PyTorch, or the reference's emulation where PyTorch has no such mode), in both
    the relative L2 norm and the max-abs-over-max norm. Floors: half an ulp of the output dtype for the max
    norm (one rounding of the largest element), 1/16 ulp for the L2 norm (only to avoid demanding 0)."""
    t = np.dtype(out_dtype).type
    e = {
        "ours_l2": rel_l2(ours, ref64), "base_l2": rel_l2(base, ref64),
        "ours_max": max_rel(ours, ref64), "base_max": max_rel(base, ref64),
    }
    assert np.isfinite(ours).all(), f"{name}: non-finite output values"
    assert e["ours_l2"] <= 2 * e["base_l2"] + FLOOR_L2[t], f"{name}: rel L2 error {e}"
    assert e["ours_max"] <= 2 * e["base_max"] + FLOOR_MAX[t], f"{name}: max error {e}"
    return e


# ===================================================================================== the tests
import math  # noqa: E402

import pytest  # noqa: E402

PLUGINS, _WHY_NOT = load_plugins()
_GPU_WHY_NOT = gpu_reason()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_GPU_WHY_NOT is not None, reason=str(_GPU_WHY_NOT)),
    pytest.mark.skipif(PLUGINS is None, reason=f"plugin kernels not built: {_WHY_NOT}"),
]


def _reference():
    try:
        from trtrun import reference
    except Exception as e:  # pragma: no cover - only while the reference is being written
        pytest.skip(f"trtrun.reference not importable: {e}")
    return reference


def _torch():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _dev(a, torch):
    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


def _np(t):
    return t.detach().float().cpu().numpy() if t.dtype != _torch().int32 else t.cpu().numpy()


# ------------------------------------------------------------------------------------- layernorm
def _ln64(s, g, b, eps):
    s = s.astype(np.float64)
    mu = s.mean(-1, keepdims=True)
    var = ((s - mu) ** 2).mean(-1, keepdims=True)
    return (s - mu) / np.sqrt(var + eps) * g.astype(np.float64) + b.astype(np.float64)


def _rand_rows(rng, rows, n, dtype):
    """Rows with their own offset and spread (LayerNorm must remove both), not zero-mean unit-variance."""
    off = rng.normal(0, 3, (rows, 1))
    sd = rng.uniform(0.3, 4.0, (rows, 1))
    return (off + sd * rng.standard_normal((rows, n))).astype(dtype)


LN_CASES = [
    # precision, n, x dtype, residual dtype (None: no residual), param dtype, y dtype, sum dtype
    ("fp32", 768, np.float32, np.float32, np.float32, np.float32, np.float32),
    ("fp32", 1600, np.float32, None, np.float32, np.float32, None),
    ("fp32", 129, np.float32, np.float32, np.float32, np.float32, np.float32),
    ("hybrid", 768, np.float32, np.float16, np.float32, np.float16, np.float32),
    ("hybrid", 384, np.float32, np.float16, np.float32, np.float32, None),
    # a warp's share sized to the row: 1, 2, 3 whole chunks of 256 and a part-filled third
    ("fp32", 256, np.float32, np.float32, np.float32, np.float32, np.float32),
    ("fp16", 512, np.float16, np.float16, np.float16, np.float16, np.float16),
    ("hybrid", 640, np.float16, np.float16, np.float32, np.float16, None),
    ("hybrid", 128, np.float16, np.float32, np.float32, np.float16, np.float32),
    ("hybrid", 1024, np.float32, np.float16, np.float32, np.float16, None),
    ("hybrid", 1600, np.float32, np.float16, np.float32, np.float16, np.float32),
    ("hybrid", 1000, np.float32, np.float16, np.float32, np.float16, None),
    ("hybrid", 77, np.float32, np.float16, np.float32, np.float16, np.float32),
    ("hybrid", 2051, np.float32, np.float32, np.float32, np.float32, None),
    ("fp16", 768, np.float16, np.float16, np.float16, np.float16, np.float16),
    ("fp16", 1600, np.float16, np.float16, np.float16, np.float32, None),
    ("fp16", 129, np.float16, None, np.float16, np.float16, None),
    ("fp16", 384, np.float16, np.float16, np.float16, np.float16, np.float16),
]


@pytest.mark.parametrize("rows", [67, 2051])  # <= 2048 rows: gamma/beta prefetched before the reductions
@pytest.mark.parametrize("prec,n,xt,rt,pt,yt,st", LN_CASES)
def test_layernorm(prec, n, xt, rt, pt, yt, st, rows):
    torch = _torch()
    ref = _reference()
    rng = np.random.default_rng(1000 + n + rows)
    eps = 1e-5
    x = _rand_rows(rng, rows, n, xt)
    r = None if rt is None else (0.5 * _rand_rows(rng, rows, n, rt)).astype(rt)
    g = rng.uniform(0.5, 1.5, n).astype(pt)
    b = rng.normal(0, 0.5, n).astype(pt)
    dx, dr, dg, db = _dev(x, torch), None if r is None else _dev(r, torch), _dev(g, torch), _dev(b, torch)
    tdt = {np.float32: torch.float32, np.float16: torch.float16}
    y = torch.full((rows, n), float("nan"), dtype=tdt[yt], device="cuda")
    sm = None if st is None else torch.full((rows, n), float("nan"), dtype=tdt[st], device="cuda")
    PLUGINS.layernorm(ptr(dx), dtype_name(xt), ptr(dr), dtype_name(rt or np.float32), ptr(dg), ptr(db),
                      dtype_name(pt), ptr(y), dtype_name(yt), ptr(sm), dtype_name(st or np.float32), rows, n, eps,
                      prec, 0)
    torch.cuda.synchronize()
    ours = _np(y)

    s64 = x.astype(np.float64) + (0 if r is None else r.astype(np.float64))
    ref64 = _ln64(s64, g, b, eps)
    ref_y, ref_s = ref.ref_layernorm(x, r, g, b, epsilon=eps, precision=prec, out_dtype=yt,
                                     sum_dtype=st or yt)
    if prec == "fp16":
        base = ref_y.astype(np.float32)  # the reference's emulation of fp16 statistics
    else:
        s32 = dx.float() + (0 if dr is None else dr.float())
        base = _np(torch.nn.functional.layer_norm(s32, (n,), dg.float(), db.float(), eps).to(tdt[yt]))
    assert_within_twice(f"layernorm {prec} n={n}", ours, base, ref64, yt)
    # and against the reference at the same precision: the triangle inequality bounds the gap
    gap = rel_l2(ours, ref_y)
    assert gap <= 3 * rel_l2(base, ref64) + 2 * FLOOR_L2[np.dtype(yt).type] + rel_l2(ref_y, ref64), gap
    if sm is not None:  # the sum is one rounding of the same add: bit-exact
        np.testing.assert_array_equal(_np(sm), ref_s.astype(np.float32))


LN_PARTS_CASES = [
    # precision, n, slices, bias dtype (None: none), residual dtype (None: none), y dtype, sum dtype
    ("hybrid", 768, 4, np.float16, np.float16, np.float16, None),     # BERT post-norm after FFN2
    ("hybrid", 768, 2, np.float16, np.float32, np.float16, np.float32),  # GPT-2 pre-norm: fp32 stream + sum
    ("hybrid", 384, 3, np.float32, np.float16, np.float32, None),
    ("fp32", 768, 4, np.float32, np.float32, np.float32, np.float32),
    ("fp32", 129, 2, None, None, np.float32, None),                    # odd n: the one-element path
    ("hybrid", 1600, 1, np.float16, np.float16, np.float16, np.float16),
]


@pytest.mark.parametrize("rows", [67, 2051])
@pytest.mark.parametrize("prec,n,parts,bt,rt,yt,st", LN_PARTS_CASES)
def test_layernorm_parts(prec, n, parts, bt, rt, yt, st, rows):
    """LayerNorm whose x is the unsummed slices of a split-K GEMM plus the Linear's bias (the runtime's split
    Linear -> LayerNorm path): x = sum of fp32 slices in slice order + bias, then the residual and the
    statistics as test_layernorm. Slices are random rows (offsets and spreads), a slice stride larger than
    rows x n (gaps poisoned with NaN, so a read outside a slice shows). Same acceptance as test_layernorm
    (within twice PyTorch fp32's error against float64); the sum output is the same fp32 adds in the same
    order, so bit-exact against numpy float32."""
    torch = _torch()
    rng = np.random.default_rng(3000 + n + rows + parts)
    eps = 1e-5
    stride = rows * n + 64  # slices apart, with a gap
    buf = np.full(parts * stride, np.nan, np.float32)
    sl = [(_rand_rows(rng, rows, n, np.float32) / parts).astype(np.float32) for _ in range(parts)]
    for k in range(parts):
        buf[k * stride:k * stride + rows * n] = sl[k].ravel()
    bias = None if bt is None else rng.normal(0, 0.5, n).astype(bt)
    r = None if rt is None else (0.5 * _rand_rows(rng, rows, n, rt)).astype(rt)
    g = rng.uniform(0.5, 1.5, n).astype(np.float32)
    b = rng.normal(0, 0.5, n).astype(np.float32)
    dp, dg, db = _dev(buf, torch), _dev(g, torch), _dev(b, torch)
    dbias = None if bias is None else _dev(bias, torch)
    dr = None if r is None else _dev(r, torch)
    tdt = {np.float32: torch.float32, np.float16: torch.float16}
    y = torch.full((rows, n), float("nan"), dtype=tdt[yt], device="cuda")
    sm = None if st is None else torch.full((rows, n), float("nan"), dtype=tdt[st], device="cuda")
    PLUGINS.layernorm_parts(ptr(dp), parts, stride, ptr(dbias), dtype_name(bt or np.float32), ptr(dr),
                            dtype_name(rt or np.float32), ptr(dg), ptr(db), dtype_name(np.float32), ptr(y),
                            dtype_name(yt), ptr(sm), dtype_name(st or np.float32), rows, n, eps, prec, 0)
    torch.cuda.synchronize()
    ours = _np(y)
    s32 = sl[0].copy()
    for k in range(1, parts):
        s32 = s32 + sl[k]
    if bias is not None:
        s32 = s32 + bias.astype(np.float32)
    if r is not None:
        s32 = s32 + r.astype(np.float32)
    s64 = sum(x.astype(np.float64) for x in sl) + (0 if bias is None else bias.astype(np.float64)) + \
        (0 if r is None else r.astype(np.float64))
    ref64 = _ln64(s64, g, b, eps)
    base = _np(torch.nn.functional.layer_norm(_dev(s32, torch), (n,), dg, db, eps).to(tdt[yt]))
    assert np.isfinite(ours).all()
    assert_within_twice(f"layernorm_parts {prec} n={n} parts={parts}", ours, base, ref64, yt)
    if sm is not None:
        np.testing.assert_array_equal(_np(sm), s32.astype(st).astype(np.float32))
    with pytest.raises(Exception, match="fp32 statistics"):
        PLUGINS.layernorm_parts(ptr(dp), parts, stride, 0, "float32", 0, "float32", ptr(dg), ptr(db), "float32", ptr(y),
                                dtype_name(yt), 0, "float32", rows, n, eps, "fp16", 0)


def test_layernorm_fp16_overflow_shows():
    """FP16 statistics really are fp16: a row whose sum passes 65504 gives NaN, a row whose deviations
    square past 65504 gives inf variance (y = beta), exactly where the reference's emulation does."""
    torch = _torch()
    ref = _reference()
    rng = np.random.default_rng(7)
    n = 768
    x = rng.normal(0, 1, (4, n)).astype(np.float16)
    x[1] = rng.uniform(150, 200, n)          # sum ~ 134000 > 65504 -> inf mean -> NaN
    x[2, : n // 2], x[2, n // 2:] = 400, -400  # mean 0, deviations 400: squares inf -> var inf
    g = np.ones(n, np.float16)
    b = rng.normal(0, 0.5, n).astype(np.float16)
    dx, dg, db = _dev(x, torch), _dev(g, torch), _dev(b, torch)
    y = torch.full((4, n), float("nan"), dtype=torch.float16, device="cuda")
    PLUGINS.layernorm(ptr(dx), F16, 0, F16, ptr(dg), ptr(db), F16, ptr(y), F16, 0, F16, 4, n, 1e-5, "fp16", 0)
    torch.cuda.synchronize()
    ours = _np(y)
    ref_y, _ = ref.ref_layernorm(x, None, g, b, epsilon=1e-5, precision="fp16", out_dtype=np.float16)
    ref_y = ref_y.astype(np.float32)
    assert np.isnan(ours[1]).all() and np.isnan(ref_y[1]).all()
    np.testing.assert_array_equal(ours[2], ref_y[2])
    np.testing.assert_array_equal(ours[2], b.astype(np.float32))
    assert np.isfinite(ours[[0, 3]]).all()
    # same kernel in hybrid: fp32 statistics, all finite
    PLUGINS.layernorm(ptr(dx), F16, 0, F16, ptr(dg), ptr(db), F16, ptr(y), F16, 0, F16, 4, n, 1e-5, "hybrid", 0)
    torch.cuda.synchronize()
    assert np.isfinite(_np(y)).all()


# ------------------------------------------------------------------------------------- attention
F32_MIN = float(np.finfo(np.float32).min)


def _attn64(qkv, mask, H, D, scale, causal):
    """Float64 attention with the contract's masking: masked scores := float32 min (uniform when all are)."""
    B, S, _ = qkv.shape
    HD = H * D
    x = qkv.astype(np.float64)
    q = x[..., :HD].reshape(B, S, H, D).transpose(0, 2, 1, 3)
    k = x[..., HD:2 * HD].reshape(B, S, H, D).transpose(0, 2, 1, 3)
    v = x[..., 2 * HD:].reshape(B, S, H, D).transpose(0, 2, 1, 3)
    s = (q @ k.transpose(0, 1, 3, 2)) * scale
    masked = np.zeros((B, 1, S, S), bool)
    if mask is not None:
        masked |= (mask == 0)[:, None, None, :]
    if causal:
        masked |= np.triu(np.ones((S, S), bool), 1)[None, None]
    s = np.where(masked, F32_MIN, s)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(B, S, HD), masked


def _make_mask(rng, B, S, kind):
    if kind is None:
        return None
    m = np.ones((B, S), np.int32)
    for bb in range(B):
        if kind == "right":  # right padding, as a tokenizer pads
            m[bb, rng.integers(1, S + 1):] = 0
        elif kind == "left":  # left padding: with causal, the first rows are fully masked
            m[bb, : rng.integers(0, S)] = 0
        elif kind == "random":
            m[bb] = rng.random(S) < 0.7
    if kind == "holes":  # runs of masked keys wider than a 64-key tile, inside the sequence
        for bb in range(B):
            a = int(rng.integers(0, max(1, S - 130)))
            m[bb, a:a + 130] = 0
            m[bb, -1] = 1
    if kind == "random" and B > 1:
        m[-1] = 0  # one sequence with every key masked: uniform rows
    return m


def _run_attention(torch, qkv, mask, H, D, scale, causal, prec, yt):
    B, S, _ = qkv.shape
    dq = _dev(qkv, torch)
    dm = None if mask is None else _dev(mask, torch)
    tdt = {np.float32: torch.float32, np.float16: torch.float16}
    y = torch.full((B, S, H * D), float("nan"), dtype=tdt[yt], device="cuda")
    PLUGINS.attention(ptr(dq), dtype_name(qkv.dtype.type), ptr(dm), ptr(y), dtype_name(yt), B, S, H, D, scale,
                      causal, prec, 0)
    torch.cuda.synchronize()
    return _np(y), dq


def _torch_sdpa(torch, dq, mask, H, D, scale, causal, dtype):
    """PyTorch's own attention at the same precision (q, k, v as [B, H, S, D]); bool mask, True = attend."""
    B, S, _ = dq.shape
    HD = H * D
    x = dq.to(dtype)
    q, k, v = (x[..., i * HD:(i + 1) * HD].reshape(B, S, H, D).transpose(1, 2) for i in range(3))
    allow = torch.ones((B, 1, S, S), dtype=torch.bool, device="cuda")
    if mask is not None:
        allow &= torch.from_numpy(mask != 0).cuda()[:, None, None, :]
    if causal:
        allow &= torch.ones((S, S), dtype=torch.bool, device="cuda").tril()[None, None]
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allow, scale=scale)
    return y.transpose(1, 2).reshape(B, S, HD).float().cpu().numpy()


ATTN_CASES = [
    # precision, B, S, H, D, causal, mask kind, qkv dtype, y dtype
    ("hybrid", 2, 128, 4, 64, False, None, np.float16, np.float16),
    ("hybrid", 3, 129, 2, 64, False, "right", np.float16, np.float16),
    ("hybrid", 2, 511, 2, 64, False, "random", np.float16, np.float16),
    ("hybrid", 2, 7, 3, 32, False, "right", np.float16, np.float32),
    ("hybrid", 1, 1, 2, 128, False, None, np.float16, np.float16),
    ("hybrid", 2, 200, 2, 128, True, None, np.float16, np.float16),
    ("hybrid", 2, 129, 2, 32, True, "left", np.float16, np.float16),
    ("hybrid", 2, 300, 2, 64, True, "right", np.float32, np.float32),
    ("hybrid", 1, 512, 1, 64, True, "random", np.float16, np.float16),
    ("hybrid", 2, 300, 2, 64, False, "left", np.float16, np.float16),
    ("hybrid", 2, 511, 2, 64, False, "holes", np.float16, np.float16),
    ("hybrid", 3, 300, 2, 32, True, "holes", np.float16, np.float16),
    ("hybrid", 4, 1000, 2, 64, False, "right", np.float16, np.float16),
    ("fp16", 2, 300, 2, 64, True, "holes", np.float16, np.float16),
    ("fp16", 2, 129, 2, 64, False, "right", np.float16, np.float16),
    ("fp16", 2, 511, 2, 128, True, "left", np.float16, np.float16),
    ("fp16", 2, 7, 2, 32, False, "random", np.float16, np.float32),
    ("fp32", 2, 129, 2, 64, False, "right", np.float32, np.float32),
    ("fp32", 2, 7, 3, 32, True, "left", np.float32, np.float32),
    ("fp32", 1, 300, 2, 128, True, "random", np.float32, np.float32),
    ("fp32", 2, 1, 2, 64, False, None, np.float32, np.float32),
    # heads of 80 (phi-2) and 96 (Phi-3): 5 and 6 k-steps of 16, 10 and 12 output blocks of 8; the fp32 kernel's
    # last lane column partial at 80 (2.5 columns a lane)
    ("hybrid", 2, 129, 2, 80, False, "right", np.float16, np.float16),
    ("hybrid", 2, 300, 2, 80, True, "holes", np.float16, np.float16),
    ("hybrid", 2, 511, 2, 96, False, "random", np.float16, np.float16),
    ("hybrid", 1, 200, 3, 96, True, "left", np.float32, np.float32),
    ("fp16", 2, 129, 2, 96, True, "right", np.float16, np.float16),
    ("fp16", 2, 65, 2, 80, False, None, np.float16, np.float32),
    ("fp32", 2, 129, 2, 80, False, "right", np.float32, np.float32),
    ("fp32", 1, 300, 2, 80, True, "random", np.float16, np.float32),
    ("fp32", 2, 77, 2, 96, True, "left", np.float32, np.float32),
    # heads of 256 (Gemma): a two-slot K/V ring, 16 k-steps, 32 output blocks (registers spill; correctness here)
    ("hybrid", 2, 300, 2, 256, True, "right", np.float16, np.float16),
    ("hybrid", 1, 129, 2, 256, False, "holes", np.float32, np.float16),
    ("fp16", 2, 200, 1, 256, False, "left", np.float16, np.float16),
    ("fp32", 2, 100, 2, 256, True, "random", np.float32, np.float32),
]


@pytest.mark.parametrize("prec,B,S,H,D,causal,mkind,qt,yt", ATTN_CASES)
def test_attention(prec, B, S, H, D, causal, mkind, qt, yt):
    _check_attention(prec, B, S, H, D, causal, mkind, qt, yt, 1.0 / math.sqrt(D))


@pytest.mark.parametrize("cfg", ["1,4", "1,2", "1,1", "2,4", "2,2", "2,1", "1,4,2", "1,2,2", "1,1,2"])
@pytest.mark.parametrize("prec,B,S,H,D,causal,mkind,qt", [
    ("hybrid", 2, 511, 2, 64, False, "holes", np.float16),   # 8 key tiles: the 3-slot ring wraps, masked tiles skipped
    ("hybrid", 2, 300, 2, 64, True, "left", np.float16),     # causal + left padding: fully masked rows walk all
    ("hybrid", 1, 200, 2, 32, True, None, np.float32),       # fp32 qkv (synchronous staging), 4 tiles
    ("fp16", 2, 129, 2, 64, False, "right", np.float16),     # 3 tiles, the last one 1 key
    ("hybrid", 3, 128, 2, 64, False, "right", np.float16),   # 2 key tiles, fewer than the ring's 3 slots
    ("hybrid", 2, 64, 3, 32, True, "left", np.float16),      # 1 key tile
    ("hybrid", 2, 300, 2, 96, True, "right", np.float16),    # Phi-3's heads: MT = 1 only (the launcher's choice)
])
def test_attention_every_configuration(prec, B, S, H, D, causal, mkind, qt, cfg, monkeypatch):
    """Every forced (rows per warp, warps per key group[, key groups]) configuration (TRTRUN_ATTN_CFG="MT,nw[,KS]";
    KS = 2 applies to the hybrid softmax and head sizes <= 64, else the launcher ignores it), not only the one the
    launcher picks for these shapes, under the same acceptance rule as test_attention."""
    monkeypatch.setenv("TRTRUN_ATTN_CFG", cfg)
    _check_attention(prec, B, S, H, D, causal, mkind, qt, np.float16, 1.0 / math.sqrt(D))


@pytest.mark.parametrize("prec,scale", [("hybrid", -0.125), ("hybrid", 0.0), ("hybrid", 3.0), ("fp16", -0.125),
                                        ("fp32", 0.0), ("hybrid", 2.0 ** -45)])
def test_attention_unusual_scales(prec, scale):
    """Any finite scale: negative (the max is then taken on flipped scores), zero (uniform over unmasked keys),
    large and tiny (outside the range where the kernel folds the scale into the exponent)."""
    qt = np.float32 if prec == "fp32" else np.float16
    _check_attention(prec, 2, 150, 2, 64, False, "holes", qt, qt, scale)


def _check_attention(prec, B, S, H, D, causal, mkind, qt, yt, scale):
    torch = _torch()
    ref = _reference()
    rng = np.random.default_rng(S * 131 + D + H)
    # q, k with std 1.5: scores spread over several units, so softmax is neither flat nor one-hot
    qkv = (1.5 * rng.standard_normal((B, S, 3 * H * D))).astype(qt)
    qkv[..., 2 * H * D:] /= 1.5
    mask = _make_mask(rng, B, S, mkind)
    ours, dq = _run_attention(torch, qkv, mask, H, D, scale, causal, prec, yt)
    ref64, masked = _attn64(qkv, mask, H, D, scale, causal)
    ref_p = ref.ref_attention(qkv, mask, num_heads=H, head_size=D, scale=scale, causal=causal,
                              precision=prec, out_dtype=yt).astype(np.float32)
    # rows (b, i) with at least one key left: there PyTorch's masking agrees with the contract's
    live = ~masked.all(-1)[:, 0, :]  # [B, S]
    if prec == "fp16":
        base = ref_p  # PyTorch has no fp16-softmax SDPA; the reference's emulation is the fp16 baseline
    else:
        tdt = torch.float32 if prec == "fp32" else torch.float16
        base = _torch_sdpa(torch, dq, mask, H, D, scale, causal, tdt)
    assert np.isfinite(ours).all(), "non-finite attention output"
    if live.any():
        assert_within_twice(f"attention {prec} B{B} S{S} H{H} D{D} causal={causal} mask={mkind}",
                            ours[live], base[live], ref64[live], yt)
    dead = ~live
    if dead.any():  # fully masked rows: mean of V over all keys, as the contract says
        tol = 4 * FLOOR_MAX[np.dtype(yt).type] * max(1.0, float(np.abs(ref64[dead]).max()))
        np.testing.assert_allclose(ours[dead], ref64[dead], rtol=0, atol=tol + 1e-3)
    gap = rel_l2(ours, ref_p)
    assert gap <= 2 * rel_l2(base[live], ref64[live]) + rel_l2(ref_p, ref64) + 1e-4, gap


def test_attention_fp16_overflow_shows():
    """FP16 mode rounds scores to fp16: a score beyond 65504 is inf and its row NaN (as the reference
    says); hybrid keeps scores in fp32 and stays finite."""
    torch = _torch()
    ref = _reference()
    rng = np.random.default_rng(3)
    B, S, H, D = 1, 16, 1, 64
    qkv = rng.standard_normal((B, S, 3 * H * D)).astype(np.float16)
    qkv[0, 5, :D] = 60.0  # q row 5
    qkv[0, 3, D:2 * D] = 200.0  # k row 3: score(5, 3) = 64 * 60 * 200 / 8 = 96000 > 65504 (fp32 acc is fine)
    ours, _ = _run_attention(torch, qkv, None, H, D, 1 / 8, False, "fp16", np.float16)
    ref_p = ref.ref_attention(qkv, None, num_heads=H, head_size=D, scale=1 / 8, precision="fp16",
                              out_dtype=np.float16).astype(np.float32)
    assert np.isnan(ours[0, 5]).all() and np.isnan(ref_p[0, 5]).all()
    assert np.isfinite(np.delete(ours[0], 5, axis=0)).all()
    hyb, _ = _run_attention(torch, qkv, None, H, D, 1 / 8, False, "hybrid", np.float16)
    assert np.isfinite(hyb).all()


@pytest.mark.parametrize("cfg", [None, "1,4,1", "1,4,2", "2,4"])
def test_attention_is_deterministic_and_batch_independent(cfg, monkeypatch):
    """Same inputs -> same bits; in one configuration, a sequence's output does not depend on the other sequences
    of the batch. (The launcher's choice depends on batch x heads: two key groups a block only where the blocks
    do not fill the GPU, whose merge rounds differently. Hence the forced configurations.)"""
    if cfg is not None:
        monkeypatch.setenv("TRTRUN_ATTN_CFG", cfg)
    torch = _torch()
    rng = np.random.default_rng(11)
    B, S, H, D = 4, 200, 3, 64
    qkv = rng.standard_normal((B, S, 3 * H * D)).astype(np.float16)
    mask = _make_mask(rng, B, S, "right")
    a, _ = _run_attention(torch, qkv, mask, H, D, 0.125, False, "hybrid", np.float16)
    b, _ = _run_attention(torch, qkv, mask, H, D, 0.125, False, "hybrid", np.float16)
    np.testing.assert_array_equal(a, b)
    one, _ = _run_attention(torch, qkv[2:3], mask[2:3], H, D, 0.125, False, "hybrid", np.float16)
    np.testing.assert_array_equal(one[0], a[2])


def test_attention_key_groups_agree_with_one_group(monkeypatch):
    """Two key groups a block (KS = 2: the key tiles split between two warp groups, merged at the end) against one,
    on the same inputs, with padding and causal. Both round the softmax weights P to fp16 (relative error <= 2^-11
    each, against different running maxima), and an output row is a P-weighted mean of V rows, which weights off
    by a relative e move by at most 2e max|V|: so the two differ by at most 4 * 2^-11 * max|V| (plus fp32 rounding).
    Accuracy against float64 is test_attention_every_configuration's."""
    torch = _torch()
    rng = np.random.default_rng(12)
    for causal, mkind, S in [(False, "right", 512), (True, None, 511), (True, "left", 300), (False, "random", 129)]:
        B, H, D = 1, 4, 64
        qkv = rng.standard_normal((B, S, 3 * H * D)).astype(np.float16)
        mask = _make_mask(rng, B, S, mkind)
        outs = []
        for cfg in ("1,4,1", "1,4,2"):
            monkeypatch.setenv("TRTRUN_ATTN_CFG", cfg)
            outs.append(_run_attention(torch, qkv, mask, H, D, 0.125, causal, "hybrid", np.float32)[0])
        assert np.isfinite(outs[1]).all()
        vmax = np.abs(qkv[..., 2 * H * D:].astype(np.float32)).max()
        err = np.abs(outs[1] - outs[0]).max()
        assert err <= 4 * 2.0 ** -11 * vmax, (causal, mkind, S, err, vmax)
        assert not np.array_equal(outs[0], outs[1]) or S <= 64, "KS=2 was not taken (outputs bitwise equal)"


@pytest.mark.parametrize("cfg,qb", [("1,4", "2"), ("1,2", "4"), ("1,1", "3"), ("2,2", "2"), ("2,1", "8"),
                                    ("1,4", "99")])
@pytest.mark.parametrize("prec,B,S,H,D,causal,mkind,qt", [
    ("hybrid", 3, 128, 2, 64, False, "right", np.float16),   # BERT's case: 2 key tiles, both staged once
    ("hybrid", 2, 128, 3, 64, False, "random", np.float16),  # staged mask values; one sequence fully masked
    ("hybrid", 2, 97, 2, 32, False, None, np.float32),       # fp32 qkv (synchronous staging), a short last tile
    ("fp16", 2, 128, 2, 64, False, "left", np.float16),      # fp16 softmax
    ("hybrid", 2, 64, 2, 128, False, "right", np.float16),   # D = 128: a 2-slot ring holds one key tile
    ("hybrid", 2, 128, 2, 64, True, None, np.float16),       # causal: never shared (the launcher says qb=1)
    ("hybrid", 2, 200, 2, 64, False, "right", np.float16),   # 4 key tiles, more than the ring: never shared
])
def test_attention_query_tiles_share_kv(prec, B, S, H, D, causal, mkind, qt, cfg, qb, monkeypatch):
    """Several query tiles a block over K/V tiles staged once (TRTRUN_ATTN_QB): taken exactly where the launcher
    allows it (no causal mask, every key tile in the ring at once: S <= 128 for D <= 64, S <= 64 for D = 128),
    accurate by test_attention's rule, and bit-identical to one query tile a block: each query tile walks the same
    key tiles in the same order with the same arithmetic, only the loads are shared."""
    torch = _torch()
    monkeypatch.setenv("TRTRUN_ATTN_CFG", cfg)
    mt, nw = (int(x) for x in cfg.split(","))
    if mt == 2 and D > 64:
        pytest.skip("32 rows a warp is not built for D = 128 (the launcher falls back to its own choice)")
    nqt = -(-S // (16 * mt * nw))
    nkt = -(-S // 64)
    allowed = not causal and nkt <= (1 if D >= 128 else 2)
    expect = min(int(qb), nqt) if allowed else 1
    monkeypatch.setenv("TRTRUN_ATTN_QB", qb)
    got = PLUGINS.attention_config(B, S, H, D, causal, prec)
    assert got == f"mt={mt} nw={nw} ks=1 qb={expect}", got
    _check_attention(prec, B, S, H, D, causal, mkind, qt, np.float16, 1.0 / math.sqrt(D))
    rng = np.random.default_rng(S + D)
    qkv = rng.standard_normal((B, S, 3 * H * D)).astype(qt)
    mask = _make_mask(rng, B, S, mkind)
    shared, _ = _run_attention(torch, qkv, mask, H, D, 0.125, causal, prec, np.float32)
    monkeypatch.setenv("TRTRUN_ATTN_QB", "1")
    assert PLUGINS.attention_config(B, S, H, D, causal, prec).endswith(" qb=1")
    single, _ = _run_attention(torch, qkv, mask, H, D, 0.125, causal, prec, np.float32)
    assert np.isfinite(shared).all()
    np.testing.assert_array_equal(shared, single)


def test_attention_shares_kv_where_one_tile_a_block_takes_two_waves(monkeypatch):
    """The launcher's own rule (no overrides): two query tiles a block at BERT-base's 32 x 128 (768 blocks of one
    tile = two waves on a 132-multiprocessor Hopper), one at 16 x 128 (one wave), never with a causal mask or
    more key tiles than the ring holds. Measured in native/kernels/attention/README.md."""
    torch = _torch()
    monkeypatch.delenv("TRTRUN_ATTN_CFG", raising=False)
    monkeypatch.delenv("TRTRUN_ATTN_QB", raising=False)
    hyb = "hybrid"
    assert PLUGINS.attention_config(32, 128, 12, 64, True, hyb).endswith(" qb=1")
    assert PLUGINS.attention_config(32, 512, 12, 64, False, hyb).endswith(" qb=1")
    assert PLUGINS.attention_config(1, 128, 12, 64, False, hyb).endswith(" qb=1")
    props = torch.cuda.get_device_properties(0)
    if props.major != 9 or not 114 <= props.multi_processor_count <= 144:
        pytest.skip(f"the wave counts below are for an H100/H200 (sm_90, 114-144 multiprocessors), not {props.name}")
    assert PLUGINS.attention_config(32, 128, 12, 64, False, hyb) == "mt=1 nw=4 ks=1 qb=2"
    assert PLUGINS.attention_config(32, 128, 12, 32, False, hyb) == "mt=1 nw=4 ks=1 qb=2"
    assert PLUGINS.attention_config(16, 128, 12, 64, False, hyb) == "mt=1 nw=4 ks=1 qb=1"


def test_attention_config_reports_the_launcher():
    """attention_config answers for every precision and refuses what launch_attention refuses."""
    assert PLUGINS.attention_config(2, 128, 12, 64, False, "fp32") == "fp32"
    for prec in ("hybrid", "fp16"):
        got = PLUGINS.attention_config(32, 128, 12, 64, False, prec)
        assert got.startswith("mt=") and " qb=" in got, got
    with pytest.raises(Exception, match="head_size"):
        PLUGINS.attention_config(1, 128, 12, 48, False, "hybrid")
    with pytest.raises(Exception, match="batch, seq and heads"):
        PLUGINS.attention_config(0, 128, 12, 64, False, "hybrid")


# ------------------------------------------------------------------------------------- embedding
EMB_CASES = [
    # precision, n, table dtype, y dtype, with type table, token types given, LN, position offset
    ("fp32", 768, np.float32, np.float32, True, True, True, 0),
    ("hybrid", 768, np.float16, np.float16, True, True, True, 0),
    ("hybrid", 384, np.float16, np.float16, True, False, True, 0),
    ("hybrid", 1600, np.float16, np.float32, False, False, True, 2),
    ("hybrid", 129, np.float16, np.float16, True, True, True, 0),
    ("hybrid", 768, np.float16, np.float16, False, False, False, 0),
    ("fp16", 768, np.float16, np.float16, True, True, True, 0),
    ("fp16", 130, np.float16, np.float16, True, False, False, 2),
    ("fp32", 1024, np.float32, np.float32, False, False, False, 0),
    # a warp's share sized to the row (rowops::dispatch_row_share): one and two whole 256-element chunks
    ("hybrid", 256, np.float16, np.float16, True, True, True, 0),
    ("fp32", 512, np.float32, np.float32, True, False, True, 1),
]


@pytest.mark.parametrize("prec,n,tt,yt,has_type,give_tt,ln,off", EMB_CASES)
def test_embedding(prec, n, tt, yt, has_type, give_tt, ln, off):
    torch = _torch()
    ref = _reference()
    rng = np.random.default_rng(n * 7 + off)
    B, S, V, P, T, eps = 3, 37, 1000, 64, 2, 1e-12
    word = rng.normal(0, 0.5, (V, n)).astype(tt)
    pos = rng.normal(0, 0.3, (P, n)).astype(tt)
    typ = rng.normal(0, 0.3, (T, n)).astype(tt) if has_type else None
    pt = np.float16 if prec == "fp16" else np.float32
    g = rng.uniform(0.5, 1.5, n).astype(pt) if ln else None
    b = rng.normal(0, 0.2, n).astype(pt) if ln else None
    ids = rng.integers(0, V, (B, S)).astype(np.int32)
    tts = rng.integers(0, T, (B, S)).astype(np.int32) if give_tt else None
    d = {k: (None if v is None else _dev(v, torch)) for k, v in
         dict(ids=ids, tts=tts, word=word, pos=pos, typ=typ, g=g, b=b).items()}
    tdt = {np.float32: torch.float32, np.float16: torch.float16}
    y = torch.full((B, S, n), float("nan"), dtype=tdt[yt], device="cuda")
    PLUGINS.embedding(ptr(d["ids"]), ptr(d["tts"]), ptr(d["word"]), ptr(d["pos"]), ptr(d["typ"]),
                      dtype_name(tt), ptr(d["g"]), ptr(d["b"]), dtype_name(pt), ptr(y), dtype_name(yt), B, S, n,
                      off, eps, prec, 0)
    torch.cuda.synchronize()
    ours = _np(y)

    tt_idx = tts if tts is not None else np.zeros_like(ids)
    e64 = word.astype(np.float64)[ids] + pos.astype(np.float64)[off:off + S][None]
    if has_type:
        e64 = e64 + typ.astype(np.float64)[tt_idx]
    ref64 = _ln64(e64, g, b, eps) if ln else e64
    ref_y = ref.ref_embedding(ids, tts, word=word, position=pos, token_type=typ, gamma=g, beta=b,
                              epsilon=eps if ln else None, position_offset=off, precision=prec,
                              out_dtype=yt).astype(np.float32)
    if prec == "fp16":
        base = ref_y
    else:
        e32 = d["word"].float()[d["ids"].long()] + d["pos"].float()[off:off + S][None]
        if has_type:
            e32 = e32 + d["typ"].float()[torch.from_numpy(tt_idx).cuda().long()]
        if ln:
            e32 = torch.nn.functional.layer_norm(e32, (n,), d["g"].float(), d["b"].float(), eps)
        base = _np(e32.to(tdt[yt]))
    assert_within_twice(f"embedding {prec} n={n}", ours, base, ref64, yt)
    assert rel_l2(ours, ref_y) <= 3 * rel_l2(base, ref64) + rel_l2(ref_y, ref64) + 2 * FLOOR_L2[np.dtype(yt).type]


# ------------------------------------------------------------------------------------- gelu
@pytest.mark.parametrize("yt", [np.float32, np.float16])
@pytest.mark.parametrize("tanh", [False, True])
@pytest.mark.parametrize("count,offset", [(3 * 1024 * 768, 0), (1001, 0), (4099, 1), (7, 0)])
def test_gelu(yt, tanh, count, offset):
    torch = _torch()
    ref = _reference()
    rng = np.random.default_rng(count + offset)
    x = (3 * rng.standard_normal(count + offset)).astype(yt)
    x[offset:offset + 4] = [-12, 12, -0.0, 1e-3]
    buf = _dev(x, torch)
    view = buf[offset:]  # offset 1: a pointer not 16-byte aligned -> the scalar path
    PLUGINS.gelu(ptr(view), dtype_name(yt), count, tanh, 0)
    torch.cuda.synchronize()
    ours = _np(view)
    xs = x[offset:]
    act = "gelu_tanh" if tanh else "gelu_erf"
    ref64 = torch.nn.functional.gelu(torch.from_numpy(xs.astype(np.float64)),
                                     approximate="tanh" if tanh else "none").numpy()
    base = _np(torch.nn.functional.gelu(_dev(xs, torch), approximate="tanh" if tanh else "none"))
    assert_within_twice(f"gelu {act} {np.dtype(yt).name} count={count}", ours, base, ref64, yt)
    ref_y = ref.ref_gelu(xs, act, out_dtype=yt).astype(np.float32)
    assert rel_l2(ours, ref_y) <= 2 * rel_l2(base, ref64) + rel_l2(ref_y, ref64) + FLOOR_L2[np.dtype(yt).type]
    if offset:
        assert float(buf[0].float()) == float(x[0]), "element before the view was touched"


# ------------------------------------------------------------------------------------- errors
def test_bad_arguments_raise_valueerror_and_kernels_keep_working():
    torch = _torch()
    q = torch.randn(1, 8, 3 * 64, device="cuda", dtype=torch.float16)
    y = torch.empty(1, 8, 64, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="head_size must be 32, 64, 80, 96, 128 or 256, got 48"):
        PLUGINS.attention(ptr(q), F16, 0, ptr(y), F16, 1, 8, 1, 48, 0.1, False, "hybrid", 0)
    with pytest.raises(ValueError, match="precision"):
        PLUGINS.attention(ptr(q), F16, 0, ptr(y), F16, 1, 8, 1, 64, 0.1, False, "fp8", 0)
    with pytest.raises(ValueError, match="16-byte aligned"):
        PLUGINS.attention(ptr(q) + 2, F16, 0, ptr(y), F16, 1, 8, 1, 64, 0.1, False, "hybrid", 0)
    with pytest.raises(ValueError, match="n \\(hidden size\\) must be >= 1"):
        PLUGINS.layernorm(ptr(q), F16, 0, F16, ptr(q), ptr(q), F16, ptr(y), F16, 0, F16, 4, 0, 1e-5, "hybrid", 0)
    with pytest.raises(ValueError, match="dtype"):
        PLUGINS.gelu(ptr(y), "int64", 10, False, 0)
    with pytest.raises(ValueError, match="batch and seq"):
        PLUGINS.embedding(ptr(q), 0, ptr(q), ptr(q), 0, F16, 0, 0, F32, ptr(y), F16, -1, 8, 64, 0, 1e-5, "hybrid", 0)
    # nothing was launched, nothing is broken: a valid call runs and gives finite output
    PLUGINS.attention(ptr(q), F16, 0, ptr(y), F16, 1, 8, 1, 64, 0.125, False, "hybrid", 0)
    torch.cuda.synchronize()
    assert torch.isfinite(y).all()


def test_attention_concurrent_configurations_from_threads():
    """Threads launching attention at shapes that pick different launch configurations (so different dynamic
    shared-memory sizes) on their own streams: every launch succeeds and gives the single-threaded bits.
    Regression: the per-kernel shared-memory limit was set per launch, so one thread could lower it between
    another's setting and launch (cudaErrorInvalidValue under the serve load test on an H200)."""
    import threading

    torch = _torch()
    rng = np.random.default_rng(12)
    H, D = 12, 32
    shapes = [(1, 16), (64, 256), (2, 40), (32, 128), (128, 64)]
    cases = []
    for B, S in shapes:
        qkv = rng.standard_normal((B, S, 3 * H * D)).astype(np.float16)
        mask = _make_mask(rng, B, S, "right")
        want, _ = _run_attention(torch, qkv, mask, H, D, 0.125, False, "hybrid", np.float16)
        cases.append((_dev(qkv, torch), _dev(mask, torch), want, B, S))
    errors, mismatches = [], []

    def worker(seed):
        stream = torch.cuda.Stream()
        order = np.random.default_rng(seed).permutation(len(cases) * 40) % len(cases)
        try:
            for i in order:
                dq, dm, want, B, S = cases[i]
                with torch.cuda.stream(stream):  # the poison fill on the kernel's stream, ordered before it
                    y = torch.full((B, S, H * D), float("nan"), dtype=torch.float16, device="cuda")
                PLUGINS.attention(ptr(dq), dtype_name(np.float16), ptr(dm), ptr(y), dtype_name(np.float16), B, S,
                                  H, D, 0.125, False, "hybrid", stream.cuda_stream)
                stream.synchronize()
                if not np.array_equal(_np(y), want):
                    mismatches.append((B, S))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert not mismatches, mismatches[:5]
