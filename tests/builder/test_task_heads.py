"""Task heads after the token states, as other tools export them:

- sequence classification (cross-encoders, sentiment and NLI models: `*ForSequenceClassification` with its `logits`
  output): the pooled state (first token, or ModernBERT's masked mean) becomes a Pool op and the head after it
  Linears on one vector a sample ([B, N]), with tanh (BERT's pooler, RoBERTa's, ALBERT's and MPNet's heads), ReLU
  (DistilBERT), GELU (ELECTRA) and a LayerNorm (ModernBERT);
- extractive question answering (`*ForQuestionAnswering`): start and end scores [B, S] as single-column Linears.

Tiny random-weight models exported by torch.onnx and Optimum, checked against onnxruntime fp32 on the same file with
padded rows; the host tail the GPU runtime runs after the token states (trtrun.runtime.tail) is checked to compute
what the whole plan computes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

# heads of 32: a size the GPU attention kernels take (the host-tail test checks the plan is the GPU runtime's)
C = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=1000)

# arch -> (Pool mode, the head's Linear activations in order, whether a LayerNorm is in the head)
HEADS = {
    "bert": ("cls", ["tanh", "none"], False),
    "bert-1-label": ("cls", ["tanh", "none"], False),  # a cross-encoder's single relevance score
    "roberta": ("cls", ["tanh", "none"], False),
    "distilbert": ("cls", ["relu", "none"], False),
    "electra": ("cls", ["gelu_erf", "none"], False),
    "albert": ("cls", ["tanh", "none"], False),
    "mpnet": ("cls", ["tanh", "none"], False),
    "modernbert-cls": ("cls", ["gelu_erf", "none"], True),
    "modernbert-mean": ("mean", ["gelu_erf", "none"], True),
}


def _model(arch: str):
    import torch
    import transformers as T

    torch.manual_seed(0)
    labels = 1 if arch == "bert-1-label" else 3
    if arch in ("bert", "bert-1-label"):
        m = T.BertForSequenceClassification(T.BertConfig(num_labels=labels, **C))
    elif arch == "bert-uncased-vocab":  # BERT's own vocabulary: real text through MiniLM's (BERT-uncased) tokenizer
        m = T.BertForSequenceClassification(T.BertConfig(num_labels=labels, **{**C, "vocab_size": 30522}))
    elif arch == "roberta":
        m = T.RobertaForSequenceClassification(T.RobertaConfig(num_labels=labels, **C))
    elif arch == "distilbert":
        m = T.DistilBertForSequenceClassification(T.DistilBertConfig(dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                                                                     vocab_size=1000, num_labels=labels))
    elif arch == "electra":
        m = T.ElectraForSequenceClassification(T.ElectraConfig(embedding_size=64, num_labels=labels, **C))
    elif arch == "albert":
        m = T.AlbertForSequenceClassification(T.AlbertConfig(embedding_size=32, num_labels=labels, **C))
    elif arch == "mpnet":
        m = T.MPNetForSequenceClassification(T.MPNetConfig(num_labels=labels, **C))
    else:
        m = T.ModernBertForSequenceClassification(T.ModernBertConfig(
            classifier_pooling=arch.split("-")[1], pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
            sep_token_id=2, global_attn_every_n_layers=2, local_attention=8, num_labels=labels, **C))
    # non-trivial head weights: the classifier's default init (std 0.02, zero bias) keeps tanh near linear
    with torch.no_grad():
        for name, p in m.named_parameters():
            if any(k in name for k in ("pooler", "classifier", "pre_classifier", "head")):
                p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.5))
    return m.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("seqcls")
    cache = {}

    def get(arch):
        if arch not in cache:
            path = d / f"{arch}.onnx"
            ids = torch.randint(5, 100, (2, 16))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_model(arch), (ids, torch.ones_like(ids)), str(path), dynamo=False,
                                  opset_version=17, input_names=["input_ids", "attention_mask"],
                                  output_names=["logits"],
                                  dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                                "logits": {0: "b"}})
            cache[arch] = path
        return cache[arch]

    return get


def _feeds(seed=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 1000, (4, 21))
    mask = np.ones_like(ids)
    mask[1, 14:] = 0
    mask[3, 3:] = 0  # a short row: mean pooling over 3 tokens
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("arch", list(HEADS))
def test_sequence_classification_heads_build_and_match_onnxruntime(exported, arch):
    import onnxruntime as ort

    import trtrun
    from trtrun.reference import ReferenceBackend

    path = exported(arch)
    feeds = _feeds()
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0].astype(np.float64)
    mode, acts, has_ln = HEADS[arch]
    scale = np.abs(want).max()
    assert scale > 0.1  # the head's weights were made non-trivial: the logits are not ~0
    # fp32: rounding only (~1e-7 relative); hybrid: fp16 GEMM operands (2^-11 relative each) through two layers and
    # the head, observed ~1e-3 of the logits' scale. A wrong pooling mode or activation moves the logits by their
    # own size (tanh vs none at these weights, cls vs mean), far outside either bound.
    for precision, bound in (("fp32", 1e-5), ("hybrid", 1e-2)):
        plan = trtrun.build(path, precision=precision)
        tail = plan.ops[-(len(acts) + 1 + has_ln):]
        assert tail[0]["type"] == "Pool" and tail[0]["attrs"]["mode"] == mode
        # GELU's form: the builder may take the tanh form where it is as accurate (builder/gelu_form.py)
        got_acts = [op["attrs"]["activation"] for op in tail if op["type"] == "Linear"]
        assert [a.split("_")[0] for a in got_acts] == [a.split("_")[0] for a in acts]
        assert ("LayerNorm" in [op["type"] for op in tail]) == has_ln
        assert [o["name"] for o in plan.outputs] == ["logits"] and plan.outputs[0]["shape"][0] == "B"
        got = ReferenceBackend(plan).run(feeds)["logits"].astype(np.float64)
        assert got.shape == want.shape
        err = np.abs(got - want).max() / scale
        assert err <= bound, (arch, precision, err)


@pytest.mark.parametrize("arch", ["bert", "modernbert-mean"])
def test_the_host_tail_computes_what_the_whole_plan_computes(exported, arch):
    """The GPU runtime's split: the device part (token-state ops, run here by the reference backend as the GPU
    would run them) and the host tail (Pool and the head) give the whole plan's logits bit for bit."""
    import trtrun
    from trtrun.reference import ReferenceBackend
    from trtrun.runtime.lower import check_gpu_support, lower_plan
    from trtrun.runtime.tail import HostTail, is_host_tensor, split_host_tail

    plan = trtrun.build(exported(arch), precision="hybrid")
    check_gpu_support(plan)  # the head's tanh/Pool are the host's: the plan is the GPU runtime's
    device, host = split_host_tail(plan)
    assert [op["type"] for op in host][0] == "Pool" and len(device.ops) + len(host) == len(plan.ops)
    assert not any(is_host_tensor(device, t) for op in device.ops for t in op["outputs"] if t)
    lower_plan(device)  # the device part lowers as any token-state plan
    feeds = _feeds(seed=11)
    want = ReferenceBackend(plan).run(feeds)["logits"]
    _, env = ReferenceBackend(device).run(feeds, capture=True)
    env = HostTail(plan, host).run({**plan.check_feeds(feeds), **{o["name"]: env[o["name"]] for o in device.outputs}})
    np.testing.assert_array_equal(env["logits"].astype(np.float32), want)



@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_optimum_text_classification_exports(tmp_path, arch):
    """The files a user gets from `optimum-cli export onnx --task text-classification` and Optimum's ORTOptimizer at
    O1-O3 (fused attention, SkipLayerNormalization, FastGelu around the same head): each builds, its head as above,
    and matches onnxruntime on the file within the bounds argued above."""
    import onnxruntime as ort
    from producers_corpus import optimum_env, optimum_export, save_model_dir

    import trtrun
    from trtrun.reference import ReferenceBackend

    if optimum_env() is None:
        pytest.skip("Optimum's environment is missing: bash scripts/optimum-env.sh (CI installs it)")
    files = optimum_export(save_model_dir(_model(arch), tmp_path / "hf"), tmp_path / "optimum",
                           task="text-classification")
    feeds = _feeds(seed=5)
    for variant, path in files.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        full = {**feeds, "token_type_ids": np.zeros_like(feeds["input_ids"])}
        want = sess.run(None, {k: full[k] for k in names})[0].astype(np.float64)
        for precision, bound in (("fp32", 1e-5), ("hybrid", 1e-2)):
            plan = trtrun.build(path, precision=precision)
            assert [op["type"] for op in plan.ops[-3:]] == ["Pool", "Linear", "Linear"], variant
            got = ReferenceBackend(plan).run({k: full[k] for k in (i["name"] for i in plan.inputs)})["logits"]
            err = np.abs(got - want).max() / np.abs(want).max()
            assert err <= bound, (variant, precision, err)


def test_run_and_check_read_a_classifier(exported, tmp_path):
    """`trtrun run` prints a classifier's logits (and its top label) and compares them with onnxruntime as one vector
    a sample; `trtrun check` measures them the same way (no token axis), on real text."""
    from click.testing import CliRunner

    from trtrun.cli.main import cli
    from trtrun.data import data_dir

    tok = data_dir() / "minilm"
    if not (tok / "tokenizer.json").exists() or not (data_dir() / "rt_polarity.tsv").exists():
        pytest.skip(f"MiniLM's tokenizer and Rotten Tomatoes are not in the data folder ({data_dir()})")
    path = exported("bert-uncased-vocab")
    plan = tmp_path / "bert.plan"
    r = CliRunner().invoke(cli, ["build", str(path), "--precision", "fp32", "-o", str(plan), "-q"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["run", str(plan), "--backend", "reference", "--tokenizer", str(tok), "--text",
                                 "a gripping, funny film", "--text", "dull", "--compare", str(path)])
    assert r.exit_code == 0, r.output
    assert "logits: shape [2, 3] float32, NaN 0, Inf 0" in r.output and " top " in r.output
    line = next(x for x in r.output.splitlines() if x.startswith("cosine vs onnxruntime fp32"))
    assert float(line.split("min ")[1].split(",")[0]) >= 0.99999  # fp32: rounding only
    r = CliRunner().invoke(cli, ["check", str(path), "--tokenizer", str(tok), "-n", "4", "--downstream", "off",
                                 "--out", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    assert "verdict: pass" in r.output


def _qa_export(arch, path):
    import torch
    import transformers as T

    torch.manual_seed(0)
    cls = {"bert": (T.BertForQuestionAnswering, T.BertConfig), "roberta": (T.RobertaForQuestionAnswering,
                                                                           T.RobertaConfig)}[arch]
    m = cls[0](cls[1](**C)).eval()
    ids = torch.randint(5, 100, (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["start_logits", "end_logits"],
                          dynamic_axes={k: {0: "b", 1: "s"} for k in ("input_ids", "attention_mask", "start_logits",
                                                                      "end_logits")})
    return path


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_question_answering_heads(tmp_path, arch):
    """Extractive QA (`*ForQuestionAnswering`): the two-column Linear whose columns the graph splits into start_logits
    and end_logits [B, S] becomes one single-column Linear each, writing [B, S] (format 4); both match onnxruntime
    (bounds as above), and the host tail the GPU runtime runs them as gives the whole plan's values."""
    import onnxruntime as ort

    import trtrun
    from trtrun.reference import ReferenceBackend
    from trtrun.runtime.tail import HostTail, split_host_tail

    path = _qa_export(arch, tmp_path / "qa.onnx")
    feeds = _feeds(seed=9)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for precision, bound in (("fp32", 1e-5), ("hybrid", 1e-2)):
        plan = trtrun.build(path, precision=precision)
        assert [(o["name"], o["shape"]) for o in plan.outputs] == [("start_logits", ["B", "S"]),
                                                                   ("end_logits", ["B", "S"])]
        assert plan.header["version"] == 4
        heads = [op for op in plan.ops if op["outputs"][0] in ("start_logits", "end_logits")]
        assert [op["type"] for op in heads] == ["Linear", "Linear"]
        got = ReferenceBackend(plan).run(feeds)
        valid = feeds["attention_mask"] != 0
        for name, w in zip(("start_logits", "end_logits"), want):
            err = np.abs(got[name] - w)[valid].max() / np.abs(w)[valid].max()
            assert err <= bound, (arch, precision, name, err)
    device, host = split_host_tail(plan)
    assert [op["name"] for op in host] == [op["name"] for op in heads]
    _, env = ReferenceBackend(device).run(feeds, capture=True)
    env = HostTail(plan, host).run({**plan.check_feeds(feeds), **{o["name"]: env[o["name"]] for o in device.outputs}})
    for name in ("start_logits", "end_logits"):
        np.testing.assert_array_equal(env[name].astype(np.float32), got[name])


def test_optimum_question_answering_exports(tmp_path):
    """`optimum-cli export onnx --task question-answering` and its O1-O3 levels: the start/end scores build as above and
    match onnxruntime on each file (hybrid's bound, as argued above)."""
    import onnxruntime as ort
    import torch
    import transformers as T
    from producers_corpus import optimum_env, optimum_export, save_model_dir

    import trtrun
    from trtrun.reference import ReferenceBackend

    if optimum_env() is None:
        pytest.skip("Optimum's environment is missing: bash scripts/optimum-env.sh (CI installs it)")
    torch.manual_seed(0)
    files = optimum_export(save_model_dir(T.BertForQuestionAnswering(T.BertConfig(**C)).eval(), tmp_path / "hf"),
                           tmp_path / "optimum", task="question-answering")
    feeds = {**_feeds(seed=5), "token_type_ids": np.zeros((4, 21), np.int64)}
    valid = feeds["attention_mask"] != 0
    for variant, path in files.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        want = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})
        plan = trtrun.build(path, precision="hybrid")
        got = ReferenceBackend(plan).run({i["name"]: feeds[i["name"]] for i in plan.inputs})
        for o, w in zip(sess.get_outputs(), want):
            err = np.abs(got[o.name] - w)[valid].max() / np.abs(w)[valid].max()
            assert err <= 1e-2, (variant, o.name, err)


def test_a_classifier_is_no_embedding_model(exported, tmp_path):
    """The Embedder refuses a classifier's plan (its logits are not an embedding) as it refused it before classifier
    plans built: by name, saying what it needs."""
    import trtrun
    from trtrun.embed import Embedder
    from trtrun.errors import InputError

    plan = trtrun.build(exported("bert"), precision="fp32").save(tmp_path / "cls.plan")
    tok = tmp_path / "tok"
    tok.mkdir()
    with pytest.raises(InputError, match=r"output 'logits' has shape \['B', 3\]; embeddings need hidden states"):
        Embedder(plan, tok, backend="reference")
