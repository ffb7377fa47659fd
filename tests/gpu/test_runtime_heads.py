"""Sequence-classification plans on the GPU runtime: the token states on the device, the host tail (Pool and the
classification head, trtrun.runtime.tail) on the host after the copy. A BERT-base-shaped classifier (4 layers, 12
heads of 64, random weights with a non-trivial head) and a small ModernBERT one with mean pooling, exported by
torch.onnx, built fp32 and hybrid; on real text (Rotten Tomatoes through all-MiniLM-L6-v2's BERT tokenizer, when the
data folder has them; random ids otherwise) padded to a batch, against the reference backend on the same plan and
onnxruntime fp32 on the file.

Bounds, relative to the logits' largest magnitude: GPU against the reference on the same plan, 1e-3 in fp32 (the
same formulas, summed in another order: ~1e-6 a token state, a few layers deep) and 1e-2 in hybrid (fp16 GEMM
operands round alike on both sides, but the fp16 values they round differ by a unit now and then); the fp32 plan
against onnxruntime fp32, 1e-3. A wrong pooling mode, activation or head weight moves the logits by their own size.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import rt_helpers as h

pytestmark = pytest.mark.gpu

BOUND = {"fp32": 1e-3, "hybrid": 1e-2}


def _onnx_export(m, path, outputs: dict) -> str:
    """m (input_ids and attention_mask in) through torch.onnx at opset 17, batch and sequence dynamic; outputs: each
    output's name -> its dynamic axes. Traced on ids drawn from torch's generator as the caller left it."""
    import torch

    ids = torch.randint(1000, 2000, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m.eval(), (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=list(outputs),
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                        **outputs})
    return str(path)


def _export(arch: str) -> str:
    path = h._CACHE / f"seqcls-{arch}.onnx"
    if path.exists():
        return str(path)
    import torch
    import transformers as T

    torch.manual_seed(0)
    if arch == "bert":
        m = T.BertForSequenceClassification(T.BertConfig(num_hidden_layers=4, num_labels=3))
    else:
        m = T.ModernBertForSequenceClassification(T.ModernBertConfig(
            hidden_size=256, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512, vocab_size=30522,
            classifier_pooling="mean", pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101,
            sep_token_id=102, global_attn_every_n_layers=3, local_attention=16, num_labels=3))
    with torch.no_grad():  # a head far from its near-zero init: tanh and the pooling matter
        for name, p in m.named_parameters():
            if any(k in name for k in ("pooler", "classifier", "head")):
                p.copy_(torch.randn_like(p) * (0.05 if p.ndim > 1 else 0.5))
    return _onnx_export(m, path, {"logits": {0: "b"}})


def _text_feeds(n: int = 24, max_len: int = 64) -> dict:
    """Rotten Tomatoes sentences through MiniLM's (BERT-uncased) tokenizer, padded to the longest; random ids of the
    same vocabulary with padded rows where the data folder lacks them."""
    from trtrun.data import data_dir, encode, load_texts, load_tokenizer
    from trtrun.errors import TrtrunError

    try:
        tok = load_tokenizer(data_dir() / "minilm")
        return encode(tok, load_texts("rt", n=n, seed=4), max_len)
    except (TrtrunError, OSError, ImportError):  # no data folder here: still a real-length, padded batch
        rng = np.random.default_rng(4)
        ids = rng.integers(1000, 30000, (n, max_len))
        mask = (np.arange(max_len)[None] < rng.integers(5, max_len + 1, (n, 1))).astype(np.int64)
        return {"input_ids": ids * mask, "attention_mask": mask}


def _check_vectors(got, plan, path, feeds, output: str, label: str):
    """The GPU's `output` (float64) against the reference backend on the same plan, to BOUND of the plan's precision
    relative to its largest magnitude, and for fp32 plans against onnxruntime fp32 on the file (1e-3); returns
    onnxruntime's values for fp32 plans, else None."""
    import onnxruntime as ort

    from trtrun.reference import ReferenceBackend

    ref = ReferenceBackend(plan).run(feeds)[output].astype(np.float64)
    scale = np.abs(ref).max()
    assert np.isfinite(got).all() and scale > 0.1
    err = np.abs(got - ref).max() / scale
    h.report("heads", f"{label} GPU vs reference: max |diff| / max = {err:.2e}")
    assert err <= BOUND[plan.precision], (label, err)
    if plan.precision != "fp32":
        return None
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    want = sess.run([output], feeds)[0].astype(np.float64)
    err_ort = np.abs(got - want).max() / np.abs(want).max()
    h.report("heads", f"{label} GPU vs onnxruntime fp32: {err_ort:.2e}")
    assert err_ort <= 1e-3, (label, err_ort)
    return want


@pytest.mark.parametrize("precision", ["fp32", "hybrid"])
@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_classifier_logits_on_the_gpu(arch, precision):
    h.need_runtime()
    import trtrun
    from trtrun.errors import InputError
    from trtrun.runtime import Engine

    path = _export(arch)
    plan = trtrun.build(path, precision=precision)
    eng = Engine(plan)
    assert eng.host_ops and plan.ops[-len(eng.host_ops)]["type"] == "Pool"
    feeds = {k: v for k, v in _text_feeds().items() if k in {i["name"] for i in plan.inputs}}
    with eng.create_context() as ctx:
        got = ctx.run(feeds)["logits"].astype(np.float64)
        again = ctx.run(feeds)["logits"].astype(np.float64)  # the CUDA graph's replay
        with pytest.raises(InputError, match="run_device does not do"):
            ctx.run_device({"input_ids": feeds["input_ids"]})
    np.testing.assert_array_equal(got, again)
    want = _check_vectors(got, plan, path, feeds, "logits", f"{arch:10s} {precision:6s}")
    if want is not None:
        assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9  # labels, allowing a near tie or two


def _export_qa() -> str:
    path = h._CACHE / "qa-bert.onnx"
    if path.exists():
        return str(path)
    import torch
    import transformers as T

    torch.manual_seed(1)
    m = T.BertForQuestionAnswering(T.BertConfig(num_hidden_layers=4))
    with torch.no_grad():  # the span head far from its near-zero init
        m.qa_outputs.weight.copy_(torch.randn_like(m.qa_outputs.weight) * 0.05)
        m.qa_outputs.bias.copy_(torch.randn_like(m.qa_outputs.bias) * 0.5)
    return _onnx_export(m, path, {"start_logits": {0: "b", 1: "s"}, "end_logits": {0: "b", 1: "s"}})


@pytest.mark.parametrize("precision", ["fp32", "hybrid"])
def test_question_answering_spans_on_the_gpu(precision):
    """A [B, S] output per head (start and end logits) from a padded batch of real sentences: GPU against the
    reference on the same plan at the valid positions (those a span can take), bounds as the classifiers'."""
    h.need_runtime()
    import onnxruntime as ort

    import trtrun
    from trtrun.reference import ReferenceBackend
    from trtrun.runtime import Engine

    path = _export_qa()
    plan = trtrun.build(path, precision=precision)
    feeds = {k: v for k, v in _text_feeds().items() if k in {i["name"] for i in plan.inputs}}
    valid = feeds["attention_mask"].astype(bool)
    with Engine(plan).create_context() as ctx:
        got = ctx.run(feeds)
        again = ctx.run(feeds)
    ref = ReferenceBackend(plan).run(feeds)
    want = None
    if precision == "fp32":
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for name in ("start_logits", "end_logits"):
        g, r = got[name].astype(np.float64), ref[name].astype(np.float64)
        assert g.shape == r.shape == feeds["input_ids"].shape, (name, g.shape, r.shape)
        np.testing.assert_array_equal(g, again[name].astype(np.float64))
        scale = np.abs(r[valid]).max()
        assert np.isfinite(g[valid]).all() and scale > 0.1
        err = np.abs(g - r)[valid].max() / scale
        h.report("heads", f"qa-bert    {precision:6s} {name}: GPU vs reference {err:.2e}")
        assert err <= BOUND[precision], (name, precision, err)
        if want is not None:
            w = want[name].astype(np.float64)
            err_ort = np.abs(g - w)[valid].max() / np.abs(w[valid]).max()
            h.report("heads", f"qa-bert    fp32   {name}: GPU vs onnxruntime fp32 {err_ort:.2e}")
            assert err_ort <= 1e-3, (name, err_ort)


def _export_clip(eos_token_id: int) -> str:
    """A small CLIPTextModelWithProjection (MiniLM's vocabulary size, so its tokenizer's ids fit; the end-of-text
    token the vocabulary's last id): text_embeds, the projected state at the end-of-text token."""
    path = h._CACHE / f"clip-projection-{eos_token_id}.onnx"
    if path.exists():
        return str(path)
    import torch
    import transformers as T

    torch.manual_seed(2)
    m = T.CLIPTextModelWithProjection(T.CLIPTextConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4, vocab_size=30522,
        max_position_embeddings=77, eos_token_id=eos_token_id, bos_token_id=101, pad_token_id=0, projection_dim=128))
    return _onnx_export(m, path, {"text_embeds": {0: "b"}, "last_hidden_state": {0: "b", 1: "s"}})


@pytest.mark.parametrize("precision", ["fp32", "hybrid"])
@pytest.mark.parametrize("eos", [30521, 2], ids=["token", "max_id"])
def test_clip_text_embeds_on_the_gpu(eos, precision):
    """CLIP's text tower with its projection: the token states (quick_gelu MLPs, causal attention) on the device, the
    Pool at the end-of-text token (by its id, or as the row's largest id) and the projection on the host, reading the
    run's input_ids. Each row ends in the end-of-text id (30521, the vocabulary's last), padding after it; against the
    reference backend on the same plan and onnxruntime fp32 on the file, with the bounds of the classifiers."""
    h.need_runtime()
    import trtrun
    from trtrun.runtime import Engine

    path = _export_clip(eos)
    plan = trtrun.build(path, precision=precision)
    eng = Engine(plan)
    pool = plan.ops[-len(eng.host_ops)]
    assert pool["type"] == "Pool" and pool["attrs"]["mode"] == ("token" if eos != 2 else "max_id")
    feeds = _text_feeds(max_len=64)
    ids, mask = feeds["input_ids"].copy(), feeds["attention_mask"]
    ids[ids == 30521] = 30520
    ids[np.arange(len(ids)), mask.sum(1) - 1] = 30521
    feeds = {"input_ids": ids, "attention_mask": mask}
    with eng.create_context() as ctx:
        got = ctx.run(feeds)["text_embeds"].astype(np.float64)
    _check_vectors(got, plan, path, feeds, "text_embeds", f"clip-{pool['attrs']['mode']:6s} {precision:6s}")
