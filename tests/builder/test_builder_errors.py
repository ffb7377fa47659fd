"""The builder refuses what it cannot do, with an error naming what is wrong, and writes nothing."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from trtrun.builder import build
from trtrun.errors import BuildError, ModelError, UnsupportedOpError


def _rewire(model, tensor, new_tensor):
    """Make every reader of `tensor` read `new_tensor` instead."""
    for n in model.graph.node:
        n.input[:] = [new_tensor if i == tensor else i for i in n.input]


def _first_ln_output(model):
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            return n.output[0]
    raise AssertionError("no LayerNormalization")


def test_unsupported_op_in_hidden_path(exported, tmp_path):
    """Hardmax between the embedding LayerNorm and the first layer: named, nothing written."""
    m = onnx.load(str(exported("bert")))
    t = _first_ln_output(m)
    _rewire(m, t, "after_hardmax")
    m.graph.node.append(helper.make_node("Hardmax", [t], ["after_hardmax"], name="odd_hardmax", axis=-1))
    bad = tmp_path / "hardmax.onnx"
    onnx.save(m, str(bad))
    saved = tmp_path / "out.onnx"
    with pytest.raises(UnsupportedOpError) as e:
        build(bad, precision="hybrid", save_onnx=saved)
    assert e.value.op_type == "Hardmax" and e.value.node_name == "odd_hardmax"
    assert "Hardmax" in str(e.value) and "odd_hardmax" in str(e.value)
    assert not saved.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hardmax.onnx"]


def test_unsupported_op_inside_attention(exported, tmp_path):
    """An op inside the attention pattern (between Softmax and P@V) breaks it: still named."""
    m = onnx.load(str(exported("gpt2")))
    sm = next(n for n in m.graph.node if n.op_type == "Softmax")
    _rewire(m, sm.output[0], "p_odd")
    m.graph.node.append(helper.make_node("Hardmax", [sm.output[0]], ["p_odd"], name="odd_in_attention",
                                         axis=-1))
    bad = tmp_path / "attn.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(UnsupportedOpError, match="odd_in_attention") as e:
        build(bad, save_onnx=tmp_path / "never.onnx")
    assert e.value.op_type == "Hardmax"
    assert not (tmp_path / "never.onnx").exists()


def test_custom_domain_op(exported, tmp_path):
    m = onnx.load(str(exported("bert")))
    t = _first_ln_output(m)
    _rewire(m, t, "after_custom")
    m.graph.node.append(helper.make_node("FancyNorm", [t], ["after_custom"], name="my_fancy", domain="acme"))
    m.opset_import.append(helper.make_opsetid("acme", 1))
    bad = tmp_path / "custom.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(UnsupportedOpError, match="FancyNorm.*my_fancy"):
        build(bad)


def test_attention_bias_is_not_a_mask(exported, tmp_path):
    """A term added to the scores that depends on attention_mask's values but is not a 0/-inf mask
    (here 0.5 * mask, ALiBi-like) must not be silently read as padding."""
    m = onnx.load(str(exported("bert")))
    sm = next(n for n in m.graph.node if n.op_type == "Softmax")
    add = next(n for n in m.graph.node if sm.input[0] in n.output)
    assert add.op_type == "Add"
    side = add.input[1]
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["am_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["am_f", "ax12"], ["am_4d"]),
        helper.make_node("Mul", ["am_4d", "half"], ["am_bias"]),
        helper.make_node("Add", [side, "am_bias"], ["side_plus_bias"]),
    ]
    m.graph.initializer.extend([onnx.numpy_helper.from_array(__import__("numpy").array([1, 2]), "ax12"),
                                onnx.numpy_helper.from_array(__import__("numpy").array(0.5, "float32"), "half")])
    add.input[1] = "side_plus_bias"
    idx = list(m.graph.node).index(add)
    for k, n in enumerate(nodes):
        m.graph.node.insert(idx + k, n)
    bad = tmp_path / "bias.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(BuildError, match="not a mask"):
        build(bad)


@pytest.mark.parametrize("content,needle", [
    (b"this is a text file, not a model\n", "not an ONNX model"),
    (bytes(range(256)) * 4, "not an ONNX model"),
    (b"", "empty"),
])
def test_not_onnx(tmp_path, content, needle):
    p = tmp_path / "model.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelError, match=needle) as e:
        build(p, save_onnx=tmp_path / "x.onnx")
    assert str(p) in str(e.value)
    assert not (tmp_path / "x.onnx").exists()


def test_truncated_onnx(exported, tmp_path):
    raw = exported("bert").read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ModelError, match="cut.onnx"):
        build(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        build(tmp_path / "absent.onnx")
    with pytest.raises(ModelError, match="directory"):
        build(tmp_path)


def test_malformed_model(exported, tmp_path):
    m = onnx.load(str(exported("bert")))
    m.graph.node[5].input.append("a_tensor_nobody_makes")
    p = tmp_path / "malformed.onnx"
    onnx.save(m, str(p))
    with pytest.raises(ModelError, match="malformed"):
        build(p)


def test_unknown_graph_input(exported, tmp_path):
    """Another name is matched by role (tests/builder/test_inputs_by_role.py has the refusals of unknown roles)."""
    m = onnx.load(str(exported("bert")))
    m.graph.input[2].name = "segment_ids"
    _rewire(m, "token_type_ids", "segment_ids")
    p = tmp_path / "renamed.onnx"
    onnx.save(m, str(p))
    plan = build(p, precision="fp32")
    assert "token_type_ids" in [i["name"] for i in plan.inputs]
    assert any("'segment_ids' is token_type_ids" in c for c in plan.source["conversions"])


def test_save_onnx_over_the_source_is_refused(exported, tmp_path):
    import shutil
    src = tmp_path / "m.onnx"
    shutil.copy(exported("bert"), src)
    before = src.read_bytes()
    with pytest.raises(ValueError, match="source model itself"):
        build(src, precision="fp32", save_onnx=tmp_path / "." / "m.onnx")
    assert src.read_bytes() == before
