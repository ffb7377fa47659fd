"""Forms onnxruntime's optimizer, torch's exporters and some architectures write that the builder rewrites
before fusing: onnxruntime's ONNX-domain ops (SimplifiedLayerNormalization; LayerNormalization below opset 17),
its RMS and SiLU contrib ops, shape arithmetic that reaches a static dim through a permutation of a Shape, old
opsets, and scalar multipliers on embeddings and Linear outputs."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

H, V = 16, 50


def _token_model(nodes, inits, opset, out="y"):
    """input_ids -> embedding table 'E' -> nodes -> out [B, S, H]."""
    g = helper.make_graph([helper.make_node("Gather", ["E", "input_ids"], ["x"], name="embed")] + nodes, "g",
                          [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["B", "S", H])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                               helper.make_opsetid("com.microsoft", 1)])


def _weights(rng):
    return {"E": rng.normal(size=(V, H)).astype(np.float32),
            "g1": (1 + 0.1 * rng.normal(size=H)).astype(np.float32),
            "g2": (1 + 0.1 * rng.normal(size=H)).astype(np.float32),
            "b2": (0.1 * rng.normal(size=H)).astype(np.float32),
            "W1": (0.2 * rng.normal(size=(H, 2 * H))).astype(np.float32),
            "W2": (0.2 * rng.normal(size=(2 * H, H))).astype(np.float32)}


def _build_and_compare(tmp_path, model, precision="fp32"):
    """Build the file, run the plan on the reference backend and onnxruntime on the file: max abs difference."""
    import trtrun
    from trtrun.reference import ReferenceBackend

    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    plan = trtrun.build(path, precision=precision)
    ids = np.random.default_rng(1).integers(0, V, (3, 7))
    got = ReferenceBackend(plan).run({"input_ids": ids})[plan.outputs[0]["name"]]
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    return plan, float(np.abs(got - want).max())


def test_rms_forms_and_quick_gelu_as_silu(tmp_path):
    """SimplifiedLayerNormalization (ONNX domain, as onnxruntime writes it), QuickGelu with alpha 1 (its
    spelling of SiLU in Llama's MLP) and SkipSimplifiedLayerNormalization: RMSNorm, Linear+silu, RMSNorm with
    the residual, in the plan; the same numbers as onnxruntime's own kernels."""
    w = _weights(np.random.default_rng(0))
    nodes = [helper.make_node("SimplifiedLayerNormalization", ["x", "g1"], ["n1"], name="rms1", axis=-1,
                              epsilon=1e-6),
             helper.make_node("MatMul", ["n1", "W1"], ["h"], name="fc1"),
             helper.make_node("QuickGelu", ["h"], ["a"], name="silu", domain="com.microsoft", alpha=1.0),
             helper.make_node("MatMul", ["a", "W2"], ["m"], name="fc2"),
             helper.make_node("SkipSimplifiedLayerNormalization", ["m", "x", "g2", "b2"], ["y"], name="rms2",
                              domain="com.microsoft", epsilon=1e-6)]
    plan, err = _build_and_compare(tmp_path, _token_model(nodes, w, 17))
    ops = [(o["type"], o["attrs"].get("activation")) for o in plan.ops]
    assert ops == [("Embedding", None), ("RMSNorm", None), ("Linear", "silu"), ("Linear", "none"),
                   ("RMSNorm", None)], ops
    assert err < 1e-4  # fp32 both ways: rounding only (outputs of order 1)
    assert any("SimplifiedLayerNormalization" in c for c in plan.source["conversions"])


def test_simplified_layernormalization_alone(tmp_path):
    """A file whose only onnxruntime op is SimplifiedLayerNormalization (ONNX domain): still lowered."""
    w = _weights(np.random.default_rng(0))
    nodes = [helper.make_node("SimplifiedLayerNormalization", ["x", "g1"], ["y"], name="rms", axis=-1, epsilon=1e-6)]
    plan, err = _build_and_compare(tmp_path, _token_model(nodes, w, 17))
    assert [o["type"] for o in plan.ops] == ["Embedding", "RMSNorm"]
    assert err < 1e-4


def test_layernormalization_below_opset_17(tmp_path):
    """onnxruntime's optimizer fuses LayerNorm into LayerNormalization also at opsets below 17, where ONNX has
    no such op (onnxruntime registers its own): lowered like its contrib ops, then fused as usual."""
    w = _weights(np.random.default_rng(0))
    nodes = [helper.make_node("LayerNormalization", ["x", "g1", "b2"], ["y"], name="ln", axis=-1, epsilon=1e-5)]
    plan, err = _build_and_compare(tmp_path, _token_model(nodes, w, 14))
    assert [o["type"] for o in plan.ops] == ["Embedding"]  # the LayerNorm folded into the embedding
    assert plan.ops[0]["attrs"]["epsilon"] == pytest.approx(1e-5)
    assert err < 1e-4


@pytest.mark.parametrize("alpha", [1.702, None], ids=["alpha-1.702", "default-alpha"])
def test_quick_gelu_of_clip(tmp_path, alpha):
    """QuickGelu with CLIP's alpha (1.702, also the op's default), as onnxruntime's optimizer writes CLIP's MLP:
    Linear with quick_gelu, the same numbers as onnxruntime's own kernel."""
    w = _weights(np.random.default_rng(0))
    kw = {} if alpha is None else {"alpha": alpha}
    # a LayerNorm first: a MatMul right after the embedding lookup is folded into its table
    nodes = [helper.make_node("LayerNormalization", ["x", "g1", "b2"], ["n"], name="ln", axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["n", "W1"], ["h"], name="fc1"),
             helper.make_node("QuickGelu", ["h"], ["a"], name="clip_gelu", domain="com.microsoft", **kw),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2")]
    plan, err = _build_and_compare(tmp_path, _token_model(nodes, w, 17))
    ops = [(o["type"], o["attrs"].get("activation")) for o in plan.ops]
    assert ops == [("Embedding", None), ("Linear", "quick_gelu"), ("Linear", "none")], ops
    assert err < 1e-4  # fp32 both ways: rounding only (outputs of order 1)


def test_quick_gelu_other_alpha_is_refused(tmp_path):
    import trtrun

    w = _weights(np.random.default_rng(0))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("QuickGelu", ["h"], ["a"], name="odd_gelu", domain="com.microsoft", alpha=1.5),
             helper.make_node("MatMul", ["a", "W2"], ["y"], name="fc2")]
    onnx.save(_token_model(nodes, w, 17), str(tmp_path / "m.onnx"))
    with pytest.raises(trtrun.UnsupportedOpError, match="'QuickGelu' at node 'odd_gelu'.*alpha 1.5.*1.702"):
        trtrun.build(tmp_path / "m.onnx")


def test_static_shape_values_through_a_permutation():
    """Shape(x [B, S, 4, 8]) -> Gather([0, 2, 1, 3]) -> Slice(-1:) is the static [8] (the head size an attention
    scale is computed from: onnxruntime's transpose optimizer writes this); Slice(2:3) of it is S, dynamic, and
    stays computed."""
    G = importlib.import_module("trtrun.builder._graph")
    S = importlib.import_module("trtrun.builder.simplify")
    gs = G.gs()
    x = gs.Variable("x", np.float32, ["B", "S", 4, 8])
    shape = gs.Variable("shape", np.int64, [4])
    perm = gs.Variable("perm", np.int64, [4])
    head, seq = gs.Variable("head", np.int64, [1]), gs.Variable("seq", np.int64, [1])
    hd = gs.Variable("hd", np.float32, [1])
    c = lambda n, v: gs.Constant(n, np.array(v, np.int64))  # noqa: E731
    nodes = [gs.Node("Shape", "shape", inputs=[x], outputs=[shape]),
             gs.Node("Gather", "perm", attrs={"axis": 0}, inputs=[shape, c("p", [0, 2, 1, 3])], outputs=[perm]),
             gs.Node("Slice", "last", inputs=[perm, c("s0", [-1]), c("e0", [2**62])], outputs=[head]),
             gs.Node("Slice", "mid", inputs=[perm, c("s1", [2]), c("e1", [3])], outputs=[seq]),
             gs.Node("Cast", "cast", attrs={"to": onnx.TensorProto.FLOAT}, inputs=[head], outputs=[hd])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[hd, seq])
    assert S.fold_static_shape_values(graph) == 1
    cast = next(n for n in graph.nodes if n.op == "Cast")
    assert G.const_value(cast.inputs[0]).tolist() == [8]
    assert G.producer(seq).op == "Slice"  # S is dynamic: left to be computed


def test_static_shape_values_stay_small():
    """A crafted chain of Concats doubling a static shape vector is followed only while it is shape-sized (64
    elements): the pass stays quick and folds the short ones only."""
    import time

    G = importlib.import_module("trtrun.builder._graph")
    S = importlib.import_module("trtrun.builder.simplify")
    gs = G.gs()
    x = gs.Variable("x", np.float32, [2, 3, 4, 8])
    t = gs.Variable("s0", np.int64, [4])
    nodes = [gs.Node("Shape", "shape", inputs=[x], outputs=[t])]
    for k in range(40):
        nxt = gs.Variable(f"s{k + 1}", np.int64, [4 * 2 ** (k + 1)])
        nodes.append(gs.Node("Concat", f"c{k}", attrs={"axis": 0}, inputs=[t, t], outputs=[nxt]))
        t = nxt
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[t])
    t0 = time.perf_counter()
    folded = S.fold_static_shape_values(graph)
    assert time.perf_counter() - t0 < 5  # 2^40 elements would never end
    assert folded == 4  # 8, 16, 32, 64 elements; 128 is past the bound


def _torch_export_at(arch, path, opset):
    """The corpus's tiny `arch` through torch.onnx at an old opset (trtrun export writes 14..20 only)."""
    import warnings

    import torch

    from conftest import TINY
    from trtrun.export import load_torch_model

    model = load_torch_model({"bert": "bert-base", "gpt2": "gpt2"}[arch], overrides=dict(TINY), seed=0)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if arch == "bert" else [])

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *xs):
            return self.m(**dict(zip(names, xs))).last_hidden_state

    ids = torch.randint(0, 1000, (2, 8))
    xs = (ids, torch.ones_like(ids), torch.zeros_like(ids))[:len(names)]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(model).eval(), xs, str(path), input_names=names, output_names=["y"],
                          opset_version=opset, dynamo=False, dynamic_axes={n: {0: "b", 1: "s"} for n in names + ["y"]})
    return path


@pytest.mark.parametrize("opset", [11, 12])
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_old_opsets_are_converted(tmp_path, arch, opset):
    """Files of opsets 11 and 12 (older exporters' defaults) are converted to 14 by onnx's version converter;
    their Softmax (over flattened trailing axes before 13) comes back as Flatten/Softmax/Reshape, read as the
    softmax of the last axis. The plan matches onnxruntime on the original file, and says it was converted."""
    pytest.importorskip("torch")
    import trtrun
    from trtrun.reference import ReferenceBackend

    path = _torch_export_at(arch, tmp_path / "m.onnx", opset)
    plan = trtrun.build(path, precision="fp32")
    assert any(f"opset {opset} converted to 14" in c for c in plan.source["conversions"])
    assert [o["type"] for o in plan.ops].count("Attention") == 2
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 1000, (3, 9))
    mask = np.ones((3, 9), np.int64)
    mask[1, 6:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    names = {i["name"] for i in plan.inputs}
    got = ReferenceBackend(plan).run({k: v for k, v in feeds.items() if k in names})["y"]
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0]
    m = mask.astype(bool)
    assert np.abs(got[m] - want[m]).max() < 1e-4  # fp32 both ways, unpadded tokens


def test_opset_older_than_the_converter_takes_is_refused(tmp_path):
    import trtrun

    m = _token_model([helper.make_node("Identity", ["x"], ["y"], name="id")], {"E": np.ones((V, H), np.float32)}, 8)
    onnx.save(m, str(tmp_path / "m.onnx"))
    with pytest.raises(trtrun.ModelError, match="opset 8 is older than 9; re-export with opset 13 or newer"):
        trtrun.build(tmp_path / "m.onnx")


def test_constant_scales_fold_into_tables_and_weights():
    """Gather(table) * c, MatMul(x, W) * c and (MatMul(x, W) + b) / c become the same ops on scaled constants
    (Gemma's sqrt(hidden) embedding scale, Granite's multipliers); a table another op also reads keeps its
    value there, and a scale on a MatMul of two activations (attention's) is left alone."""
    G = importlib.import_module("trtrun.builder._graph")
    S = importlib.import_module("trtrun.builder.simplify")
    gs = G.gs()
    rng = np.random.default_rng(0)
    E, W, b = (rng.normal(size=s).astype(np.float32) for s in ((V, H), (H, H), (H,)))
    ids = gs.Variable("ids", np.int64, ["B", "S"])
    table, w, bias = gs.Constant("E", E), gs.Constant("W", W), gs.Constant("b", b)
    t = {n: gs.Variable(n, np.float32) for n in ("e", "es", "m", "ms", "a", "as", "tied", "qk", "qks")}
    c = lambda n, v: gs.Constant(n, np.array(v, np.float32))  # noqa: E731
    nodes = [gs.Node("Gather", "g", inputs=[table, ids], outputs=[t["e"]]),
             gs.Node("Mul", "g_scale", inputs=[t["e"], c("c1", 11.3)], outputs=[t["es"]]),
             gs.Node("MatMul", "mm", inputs=[t["es"], w], outputs=[t["m"]]),
             gs.Node("Mul", "mm_scale", inputs=[c("c2", 0.25), t["m"]], outputs=[t["ms"]]),
             gs.Node("MatMul", "mm2", inputs=[t["ms"], w], outputs=[t["a"]]),
             gs.Node("Add", "bias", inputs=[t["a"], bias], outputs=[t["as"]]),
             gs.Node("Div", "div", inputs=[t["as"], c("c3", 4.0)], outputs=[t["tied"]]),
             gs.Node("MatMul", "lm_head", inputs=[t["tied"], gs.Constant("ET", E.T.copy())], outputs=[t["qk"]]),
             gs.Node("MatMul", "scores", inputs=[t["qk"], t["qk"]], outputs=[gs.Variable("sc", np.float32)])]
    nodes.append(gs.Node("Mul", "score_scale", inputs=[nodes[-1].outputs[0], c("c4", 0.125)], outputs=[t["qks"]]))
    nodes.append(gs.Node("Gather", "g2", inputs=[table, ids], outputs=[gs.Variable("other", np.float32)]))
    graph = gs.Graph(nodes=nodes, inputs=[ids], outputs=[t["qks"], nodes[-1].outputs[0]])
    assert S.fold_constant_scales(graph) == 3
    ops = {n.name: n for n in graph.nodes}
    assert "g_scale" not in ops and "mm_scale" not in ops and "div" not in ops and "score_scale" in ops
    np.testing.assert_allclose(G.const_value(ops["g"].inputs[0]), E * np.float32(11.3), rtol=1e-6)
    np.testing.assert_allclose(G.const_value(ops["mm"].inputs[1]), W * 0.25, rtol=1e-6)
    np.testing.assert_allclose(G.const_value(ops["mm2"].inputs[1]), W / 4, rtol=1e-6)
    np.testing.assert_allclose(G.const_value(ops["bias"].inputs[1]), b / 4, rtol=1e-6)
    assert np.array_equal(G.const_value(ops["g2"].inputs[0]), E)  # the table's other reader: unscaled


def test_constant_scales_copy_at_most_the_weights_once():
    """Scaled copies are shared per (constant, factor) and bounded by the weights' own size: 40 Gathers of one
    table scaled 40 ways fold until the copies would outweigh the weights, then stay Muls."""
    G = importlib.import_module("trtrun.builder._graph")
    S = importlib.import_module("trtrun.builder.simplify")
    gs = G.gs()
    ids = gs.Variable("ids", np.int64, ["B", "S"])
    table = gs.Constant("E", np.ones((V, H), np.float32))
    nodes, outs = [], []
    for k in range(40):
        e, y = gs.Variable(f"e{k}", np.float32), gs.Variable(f"y{k}", np.float32)
        factor = 2.0 if k < 20 else 3.0 + k  # 20 readers share one copy, 20 want their own
        nodes += [gs.Node("Gather", f"g{k}", inputs=[table, ids], outputs=[e]),
                  gs.Node("Mul", f"m{k}", inputs=[e, gs.Constant(f"c{k}", np.array(factor, np.float32))], outputs=[y])]
        outs.append(y)
    graph = gs.Graph(nodes=nodes, inputs=[ids], outputs=outs)
    folded = S.fold_constant_scales(graph)
    left = sum(n.op == "Mul" for n in graph.nodes)
    assert folded + left == 40 and left > 0
    copies = {id(n.inputs[0]) for n in graph.nodes if n.op == "Gather" and n.inputs[0] is not table}
    assert len(copies) * table.values.nbytes <= table.values.nbytes + 40 * 4  # the budget: the weights' size


def _flattened_mlp(tail=()):
    """OPT's decoder-layer form: the token states flattened to [B*S, H], LayerNorm, Gemm (transB, alpha, beta),
    ReLU, MatMul and the residual Add on those rows, then a Reshape back to Shape(x)."""
    return [helper.make_node("Shape", ["x"], ["xs"], name="shape"),
            helper.make_node("Constant", [], ["flat"], name="flat_shape",
                             value=numpy_helper.from_array(np.array([-1, H], np.int64))),
            helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten"),
            helper.make_node("LayerNormalization", ["x2", "g1", "b2"], ["n"], name="ln", axis=-1, epsilon=1e-5),
            helper.make_node("Gemm", ["n", "W1t", "c1"], ["h"], name="fc1", transB=1, alpha=0.5, beta=2.0),
            helper.make_node("Relu", ["h"], ["a"], name="relu"),
            helper.make_node("MatMul", ["a", "W2"], ["m"], name="fc2"),
            helper.make_node("Add", ["m", "x2"], ["r"], name="residual"),
            *tail,
            helper.make_node("Reshape", ["r2" if tail else "r", "xs"], ["y"], name="unflatten")]


def _flattened_weights():
    w = _weights(np.random.default_rng(2))
    w["W1t"] = np.ascontiguousarray(w.pop("W1").T)
    w["c1"] = (0.1 * np.random.default_rng(3).normal(size=2 * H)).astype(np.float32)
    return w


def test_rows_flattened_around_the_mlp(tmp_path):
    """The flattened region is computed on [B, S, H]: LayerNorm, a Linear with its ReLU (Gemm's alpha, beta and
    transB folded into its weights), a Linear, the residual; the same numbers as onnxruntime."""
    plan, err = _build_and_compare(tmp_path, _token_model(_flattened_mlp(), _flattened_weights(), 17))
    ops = [(o["type"], o["attrs"].get("activation")) for o in plan.ops]
    assert ops[:4] == [("Embedding", None), ("LayerNorm", None), ("Linear", "relu"), ("Linear", "none")], ops
    assert "unflatten_rows" in plan.header["builder"]["passes"]
    assert err < 1e-4  # fp32 both ways: rounding only (outputs of order 1)


def test_rows_flattened_into_another_op_stay_flat(tmp_path):
    """A flattened region that reaches an op not working on rows alone (a Transpose) is left as it is: the
    build names what it cannot lower instead of computing something else."""
    import trtrun

    tail = [helper.make_node("Transpose", ["r"], ["rt"], name="transpose", perm=[1, 0]),
            helper.make_node("Transpose", ["rt"], ["r2"], name="transpose_back", perm=[1, 0])]
    path = tmp_path / "m.onnx"
    onnx.save(_token_model(_flattened_mlp(tail), _flattened_weights(), 17), str(path))
    with pytest.raises(trtrun.UnsupportedOpError, match="unsupported op '(Relu|Reshape|Transpose|Gemm)'"):
        trtrun.build(path, precision="fp32")


def test_embedding_projection_folds_into_the_table(tmp_path):
    """Gather(E) -> MatMul(P) (OPT-350m's project_in) becomes one table E @ P; where the product would outgrow the
    file's weights (a 4-wide table projected to 64) it stays a Linear after a narrow Embedding. Both match
    onnxruntime."""
    rng = np.random.default_rng(4)
    for E, expect_linear in ((24, False), (2, True)):
        w = {"E": rng.normal(size=(V, E)).astype(np.float32),
             "P": (0.3 * rng.normal(size=(E, H))).astype(np.float32)}
        nodes = [helper.make_node("MatMul", ["x", "P"], ["y"], name="project_in")]
        g = _token_model(nodes, w, 17)
        plan, err = _build_and_compare(tmp_path, g)
        types = [o["type"] for o in plan.ops]
        assert types == (["Embedding", "Linear"] if expect_linear else ["Embedding"]), types
        assert ("fold_embedding_projection" in plan.header["builder"]["passes"]) != expect_linear
        assert err < 1e-4
