"""fp8 (E4M3) Linear layers: the quantization rules and their numpy reference (docs/precision.md).

An fp8 Linear (op precision "fp8") computes, for x [M, K] and a weight stored as float8_e4m3fn [K, N] with its
float32 scale s_w ([N]: one per output channel, or [1]: one for the tensor):

    s_x = the static x_scale weight [1] (calibrated at build time), or per token amax(|x_m|) / 448 (dynamic;
          1 for an all-zero row)
    q_x = e4m3(clip(float32(x) / s_x, -448, 448))     one rounding, to nearest even; NaN stays NaN
    acc = q_x @ q_w                                    products of fp8 values are exact in fp32; fp32 sums
    h   = acc * (s_x * s_w) + bias                     the scale product in fp32, then the accumulator times it
    y   = as a hybrid Linear from h: rounded to the output dtype, then the activation / gate in fp32

That is what an fp8 GEMM library is handed (cuBLASLt takes fp8 A and B and applies their scales to the fp32
accumulator): the saturation happens where the operands are made, since E4M3 has no infinity and a cast past
448 (ml_dtypes, like the hardware's non-saturating convert) gives NaN.

The weight is quantized once at build time from its fp32 values with the same rule: s_w = amax / 448 over its
column (channel) or the whole tensor, q_w = e4m3(clip(w / s_w)); an all-zero column gets s_w = 1.
"""

from __future__ import annotations

import numpy as np

from .types import FP8_WEIGHT_SCALES as WEIGHT_SCALES

F32 = np.float32
E4M3_MAX = 448.0  # the largest finite float8_e4m3fn (S.1111.110 = 1.75 x 2^8); no infinities
E4M3_NAME = "float8_e4m3fn"  # the plan's dtype name: ml_dtypes' (and PyTorch's) spelling


def e4m3_dtype() -> np.dtype:
    """numpy's dtype for float8_e4m3fn (from ml_dtypes, which onnx depends on)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.float8_e4m3fn)


def quantize_e4m3(v: np.ndarray) -> np.ndarray:
    """float32 values -> float8_e4m3fn, saturated to +-448 first (round to nearest even, NaN kept)."""
    v = np.asarray(v, dtype=F32)
    return np.clip(v, F32(-E4M3_MAX), F32(E4M3_MAX)).astype(e4m3_dtype())


def amax_scale(amax) -> np.ndarray:
    """Scale(s) float32 from absolute maxima: amax / 448 (fp32 division), 1 where amax is 0."""
    a = np.asarray(amax, dtype=F32)
    with np.errstate(invalid="ignore"):
        s = a / F32(E4M3_MAX)
    return np.where(a == 0, F32(1.0), s).astype(F32)


def quantize_weight(w: np.ndarray, kind: str = "channel") -> tuple[np.ndarray, np.ndarray]:
    """A Linear weight [K, N] (fp32 values) -> (q float8_e4m3fn [K, N], scale float32 [N] or [1])."""
    if kind not in WEIGHT_SCALES:
        raise ValueError(f"fp8 weight scale must be one of {', '.join(WEIGHT_SCALES)}, got {kind!r}")
    w = np.asarray(w, dtype=F32)
    if w.ndim != 2:
        raise ValueError(f"quantize_weight: a Linear weight is [K, N], got shape {w.shape}")
    amax = np.abs(w).max(axis=0) if kind == "channel" else np.abs(w).max(keepdims=True).reshape(1)
    s = amax_scale(amax)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = quantize_e4m3(w / s[None, :])
    return q, s


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """q [K, N] float8 times its scale ([N] or [1]) -> float32 (for reports and comparisons)."""
    return np.asarray(q).astype(F32) * np.asarray(scale, F32)[None, :]


def token_scales(x2: np.ndarray) -> np.ndarray:
    """Dynamic activation scales of rows x2 [M, K]: amax of each row / 448 -> [M, 1] float32."""
    x2 = np.asarray(x2, dtype=F32)
    return amax_scale(np.abs(x2).max(axis=1) if x2.shape[1] else np.zeros(x2.shape[0], F32))[:, None]


def quantize_activation(x2: np.ndarray, x_scale: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows x2 [M, K] -> (q float8_e4m3fn [M, K], their scales float32 [M, 1] or [1, 1]).

    x_scale None: dynamic (per token); else the static scale (one float32)."""
    x2 = np.asarray(x2, dtype=F32)
    s = token_scales(x2) if x_scale is None else np.asarray(x_scale, F32).reshape(1, 1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        q = quantize_e4m3(x2 / s)
    return q, s


def fp8_gemm(x2: np.ndarray, q_w: np.ndarray, s_w: np.ndarray, x_scale: np.ndarray | None) -> np.ndarray:
    """acc * (s_x * s_w): the fp32 result of an fp8 GEMM of rows x2 [M, K] with the quantized weight."""
    q_x, s_x = quantize_activation(x2, x_scale)
    acc = q_x.astype(F32) @ np.asarray(q_w).astype(F32)  # exact products, float32 accumulation
    with np.errstate(over="ignore", invalid="ignore"):
        return acc * (s_x * np.asarray(s_w, F32).reshape(1, -1))
