"""trtrun.export: HF models (named architectures with random weights, MiniLM's folder) to ONNX.

Each exported graph is run in onnxruntime at batch/sequence sizes other than the export's example
(2 x 8) and compared with the PyTorch model itself: the graph must be a faithful, dynamic-shape
copy. Tolerance: both are fp32 evaluations of the same network, differing only in op order and
kernels: ~1e-6 relative per op, a few 1e-6 after two layers; 1e-4 of the output's scale leaves room
for MiniLM's six layers while a wrong graph (a dropped bias, a mask ignored) is off by >= 1e-2.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY, onnxruntime_run, random_feeds
from trtrun.errors import ModelError

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _torch_out(model, feeds):
    import torch
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, use_cache=False) \
            .last_hidden_state.numpy()


def _close_on_valid(a, b, mask, rtol=1e-4):
    m = mask.astype(bool)
    scale = np.abs(b[m]).max()
    return float(np.abs(a[m] - b[m]).max()) <= rtol * scale


@pytest.mark.parametrize("source,exporter,opset", [
    ("bert", "torchscript", None), ("bert", "dynamo", None), ("bert", "torchscript", 14),
    ("gpt2", "torchscript", None), ("gpt2", "dynamo", None), ("gpt2", "torchscript", 20),
])
def test_tiny_export_matches_torch(exported, source, exporter, opset):
    import onnx

    from trtrun.export import load_torch_model
    path = exported(source, exporter, opset)
    m = onnx.load(str(path))
    names = [i.name for i in m.graph.input]
    assert names == (["input_ids", "attention_mask", "token_type_ids"] if source == "bert"
                     else ["input_ids", "attention_mask"])
    assert [o.name for o in m.graph.output] == ["last_hidden_state"]
    for i in m.graph.input:  # dynamic batch and sequence axes
        dims = i.type.tensor_type.shape.dim
        assert len(dims) == 2 and not any(d.HasField("dim_value") for d in dims), i
    want_opset = opset or (17 if exporter == "torchscript" else 18)
    assert {o.domain: o.version for o in m.opset_import}[""] == want_opset
    model = load_torch_model("bert-base" if source == "bert" else "gpt2", overrides=dict(TINY), seed=0)
    for batch, seq in ((3, 11), (1, 1), (5, 2)):
        feeds = random_feeds(path, batch=batch, seq=seq, seed=batch)
        ours = onnxruntime_run(path, feeds)
        ref = _torch_out(model, feeds)
        assert ours.shape == (batch, seq, 128)
        assert _close_on_valid(ours, ref, feeds["attention_mask"]), (batch, seq)


def test_minilm_export_matches_torch(exported):
    from trtrun.data import data_dir
    from trtrun.export import load_torch_model
    path = exported("minilm")
    model = load_torch_model(data_dir() / "minilm")
    feeds = random_feeds(path, batch=3, seq=17, seed=3)
    ours = onnxruntime_run(path, feeds)
    assert ours.shape == (3, 17, 384)
    assert _close_on_valid(ours, _torch_out(model, feeds), feeds["attention_mask"])


def test_random_weights_are_seeded_and_not_trivial():
    from trtrun.export import load_torch_model
    small = dict(TINY, num_hidden_layers=1, vocab_size=100)
    a = dict(load_torch_model("bert-base", overrides=small, seed=0).named_parameters())
    b = dict(load_torch_model("bert-base", overrides=small, seed=0).named_parameters())
    c = dict(load_torch_model("bert-base", overrides=small, seed=1).named_parameters())
    for name in a:
        assert np.array_equal(a[name].detach().numpy(), b[name].detach().numpy()), name
    assert not np.array_equal(a["embeddings.word_embeddings.weight"].detach().numpy(),
                              c["embeddings.word_embeddings.weight"].detach().numpy())
    # biases non-zero and LayerNorm gains not all ones: a dropped bias or gamma must show
    bias = a["encoder.layer.0.attention.self.query.bias"].detach().numpy()
    gamma = a["embeddings.LayerNorm.weight"].detach().numpy()
    assert np.abs(bias).min() > 0 and np.abs(gamma - 1).max() > 0.05


def test_gpt2_overrides_map_to_gpt2_names():
    from trtrun.export import load_torch_model
    m = load_torch_model("gpt2", overrides=dict(TINY, vocab_size=300, max_position_embeddings=64))
    cfg = m.config
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_inner, cfg.vocab_size, cfg.n_positions) == \
        (128, 2, 4, 512, 300, 64)


def test_export_errors(tmp_path):
    from trtrun.export import export_model
    with pytest.raises(ModelError, match="not a named architecture"):
        export_model(tmp_path / "nowhere", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="exporter"):
        export_model("bert-base", tmp_path / "x.onnx", exporter="tflite")
    with pytest.raises(ValueError, match="opset 12"):
        export_model("bert-base", tmp_path / "x.onnx", opset=12)
    with pytest.raises(ValueError, match="dynamo"):
        export_model("bert-base", tmp_path / "x.onnx", exporter="dynamo", opset=17)
    with pytest.raises(ValueError, match="unknown override"):
        export_model("gpt2", tmp_path / "x.onnx", overrides={"hiddensize": 4})
    with pytest.raises(ValueError, match="unknown override"):
        export_model("bert-base", tmp_path / "x.onnx", overrides={"n_embd": 4})
    assert not (tmp_path / "x.onnx").exists()


def _random_folder(tmp_path, cls, **extra):
    """A one-layer random-weight transformers model of config class `cls` saved as a folder."""
    transformers = pytest.importorskip("transformers")
    import torch

    from producers_corpus import save_model_dir
    from trtrun.export import _randomize

    cfg = getattr(transformers, cls)(vocab_size=1000, hidden_size=128, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, intermediate_size=256, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(cfg)
    _randomize(torch, model, 0)
    return save_model_dir(model.eval(), tmp_path / "hf")


def test_an_export_that_runs_only_at_the_traced_shape_is_refused(tmp_path):
    """torch.onnx's torchscript exporter bakes a traced size into Cohere's graph (its interleaved rotary): the file
    fails at any other shape. The export runs what it wrote at another shape before keeping it, and says so, with
    the exporter that works; no file is left behind."""
    from trtrun.export import export_model

    d = _random_folder(tmp_path, "CohereConfig")
    with pytest.raises(ModelError, match=r"the torchscript export runs only at the traced shape \(batch 2, sequence "
                                         r"8\): onnxruntime fails at batch 3, sequence 5: .*; export with --exporter "
                                         r"dynamo"):
        export_model(d, tmp_path / "x.onnx", exporter="torchscript")
    assert not (tmp_path / "x.onnx").exists() and not list(tmp_path.glob(".x.onnx*"))


def test_an_exporter_failure_is_a_model_error_naming_the_other_exporter(tmp_path):
    """torch.onnx's torchscript exporter fails on GLM inside its own passes (an AssertionError): that is a ModelError
    saying which exporter failed and how, and suggesting the other; no file is left behind."""
    from trtrun.export import export_model

    d = _random_folder(tmp_path, "GlmConfig", head_dim=32, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    with pytest.raises(ModelError, match=r"torch\.onnx's torchscript exporter failed on this model \(AssertionError: "
                                         r".*\); try --exporter dynamo"):
        export_model(d, tmp_path / "x.onnx", exporter="torchscript")
    assert not (tmp_path / "x.onnx").exists() and not list(tmp_path.glob(".x.onnx*"))


@pytest.mark.parametrize("cls,sizes", [("CohereConfig", {}),
                                       ("GlmConfig", dict(head_dim=32, pad_token_id=0, bos_token_id=0,
                                                          eos_token_id=0))])
def test_auto_falls_back_to_the_dynamo_exporter(tmp_path, cls, sizes):
    """The default exporter, auto, takes the dynamo exporter where torchscript writes a file that runs only at its
    traced shape (Cohere) or fails inside its own passes (GLM), says so, and keeps a file that onnxruntime runs at
    another shape (checked before it is kept) and that matches the model; with an opset below 18 (torchscript
    only) the torchscript failure stands, with its advice."""
    pytest.importorskip("onnxscript")
    from trtrun.export import export_model

    d = _random_folder(tmp_path, cls, **sizes)
    said = []
    out = export_model(d, tmp_path / "x.onnx", log=said.append)
    assert out.exists() and not list(tmp_path.glob(".x.onnx*"))
    assert len(said) == 2 and said[0].endswith("; trying the dynamo exporter") and "torchscript" in said[0]
    assert said[1] == "exported with the dynamo exporter"
    import onnx
    assert onnx.load(str(out), load_external_data=False).opset_import[0].version >= 18  # dynamo's default opset
    with pytest.raises(ModelError, match=r"torchscript .*try --exporter dynamo|export with --exporter dynamo"):
        export_model(d, tmp_path / "y.onnx", opset=17)
    with pytest.raises(ValueError, match=r"opset 99 is written by neither exporter \(torchscript 14\.\.20, dynamo "
                                         r"18\.\.23\)"):
        export_model(d, tmp_path / "y.onnx", opset=99)


def test_an_export_that_computes_another_function_is_refused(tmp_path, monkeypatch):
    """The other-shape check compares values too: a file that runs but gives other numbers is refused."""
    import onnxruntime

    from trtrun.export import export_model

    real = onnxruntime.InferenceSession

    class Off:
        def __init__(self, *a, **k):
            self._s = real(*a, **k)

        def run(self, *a, **k):
            return [o * 1.01 for o in self._s.run(*a, **k)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Off)
    small = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128}
    with pytest.raises(ModelError, match=r"the torchscript export computes another function at batch 3, sequence 5"):
        export_model("bert-base", tmp_path / "x.onnx", overrides=small)
    assert not (tmp_path / "x.onnx").exists()


def test_model_folder_refuses_size_overrides(tmp_path):
    """A real model's sizes are its weights' shapes: more layers would be silently random, a typo ignored."""
    from trtrun.data import data_dir
    from trtrun.export import export_model, load_torch_model
    d = data_dir() / "minilm"
    if not (d / "config.json").exists():
        pytest.skip(f"MiniLM is not in the data folder ({d})")
    for ov in ({"num_hidden_layers": 8}, {"hiddensize": 4}):
        with pytest.raises(ValueError, match="apply to the named architectures"):
            load_torch_model(d, overrides=ov)
        with pytest.raises(ValueError, match="not to a model folder"):
            export_model(d, tmp_path / "x.onnx", overrides=ov)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("exporter", ["torchscript"])  # dynamo is as well (checked once; 10 s a try)
def test_export_is_deterministic(tmp_path, exporter):
    from trtrun.export import export_model
    small = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 128, "vocab_size": 500}
    a = export_model("gpt2", tmp_path / "a.onnx", exporter=exporter, overrides=small, seed=3)
    b = export_model("gpt2", tmp_path / "b.onnx", exporter=exporter, overrides=small, seed=3)
    assert a.read_bytes() == b.read_bytes()


def test_parameter_estimate_matches_the_tiny_export(tmp_path):
    """estimate_parameters (the model built on the meta device from the config alone) against a real tiny
    Mistral export: equal to the PyTorch model's parameter count, and within 1% of the weights the ONNX file
    holds (its initializers: the same tensors, some stored transposed; 1% leaves room for small constants an
    exporter may add)."""
    import onnx

    from trtrun.export import estimate_parameters, export_model, load_torch_model

    tiny = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, vocab_size=1000, sliding_window=8)
    n = estimate_parameters("mistral", tiny)
    assert n == sum(p.numel() for p in load_torch_model("mistral", overrides=tiny, seed=1).parameters())
    path = export_model("mistral", tmp_path / "m.onnx", overrides=tiny, seed=1)
    held = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    assert abs(held - n) <= 0.01 * n, (held, n)
    # the defaults: every named architecture's own shape is exported without asking (4 GiB of fp32 weights)
    from trtrun.export import MAX_RANDOM_WEIGHT_BYTES
    from trtrun.types import EXPORT_ARCHS

    sizes = {a: estimate_parameters(a) for a in EXPORT_ARCHS}
    assert max(sizes.values()) * 4 <= MAX_RANDOM_WEIGHT_BYTES, sizes
    assert 100e6 < sizes["mistral"] < 200e6, sizes["mistral"]  # a small model's shape, not Mistral-7B's


def test_a_large_shape_is_refused_before_any_allocation(tmp_path, monkeypatch):
    """Mistral-7B's shape (7.1B parameters, 26.5 GiB of fp32 weights) is refused at once with an InputError naming
    the size, the shape and how to shrink or allow it; nothing but meta-device tensors (no storage) is made on
    the way, and no file is written. With allow_large the check lets it through (checked on the check alone:
    exporting 7B here would take the machine)."""
    import transformers

    import trtrun.export as ex
    from trtrun.errors import InputError

    import torch

    made = []
    real = transformers.AutoModel.from_config

    def spy(config, **kw):
        if torch.get_default_device().type != "meta":  # (before it is built: this one would take 28 GB)
            pytest.fail("a model with storage was built")
        model = real(config, **kw)
        made.append({p.device.type for p in model.parameters()})
        return model

    monkeypatch.setattr(transformers.AutoModel, "from_config", spy)
    monkeypatch.setattr(ex, "_randomize", lambda *a: pytest.fail("weights were allocated"))
    big = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336)
    with pytest.raises(InputError) as err:
        ex.export_model("mistral", tmp_path / "x.onnx", overrides=big)
    msg = str(err.value)
    for needle in ("mistral: 7.11B parameters (hidden 4096, layers 32, intermediate 14336, vocabulary 32000)",
                   "26.5 GiB of fp32 weights", "over the 4 GiB", "--hidden-size", "--layers", "--allow-large"):
        assert needle in msg, msg
    with pytest.raises(InputError, match="7.11B parameters"):
        ex.load_torch_model("mistral", overrides=big)
    assert made and all(d == {"meta"} for d in made), made
    assert not (tmp_path / "x.onnx").exists()
    config = ex._make_config(transformers, "mistral", big)
    ex.check_size(torch, transformers, config, "mistral", allow_large=True)
    ex.check_size(torch, transformers, ex._make_config(transformers, "mistral", {}), "mistral")  # the default


@pytest.mark.parametrize("arch, overrides, message", [
    ("llama", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=3),
     r"num_attention_heads 4 \(--heads\) is not a multiple of num_key_value_heads 3 \(--kv-heads\)"),
    ("qwen2", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=0), "not a multiple of num_key_value_heads 0"),
    ("llama", dict(hidden_size=64, num_attention_heads=5),
     r"llama: these sizes do not make a valid LlamaConfig: .*hidden size \(64\) is not a multiple"),
])
def test_sizes_that_make_no_model_are_a_value_error(arch, overrides, message):
    """Size options that cannot make a model are refused as a ValueError naming them (the command line's one-line
    error), before any weight exists: neither transformers' own validation classes nor a failure inside the export."""
    from trtrun.export import named_config

    with pytest.raises(ValueError, match=message):
        named_config(arch, dict(num_hidden_layers=1, **overrides))
