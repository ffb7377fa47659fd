"""Dequantize int8 files at build time: quantized weights become float constants, quantization ops go.

Two producers' spellings (onnxruntime.quantization):
- dynamic (`quantize_dynamic`): `DynamicQuantizeLinear(x) -> MatMulInteger(xq, Wq, x_zp, W_zp) -> Cast(float)
  -> Mul(., x_scale * W_scale)` becomes `MatMul(x, (Wq - W_zp) * W_scale)`; a quantized embedding table read
  by `Gather` then `DequantizeLinear` becomes a Gather from the dequantized table; onnxruntime's contrib
  `DynamicQuantizeMatMul`, `MatMulIntegerToFloat` and `QAttention` become MatMul / Attention on dequantized
  weights (lower_contrib lowers the Attention);
- QDQ (`quantize_static`, QuantFormat.QDQ): `DequantizeLinear` of a constant is folded into that constant;
  `QuantizeLinear -> DequantizeLinear` on an activation (fake quantization) is removed.

The weights are then exactly the file's dequantized values, stored at the plan's precision (fp16 in hybrid
and fp16 plans: int8 times a scale fits fp16's 11-bit significand up to the scale's own rounding). The
quantization of *activations* at run time (uint8 per tensor) is not reproduced: the plan computes its
Linear layers in its own precision from the float activations, so it is closer to the fp32 model the file
was quantized from than onnxruntime running the int8 file is (measured in tests/test_producers.py).
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
        if n.op == "DequantizeLinear" and (n.domain or "") in ("", "ai.onnx", _MS):
            if _fold_constant_dq(graph, n):
                count("DequantizeLinear weights")
            elif _gather_dq(graph, n):
                count("quantized embedding tables")
            elif _fake_quant(graph, n):
                count("activation QuantizeLinear/DequantizeLinear pairs removed")
        elif n.op == "MatMulInteger":
            if _matmul_integer(graph, n):
                count("MatMulInteger weights")
        elif n.domain == _MS and n.op in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
            _contrib_matmul(graph, n)
            count(f"{n.op} weights")
        elif n.domain == _MS and n.op == "QAttention":
            _qattention(graph, n)
            count("QAttention weights")
    G.finish(graph)
    left = [n for n in graph.nodes if n.op in ("DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear",
                                                  "MatMulInteger", "ConvInteger", "QLinearMatMul")]
    if left:
        n = left[0]
        raise UnsupportedOpError(n.op, n.name, "a quantization form trtrun cannot dequantize at build time "
                                               "(it takes int8 weights from quantize_dynamic and QDQ files)")
    return counts


def _dq_value(q, scale, zp, axis=None):
    q = np.asarray(q)
    s = np.asarray(scale, np.float32)
    z = np.zeros_like(s) if zp is None else np.asarray(zp).astype(np.float32)
    if s.ndim == 1 and s.size > 1 and axis is not None:
        shape = [1] * q.ndim
        shape[axis] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    return ((q.astype(np.float32) - z) * s).astype(np.float32)


def _const_inputs(n, k):
    vals = []
    for i in range(k):
        t = n.inputs[i] if i < len(n.inputs) and not n.inputs[i].is_empty() else None
        vals.append(None if t is None else G.const_value(t))
    return vals


def _fold_constant_dq(graph, n) -> bool:
    q, s, z = _const_inputs(n, 3)
    if q is None or s is None or (len(n.inputs) > 2 and not n.inputs[2].is_empty() and z is None) \
            or n.outputs[0] in graph.outputs:
        return False
    axis = int(n.attrs.get("axis", 1))
    c = G.new_constant(graph, n.outputs[0].name + ".dequantized", _dq_value(q, s, z, axis % max(q.ndim, 1)))
    G.replace_uses(graph, n.outputs[0], c)
    n.outputs.clear()
    return True


def _gather_dq(graph, n) -> bool:
    g = G.producer(n.inputs[0])
    if g is None or g.op != "Gather" or int(g.attrs.get("axis", 0)) != 0 or len(n.inputs[0].outputs) != 1:
        return False
    table = G.const_value(g.inputs[0])
    _, s, z = _const_inputs(n, 3)
    if table is None or s is None or s.size != 1 or (z is not None and z.size != 1):
        return False
    deq = G.new_constant(graph, g.inputs[0].name + ".dequantized", _dq_value(table, s, z))
    out = n.outputs[0]
    n.outputs.clear()
    graph.nodes.append(G.gs().Node("Gather", G.unique_name(graph, g.name + ".dequantized"), attrs={"axis": 0},
                                   inputs=[deq, g.inputs[1]], outputs=[out]))
    return True


def _fake_quant(graph, n) -> bool:
    q = G.producer(n.inputs[0])
    if q is None or q.op != "QuantizeLinear" or G.const_value(q.inputs[0]) is not None:
        return False
    x = q.inputs[0]
    out = n.outputs[0]
    n.outputs.clear()
    graph.nodes.append(G.gs().Node("Identity", G.unique_name(graph, n.name + ".unquantized"), inputs=[x],
                                   outputs=[out]))
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


def _matmul_integer(graph, n) -> bool:
    x, dql = _dynamic_source(graph, n.inputs[0])
    _, Wq, _, Wz = _const_inputs(n, 4)
    if x is None or Wq is None or Wq.ndim != 2 or len(n.inputs) < 3 or n.inputs[2] is not dql.outputs[2]:
        return False  # x @ W only where xq's zero point is the one DynamicQuantizeLinear gave it
    cast = _only(n.outputs[0], "Cast")
    mul = _only(cast.outputs[0], "Mul") if cast is not None else None
    if mul is None:
        return False
    other = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    sm = G.producer(other)
    if sm is None or sm.op != "Mul" or dql.outputs[1] not in sm.inputs:
        return False
    Ws = G.const_value(sm.inputs[1] if sm.inputs[0] is dql.outputs[1] else sm.inputs[0])
    if Ws is None:
        return False
    W = _dq_value(Wq, Ws, Wz, axis=1)
    out = mul.outputs[0]
    mul.outputs.clear()
    graph.nodes.append(G.gs().Node("MatMul", G.unique_name(graph, n.name + ".dequantized"),
                                   inputs=[x, G.new_constant(graph, n.inputs[1].name + ".dequantized", W)],
                                   outputs=[out]))
    return True


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
    W = G.new_constant(graph, n.name + ".weight", _dq_value(Wq, Ws, Wz, axis=1))
    out = n.outputs[0]
    n.outputs.clear()
    if b is None:
        graph.nodes.append(G.gs().Node("MatMul", G.unique_name(graph, n.name), inputs=[x, W], outputs=[out]))
        return
    h = G.new_variable(graph, n.name + ".matmul")
    graph.nodes.append(G.gs().Node("MatMul", G.unique_name(graph, n.name), inputs=[x, W], outputs=[h]))
    graph.nodes.append(G.gs().Node("Add", G.unique_name(graph, n.name + ".bias"),
                                   inputs=[h, G.new_constant(graph, n.name + ".bias", np.asarray(b, np.float32))],
                                   outputs=[out]))


def _qattention(graph, n):
    # input, weight, bias, input_scale, weight_scale, mask_index?, input_zero_point?, weight_zero_point?, past?
    x, _ = _dynamic_source(graph, n.inputs[0])
    vals = _const_inputs(n, 8)
    Wq, Ws, Wz = vals[1], vals[4], vals[7]
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
