"""ONNX's own Attention op (opset 23+), as torch's dynamo exporter writes scaled_dot_product_attention at opset 23:
lowered with onnxruntime's fused ops (builder/lower_contrib.py) into the form the attention pass fuses, checked
against onnxruntime on the original file; what it does not lower is refused by name."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=1000)


def _export_opset23(arch, path, **extra):
    """A tiny random-weight model through torch.onnx.export(dynamo=True, opset_version=23), SDPA attention."""
    import torch

    from trtrun.export import load_torch_model

    model = load_torch_model(arch, overrides={**TINY, **extra}, seed=0, attention="sdpa")
    decoder = arch not in ("bert-base",)

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            kw = {"use_cache": False} if decoder else {}
            return self.m(input_ids=ids, attention_mask=mask, **kw).last_hidden_state

    ids, mask = torch.randint(0, 1000, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    b, s = torch.export.Dim("b"), torch.export.Dim("s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(Wrapper(model).eval(), (ids, mask), dynamo=True, opset_version=23, verbose=False,
                                 input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                                 dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    prog.save(str(path))
    return path


def _worst_cos_vs_ort(plan, path):
    import onnxruntime as ort

    from trtrun.reference import ReferenceBackend

    rng = np.random.default_rng(5)
    ids = rng.integers(1, 1000, (3, 13))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
    got = ReferenceBackend(plan).run({i["name"]: feeds[i["name"]] for i in plan.inputs})["last_hidden_state"]
    v = mask != 0
    a, b = got[v].astype(np.float64), want[v].astype(np.float64)
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


@pytest.mark.parametrize("arch", ["bert-base", "gpt2"])
def test_onnx_attention_builds_into_the_ir_attention(tmp_path, arch):
    """BERT (a boolean padding mask [B, 1, S, S]) and GPT-2 (causal and padding in one boolean mask): each ONNX
    Attention becomes an IR Attention, and the plans compute what onnxruntime computes on the file."""
    import onnx

    import trtrun

    path = _export_opset23(arch, tmp_path / f"{arch}.onnx")
    assert sum(n.op_type == "Attention" and n.domain in ("", "ai.onnx") for n in onnx.load(str(path)).graph.node) == 2
    for precision, bound in (("fp32", 0.99999), ("hybrid", 0.9999)):
        plan = trtrun.build(path, precision=precision)
        assert [o["type"] for o in plan.ops].count("Attention") == 2
        assert "ONNX's fused ops lowered to IR ops (2 Attention)" in plan.source["conversions"]
        # fp32: rounding only; hybrid: fp16 GEMM operands and P, ~1e-7 in cosine at this size (docs/models.md)
        assert _worst_cos_vs_ort(plan, path) >= bound, (arch, precision)


def test_what_is_not_lowered_is_refused_by_name(tmp_path):
    """A soft cap through ONNX's Attention, and ONNX's RotaryEmbedding (a Llama at opset 23): one line each, naming
    the node and what is missing, before any plan is written."""
    import onnx

    import trtrun
    from trtrun.errors import UnsupportedOpError

    path = _export_opset23("bert-base", tmp_path / "b.onnx")
    m = onnx.load(str(path))
    for n in m.graph.node:
        if n.op_type == "Attention":
            for a in n.attribute:
                if a.name == "softcap":
                    a.f = 30.0
    onnx.save(m, str(tmp_path / "softcap.onnx"))
    with pytest.raises(UnsupportedOpError, match=r"Attention.*ONNX domain: softcap=30"):
        trtrun.build(tmp_path / "softcap.onnx", precision="hybrid")
    llama = _export_opset23("llama", tmp_path / "l.onnx", num_key_value_heads=2)
    with pytest.raises(UnsupportedOpError, match=r"RotaryEmbedding.*export at opset 18-22"):
        trtrun.build(llama, precision="hybrid")


def test_trtrun_export_writes_the_opset_23_form_it_builds(tmp_path):
    """`trtrun export --exporter dynamo --opset 23 --attention sdpa` writes ONNX's Attention; the build reads it
    back (the torchscript exporter stops at opset 20)."""
    import onnx

    import trtrun
    from trtrun.export import export_model

    path = export_model("bert-base", tmp_path / "b.onnx", exporter="dynamo", opset=23, attention="sdpa",
                        overrides=dict(TINY, num_hidden_layers=1))
    assert any(n.op_type == "Attention" for n in onnx.load(str(path)).graph.node)
    plan = trtrun.build(path, precision="hybrid")
    assert "ONNX's fused ops lowered to IR ops (1 Attention)" in plan.source["conversions"]
    assert _worst_cos_vs_ort(plan, path) >= 0.9999
    with pytest.raises(ValueError, match="torchscript exporter's supported range 14..20"):
        export_model("bert-base", tmp_path / "t.onnx", exporter="torchscript", opset=23, overrides=TINY)
