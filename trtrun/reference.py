"""The numpy reference backend: the executable specification of every op in docs/plan-format.md.

`ReferenceBackend(plan).run(feeds)` executes a plan op by op on the CPU. Each op reads its inputs in
their tensors' dtypes and writes each output in its tensor's dtype; inside, it computes exactly as the
op's `precision` says (docs/plan-format.md, "Precision"):

- fp32: float32 arithmetic (GEMMs on float32 operands, float32 accumulation; TF32 operand rounding only
  when the plan's `tf32` flag is set).
- hybrid: GEMM operands rounded to fp16, float32 accumulation, bias added in float32, rounded to the
  output dtype; GELU in float32 from that rounded value, rounded again. LayerNorm/Embedding upcast and
  keep statistics and sums in float32. Attention: QK^T in float32, scale/mask/softmax float32, P rounded
  to fp16 before P@V (float32 accumulation).
- fp16: Linear as hybrid. LayerNorm sum/mean/variance in fp16 with every step rounded to fp16
  (numpy float16 arithmetic rounds each operation correctly, as the GPU's __hadd/__hmul do).
  Attention: scores rounded to fp16 after scaling, softmax max/exp/sum/divide in fp16. Embedding sums in fp16.

Reductions whose every step is rounded to fp16 (the fp16 mode's LayerNorm sums and softmax denominator)
are done as a pairwise tree (`_tree_sum_fp16`), the order a GPU warp/block reduction uses; any other
order differs by rounding only, within the fp16 error bound the tests argue.

Masked attention scores are replaced by the minimum finite value of the dtype the scores are kept in
(float32 min for fp32/hybrid, as Hugging Face's additive masks; fp16 min -65504 in fp16 mode, since the
float32 minimum is -inf in fp16 and would turn a fully masked row into NaN). So a row whose every key is
masked becomes uniform over all keys in every mode.

Memory: Linear and LayerNorm work on chunks of rows; attention loops over the batch (all heads of one
sequence at a time), so B=32, S=512 stays within a few hundred MB beyond the activations.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .errors import PlanError
from .plan import Plan

F16, F32, F64 = np.float16, np.float32, np.float64
from .types import OP_PRECISIONS, PRECISIONS  # noqa: F401 (PRECISIONS: the classic three, re-exported)
# quick_gelu's x * sigmoid(alpha x) (CLIP): 1.702 as the float32 exporters write and the GPU kernel uses
QUICK_GELU_ALPHA = float(np.float32(1.702))
_CHUNK_ELEMS = 1 << 22  # elements per row chunk in Linear/LayerNorm (16 MiB of float32)


# ----------------------------------------------------------------------------- helpers
def _check_precision(precision: str) -> None:
    if precision not in OP_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(OP_PRECISIONS)}, got {precision!r}")


def _f16_values(a: np.ndarray) -> np.ndarray:
    """`a` rounded to fp16, held in float32 (an fp16 GEMM operand fed to a float32 accumulator)."""
    a = np.asarray(a)
    if a.dtype == F16:
        return a.astype(F32)  # exact
    return a.astype(F16).astype(F32)


def _tf32_values(a: np.ndarray) -> np.ndarray:
    """`a` (float32) rounded to TF32 (10 mantissa bits, round to nearest, ties away: cvt.rna.tf32.f32)."""
    a = np.ascontiguousarray(a, dtype=F32)
    u = a.view(np.uint32)
    finite = np.isfinite(a)
    r = ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(F32)
    return np.where(finite, r, a)


def _operands(a: np.ndarray, precision: str, tf32: bool = False) -> np.ndarray:
    """GEMM operand values as float32, rounded as `precision` says."""
    if precision == "fp32":
        a = np.asarray(a, dtype=F32)
        return _tf32_values(a) if tf32 else a
    return _f16_values(a)


def _tree_sum_fp16(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis in fp16, every addition rounded to fp16 (pairwise tree: halves added)."""
    a = np.asarray(a, dtype=F16)
    n = a.shape[-1]
    if n == 0:
        return np.zeros(a.shape[:-1], F16)
    while n > 1:
        if n % 2:
            a = np.concatenate([a, np.zeros(a.shape[:-1] + (1,), F16)], axis=-1)
            n += 1
        a = a[..., : n // 2] + a[..., n // 2:]  # float16 + float16 -> correctly rounded float16
        n //= 2
    return a[..., 0]


def _erfc(x: np.ndarray) -> np.ndarray:
    """erfc in float64 (scipy when present; else math.erfc per element, same values to ~1 ulp)."""
    try:
        from scipy.special import erfc  # lazy: scipy is optional
    except ImportError:  # pragma: no cover - depends on the environment
        return np.frompyfunc(math.erfc, 1, 1)(x).astype(F64)
    return erfc(x)


def _gelu32(h: np.ndarray, activation: str) -> np.ndarray:
    """GELU (or SiLU, x * sigmoid(x) = x / (1 + exp(-x)), or ReLU) of float32 values, evaluated in float64 and rounded
    once to float32.

    Written without the cancellation of 1 + erf(z) / 1 + tanh(a) for negative inputs:
    0.5 x (1 + erf(x/sqrt2)) = 0.5 x erfc(-x/sqrt2) and 0.5 x (1 + tanh(a)) = x / (1 + exp(-2a)),
    so even the tiny outputs of large negative inputs are accurate to float64 rounding.
    """
    x = np.asarray(h, dtype=F64)
    if activation == "gelu_erf":
        y = 0.5 * x * _erfc(-x / math.sqrt(2.0))
    elif activation == "gelu_tanh":
        a = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
        with np.errstate(over="ignore"):
            y = x / (1.0 + np.exp(-2.0 * a))
    elif activation == "silu":
        with np.errstate(over="ignore"):
            y = x / (1.0 + np.exp(-x))
    elif activation == "relu":
        y = np.maximum(x, 0.0)
    elif activation == "relu2":  # squared ReLU (Nemotron, Primer)
        y = np.square(np.maximum(x, 0.0))
    elif activation == "quick_gelu":  # CLIP: x * sigmoid(1.702 x), with 1.702 as the float32 exporters write
        with np.errstate(over="ignore"):
            y = x / (1.0 + np.exp(-QUICK_GELU_ALPHA * x))
    elif activation == "tanh":  # BERT's pooler, RoBERTa's classification head
        y = np.tanh(x)
    else:
        raise ValueError(f"activation must be gelu_erf, gelu_tanh, silu, relu, relu2, quick_gelu or tanh, got "
                         f"{activation!r}")
    return y.astype(F32)


def _row_chunks(M: int, width: int):
    step = max(1, _CHUNK_ELEMS // max(1, width))
    for i in range(0, M, step):
        yield i, min(M, i + step)


def _quiet(fn):
    """Overflow to inf and inf - inf = NaN are expected outcomes in fp16 (what the fp16 mode exists to
    show), not conditions to warn about: evaluate with numpy's floating-point warnings off."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return fn(*args, **kwargs)
    return wrapper


# ----------------------------------------------------------------------------- per-op functions
@_quiet
def ref_gelu(x: np.ndarray, activation: str = "gelu_erf", *, precision: str = "fp32",
             out_dtype=F32) -> np.ndarray:
    """GELU (`gelu_erf` or `gelu_tanh`) of `x` as the Linear epilogue computes it: in float32 from the
    value `x` holds (every precision mode), rounded once to `out_dtype`."""
    _check_precision(precision)
    if activation == "none":
        return np.asarray(x).astype(out_dtype)
    return _gelu32(np.asarray(x, dtype=F32), activation).astype(out_dtype)


@_quiet
def ref_linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *,
               activation: str = "none", gated: bool = False, precision: str = "fp32", out_dtype=F32,
               tf32: bool = False, residual: np.ndarray | None = None, weight_scale: np.ndarray | None = None,
               x_scale: np.ndarray | None = None) -> np.ndarray:
    """y = act(x @ weight + bias); x [..., K], weight [K, N], bias [N] -> y [..., N] in `out_dtype`.

    gated: h = x @ weight + bias is [..., 2M] = [gate | up]; y = act(gate) * up -> [..., M] (SwiGLU with
    silu, GeGLU with a GELU). residual [..., N out]: added to the result in float32 (GPT-NeoX's parallel
    attention + MLP branches), rounded once with it.
    fp32: float32 operands (TF32-rounded if `tf32`), float32 accumulation, float32 bias and activation.
    fp16/hybrid: operands rounded to fp16, float32 accumulation, bias added in float32, the sum rounded to
    `out_dtype`; the activation (and the gate's product) then computed in float32 from those rounded values
    and rounded again.
    fp8: `weight` float8_e4m3fn with its `weight_scale` ([N] or [1]); x quantized to fp8 with the static
    `x_scale` [1] or per token (None); the GEMM as trtrun.fp8.fp8_gemm says, the rest as hybrid.
    """
    _check_precision(precision)
    x = np.asarray(x)
    K, N = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"ref_linear: x {x.shape} does not match weight {weight.shape}")
    if gated and N % 2:
        raise ValueError(f"ref_linear: a gated weight needs an even width, got {weight.shape}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    if precision == "fp8":
        if weight_scale is None:
            raise ValueError("ref_linear: an fp8 Linear needs its weight_scale")
        from .fp8 import fp8_gemm
        w = weight
    else:
        w = _operands(weight, precision, tf32)
    b = None if bias is None else np.asarray(bias, dtype=F32)
    Nout = N // 2 if gated else N
    out = np.empty((M, Nout), dtype=out_dtype)
    r2 = None if residual is None else np.asarray(residual).reshape(-1, Nout)
    for i, j in _row_chunks(M, max(K, N)):
        if precision == "fp8":
            acc = fp8_gemm(x2[i:j], w, weight_scale, x_scale)
        else:
            acc = _operands(x2[i:j], precision, tf32) @ w  # float32 accumulation
        if b is not None:
            acc += b
        if activation == "none" and not gated:
            y = acc
        else:
            h = acc if precision == "fp32" else acc.astype(out_dtype).astype(F32)
            if gated:
                g, u = h[:, :Nout], h[:, Nout:]
                a = g if activation == "none" else _gelu32(g, activation)
                y = a * u  # float32 product, rounded once to out_dtype
            else:
                y = _gelu32(h, activation)
        if r2 is not None:
            y = y + r2[i:j].astype(F32)
        out[i:j] = y
    return out.reshape(lead + (Nout,))


def _ln_rows32(s: np.ndarray, gamma32: np.ndarray, beta32: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis, float32 arithmetic throughout (s is float32)."""
    n = s.shape[-1]
    mean = np.add.reduce(s, axis=-1, dtype=F32, keepdims=True) / F32(n)
    d = s - mean
    var = np.add.reduce(d * d, axis=-1, dtype=F32, keepdims=True) / F32(n)
    return d / np.sqrt(var + F32(eps)) * gamma32 + beta32


def _ln_rows16(s: np.ndarray, gamma16: np.ndarray, beta16: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with every step in fp16 (s is float16): sum, mean, deviations,
    squares, variance, + eps, sqrt, divide, * gamma, + beta, each rounded to fp16. Overflow is real:
    a row sum beyond 65504 is inf (mean inf, output NaN); a deviation beyond ~256 squares to inf."""
    n = F16(s.shape[-1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        mean = (_tree_sum_fp16(s) / n)[..., None]
        d = s - mean
        var = (_tree_sum_fp16(d * d) / n)[..., None]
        return d / np.sqrt(var + F16(eps)) * gamma16 + beta16


def _norm_rows(x: np.ndarray, residual, out_dtype, sum_dtype):
    """A norm's operands as rows: (x [R, N], residual [R, N] or None, y and s to fill: [R, N] in out_dtype
    and in sum_dtype, default out_dtype)."""
    n = x.shape[-1]
    x2 = x.reshape(-1, n)
    r2 = None if residual is None else np.asarray(residual).reshape(-1, n)
    y = np.empty(x2.shape, out_dtype)
    s_out = np.empty(x2.shape, out_dtype if sum_dtype is None else sum_dtype)
    return x2, r2, y, s_out


@_quiet
def ref_layernorm(x: np.ndarray, residual: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray, *,
                  epsilon: float, precision: str = "fp32", out_dtype=F32,
                  sum_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """s = x + residual; y = (s - mean) / sqrt(var + eps) * gamma + beta (biased variance).

    Returns (y in `out_dtype`, s in `sum_dtype`, default `out_dtype`).
    fp32/hybrid: inputs upcast, the add and all statistics in float32.
    fp16: inputs rounded to fp16, the add and every statistic step in fp16.
    """
    _check_precision(precision)
    x = np.asarray(x)
    n = x.shape[-1]
    x2, r2, y, s_out = _norm_rows(x, residual, out_dtype, sum_dtype)
    if precision == "fp16":
        g, b = np.asarray(gamma, F16), np.asarray(beta, F16)
    else:
        g, b = np.asarray(gamma, F32), np.asarray(beta, F32)
    for i, j in _row_chunks(x2.shape[0], n):
        if precision == "fp16":
            s = x2[i:j].astype(F16)
            if r2 is not None:
                with np.errstate(over="ignore"):
                    s = s + r2[i:j].astype(F16)
            y[i:j] = _ln_rows16(s, g, b, epsilon)
        else:
            s = x2[i:j].astype(F32)
            if r2 is not None:
                s = s + r2[i:j].astype(F32)
            y[i:j] = _ln_rows32(s, g, b, epsilon)
        s_out[i:j] = s
    return y.reshape(x.shape), s_out.reshape(x.shape)


@_quiet
def ref_rmsnorm(x: np.ndarray, residual: np.ndarray | None, gamma: np.ndarray, *, epsilon: float,
                precision: str = "fp32", out_dtype=F32, sum_dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """s = x + residual; y = s / sqrt(mean(s^2) + eps) * gamma (RMSNorm: no mean subtracted, no beta).

    Returns (y in `out_dtype`, s in `sum_dtype`, default `out_dtype`).
    fp32/hybrid: inputs upcast, the add, the mean of squares and the scaling in float32.
    fp16: inputs rounded to fp16, the add, squares, their (tree) sum, mean, + eps, sqrt, divide and * gamma
    each rounded to fp16 (a sum of squares beyond 65504 is inf: the row becomes 0, as naive fp16 gives).
    """
    _check_precision(precision)
    x = np.asarray(x)
    n = x.shape[-1]
    x2, r2, y, s_out = _norm_rows(x, residual, out_dtype, sum_dtype)
    cdt = F16 if precision == "fp16" else F32
    g = np.asarray(gamma, cdt)
    for i, j in _row_chunks(x2.shape[0], n):
        s = x2[i:j].astype(cdt)
        if r2 is not None:
            s = s + r2[i:j].astype(cdt)
        if precision == "fp16":
            ms = (_tree_sum_fp16(s * s) / F16(n))[..., None]
            y[i:j] = s / np.sqrt(ms + F16(epsilon)) * g
        else:
            ms = np.add.reduce(s * s, axis=-1, dtype=F32, keepdims=True) / F32(n)
            y[i:j] = s / np.sqrt(ms + F32(epsilon)) * g
        s_out[i:j] = s
    return y.reshape(x.shape), s_out.reshape(x.shape)


def rotary_tables(S: int, inv_freq: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [S, R/2] float32 for positions 0..S-1: angle = float32(s) * inv_freq rounded to float32
    (Hugging Face's float32 outer product), cos/sin evaluated in float64 and rounded to float32, then times
    `scale` in float32 (the rope variants' attention scaling)."""
    ang = np.arange(S, dtype=F32)[:, None] * np.asarray(inv_freq, F32)[None, :]
    c = np.cos(ang.astype(F64)).astype(F32)
    s = np.sin(ang.astype(F64)).astype(F32)
    if scale != 1.0:
        c, s = c * F32(scale), s * F32(scale)
    return c, s


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embedding of x [S, heads, D] (float32 or float16; computed in that dtype, each product and sum
    rounded to it): with h = R/2 for the tables' R/2 columns, x'[:h] = x[:h] c - x[h:R] s and
    x'[h:R] = x[h:R] c + x[:h] s; columns from R on pass unchanged (partial rotary)."""
    h = cos.shape[-1]
    c, s = cos[:, None, :].astype(x.dtype), sin[:, None, :].astype(x.dtype)
    out = x.copy()
    x1, x2 = x[..., :h], x[..., h:2 * h]
    out[..., :h] = x1 * c - x2 * s
    out[..., h:2 * h] = x2 * c + x1 * s
    return out


def relative_bucket(rel: np.ndarray, num_buckets: int, max_distance: int, bidirectional: bool) -> np.ndarray:
    """T5's relative-position bucket of each relative position `rel` = key - query (MPNet's and T5's
    function): exact buckets for small distances, log-spaced up to max_distance, the log part in float32 as
    torch computes it; with `bidirectional`, half the buckets for keys after the query."""
    rel = np.asarray(rel, np.int64)
    ret = np.zeros(rel.shape, np.int64)
    nb = int(num_buckets)
    if bidirectional:
        nb //= 2
        ret += (rel > 0).astype(np.int64) * nb
        n = np.abs(rel)
    else:
        n = -np.minimum(rel, 0)
    max_exact = max(nb // 2, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        large = np.log(n.astype(F32) / F32(max_exact)) / F32(math.log(max_distance / max_exact)) \
            * F32(nb - max_exact)
    large = max_exact + np.where(np.isfinite(large), large, 0).astype(np.int64)
    large = np.minimum(large, nb - 1)
    return ret + np.where(n < max_exact, n, large)


def relative_buckets(S: int, num_buckets: int, max_distance: int, bidirectional: bool) -> np.ndarray:
    """relative_bucket of every (query i, key j) pair -> [S, S]."""
    return relative_bucket(np.arange(S)[None, :] - np.arange(S)[:, None], num_buckets, max_distance, bidirectional)


def distance_bias(rel: np.ndarray, *, relative_bias: np.ndarray | None = None, max_distance: int | None = None,
                  bidirectional: bool | None = None, alibi_slopes: np.ndarray | None = None,
                  alibi_symmetric: bool = False) -> np.ndarray:
    """An Attention's score bias [H, *rel.shape] (float32) at relative positions `rel` = key - query: a T5/MPNet
    `relative_bias` table [buckets, H] looked up at relative_bucket(rel), or ALiBi `alibi_slopes` [H] times rel
    (times -|rel| when symmetric), one float32 product. Both depend on the distance alone, so the [H, S, S] bias
    (rel = j - i) and a runtime's per-distance table [H, 2*Smax - 1] (rel = -(Smax-1)..Smax-1) hold the same
    values wherever they meet."""
    rel = np.asarray(rel, np.int64)
    if alibi_slopes is not None:
        r = rel.astype(F32)
        r = -np.abs(r) if alibi_symmetric else r
        return np.asarray(alibi_slopes, F32).reshape((-1,) + (1,) * rel.ndim) * r[None]
    table = np.asarray(relative_bias, F32)
    idx = relative_bucket(rel, table.shape[0], max_distance, bidirectional)
    return np.ascontiguousarray(np.moveaxis(table[idx], -1, 0))


def _softmax32(s: np.ndarray) -> np.ndarray:
    m = s.max(axis=-1, keepdims=True)
    e = np.exp(s - m)
    return e / np.add.reduce(e, axis=-1, dtype=F32, keepdims=True)


def _softmax16(s: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in fp16: max, subtract, exp, sum (tree), divide: each rounded to fp16."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        m = s.max(axis=-1, keepdims=True)
        e = np.exp(s - m)
        return e / _tree_sum_fp16(e)[..., None]


@_quiet
def ref_attention(qkv: np.ndarray, attention_mask: np.ndarray | None = None, *, num_heads: int,
                  head_size: int, scale: float, causal: bool = False, precision: str = "fp32",
                  out_dtype=F32, tf32: bool = False, num_kv_heads: int | None = None,
                  inv_freq: np.ndarray | None = None, rotary_scale: float = 1.0,
                  score_bias: np.ndarray | None = None, window: int | None = None,
                  q_norm: np.ndarray | None = None, k_norm: np.ndarray | None = None,
                  qk_norm_epsilon: float = 1e-6, softcap: float | None = None, qk_norm_kind: str = "rms",
                  q_norm_bias: np.ndarray | None = None, k_norm_bias: np.ndarray | None = None,
                  qk_norm_after_rotary: bool = False) -> np.ndarray:
    """Multi-head attention on a packed qkv [B, S, (H + 2*Hkv)*D] -> y [B, S, H*D] in `out_dtype`.

    Q = qkv[..., :HD], K = [HD:HD+HkvD], V = [HD+HkvD:]; head h is columns h*D:(h+1)*D of each; query head h
    reads K/V head h // (H / Hkv) (grouped-query attention; Hkv = H by default). With `q_norm`/`k_norm` [D]
    (Qwen3), every Q and K head is RMS-normalized over its D values first; with `q_norm` [H*D] and `k_norm`
    [Hkv*D] (OLMo-2), the whole Q and the whole K of each token are (ref_rmsnorm's rules for the precision,
    epsilon `qk_norm_epsilon`). With `qk_norm_kind` "layer", each head is LayerNorm-ed over its D values instead,
    with gains `q_norm`/`k_norm` and biases `q_norm_bias`/`k_norm_bias` (zero when absent) of D values for all
    heads (Persimmon) or D values for each ([H*D] and [Hkv*D], StableLM-2). With `inv_freq` [R/2], the
    first R dims of every Q and K head are rotated by position (rotary_tables, rotate) before the scores: after
    the norm, or with `qk_norm_after_rotary` before it (HunYuan: each head rotated, then normalized).
    scores = scale * Q_h K_h^T, soft-capped to softcap * tanh(scores / softcap) when `softcap` is given (Gemma 2;
    on the float32 scores in every precision, before the bias and the fp16 rounding) (+ score_bias [H, S, S]); key j masked when attention_mask[b, j] == 0, and for
    causal when j > i, and with a sliding `window` when |i - j| > window; masked scores replaced by the dtype's minimum (uniform rows when all keys are masked);
    P = softmax; y_h = P V_h. Precision as in the module docstring; the rotation is computed in float32 on
    the tensor's values (fp16 mode: in fp16), before Q and K are rounded as GEMM operands.
    """
    _check_precision(precision)
    qkv = np.asarray(qkv)
    B, S, C = qkv.shape
    H, D = int(num_heads), int(head_size)
    Hkv = H if num_kv_heads is None else int(num_kv_heads)
    if H % Hkv:
        raise ValueError(f"ref_attention: num_kv_heads {Hkv} does not divide num_heads {H}")
    HD, KD = H * D, Hkv * D
    if C != HD + 2 * KD:
        raise ValueError(f"ref_attention: qkv last dim {C} != ({H} + 2 * {Hkv}) heads * {D}")
    rep = H // Hkv
    out = np.empty((B, S, HD), out_dtype)
    causal_mask = np.triu(np.ones((S, S), bool), k=1) if causal else None
    if window is not None:
        far = np.abs(np.arange(S)[None, :] - np.arange(S)[:, None]) > int(window)
        causal_mask = far if causal_mask is None else causal_mask | far
    low = F16(np.finfo(F16).min) if precision == "fp16" else F32(np.finfo(F32).min)
    rot = None if inv_freq is None else rotary_tables(S, inv_freq, rotary_scale)
    bias = None
    if score_bias is not None:
        bias = np.asarray(score_bias).astype(F16 if precision == "fp16" else F32)
    for b in range(B):
        x = np.asarray(qkv[b])
        q, k, v = x[:, :HD].reshape(S, H, D), x[:, HD:HD + KD].reshape(S, Hkv, D), x[:, HD + KD:]
        cdt = F16 if precision == "fp16" else F32
        if rot is not None and qk_norm_after_rotary:
            q, k = rotate(q.astype(cdt), *rot), rotate(k.astype(cdt), *rot)
        if q_norm is not None and qk_norm_kind == "layer":  # per head, over its D values
            def per_head(a, g, b, heads):  # one gain and bias for all heads [D], or one each [heads * D]
                g = np.asarray(g).reshape(-1, D)
                b = np.zeros_like(g) if b is None else np.asarray(b).reshape(-1, D)
                if len(g) == 1:
                    return ref_layernorm(a, None, g[0], b[0], epsilon=qk_norm_epsilon, precision=precision,
                                         out_dtype=cdt)[0].reshape(S, heads, D)
                return np.stack([ref_layernorm(a[:, h], None, g[h], b[h], epsilon=qk_norm_epsilon,
                                               precision=precision, out_dtype=cdt)[0] for h in range(heads)], 1)
            q, k = per_head(q, q_norm, q_norm_bias, H), per_head(k, k_norm, k_norm_bias, Hkv)
        elif q_norm is not None:
            whole = np.asarray(q_norm).size != D  # over all heads at once: rows [S, H*D]
            qr, kr = (q.reshape(S, HD), k.reshape(S, KD)) if whole else (q, k)
            q = ref_rmsnorm(qr, None, q_norm, epsilon=qk_norm_epsilon, precision=precision,
                            out_dtype=cdt)[0].reshape(S, H, D)
            k = ref_rmsnorm(kr, None, k_norm, epsilon=qk_norm_epsilon, precision=precision,
                            out_dtype=cdt)[0].reshape(S, Hkv, D)
        if rot is not None and not qk_norm_after_rotary:
            q, k = rotate(q.astype(cdt), *rot), rotate(k.astype(cdt), *rot)
        q, k, v = (_operands(a, precision, tf32) for a in (q, k, v))  # float32 values
        # contiguous [Hkv, rep, S, D] / [Hkv, D, S] blocks: numpy's stacked matmul reaches BLAS only for
        # contiguous operands; a group's query heads share their K/V block (no copy per head)
        qg = np.ascontiguousarray(q.reshape(S, Hkv, rep, D).transpose(1, 2, 0, 3))
        kt = np.ascontiguousarray(k.transpose(1, 2, 0))[:, None]  # [Hkv, 1, D, S]
        vv = np.ascontiguousarray(v.reshape(S, Hkv, D).transpose(1, 0, 2))[:, None]  # [Hkv, 1, S, D]
        scores = np.matmul(qg, kt).reshape(H, S, S)  # float32 accumulation
        scores *= F32(scale)
        if softcap is not None:
            scores = (F32(softcap) * np.tanh(scores / F32(softcap))).astype(F32)
        masked = np.zeros((S, S), bool)
        if attention_mask is not None:
            masked |= (np.asarray(attention_mask[b]) == 0)[None, :]
        if causal_mask is not None:
            masked |= causal_mask
        if precision == "fp16":
            scores = scores.astype(F16)
            if bias is not None:
                scores = scores + bias
            np.copyto(scores, low, where=masked[None])
            p = _softmax16(scores).astype(F32)
        else:
            if bias is not None:
                scores += bias
            np.copyto(scores, low, where=masked[None])
            p = _softmax32(scores)
            if precision == "hybrid":
                p = _f16_values(p)
            elif tf32:
                p = _tf32_values(p)
        y = np.matmul(p.reshape(Hkv, rep, S, S), vv)  # [Hkv, rep, S, D] float32 accumulation
        out[b] = y.reshape(H, S, D).transpose(1, 0, 2).reshape(S, HD)
    return out


@_quiet
def ref_embedding(input_ids: np.ndarray, token_type_ids: np.ndarray | None = None, *, word: np.ndarray,
                  position: np.ndarray | None = None, token_type: np.ndarray | None = None,
                  gamma: np.ndarray | None = None, beta: np.ndarray | None = None,
                  epsilon: float | None = None, position_offset: int = 0, precision: str = "fp32",
                  out_dtype=F32) -> np.ndarray:
    """e = word[ids] + position[s + offset] + token_type[tt or 0]; y = LayerNorm(e) if gamma else e.
    Without a position table (rotary or relative positions, applied in attention) the term is absent.

    Sums in float32 (fp32/hybrid: tables upcast) or fp16 (fp16 mode: each addition rounded to fp16);
    the LayerNorm follows ref_layernorm's precision rules. Returns y [B, S, N] in `out_dtype`.
    """
    _check_precision(precision)
    ids = np.asarray(input_ids)
    B, S = ids.shape
    cdt = F16 if precision == "fp16" else F32
    off = int(position_offset)
    with np.errstate(over="ignore"):
        e = np.asarray(word)[ids].astype(cdt)
        if position is not None:
            e = e + np.asarray(position)[off:off + S].astype(cdt)[None]
        if token_type is not None:
            tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
            e = e + np.asarray(token_type)[tt].astype(cdt)
    if gamma is None:
        return e.astype(out_dtype)
    if epsilon is None:
        raise ValueError("ref_embedding: epsilon is required with gamma")
    y, _ = ref_layernorm(e, None, gamma, beta, epsilon=epsilon, precision=precision, out_dtype=out_dtype)
    return y


@_quiet
def ref_pool(x: np.ndarray, attention_mask: np.ndarray | None = None, *, mode: str = "mean",
             normalize: bool = False, precision: str = "fp32", out_dtype=F32, input_ids: np.ndarray | None = None,
             token_id: int | None = None) -> np.ndarray:
    """Pool token states x [B, S, N] -> [B, N] in `out_dtype`, computed in float32 in every precision (a
    tail op on the plan's fp32 output path, as the sentence-transformers modules it stands for compute it).

    mean: sum_j m_j x_j / max(sum_j m_j, 1e-9), m = attention_mask != 0 (all ones without a mask);
    cls: x[:, 0]; first: x[b, the first j with m_j] (x[b, 0] for a row without one); last: x[b, the last j with m_j]
    (zeros for a row without one, as sentence-transformers' last-token pooling gives); token: x[b, the first j with
    input_ids[b, j] == token_id] (x[b, 0] for a row without one); max_id: x[b, the first j of the row's largest id].
    normalize: y / max(|y|_2, 1e-12).
    """
    _check_precision(precision)
    x = np.asarray(x).astype(F32)
    if mode == "mean":
        B, S = x.shape[:2]
        m = np.ones((B, S), F32) if attention_mask is None else (np.asarray(attention_mask) != 0).astype(F32)
        y = np.einsum("bsn,bs->bn", x, m, dtype=F32) / np.maximum(m.sum(1, dtype=F32), F32(1e-9))[:, None]
    elif mode == "cls":
        y = x[:, 0].copy()
    elif mode == "first":  # the first token the mask keeps (sentence-transformers' CLS pooling, left padding too)
        first = np.zeros(x.shape[0], np.int64) if attention_mask is None else \
            np.argmax(np.asarray(attention_mask) != 0, axis=1)
        y = x[np.arange(x.shape[0]), first].copy()
    elif mode == "last":  # the last token the mask keeps (sentence-transformers' last-token pooling)
        B, S = x.shape[:2]
        keep = np.ones((B, S), bool) if attention_mask is None else np.asarray(attention_mask) != 0
        last = S - 1 - np.argmax(keep[:, ::-1], axis=1)
        y = x[np.arange(B), last] * keep.any(1)[:, None].astype(F32)
    elif mode in ("token", "max_id"):  # CLIP's end-of-text token, by its id or as the row's largest id
        if input_ids is None or (mode == "token" and token_id is None):
            raise ValueError(f"pool mode {mode!r} needs input_ids{' and token_id' if mode == 'token' else ''}")
        ids = np.asarray(input_ids)
        at = np.argmax(ids == token_id, axis=1) if mode == "token" else np.argmax(ids, axis=1)
        y = x[np.arange(x.shape[0]), at].copy()
    else:
        raise ValueError(f"pool mode must be mean, cls, first, last, token or max_id, got {mode!r}")
    if normalize:
        norm = np.sqrt(np.add.reduce(y * y, axis=-1, dtype=F32, keepdims=True))
        y = y / np.maximum(norm, F32(1e-12))
    return y.astype(out_dtype)


@_quiet
def ref_normalize(x: np.ndarray, *, epsilon: float = 1e-12, precision: str = "fp32", out_dtype=F32) -> np.ndarray:
    """L2-normalize one vector a sample, x [B, N] -> x / max(|x|_2, epsilon), in float32 in every precision (as
    sentence-transformers' Normalize module and Pool's `normalize` compute it)."""
    _check_precision(precision)
    y = np.asarray(x).astype(F32)
    norm = np.sqrt(np.add.reduce(y * y, axis=-1, dtype=F32, keepdims=True))
    return (y / np.maximum(norm, F32(epsilon))).astype(out_dtype)


# ----------------------------------------------------------------------------- the backend
class ReferenceBackend:
    """Runs a plan op by op in numpy. `run(feeds)` -> {output name: float32 array}.

    `run(feeds, capture=True)` returns `(outputs, tensors)`, `tensors` holding every tensor of the run
    (inputs as int64, each activation in its plan dtype) by name, e.g. for overflow headroom checks.
    Without capture, a tensor is dropped after its last use.
    """

    def __init__(self, plan: Plan):
        if not isinstance(plan, Plan):
            raise TypeError(f"ReferenceBackend needs a trtrun.plan.Plan, got {type(plan).__name__}")
        self.plan = plan
        self._last_use: dict[str, int] = {}
        for i, op in enumerate(plan.ops):
            for t in op["inputs"]:
                if t:
                    self._last_use[t] = i
        self._keep = {o.get("input", o["name"]) for o in plan.outputs}
        self._dtypes = {n: np.dtype(t["dtype"]) for n, t in plan.tensors.items()}
        self._bias_cache: dict = {}

    def _score_bias(self, op: dict, S: int):
        """The [H, S, S] score bias of an Attention op (a `relative_bias` table, or ALiBi `alibi_slopes`): computed once
        per sequence length and table, shared by every layer that names the same table (as the model
        computes it once in its encoder)."""
        a = op["attrs"]
        w = op.get("weights", {})
        slopes, name = w.get("alibi_slopes"), w.get("relative_bias")
        if slopes:  # ALiBi: slope_h * (j - i), or -slope_h * |j - i|
            key = (slopes, S, bool(a.get("alibi_symmetric", False)))
        elif name:
            key = (name, S, a["relative_max_distance"], a["relative_bidirectional"])
        else:
            return None
        if key not in self._bias_cache:
            rel = np.arange(S)[None, :] - np.arange(S)[:, None]
            if slopes:
                bias = distance_bias(rel, alibi_slopes=self.plan.weights[slopes], alibi_symmetric=key[2])
            else:
                bias = distance_bias(rel, relative_bias=self.plan.weights[name], max_distance=key[2],
                                     bidirectional=key[3])
            self._bias_cache = {key: bias}  # [H, S, S]
        return self._bias_cache[key]

    def _w(self, op: dict, role: str):
        name = op.get("weights", {}).get(role)
        return self.plan.weights[name] if name else None

    def run_op(self, op: dict, env: dict) -> list[np.ndarray]:
        """One op of this plan on `env` (tensor name -> array in its plan dtype; graph inputs as check_feeds gives
        them): its outputs in order."""
        typ, a, prec = op["type"], op.get("attrs", {}), op["precision"]
        ins = [env[t] if t else None for t in op["inputs"]] + [None, None]
        outs = op["outputs"]
        odt = self._dtypes[outs[0]]
        tf32 = self.plan.tf32
        if typ == "Embedding":
            return [ref_embedding(ins[0], ins[1], word=self._w(op, "word"), position=self._w(op, "position"),
                                  token_type=self._w(op, "token_type"), gamma=self._w(op, "gamma"),
                                  beta=self._w(op, "beta"), epsilon=a.get("epsilon"),
                                  position_offset=a.get("position_offset", 0), precision=prec, out_dtype=odt)]
        if typ == "Linear":
            y = ref_linear(ins[0], self._w(op, "weight"), self._w(op, "bias"),
                           activation=a.get("activation", "none"), gated=a.get("gated", False),
                           precision=prec, out_dtype=odt, tf32=tf32, residual=ins[1],
                           weight_scale=self._w(op, "weight_scale"), x_scale=self._w(op, "x_scale"))
            if len(self.plan.tensors[outs[0]]["shape"]) == y.ndim - 1 and y.shape[-1] == 1:
                y = y[..., 0]  # one column written squeezed, [B, S] (plan-format.md)
            return [y]
        if typ == "Attention":
            return [ref_attention(ins[0], ins[1], num_heads=a["num_heads"], head_size=a["head_size"],
                                  scale=a["scale"], causal=a.get("causal", False), precision=prec,
                                  out_dtype=odt, tf32=tf32, num_kv_heads=a.get("num_kv_heads"),
                                  inv_freq=self._w(op, "inv_freq"), rotary_scale=a.get("rotary_scale", 1.0),
                                  score_bias=self._score_bias(op, ins[0].shape[1]), window=a.get("window"),
                                  q_norm=self._w(op, "q_norm"), k_norm=self._w(op, "k_norm"),
                                  qk_norm_epsilon=a.get("qk_norm_epsilon", 1e-6), softcap=a.get("softcap"),
                                  qk_norm_kind=a.get("qk_norm_kind", "rms"), q_norm_bias=self._w(op, "q_norm_bias"),
                                  k_norm_bias=self._w(op, "k_norm_bias"),
                                  qk_norm_after_rotary=a.get("qk_norm_after_rotary", False))]
        if typ in ("LayerNorm", "RMSNorm"):
            sdt = self._dtypes[outs[1]] if len(outs) > 1 and outs[1] else odt
            after = a.get("residual_after", False)
            x, r = ins[0], (None if after else ins[1])
            ndt = (F16 if prec == "fp16" else F32) if after else odt  # the norm's value before the add
            if typ == "LayerNorm":
                y, s = ref_layernorm(x, r, self._w(op, "gamma"), self._w(op, "beta"),
                                     epsilon=a["epsilon"], precision=prec, out_dtype=ndt, sum_dtype=sdt)
            else:
                y, s = ref_rmsnorm(x, r, self._w(op, "gamma"), epsilon=a["epsilon"], precision=prec,
                                   out_dtype=ndt, sum_dtype=sdt)
            if after:  # y = residual + norm(x), added in the statistics' precision (fp16 mode: fp16)
                with np.errstate(over="ignore"):
                    y = (y + np.asarray(ins[1]).astype(ndt)).astype(odt)
            return [y, s] if len(outs) > 1 and outs[1] else [y]
        if typ == "Normalize":
            return [ref_normalize(ins[0], epsilon=a.get("epsilon", 1e-12), precision=prec, out_dtype=odt)]
        if typ == "Pool":
            return [ref_pool(ins[0], ins[1], mode=a["mode"], normalize=a.get("normalize", False), precision=prec,
                             out_dtype=odt, input_ids=ins[2] if len(ins) > 2 else None, token_id=a.get("token_id"))]
        raise PlanError(f"op {op['name']!r}: unknown op type {typ!r}")  # validate() prevents this

    def run(self, feeds: Mapping[str, np.ndarray], capture: bool = False):
        plan = self.plan
        env: dict[str, np.ndarray] = dict(plan.check_feeds(feeds))
        B, S = env["input_ids"].shape
        for i, op in enumerate(plan.ops):
            results = self.run_op(op, env)
            for name, arr in zip(op["outputs"], results):
                if not name:
                    continue
                want = plan.resolve_shape(plan.tensors[name]["shape"], B, S)
                if arr.shape != want or arr.dtype != self._dtypes[name]:
                    raise PlanError(f"op {op['name']!r} produced {name!r} as {arr.dtype}{list(arr.shape)}, "
                                    f"the plan declares {self._dtypes[name]}{list(want)}")
                env[name] = arr
            if not capture:
                for t in op["inputs"]:
                    if t and self._last_use.get(t) == i and t not in self._keep:
                        env.pop(t, None)
        # float outputs as float32; an input passed through keeps its integer dtype
        outputs = {o["name"]: np.asarray(env[o["name"]], dtype=F32 if o["dtype"] in ("float32", "float16")
                                         else np.int64) for o in plan.outputs if "input" not in o}
        # an output that is a graph input passed through ("input"): a copy, so it is not the caller's own array
        outputs = {o["name"]: outputs[o["name"]] if "input" not in o else np.array(env[o["input"]], dtype=np.int64)
                   for o in plan.outputs}
        return (outputs, env) if capture else outputs
