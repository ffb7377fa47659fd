"""Dequantize int8 files at build time: quantized weights become float constants, quantization ops go.

Two producers' spellings (onnxruntime.quantization):
- dynamic (`quantize_dynamic`): `DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, x_zp, W_zp) -> Cast(float)
  -> Mul(., x_scale * W_scale)` becomes `MatMul(x, (Wq - W_zp) * W_scale)`, and where both operands are
  activations quantized at run time (attention's two MatMuls, in Optimum's avx512/arm64 configurations)
  `MatMul(x, y)`; a quantized embedding table read
  by `Gather` then `DequantizeLinear` becomes a Gather from the dequantized table; onnxruntime's contrib
  `DynamicQuantizeMatMul`, `MatMulIntegerToFloat` and `QAttention` become MatMul / Attention on dequantized
  weights (lower_contrib lowers the Attention);
- QDQ (`quantize_static`, QuantFormat.QDQ): `DequantizeLinear` of a constant is folded into that constant;
  `QuantizeLinear -> DequantizeLinear` on an activation (fake quantization) is removed;
- QOperator (`quantize_static`, QuantFormat.QOperator): each `QLinearMatMul`, `QLinearAdd`, `QLinearMul`,
  `QLinearSoftmax` (uint8 in and out) is first written as its QDQ equivalent, `DequantizeLinear` of each input,
  the float op, `QuantizeLinear` of its output, and a `QuantizeLinear` of a constant (a scale or mask value
  the file quantizes at run time) folded into the quantized constant, so the QDQ rules above apply;
- onnxruntime's transformer optimizer's fused files quantized (`QEmbedLayerNormalization`, whose tables, gamma
  and beta are uint8 per tensor): the `EmbedLayerNormalization` of the dequantized constants (lower_contrib
  lowers it).
- block-quantized weights (`MatMulNBits`, com.microsoft: onnxruntime's `MatMulNBitsQuantizer`, the int4 form of
  onnxruntime-genai's and Olive's decoder files): 4- or 8-bit codes packed low bits first, one scale (and zero
  point, default 2^(bits-1)) per block of `block_size` values along K, become `MatMul(x, W^T)` (+ its bias).
  Its Gather form (`GatherBlockQuantized`, an embedding table in blocks) becomes a Gather from the dequantized
  table; its QDQ form is `DequantizeLinear` with opset 21's `block_size`, folded with the QDQ rules below.

The weights are then exactly the file's dequantized values, stored at the plan's precision (fp16 in hybrid
and fp16 plans: int8 times a scale fits fp16's 11-bit significand up to the scale's own rounding). The
quantization of *activations* at run time (uint8 per tensor) is not reproduced: the plan computes its
Linear layers in its own precision from the float activations, so it is closer to the fp32 model the file
was quantized from than onnxruntime running the int8 file is (measured in tests/builder/test_producers.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from . import _graph as G

_MS = "com.microsoft"


def dequantize(graph) -> dict:
    """Rewrite in place; returns counts of what was dequantized or removed (empty if nothing)."""
    counts: dict[str, int] = {}

    def count(key):
        counts[key] = counts.get(key, 0) + 1

    for n in list(graph.nodes):
        if n.op in _QOPERATOR and (n.domain or "") in _QOPERATOR[n.op][0]:
            _qoperator_to_qdq(graph, n)
            count(f"{n.op} ops as QDQ")
        elif n.op == "QEmbedLayerNormalization" and n.domain == _MS:
            _qembed_layernorm(graph, n)
            count("QEmbedLayerNormalization tables")
    for n in list(graph.nodes):
        if n.op == "QuantizeLinear" and _fold_constant_q(graph, n):
            count("constants quantized at run time")
    for n in list(graph.nodes):
        if n.op == "DequantizeLinear" and (n.domain or "") in ("", "ai.onnx", _MS):
            folded = _fold_constant_dq(graph, n)
            if folded:
                count("DequantizeLinear 4-bit weights" if folded in ("int4", "uint4") else "DequantizeLinear weights")
            elif _gather_dq(graph, n):
                count("quantized embedding tables")
            elif _fake_quant(graph, n):
                count("activation QuantizeLinear/DequantizeLinear pairs removed")
        elif n.op == "MatMulInteger":
            kind = _matmul_integer(graph, n)
            if kind:
                count(f"MatMulInteger {kind}")
        elif n.domain == _MS and n.op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
            _contrib_matmul(graph, n)
            count(f"{n.op} weights")
        elif n.domain == _MS and n.op == "QAttention":
            _qattention(graph, n)
            count("QAttention weights")
        elif n.domain == _MS and n.op == "GatherBlockQuantized":
            count(f"GatherBlockQuantized {_gather_block_quantized(graph, n)}-bit tables")
        elif n.domain == _MS and n.op == "MatMulNBits":
            count(f"MatMulNBits {_matmul_nbits(graph, n)}-bit weights")  # "4-bit" makes the file int4
    graph.__dict__.pop("_trtrun_dequantized_tables", None)
    G.finish(graph)
    left = [n for n in graph.nodes if n.op in ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear",
                                                  "MatMulInteger", "ConvInteger", *_QOPERATOR)]
    if left:
        n = left[0]
        raise UnsupportedOpError(n.op, n.name, "a quantization form trtrun cannot dequantize at build time "
                                               "(it takes int8 weights from quantize_dynamic, QDQ and QOperator files)")
    return counts


# QOperator ops: domains, the float op, its attributes kept, the (x, scale, zero point) input positions of
# each quantized operand, the (scale, zero point) positions of the output's quantization
_QOPERATOR = {
    "QLinearMatMul": (("", "ai.onnx"), "MatMul", (), ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearAdd": ((_MS,), "Add", (), ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": ((_MS,), "Mul", (), ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearSoftmax": ((_MS,), "Softmax", ("axis",), ((0, 1, 2),), (3, 4)),
}


def _qoperator_to_qdq(graph, n):
    """A QOperator op -> DequantizeLinear of its quantized inputs, the float op, QuantizeLinear of its output."""
    domains, op, keep, operands, (ys, yz) = _QOPERATOR[n.op]
    ins = list(n.inputs) + [None] * 8

    def opt(i):
        return None if ins[i] is None or ins[i].is_empty() else ins[i]

    if n.op == "QLinearSoftmax" and int(n.attrs.get("opset", 13)) < 13:
        # opset < 13's Softmax flattens everything from `axis` on; over the last axis it is the same as 13's
        raise UnsupportedOpError(n.op, n.name, "a QLinearSoftmax of opset < 13 (coerced 2-D) is not supported")
    floats = []
    for x, sc, zp in operands:
        if opt(x) is None or opt(sc) is None:
            raise UnsupportedOpError(n.op, n.name, "a quantized operand without its scale")
        f = G.new_variable(graph, ins[x].name + ".dequantized")
        graph.nodes.append(G.gs().Node("DequantizeLinear", G.unique_name(graph, n.name + ".dq"),
                                       inputs=[ins[x], ins[sc]] + ([ins[zp]] if opt(zp) is not None else []),
                                       outputs=[f]))
        floats.append(f)
    y = G.new_variable(graph, n.name + ".float")
    graph.nodes.append(G.gs().Node(op, G.unique_name(graph, n.name + ".float"), inputs=floats, outputs=[y],
                                   attrs={k: v for k, v in n.attrs.items() if k in keep}))
    out = n.outputs[0]
    n.outputs.clear()
    n.inputs.clear()  # its operands are read by the DequantizeLinears now, not by the node left to cleanup
    graph.nodes.append(G.gs().Node("QuantizeLinear", G.unique_name(graph, n.name + ".q"),
                                   inputs=[y, ins[ys]] + ([ins[yz]] if opt(yz) is not None else []), outputs=[out]))


def _fold_constant_q(graph, n) -> bool:
    """QuantizeLinear of a constant -> the quantized constant (what the file computes at run time: round half to
    even, saturated to the zero point's integer type)."""
    x, sc, zp = _const_inputs(n, 3)
    if x is None or sc is None or (len(n.inputs) > 2 and not n.inputs[2].is_empty() and zp is None):
        return False
    dt = np.dtype(zp.dtype) if zp is not None else np.dtype(np.uint8)
    if dt.kind not in "iu" or dt.itemsize != 1 or sc.size != 1:
        return False
    info = np.iinfo(dt)
    z = 0.0 if zp is None else float(zp.reshape(-1)[0])
    q = np.clip(np.rint(np.asarray(x, np.float32) / np.float32(sc.reshape(-1)[0])) + z, info.min, info.max).astype(dt)
    G.replace_uses(graph, n.outputs[0], G.new_constant(graph, n.outputs[0].name + ".folded", q))
    n.outputs.clear()
    return True


def _qembed_layernorm(graph, n):
    """QEmbedLayerNormalization(ids, seg?, word_q, pos_q, seg_q?, gamma_q, beta_q, mask?, 5 scales, 5 zero points)
    -> EmbedLayerNormalization(ids, seg?, word, pos, seg?, gamma, beta, mask?) of the dequantized constants."""
    vals = _const_inputs(n, 18)
    ins = list(n.inputs) + [None] * 18
    new_ins = [ins[0], ins[1] if ins[1] is not None else G.empty()]
    for k, name in zip(range(2, 7), ("word table", "position table", "segment table", "gamma", "beta")):
        present = ins[k] is not None and not ins[k].is_empty()
        if not present:
            if k == 4:  # no segment table
                new_ins.append(G.empty())
                continue
            raise UnsupportedOpError(n.op, n.name, f"its {name} is missing")
        q, sc, zp = vals[k], vals[k + 6], vals[k + 11]
        if q is None or sc is None or (ins[k + 11] is not None and not ins[k + 11].is_empty() and zp is None):
            raise UnsupportedOpError(n.op, n.name, f"its {name} is not a constant with a constant scale and zero "
                                                   f"point, so it cannot be dequantized at build time")
        new_ins.append(G.new_constant(graph, ins[k].name + ".dequantized", _dq_value(q, sc, zp)))
    new_ins.append(ins[7] if ins[7] is not None else G.empty())
    while new_ins and new_ins[-1].is_empty():
        new_ins.pop()
    outs = list(n.outputs)
    n.outputs.clear()
    n.inputs.clear()
    graph.nodes.append(G.gs().Node("EmbedLayerNormalization", G.unique_name(graph, n.name + ".dequantized"),
                                   attrs=dict(n.attrs), inputs=new_ins, outputs=outs, domain=_MS))


def _dq_value(q, scale, zp, axis=None):
    q = np.asarray(q)
    s = np.asarray(scale, np.float32)
    z = np.zeros_like(s) if zp is None else np.asarray(zp).astype(np.float32)
    if s.ndim == 1 and s.size > 1 and axis is not None:
        shape = [1] * q.ndim
        shape[axis] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    return ((q.astype(np.float32) - z) * s).astype(np.float32)


def _node_const(t):
    """The value of a constant, or of a Constant node's output (value attribute), else None."""
    v = G.const_value(t)
    p = G.producer(t) if v is None else None
    if p is not None and p.op == "Constant" and "value" in p.attrs:
        v = G.const_value(p.attrs["value"])
    return v


def _const_inputs(n, k):
    """The constant values of n's first k inputs (None where absent or not constant); a Reshape of a constant to a
    constant shape counts as the reshaped constant (onnxruntime-genai shares the lm_head's int4 codes with the
    embedding table that way)."""
    vals = []
    for i in range(k):
        t = n.inputs[i] if i < len(n.inputs) and not n.inputs[i].is_empty() else None
        v = None if t is None else G.const_value(t)
        p = None if t is None or v is not None else G.producer(t)
        if p is not None and p.op == "Reshape" and len(p.inputs) == 2:
            a, shape = G.const_value(p.inputs[0]), _node_const(p.inputs[1])
            if a is not None and shape is not None and shape.ndim == 1 and (shape > 0).all() \
                    and int(np.prod(shape)) == a.size:
                v = a.reshape(shape)
        vals.append(v)
    return vals


def _fold_constant_dq(graph, n):
    """DequantizeLinear of constants -> the float constant; returns the quantized type's name (False: not folded)."""
    q, s, z = _const_inputs(n, 3)
    if q is None or s is None or (len(n.inputs) > 2 and not n.inputs[2].is_empty() and z is None) \
            or n.outputs[0] in graph.outputs:
        return False
    axis = int(n.attrs.get("axis", 1)) % max(np.ndim(q), 1)
    bs = int(n.attrs.get("block_size", 0) or 0)
    if bs > 0:  # blocked quantization (opset 21): one scale (and zero point) per block_size values along axis
        if np.ndim(s) != np.ndim(q) or s.shape[axis] != -(-q.shape[axis] // bs):
            raise UnsupportedOpError(n.op, n.name, f"scales of shape {list(np.shape(s))} do not block {list(q.shape)} "
                                                   f"by {bs} along axis {axis}")
        s = np.repeat(s, bs, axis=axis).take(range(q.shape[axis]), axis=axis)
        z = None if z is None else np.repeat(z, bs, axis=axis).take(range(q.shape[axis]), axis=axis)
    try:
        value = _dq_value(q, s, z, None if bs > 0 else axis)
    except ValueError:  # numpy's broadcast error: scales that fit neither the tensor nor its axis
        raise UnsupportedOpError(n.op, n.name, f"scales of shape {list(np.shape(s))} fit neither {list(q.shape)} "
                                               f"nor its axis {axis}") from None
    c = G.new_constant(graph, n.outputs[0].name + ".dequantized", value)
    G.replace_uses(graph, n.outputs[0], c)
    n.outputs.clear()
    return np.asarray(q).dtype.name


def _gather_dq(graph, n) -> bool:
    g = G.producer(n.inputs[0])
    # every reader of the gathered integers dequantizes them (QOperator files: one DequantizeLinear per op)
    if g is None or g.op != "Gather" or int(g.attrs.get("axis", 0)) != 0 or \
            any(c.op != "DequantizeLinear" for c in n.inputs[0].outputs):
        return False
    table = G.const_value(g.inputs[0])
    _, s, z = _const_inputs(n, 3)
    if table is None or s is None or s.size != 1 or (z is not None and z.size != 1):
        return False
    key = (g.inputs[0].name, float(s.reshape(-1)[0]), None if z is None else float(z.reshape(-1)[0]))
    tables = graph.__dict__.setdefault("_trtrun_dequantized_tables", {})  # one float table for its readers
    if key not in tables:
        tables[key] = G.new_constant(graph, g.inputs[0].name + ".dequantized", _dq_value(table, s, z))
    deq = tables[key]
    out = n.outputs[0]
    n.outputs.clear()
    n.inputs.clear()
    graph.nodes.append(G.gs().Node("Gather", G.unique_name(graph, g.name + ".dequantized"), attrs={"axis": 0},
                                   inputs=[deq, g.inputs[1]], outputs=[out]))
    return True


# ops that move uint8 activations without computing on them (onnxruntime's QOperator files keep the quantized
# tensor through these between a QuantizeLinear and the next op's DequantizeLinear)
_Q8_LAYOUT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def _fake_quant(graph, n) -> bool:
    """QuantizeLinear(x) -> [layout ops] -> DequantizeLinear, x an activation -> x through the same layout ops.

    Every reader of the QuantizeLinear's output (through the layout ops) must be such a DequantizeLinear, so no
    op is left reading the integers; the tensors between become float (the layout ops' values are the same
    numbers before dequantizing as after, with per-tensor scales)."""
    path = []
    t = n.inputs[0]
    q = G.producer(t)
    while q is not None and q.op in _Q8_LAYOUT and len(t.outputs) == 1:
        path.append(q)
        t = q.inputs[0]
        q = G.producer(t)
    if q is None or q.op != "QuantizeLinear" or G.const_value(q.inputs[0]) is not None:
        return False
    for sc in (q.inputs[1:3] if len(q.inputs) > 1 else []):
        if not sc.is_empty() and (G.const_value(sc) is None or G.const_value(sc).size != 1):
            return False  # per-axis activation scales would not commute with the layout ops
    x = q.inputs[0]
    out = n.outputs[0]
    n.outputs.clear()
    n.inputs.clear()
    if not path:
        graph.nodes.append(G.gs().Node("Identity", G.unique_name(graph, n.name + ".unquantized"), inputs=[x],
                                       outputs=[out]))
        return True
    # a float copy of the layout chain, reading x and writing the DequantizeLinear's output
    src = x
    for k, op in enumerate(reversed(path)):
        dst = out if k == len(path) - 1 else G.new_variable(graph, op.outputs[0].name + ".float")
        graph.nodes.append(G.gs().Node(op.op, G.unique_name(graph, op.name + ".float"), attrs=dict(op.attrs),
                                       inputs=[src] + list(op.inputs[1:]), outputs=[dst]))
        src = dst
    return True


def _only(t, op):
    cs = list(t.outputs)
    return cs[0] if len(cs) == 1 and cs[0].op == op else None


def _dynamic_source(graph, t):
    """The float tensor a DynamicQuantizeLinear quantized into t (its output 0), or None."""
    p = G.producer(t)
    if p is None or p.op != "DynamicQuantizeLinear" or p.outputs[0] is not t:
        return None, None
    return p.inputs[0], p


def _matmul_integer(graph, n) -> str | None:
    """MatMulInteger(xq, Wq) -> Cast -> Mul(x_scale * W_scale) as MatMul(x, W): "weights". With the second
    operand an activation quantized at run time too (Optimum's and sentence-transformers' avx512/arm64 files
    quantize attention's Q.K^T and P.V so), MatMul(x, y): "activations". None where the form differs."""
    x, dql = _dynamic_source(graph, n.inputs[0])
    if x is None or len(n.inputs) < 3 or n.inputs[2] is not dql.outputs[2]:
        return None  # x @ W only where xq's zero point is the one DynamicQuantizeLinear gave it
    y, dql_y = _dynamic_source(graph, n.inputs[1])
    cast = _only(n.outputs[0], "Cast")
    mul = _only(cast.outputs[0], "Mul") if cast is not None else None
    if mul is None:
        return None
    other = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    sm = G.producer(other)
    if sm is None or sm.op != "Mul" or dql.outputs[1] not in sm.inputs:
        return None
    second = sm.inputs[1] if sm.inputs[0] is dql.outputs[1] else sm.inputs[0]
    if dql_y is not None:
        if len(n.inputs) < 4 or n.inputs[3] is not dql_y.outputs[2] or second is not dql_y.outputs[1]:
            return None
        rhs, kind = y, "activations"
    else:
        _, Wq, _, Wz = _const_inputs(n, 4)
        Ws = G.const_value(second)
        if Wq is None or Wq.ndim != 2 or Ws is None:
            return None
        rhs, kind = G.new_constant(graph, n.inputs[1].name + ".dequantized", _dq_value(Wq, Ws, Wz, axis=1)), "weights"
    out = mul.outputs[0]
    mul.outputs.clear()
    graph.nodes.append(G.gs().Node("MatMul", G.unique_name(graph, n.name + ".dequantized"), inputs=[x, rhs],
                                   outputs=[out]))
    return kind


def _contrib_matmul(graph, n):
    if n.op == "DynamicQuantizeMatMul":  # A float, B int8, b_scale, b_zero_point?, bias?
        x = n.inputs[0]
        _, Wq, Ws, Wz, b = _const_inputs(n, 5)
    else:  # MatMulIntegerToFloat: A quantized, B, a_scale, b_scale, a_zp?, b_zp?, bias?
        x, dql = _dynamic_source(graph, n.inputs[0])
        _, Wq, _, Ws, _, Wz, b = _const_inputs(n, 7)
        # x @ W only where A's scale and zero point are the ones DynamicQuantizeLinear quantized x with
        if x is not None and (n.inputs[2] is not dql.outputs[1]
                              or len(n.inputs) < 5 or n.inputs[4] is not dql.outputs[2]):
            x = None
    if x is None or Wq is None or Ws is None or Wq.ndim != 2:
        raise UnsupportedOpError(n.op, n.name, "only constant int8 weights applied to a float (or dynamically "
                                               "quantized) input can be dequantized")
    _matmul_in_place_of(graph, n, x, _dq_value(Wq, Ws, Wz, axis=1), b)


def _matmul_in_place_of(graph, n, x, weight, bias):
    """n's output computed as MatMul(x, weight) (+ bias) by standard ops; n is left to cleanup."""
    W = G.new_constant(graph, n.name + ".weight", np.asarray(weight, np.float32))
    out = n.outputs[0]
    n.outputs.clear()
    if bias is None:
        graph.nodes.append(G.gs().Node("MatMul", G.unique_name(graph, n.name), inputs=[x, W], outputs=[out]))
        return
    h = G.new_variable(graph, n.name + ".matmul")
    graph.nodes.append(G.gs().Node("MatMul", G.unique_name(graph, n.name), inputs=[x, W], outputs=[h]))
    graph.nodes.append(G.gs().Node("Add", G.unique_name(graph, n.name + ".bias"),
                                   inputs=[h, G.new_constant(graph, n.name + ".bias", np.asarray(bias, np.float32))],
                                   outputs=[out]))


def nbits_weight(packed, scales, zero_points, K: int, N: int, bits: int, block_size: int) -> np.ndarray:
    """MatMulNBits' weight as float32 [N, K]: B uint8 [N, blocks, block_size * bits / 8] holds each block's codes
    packed low bits first; scales [N * blocks] (or [N, blocks]); zero points None (2^(bits-1)), the scales' float
    type ([N * blocks]) or uint8 packed like B, each row's blocks in ceil(blocks * bits / 8) bytes."""
    blocks = -(-K // block_size)
    per = 8 // bits
    q = np.asarray(packed, np.uint8).reshape(N, blocks, block_size // per)
    codes = np.stack([(q >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], axis=-1).reshape(N, blocks, block_size)
    sc = np.asarray(scales, np.float32).reshape(N, blocks)
    if zero_points is None:
        zp = np.full((N, blocks), float(1 << (bits - 1)), np.float32)
    elif np.asarray(zero_points).dtype == np.uint8:
        z = np.asarray(zero_points, np.uint8).reshape(N, -1)
        zp = np.stack([(z >> (bits * i)) & ((1 << bits) - 1) for i in range(per)], axis=-1).reshape(N, -1)[:, :blocks]
        zp = zp.astype(np.float32)
    else:
        zp = np.asarray(zero_points, np.float32).reshape(N, blocks)
    w = (codes.astype(np.float32) - zp[..., None]) * sc[..., None]
    return w.reshape(N, blocks * block_size)[:, :K]


def _gather_block_quantized(graph, n) -> int:
    """GatherBlockQuantized(data, indices, scales, zero_points?) -> Gather from the dequantized table; its bits.
    data: int4/uint4 (or uint8 holding two 4-bit codes a byte, low first, along the last axis), one scale (and
    zero point; default 0 for int4, 2^(bits-1) otherwise) per block_size values along quantize_axis."""
    bits, bs = int(n.attrs.get("bits", 4)), int(n.attrs.get("block_size", 128))
    data, _, sc, zp = _const_inputs(n, 4)
    if data is None or sc is None or (len(n.inputs) > 3 and not n.inputs[3].is_empty() and zp is None):
        raise UnsupportedOpError(n.op, n.name, "only a constant quantized table, scales and zero points can be "
                                               "dequantized")
    data = np.asarray(data)
    qaxis = int(n.attrs.get("quantize_axis", data.ndim - 1)) % data.ndim
    gaxis = int(n.attrs.get("gather_axis", 0)) % data.ndim

    def unpack(a):
        a = np.asarray(a)
        if a.dtype != np.uint8 or bits == 8:
            return a.astype(np.float32)
        lo, hi = a & 0x0F, a >> 4  # two 4-bit codes a byte along the last axis, low first
        return np.stack([lo, hi], axis=-1).reshape(*a.shape[:-1], a.shape[-1] * 2).astype(np.float32)

    codes = unpack(data)
    size = codes.shape[qaxis]
    blocks = -(-size // bs)
    if bits not in (4, 8) or np.ndim(sc) != codes.ndim or np.shape(sc)[qaxis] != blocks:
        raise UnsupportedOpError(n.op, n.name, f"bits {bits}, scales of shape {list(np.shape(sc))} for a table of "
                                               f"{list(codes.shape)} in blocks of {bs} along axis {qaxis}")
    if zp is None:
        z = np.zeros_like(np.asarray(sc, np.float32)) + (0.0 if data.dtype.name == "int4" else float(1 << (bits - 1)))
    else:
        z = unpack(zp)
        if z.shape[qaxis] < blocks:
            raise UnsupportedOpError(n.op, n.name, f"zero points of shape {list(np.shape(zp))} for {blocks} blocks")
        z = z.take(range(blocks), axis=qaxis)

    def expand(a):
        return np.repeat(np.asarray(a, np.float32), bs, axis=qaxis).take(range(size), axis=qaxis)

    table = (codes - expand(z)) * expand(sc)
    out = n.outputs[0]
    n.outputs.clear()
    graph.nodes.append(G.gs().Node("Gather", G.unique_name(graph, n.name + ".dequantized"), attrs={"axis": gaxis},
                                   inputs=[G.new_constant(graph, n.name + ".table", table.astype(np.float32)),
                                           n.inputs[1]], outputs=[out]))
    return bits


def _matmul_nbits(graph, n) -> int:
    """MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?) -> MatMul(A, W^T) (+ bias); returns its bits."""
    bits, bs = int(n.attrs.get("bits", 4)), int(n.attrs.get("block_size", 0))
    K, N = int(n.attrs.get("K", 0)), int(n.attrs.get("N", 0))
    B, sc, zp, g_idx, bias = _const_inputs(n, 6)[1:]
    if bits not in (4, 8) or bs < 16 or bs & (bs - 1) or K < 1 or N < 1:
        raise UnsupportedOpError(n.op, n.name, f"bits {bits}, block_size {bs}, K {K}, N {N}: trtrun dequantizes "
                                               f"4- and 8-bit blocks of a power of two >= 16 values")
    if len(n.inputs) > 4 and not n.inputs[4].is_empty():
        raise UnsupportedOpError(n.op, n.name, "a g_idx input (act-order group indices) is not supported")
    if B is None or sc is None or (len(n.inputs) > 3 and not n.inputs[3].is_empty() and zp is None) \
            or (len(n.inputs) > 5 and not n.inputs[5].is_empty() and bias is None):
        raise UnsupportedOpError(n.op, n.name, "only constant packed weights, scales, zero points and bias can be "
                                               "dequantized")
    blocks = -(-K // bs)
    if B.size != N * blocks * bs * bits // 8 or sc.size != N * blocks:
        raise UnsupportedOpError(n.op, n.name, f"packed weights of {B.size} bytes and {sc.size} scales do not fit "
                                               f"K {K}, N {N} in blocks of {bs}")
    _matmul_in_place_of(graph, n, n.inputs[0], np.ascontiguousarray(nbits_weight(B, sc, zp, K, N, bits, bs).T), bias)
    return bits


def _qattention(graph, n):
    # input, weight, bias, input_scale, weight_scale, mask_index?, input_zero_point?, weight_zero_point?, past?
    x, dql = _dynamic_source(graph, n.inputs[0])
    vals = _const_inputs(n, 8)
    Wq, Ws, Wz = vals[1], vals[4], vals[7]
    # x @ W only where the input's scale and zero point are the ones DynamicQuantizeLinear quantized x with
    if x is not None and (n.inputs[3] is not dql.outputs[1] or len(n.inputs) < 7 or n.inputs[6] is not dql.outputs[2]):
        x = None
    if x is None or Wq is None or Ws is None:
        raise UnsupportedOpError(n.op, n.name, "only constant int8 weights applied to a dynamically quantized "
                                               "input can be dequantized")
    W = G.new_constant(graph, n.name + ".weight", _dq_value(Wq, Ws, Wz, axis=1))
    ins = [x, W, n.inputs[2]]
    if len(n.inputs) > 5:
        ins.append(n.inputs[5])
    if len(n.inputs) > 8 and not n.inputs[8].is_empty():
        raise UnsupportedOpError(n.op, n.name, "past state is not supported")
    outs = list(n.outputs)
    n.outputs.clear()
    graph.nodes.append(G.gs().Node("Attention", G.unique_name(graph, n.name + ".dequantized"), attrs=dict(n.attrs),
                                   inputs=ins, outputs=outs, domain=_MS))
