"""onnxruntime-genai's decoder files (its model builder, `python -m onnxruntime_genai.models.builder`, which writes the
ONNX files of the Hub's `*-onnx` repositories): GroupQueryAttention with a key/value cache of symbolic head size,
SimplifiedLayerNormalization, and in int4 MatMulNBits and a GatherBlockQuantized embedding sharing the lm_head's
codes. Built with the cache empty (builder/prefill.py) and GroupQueryAttention lowered (builder/lower_contrib.py),
checked against onnxruntime on the file with an empty cache."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def genai_file(tmp_path_factory):
    from producers_corpus import FAMILY, causal_lm_dir, family_dir, tokenizer_files

    from trtrun.data import data_dir

    tok = data_dir() / "minilm"
    if not (tok / "tokenizer.json").exists():
        pytest.skip(f"a tokenizer for the model builder to copy: MiniLM's is not in the data folder ({tok})")
    made = {}

    def get(arch, precision):
        key = (arch, precision)
        if key not in made:
            d = tmp_path_factory.mktemp(f"genai-{arch}-{precision}")
            hf = family_dir(arch, d / "hf", causal_lm=True) if arch in FAMILY else causal_lm_dir(arch, d / "hf")
            tokenizer_files(tok, hf)  # the builder saves the folder's tokenizer beside the model
            r = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o",
                                str(d / "out"), "-p", precision, "-e", "cpu", "-c", str(d / "cache")],
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-2000:]
            made[key] = d / "out" / "model.onnx"
        return made[key]

    return get


def _reference_session(path, tmp_path):
    """onnxruntime on the file, with its MatMulNBits' accuracy_level set to 0 (fp32 activations): the builder's int4
    files ask level 4, where onnxruntime's CPU kernel rounds the activations to int8, which the plan (int4 weights
    dequantized, activations as the precision says) does not do."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    levels = [a for n in m.graph.node for a in n.attribute if a.name == "accuracy_level"]
    if levels:
        for a in levels:
            a.i = 0
        path = tmp_path / "level0.onnx"
        onnx.save(m, str(path), save_as_external_data=True, location="level0.data")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# Llama, Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms), Phi (partial rotary, LayerNorm, parallel blocks), Gemma
# (scaled embeddings, GeGLU), and Llama's int4 file
@pytest.mark.parametrize("arch,precision", [("llama", "fp32"), ("qwen2", "fp32"), ("qwen3", "fp32"), ("phi", "fp32"),
                                            ("gemma", "fp32"), ("llama", "int4")])
def test_genai_decoder_files(genai_file, tmp_path, arch, precision):
    """Each file builds (its cache taken as empty, GroupQueryAttention lowered and fused back into the IR's causal,
    rotary, grouped-query Attention) and the plan computes the file's logits."""
    import onnx

    import trtrun
    from trtrun.reference import ReferenceBackend

    path = genai_file(arch, precision)
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    assert "GroupQueryAttention" in ops and ("MatMulNBits" in ops) == (precision == "int4")
    sess = _reference_session(path, tmp_path)
    rng = np.random.default_rng(3)
    B, S = 3, 13
    ids = rng.integers(5, 1000, (B, S))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # right-padded: what GroupQueryAttention's key lengths describe
    feeds = {"input_ids": ids, "attention_mask": mask}
    plan = trtrun.build(path, precision="fp32")
    att = next(op for op in plan.ops if op["type"] == "Attention")
    for i in sess.get_inputs():
        if "past" in i.name:
            feeds[i.name] = np.zeros((B, i.shape[1], 0, att["attrs"]["head_size"]), np.float32)
    want = sess.run(["logits"], feeds)[0].astype(np.float64)
    valid = mask != 0
    assert att["attrs"]["causal"] and att["attrs"].get("num_kv_heads", att["attrs"]["num_heads"]) <= att["attrs"]["num_heads"]
    assert 0 < att["attrs"]["rotary_dim"] <= att["attrs"]["head_size"]  # Phi: partial
    assert any("GroupQueryAttention" in c for c in plan.source["conversions"])
    assert any("key/value cache" in c for c in plan.source["conversions"])
    # fp32: rounding (~1e-7 of the logits' scale); hybrid: fp16 GEMM operands, 1e-2 (test_task_heads.py)
    for precision_, bound in (("fp32", 1e-5), ("hybrid", 1e-2)):
        p = plan if precision_ == "fp32" else trtrun.build(path, precision=precision_)
        got = ReferenceBackend(p).run({"input_ids": ids, "attention_mask": mask})["logits"]
        err = np.abs(got - want)[valid].max() / np.abs(want).max()
        assert err <= bound, (arch, precision, precision_, err)
