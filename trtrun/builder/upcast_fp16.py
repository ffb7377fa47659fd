"""Upcast an fp16 file to fp32 for building: the plan's precision decides the dtypes again afterwards.

Files converted by onnxruntime's `float16.convert_float_to_float16` (with or without keep_io_types, also
Optimum's O4) hold fp16 weights and compute in fp16, with Casts at the fp32 islands and boundaries. The
probe checks (probe.agree: 1e-4 of a tensor's magnitude) cannot confirm a pattern computed in fp16, whose
own rounding is ~1e-3. So every fp16 constant becomes the fp32 number it holds (exact), every Cast to fp16
a Cast to fp32 (simplify then removes it as a no-op) and every fp16 tensor fp32: the graph then computes,
in fp32, the original model with fp16-rounded weights, and the builder proceeds as for an fp32 export.
Scalar constants are the exception: where one is the fp16 rounding of a constant these graphs use (sqrt 2,
sqrt(2/pi), 0.044715, 1/sqrt(head size); the converter's +-65504 clamp of a float32-min mask fill), it is read
as that constant, since the GELU and attention checks tell forms apart by less than fp16's rounding of them. A
hybrid or fp16 plan stores those weights in fp16 again (exactly the file's values); an fp32 plan keeps them
as fp32 numbers.
"""

from __future__ import annotations

import functools

import numpy as np

from . import _graph as G


@functools.lru_cache(maxsize=1)
def _known_constants() -> dict:
    """fp16 value -> the fp32 constant transformer graphs use that rounds to it."""
    import math

    cs = [math.sqrt(2.0), 1 / math.sqrt(2.0), math.sqrt(2.0 / math.pi), 0.044715, 0.044715 * math.sqrt(2.0 / math.pi)]
    for d in range(1, 513):  # attention scales 1/sqrt(head size) and their inverses
        cs += [math.sqrt(d), 1.0 / math.sqrt(d)]
    out = {}
    for c in cs:
        out.setdefault(float(np.float16(c)), np.float32(c))
    # convert_float_to_float16 clamps what fp16 cannot hold to +-65504: a scalar at the clamp is a mask fill
    # value (float32's extremes in Hugging Face models); read back as that, fully masked rows stay uniform
    out[65504.0] = np.float32(np.finfo(np.float32).max)
    out[-65504.0] = np.float32(np.finfo(np.float32).min)
    return out


def _scalar_fp32(c):
    """An fp16 scalar constant -> the fp32 constant it was rounded from, where it is a known one."""
    if c.size != 1:
        return c.astype(np.float32)
    v = float(c.reshape(()))
    known = _known_constants().get(v)
    return c.astype(np.float32) if known is None else np.full(c.shape, known, np.float32)


def upcast_fp16(graph) -> dict:
    """Rewrite fp16 to fp32 in place; returns {"fp16_weights": count} (count of non-scalar fp16 constants)."""
    import onnx

    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    weights = 0
    changed = 0
    for t in graph.tensors().values():
        c = G.const_value(t)
        if c is not None:
            if c.dtype == np.float16:
                t.values = _scalar_fp32(c)
                weights += int(c.size > 1)
                changed += 1
        elif t.dtype is not None and np.dtype(t.dtype) == np.float16:
            t.dtype = np.float32
            changed += 1
    for n in graph.nodes:
        if n.op == "Cast" and int(n.attrs.get("to", 0)) == F16:
            n.attrs["to"] = F32
            changed += 1
        for key in ("value", "value_float"):
            v = n.attrs.get(key)
            c = G.const_value(v) if v is not None and not isinstance(v, (float, int)) else None
            if c is not None and c.dtype == np.float16:
                v.values = _scalar_fp32(c)
                changed += 1
    G.finish(graph)
    return {"fp16_weights": weights} if changed else {}
