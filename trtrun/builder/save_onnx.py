"""Write the precision-pinned graph in standard ONNX ops, with explicit Casts, runnable in onnxruntime.

This is the simplified original graph (before fusion), so any ONNX runtime can execute it and its
precision is explicit in the graph (the strongly typed way TensorRT 11 wants it):

- fp32:   unchanged.
- hybrid: every MatMul/Gemm reads fp16 operands (constant weights stored in fp16, activations
          through a Cast) and its result is cast back to fp32; everything else, LayerNorm and
          Softmax included, stays fp32, and so do the graph outputs.
- fp16:   every float tensor fp16 (constants converted, saturated at the fp16 maximum as the usual
          converters do, so a float32-min mask fill becomes -65504 rather than -inf), Casts to float
          turned into Casts to float16, graph outputs cast back to fp32.
"""

from __future__ import annotations

import numpy as np

from . import _graph as G

_FP16_MAX = float(np.finfo(np.float16).max)


def precision_onnx(graph, precision: str):
    """A ModelProto of `graph` (a gs graph in standard ops; not modified) pinned to `precision`."""
    import onnx

    g = graph.copy()
    if precision == "hybrid":
        _hybrid(g)
    elif precision == "fp16":
        _fp16(g)
    # intermediate types are stale after the rewrite: let the consumer re-infer them
    for t in g.tensors().values():
        if t.__class__.__name__ == "Variable" and t not in g.inputs and t not in g.outputs:
            t.dtype, t.shape = None, None
    for t in g.outputs:
        t.dtype = np.float32
    G.finish(g)
    model = G.gs().export_onnx(g)
    model.producer_name = "trtrun"
    onnx.checker.check_model(model)
    return model


def _cast(g, t, to_dtype, cache):
    key = (id(t), np.dtype(to_dtype).str)
    if key in cache:
        return cache[key]
    import onnx
    out = G.gs().Variable(G.unique_name(g, f"{t.name}.{np.dtype(to_dtype).name}"), dtype=to_dtype)
    g.nodes.append(G.gs().Node("Cast", G.unique_name(g, f"{t.name}.cast"),
                               attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(to_dtype))},
                               inputs=[t], outputs=[out]))
    cache[key] = out
    return out


def _half_const(g, c, cache):
    key = id(c)
    if key not in cache:
        v = np.array(np.clip(np.asarray(c.values, np.float32), -_FP16_MAX, _FP16_MAX), dtype=np.float16)
        cache[key] = G.gs().Constant(G.unique_name(g, c.name + ".fp16"), v)
    return cache[key]


def _is_float(t) -> bool:
    v = G.const_value(t)
    if v is not None:
        return v.dtype.kind == "f"
    return t.dtype is not None and np.dtype(t.dtype).kind == "f"


def _hybrid(g):
    casts, consts = {}, {}
    for n in [n for n in g.nodes if n.op in ("MatMul", "Gemm")]:
        new_inputs = []
        for t in n.inputs:
            if t.is_empty() or not _is_float(t):
                new_inputs.append(t)
            elif G.const_value(t) is not None:
                new_inputs.append(_half_const(g, t, consts))
            else:
                new_inputs.append(_cast(g, t, np.float16, casts))
        n.inputs = new_inputs
        out = n.outputs[0]
        half = G.gs().Variable(G.unique_name(g, out.name + ".fp16"), dtype=np.float16)
        n.outputs = [half]
        import onnx
        g.nodes.append(G.gs().Node("Cast", G.unique_name(g, out.name + ".cast"),
                                   attrs={"to": onnx.TensorProto.FLOAT}, inputs=[half], outputs=[out]))


def _fp16(g):
    import onnx

    consts = {}
    for n in list(g.nodes):
        n.inputs = [_half_const(g, t, consts) if G.const_value(t) is not None and
                    G.const_value(t).dtype == np.float32 else t for t in n.inputs]
        if n.op == "Cast" and int(n.attrs.get("to", 0)) == onnx.TensorProto.FLOAT:
            n.attrs["to"] = onnx.TensorProto.FLOAT16
        if n.op == "ConstantOfShape" and "value" in n.attrs:
            v = n.attrs["value"]
            arr = np.asarray(v.values if hasattr(v, "values") else v)
            if arr.dtype == np.float32:
                n.attrs["value"] = G.gs().Constant(G.unique_name(g, n.name + ".value"),
                                                   np.array(np.clip(arr, -_FP16_MAX, _FP16_MAX), dtype=np.float16))
    # graph outputs back to fp32
    for i, out in enumerate(list(g.outputs)):
        p = G.producer(out)
        half = G.gs().Variable(G.unique_name(g, out.name + ".fp16"), dtype=np.float16)
        p.outputs = [half if o is out else o for o in p.outputs]
        for c in list(out.outputs):
            c.inputs = [half if x is out else x for x in c.inputs]
        g.nodes.append(G.gs().Node("Cast", G.unique_name(g, out.name + ".cast"),
                                   attrs={"to": onnx.TensorProto.FLOAT}, inputs=[half], outputs=[out]))
