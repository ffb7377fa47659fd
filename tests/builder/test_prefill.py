"""Files exported for generation, with a key/value cache (Optimum's default `text-generation-with-past`): read with
the cache empty (builder/prefill.py), they build into the whole-sequence model; checked against onnxruntime on the
file itself with an empty cache. The rewrite alone is checked on a hand-made graph without Optimum."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


def _cache_graph(head_dim="fixed"):
    """input_ids -> k_new [B, 2, S, 4] (a table lookup); present = Concat(past, k_new, axis=-2); logits read present
    and the past length (Shape(past)[2], as masks and positions do)."""
    import onnx
    from onnx import TensorProto, helper

    table = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["e"]),  # [B, S, 8]
        helper.make_node("Reshape", ["e", "shape4"], ["e4"]),  # [B, S, 2, 4]
        helper.make_node("Transpose", ["e4"], ["k_new"], perm=[0, 2, 1, 3]),  # [B, 2, S, 4]
        helper.make_node("Concat", ["past_key_values.0.key", "k_new"], ["present.0.key"], axis=-2),
        helper.make_node("ReduceSum", ["present.0.key", "axes"], ["s"], keepdims=0),  # [B, S+P]
        helper.make_node("Shape", ["past_key_values.0.key"], ["pshape"]),
        helper.make_node("Gather", ["pshape", "two"], ["plen"]),
        helper.make_node("Cast", ["plen"], ["plen_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["s", "plen_f"], ["logits"]),
    ]
    D = 4 if head_dim == "fixed" else "head_dim"
    g = helper.make_graph(
        nodes, "cache",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                       ["batch_size", "past_sequence_length + sequence_length"]),
         helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT,
                                       ["batch_size", 2, "past_sequence_length", D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "total"]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["batch_size", 2, "total", D])],
        [onnx.numpy_helper.from_array(table, "table"),
         onnx.numpy_helper.from_array(np.array([0, 0, 2, 4], np.int64), "shape4"),
         onnx.numpy_helper.from_array(np.array([1, 3], np.int64), "axes"),
         onnx.numpy_helper.from_array(np.array(2, np.int64), "two")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_the_rewrite_computes_what_the_file_computes_with_an_empty_cache():
    import onnx
    import onnxruntime as ort

    from trtrun.builder.prefill import prefill_only

    model = _cache_graph()
    ids = np.random.default_rng(1).integers(0, 50, (3, 7))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "past_key_values.0.key": np.zeros((3, 2, 0, 4), np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    notes = []
    new = prefill_only(onnx.load_from_string(model.SerializeToString()), notes)
    assert [i.name for i in new.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in new.graph.output] == ["logits"]
    assert not any(n.op_type == "Concat" and "past_key_values.0.key" in n.input for n in new.graph.node)
    assert notes == ["a key/value cache (1 inputs) taken as empty and its 1 updated outputs dropped: the plan computes "
                     "whole sequences, as the model without a cache (the prefill)"]
    sess = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: feeds[k] for k in ("input_ids", "attention_mask")})[0]
    # the same 8 values summed (onnxruntime may order the sum differently without the Concat): float32 rounding
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_cache_of_unknown_shape_keeps_the_refusal(tmp_path):
    """A head size left symbolic: no empty tensor can be made for it, and the build refuses the cache by name, saying
    how to export without one."""
    import onnx

    import trtrun
    from trtrun.errors import ModelError

    path = tmp_path / "cache.onnx"
    onnx.save(_cache_graph(head_dim="symbolic"), str(path))
    with pytest.raises(ModelError, match=r"graph input 'past_key_values.0.key' is a key/value cache.*--task "
                                         r"text-generation"):
        trtrun.build(path)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_optimum_text_generation_with_past(tmp_path, arch):
    """Optimum's default decoder export builds; the plan computes the file's logits with an empty cache (bounds:
    fp32 rounding, 1e-5 of the logits' scale; hybrid's fp16 GEMM operands, 1e-2, as tests/builder/
    test_task_heads.py argues), and takes no cache input."""
    import onnxruntime as ort
    from producers_corpus import causal_lm_dir, optimum_env, optimum_export

    import trtrun
    from trtrun.reference import ReferenceBackend

    if optimum_env() is None:
        pytest.skip("Optimum's environment is missing: bash scripts/optimum-env.sh (CI installs it)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = optimum_export(causal_lm_dir(arch, tmp_path / "hf"), tmp_path / "optimum", levels=(),
                              task="text-generation-with-past")["optimum"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(2)
    B, S = 3, 13
    ids = rng.integers(5, 1000, (B, S))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": np.broadcast_to(np.arange(S), (B, S)).copy()}
    past = [i for i in sess.get_inputs() if "past" in i.name]
    assert past  # the file is the generation export
    for i in past:
        feeds[i.name] = np.zeros([B if k == 0 else 0 if isinstance(d, str) else d for k, d in enumerate(i.shape)],
                                 np.float32)
    want = sess.run(["logits"], {i.name: feeds[i.name] for i in sess.get_inputs()})[0].astype(np.float64)
    valid = mask != 0
    for precision, bound in (("fp32", 1e-5), ("hybrid", 1e-2)):
        plan = trtrun.build(path, precision=precision)
        assert {i["name"] for i in plan.inputs} <= {"input_ids", "attention_mask"}
        assert any("key/value cache" in c for c in plan.source["conversions"])
        got = ReferenceBackend(plan).run({i["name"]: feeds[i["name"]] for i in plan.inputs})["logits"]
        err = np.abs(got - want)[valid].max() / np.abs(want).max()
        assert err <= bound, (arch, precision, err)


def test_a_cache_read_otherwise_keeps_the_refusal(tmp_path):
    """A float input named like a cache but read by other ops than the append, its Shape or GroupQueryAttention
    (here a ReduceSum of its values) is not taken as empty: zeros there would change what the model computes."""
    import onnx
    from onnx import helper

    import trtrun
    from trtrun.builder.prefill import prefill_only
    from trtrun.errors import ModelError

    model = _cache_graph()
    model.graph.node.append(helper.make_node("ReduceSum", ["past_key_values.0.key"], ["psum"], keepdims=0))
    assert prefill_only(onnx.load_from_string(model.SerializeToString())).graph.input[2].name == \
        "past_key_values.0.key"  # unchanged
    path = tmp_path / "read.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"'past_key_values.0.key' is a key/value cache"):
        trtrun.build(path)
