"""onnxruntime's contrib int8 MatMuls (DynamicQuantizeMatMul, MatMulIntegerToFloat) dequantized at build time."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _model(contrib: str, Wq, s, zp, b):
    inits = [numpy_helper.from_array(Wq, "Wq"), numpy_helper.from_array(s, "s"), numpy_helper.from_array(zp, "zp"),
             numpy_helper.from_array(b, "b")]
    if contrib == "DynamicQuantizeMatMul":  # A float, B int8, b_scale, b_zero_point, bias
        nodes = [helper.make_node(contrib, ["x", "Wq", "s", "zp", "b"], ["y"], domain="com.microsoft", name="mm")]
    else:  # A quantized, B, a_scale, b_scale, a_zero_point, b_zero_point, bias
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
                 helper.make_node(contrib, ["xq", "Wq", "xs", "s", "xz", "zp", "b"], ["y"], domain="com.microsoft",
                                  name="mm")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("contrib", ["DynamicQuantizeMatMul", "MatMulIntegerToFloat"])
def test_contrib_int8_matmul_becomes_a_float_matmul(contrib):
    DQ = importlib.import_module("trtrun.builder.dequantize")
    G = importlib.import_module("trtrun.builder._graph")
    rng = np.random.default_rng(0)
    Wq = rng.integers(-100, 100, (4, 5)).astype(np.int8)
    s = np.full(1, 0.02, np.float32)
    zp = np.full(1, 3, np.int8)
    b = rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    m = _model(contrib, Wq, s, zp, b)
    want = x @ ((Wq.astype(np.float32) - 3) * s) + b
    run = lambda model: ort.InferenceSession(model.SerializeToString(),  # noqa: E731
                                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # onnxruntime quantizes x to uint8 (1/255 of its range a step): the int8 file is that close to the float math
    assert np.abs(run(m) - want).max() < 0.05
    graph = G.gs().import_onnx(m)
    assert DQ.dequantize(graph) == {f"{contrib} weights": 1}
    assert sorted(n.op for n in graph.nodes) == ["Add", "MatMul"]
    # the rewritten graph is the float math on the dequantized weights (fp32 rounding only)
    np.testing.assert_allclose(run(G.gs().export_onnx(graph)), want, rtol=1e-5, atol=1e-5)


def test_matmul_integer_to_float_without_the_inputs_zero_point_is_refused():
    """Without A's zero point the file computes (xq) @ W, not x @ W: no float MatMul stands for it."""
    DQ = importlib.import_module("trtrun.builder.dequantize")
    G = importlib.import_module("trtrun.builder._graph")
    from trtrun.errors import UnsupportedOpError

    m = _model("MatMulIntegerToFloat", np.ones((4, 5), np.int8), np.full(1, 0.02, np.float32), np.zeros(1, np.int8),
               np.zeros(5, np.float32))
    m.graph.node[1].input[4] = ""
    with pytest.raises(UnsupportedOpError, match="MatMulIntegerToFloat.*'mm'"):
        DQ.dequantize(G.gs().import_onnx(m))


def test_matmul_integer_without_the_inputs_zero_point_is_not_dequantized():
    """MatMulInteger(xq, Wq) without xq's zero point is not x @ W: the form is left (and named) as it is."""
    DQ = importlib.import_module("trtrun.builder.dequantize")
    G = importlib.import_module("trtrun.builder._graph")
    from trtrun.errors import UnsupportedOpError

    inits = [numpy_helper.from_array(np.ones((4, 5), np.int8), "Wq"),
             numpy_helper.from_array(np.zeros((), np.int8), "zp"),
             numpy_helper.from_array(np.full((), 0.02, np.float32), "s")]
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
             helper.make_node("MatMulInteger", ["xq", "Wq", "", "zp"], ["yi"], name="mmi"),
             helper.make_node("Cast", ["yi"], ["yf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["xs", "s"], ["sc"], name="scale"),
             helper.make_node("Mul", ["yf", "sc"], ["y"], name="mul")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="cannot dequantize"):
        DQ.dequantize(G.gs().import_onnx(m))
    m.graph.node[1].input[2] = "xz"  # with it, the same graph is x @ W
    graph = G.gs().import_onnx(m)
    assert DQ.dequantize(graph) == {"MatMulInteger weights": 1}
