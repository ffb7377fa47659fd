"""Other spellings of the same network: the builder must read them by meaning, not node order.

Each test rewrites an exported graph into an equivalent one written differently (checked: the
rewritten graph gives the original's outputs in onnxruntime), builds it, and checks the fp32 plan
against onnxruntime on the original (per-sample cosine >= 0.99999 over valid tokens, the issue's fp32
bound) and the recovered attributes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from conftest import cosine_per_sample, onnxruntime_run, random_feeds
from trtrun.builder import build
from trtrun.reference import ReferenceBackend


def _producer(model, name):
    return next(n for n in model.graph.node if name in n.output)


def _const(model, name, value):
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _check_same(orig, rewritten, tmp_path):
    feeds = random_feeds(orig, seed=11)
    ref = onnxruntime_run(orig, feeds)
    # the rewrite is equivalent (masked fill values may differ, so compare valid tokens)
    m = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(onnxruntime_run(rewritten, feeds)[m], ref[m], rtol=1e-4, atol=1e-5)
    plan = build(rewritten, precision="fp32")
    out = ReferenceBackend(plan).run(feeds)["last_hidden_state"]
    assert cosine_per_sample(out, ref, feeds["attention_mask"]).min() >= 0.99999
    return plan


def test_where_mask_and_scale_on_q(exported, tmp_path):
    """logits = Where(mask == 0, (q * s) @ k^T, -1e4) instead of q @ k^T * s + additive mask."""
    src = exported("bert")
    m = onnx.load(str(src))
    for k, sm in enumerate([n for n in m.graph.node if n.op_type == "Softmax"]):
        add = _producer(m, sm.input[0])
        mul = _producer(m, add.input[0])
        qk = _producer(m, mul.input[0])
        scale = _const(m, f"t_scale{k}", np.float32(1 / np.sqrt(32)))  # head size 32
        qs = f"t_qscaled{k}"
        m.graph.node.append(helper.make_node("Mul", [qk.input[0], scale], [qs], name=f"t_qmul{k}"))
        qk.input[0] = qs
        mask = add.input[1]
        zero = _const(m, f"t_zero{k}", np.float32(0))
        fill = _const(m, f"t_fill{k}", np.float32(-1e4))
        m.graph.node.append(helper.make_node("Equal", [mask, zero], [f"t_keep{k}"], name=f"t_eq{k}"))
        m.graph.node.append(helper.make_node("Where", [f"t_keep{k}", qk.output[0], fill], [sm.input[0]],
                                             name=f"t_where{k}"))
        m.graph.node.remove(add)
        m.graph.node.remove(mul)
    p = tmp_path / "where.onnx"
    onnx.save(m, str(p))
    plan = _check_same(src, p, tmp_path)
    for op in plan.ops:
        if op["type"] == "Attention":
            assert op["attrs"]["scale"] == pytest.approx(1 / np.sqrt(32), rel=1e-6)
            assert op["inputs"][1] == "attention_mask" and not op["attrs"]["causal"]


def test_div_scales_on_k_and_scores_sub_mask(exported, tmp_path):
    """k^T / d**0.25, scores / d**0.25, then Sub(scores, -mask): scale and mask spelled otherwise."""
    src = exported("gpt2")
    m = onnx.load(str(src))
    for k, sm in enumerate([n for n in m.graph.node if n.op_type == "Softmax"]):
        add = _producer(m, sm.input[0])
        mul = _producer(m, add.input[0])
        qk = _producer(m, mul.input[0])
        r = _const(m, f"t_root{k}", np.float32(32 ** 0.25))
        m.graph.node.append(helper.make_node("Div", [qk.input[1], r], [f"t_kdiv{k}"], name=f"t_kd{k}"))
        qk.input[1] = f"t_kdiv{k}"
        m.graph.node.append(helper.make_node("Div", [qk.output[0], r], [f"t_sdiv{k}"], name=f"t_sd{k}"))
        m.graph.node.append(helper.make_node("Neg", [add.input[1]], [f"t_negmask{k}"], name=f"t_neg{k}"))
        m.graph.node.append(helper.make_node("Sub", [f"t_sdiv{k}", f"t_negmask{k}"], [sm.input[0]],
                                             name=f"t_sub{k}"))
        m.graph.node.remove(add)
        m.graph.node.remove(mul)
    p = tmp_path / "div.onnx"
    onnx.save(m, str(p))
    plan = _check_same(src, p, tmp_path)
    atts = [op for op in plan.ops if op["type"] == "Attention"]
    assert len(atts) == 2
    for op in atts:
        assert op["attrs"]["scale"] == pytest.approx(1 / np.sqrt(32), rel=1e-6)
        assert op["attrs"]["causal"] and op["inputs"][1] == "attention_mask"


def test_bert_without_token_type_input(exported, tmp_path):
    """token_type_ids replaced by zeros made inside the graph: the table is kept, with no input."""
    src = exported("bert")
    m = onnx.load(str(src))
    m.graph.node.append(helper.make_node("Shape", ["input_ids"], ["t_ids_shape"], name="t_shape"))
    m.graph.node.append(helper.make_node(
        "ConstantOfShape", ["t_ids_shape"], ["t_zero_types"], name="t_zeros",
        value=numpy_helper.from_array(np.array([0], np.int64))))
    for n in m.graph.node:
        n.input[:] = ["t_zero_types" if i == "token_type_ids" else i for i in n.input]
    tt = next(i for i in m.graph.input if i.name == "token_type_ids")
    m.graph.input.remove(tt)
    p = tmp_path / "no_tt.onnx"
    onnx.save(m, str(p))
    feeds = random_feeds(src, seed=5)
    feeds["token_type_ids"][:] = 0
    ref = onnxruntime_run(src, feeds)
    plan = build(p, precision="fp32")
    emb = next(op for op in plan.ops if op["type"] == "Embedding")
    assert emb["inputs"] == ["input_ids"] and "token_type" in emb["weights"]
    assert [i["name"] for i in plan.inputs] == ["input_ids", "attention_mask"]
    feeds.pop("token_type_ids")
    out = ReferenceBackend(plan).run(feeds)["last_hidden_state"]
    assert cosine_per_sample(out, ref, feeds["attention_mask"]).min() >= 0.99999
