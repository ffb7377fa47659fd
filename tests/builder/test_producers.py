"""ONNX files from other producers (tests/producers_corpus.py) build and match onnxruntime on the original.

Each cell of the corpus matrix (architecture x producer variant x plan precision) builds the variant made
from a tiny random-weight export (the `exported` fixture), runs the plan on the reference backend and
compares every unpadded token's state with onnxruntime running the *original fp32 export*: worst per-token
cosine and no NaN. int8 files are also compared with onnxruntime running the int8 file itself. With
TRTRUN_MATRIX_OUT=file.json the outcomes are written there (scripts/models_matrix.py renders docs/models.md).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from producers_corpus import (BERT_FAMILY, FAMILY, INT4, INT8, NEW_ARCHS, OPTIMUM_NO_LEVELS, OPTIMUM_VARIANTS,
                              QUANTIZED, REFUSED, SDPA_NONE, SDPA_VARIANTS, ST_ONNX_VARIANTS, TORCH_ONNX_EXPORTS,
                              VARIANTS, export_new_arch, family_baseline, family_variants, make_variant,
                              model_args, optimum_env, optimum_export, optimum_variants, save_model_dir,
                              sentence_transformers_export, st_onnx_export, tokenizer_files)
from trtrun.types import PRECISIONS

_RESULTS: dict = {}
_PLAIN_OPS: dict = {}


def _cells():
    for arch in ("bert", "gpt2", *NEW_ARCHS):
        for variant in ("torchscript", "dynamo", *SDPA_VARIANTS, *OPTIMUM_VARIANTS, *VARIANTS):
            if variant in VARIANTS and arch not in VARIANTS[variant][1]:
                continue
            if (variant in SDPA_VARIANTS and arch in SDPA_NONE) or \
                    (variant in OPTIMUM_VARIANTS and variant not in optimum_variants(arch)):
                continue
            if (arch in REFUSED or arch == "qwen2") and variant != "torchscript":
                continue  # refused before the exporter matters; Qwen2's graphs are Llama's (+ q/k/v biases)
            for precision in PRECISIONS:
                if arch in REFUSED and precision != "fp32":  # refused before precision matters
                    continue
                yield arch, variant, precision


@pytest.fixture(scope="session")
def corpus(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cache = {}

    def get(arch, variant):
        key = (arch, variant)
        if key not in cache and variant in OPTIMUM_VARIANTS:
            env = _optimum_env()
            from trtrun.export import load_torch_model

            name, overrides = model_args(arch)
            hf = save_model_dir(load_torch_model(name, overrides=overrides, seed=0), root / arch / "hf")
            levels = () if arch in OPTIMUM_NO_LEVELS else tuple(v.split("-")[1] for v in OPTIMUM_VARIANTS[1:])
            for v, path in optimum_export(hf, root / arch / "optimum", levels, env).items():
                cache[(arch, v)] = path
        if key not in cache:
            if variant in SDPA_VARIANTS:
                pytest.importorskip("transformers")
                from trtrun.export import export_model

                name, overrides = model_args(arch)
                exporter = "dynamo" if variant == "sdpa-dynamo" else "torchscript"
                cache[key] = export_model(name, root / arch / variant / "model.onnx", exporter=exporter,
                                          overrides=overrides, seed=0, attention="sdpa")
            elif arch in NEW_ARCHS and variant in ("torchscript", "dynamo"):
                pytest.importorskip("transformers")
                cache[key] = export_new_arch(arch, root / arch / variant / "model.onnx", variant)
            elif variant in ("torchscript", "dynamo"):
                cache[key] = exported(arch, variant)
            else:
                pytest.importorskip("onnxruntime.transformers")
                src = get(arch, "torchscript") if arch in NEW_ARCHS else exported(arch)
                cache[key] = make_variant(variant, src, root / arch / variant / "model.onnx", arch)
        return cache[key]

    return get


def _minilm_dir():
    """The real MiniLM's sentence-transformers folder in the data folder, or a skip saying how to fetch it."""
    from conftest import _data_dir

    d = _data_dir() / "minilm"
    if not (d / "modules.json").exists():
        pytest.skip(f"MiniLM is not in the data folder ({d}); fetch it with ../shared/data/get-data.sh")
    return d


def _optimum_env():
    env = optimum_env()
    if env is None:
        pytest.skip("Optimum's environment is missing: bash scripts/optimum-env.sh (CI installs it)")
    return env


def _feeds(names, vocab=1000):
    rng = np.random.default_rng(7)
    B, S = 3, 11
    mask = np.ones((B, S), np.int64)
    mask[1, 8:] = 0
    mask[2, 4:] = 0  # right-padded rows, as tokenizers pad
    f = {"input_ids": rng.integers(0, vocab, (B, S)), "attention_mask": mask,
         "token_type_ids": np.zeros((B, S), np.int64)}
    return {k: v for k, v in f.items() if k in names}, mask


def _ort(path, feeds):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    return s.run(None, {k: v for k, v in feeds.items() if k in names})[0].astype(np.float32)


def worst_token_cosine(a, b, mask) -> float:
    a, b = a[mask != 0].astype(np.float64), b[mask != 0].astype(np.float64)
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


# Thresholds (worst token, tiny random models; measured values are in docs/models.md):
# - float weights (fp32 files, fp16 files read back exactly): fp32 and hybrid plans reach 0.99999+ (fp16 weight
#   rounding and hybrid's fp16 GEMM operands cost ~1e-7..1e-6 in cosine); 0.9999 leaves a decade of margin.
# - fp16 plans (fp16 LayerNorm statistics and softmax): ~1e-5; 0.999.
# - int8 files against the fp32 original: the dequantized weights carry int8's rounding (per-tensor scale,
#   ~1e-2 of a weight): measured 0.9998..0.99994; 0.999. Against onnxruntime on the int8 file, which also
#   quantizes activations to uint8 at run time (the plan does not): measured 0.998 (QDQ)..0.99999; 0.995.
# - int4 files (asymmetric 4-bit blocks of 32) against the fp32 original: a block of Gaussian weights spans ~4
#   sigma in 15 steps, so rounding adds RMS noise of 4/15/sqrt(12) ~ 0.077 of a weight, ~3e-3 in cosine a Linear;
#   the tiny models have 6-14 Linears in a row: 0.97 (measured 0.9875 on Llama). Against onnxruntime on the file,
#   whose MatMulNBits dequantize to fp32 as the plan does (its QDQ form fuses into a MatMulNBits that quantizes
#   activations to int8): 0.995, as for int8.
def _threshold(variant, precision):
    if variant in INT4:
        return 0.97
    if variant in INT8:
        return 0.999
    return 0.999 if precision == "fp16" else 0.9999


@pytest.mark.parametrize("arch,variant,precision", list(_cells()))
def test_producer_matrix(corpus, exported, arch, variant, precision):
    import trtrun
    from trtrun.reference import ReferenceBackend

    path = corpus(arch, variant)
    original = corpus(arch, "torchscript") if arch in NEW_ARCHS else exported(arch)
    cell = f"{arch}|{variant}|{precision}"
    try:
        plan = trtrun.build(path, precision=precision)
    except trtrun.TrtrunError as e:
        _RESULTS[cell] = {"ok": False, "why": str(e).splitlines()[0]}
        if arch in REFUSED and REFUSED[arch] in str(e):
            return  # the one-line refusal the matrix shows
        raise
    assert arch not in REFUSED, f"{arch} was expected to be refused"
    feeds, mask = _feeds([i["name"] for i in plan.inputs])
    out = ReferenceBackend(plan).run(feeds)
    y = out[plan.outputs[0]["name"]]
    ref = _ort(original, feeds)  # onnxruntime fp32 on the original export
    cos = worst_token_cosine(y, ref, mask)
    rec = {"ok": True, "cos": cos, "nan": int(np.isnan(y).sum())}
    if variant in QUANTIZED:
        rec["cos_same_file"] = worst_token_cosine(y, _ort(path, feeds), mask)
    _RESULTS[cell] = rec
    assert rec["nan"] == 0
    assert cos >= _threshold(variant, precision), rec
    if variant in QUANTIZED:
        assert rec["cos_same_file"] >= 0.995, rec
        assert plan.source["weights"] == ("int4" if variant in INT4 else "int8")
    if variant in ("fp16", "fp16-io32", "ort-O4"):
        assert plan.source["weights"] == "float16"
    if variant.startswith("ort-"):
        assert any("com.microsoft" in c for c in plan.source["conversions"])
    if variant != "torchscript":
        # Other exporters' files and fused, converted and quantized ones reach the same GPU program as the plain
        # torchscript export (the same ops with the same kernel-choosing attributes, operands and weight dtypes;
        # independent ops, as GPT-NeoX's parallel attention and MLP, may come in another order): that they then
        # run at the same speed rests on this. Architectures the GPU runtime does not run yet (gpu_missing) have
        # no program to compare.
        if (arch, precision) not in _PLAIN_OPS:
            try:
                _PLAIN_OPS[(arch, precision)] = _gpu_program(trtrun.build(corpus(arch, "torchscript"),
                                                                          precision=precision))
            except trtrun.PlanError:
                _PLAIN_OPS[(arch, precision)] = None
        if _PLAIN_OPS[(arch, precision)] is None:
            return
        got, want = _gpu_program(plan), _PLAIN_OPS[(arch, precision)]
        if variant in _TANH_GELU:
            got, want = _tanh(got), _tanh(want)
        assert got == want


_TANH_GELU = ("ort-O3", "ort-O4", "optimum-O3")  # files approximating GELU by tanh: another epilogue, same cost


def _tanh(program):
    return sorted(op.replace("'gelu_erf'", "'gelu_tanh'") for op in program)


def _gpu_program(plan, token_types: bool = True) -> list:
    """What the GPU runtime is given to run, names aside, as a sorted list (a multiset) of its ops: each lowered
    op's attributes, which operands it has, and its weights' roles, dtypes and shapes. token_types=False: not
    whether the Embedding reads token_type_ids (without them it adds the table's row 0: the same kernel)."""
    from trtrun.runtime.lower import lower_plan

    low = lower_plan(plan)
    arrays = [a for _, a in low["weights"]]
    def attr(v):  # float attributes are data (an fp16 file holds its epsilon rounded to fp16), not the kernel
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return sorted(repr((sorted((k, attr(v)) for k, v in op.items() if k not in ("name", "inputs", "outputs", "weights")),
                        [i >= 0 for i in op["inputs"]][:None if token_types or op["type"] != "Embedding" else 1],
                        [o >= 0 for o in op["outputs"]],
                        sorted((role, arrays[j].dtype.name, arrays[j].shape) for role, j in op["weights"].items())))
                  for op in low["ops"])


@pytest.fixture(scope="session", autouse=True)
def _write_matrix():
    yield
    out = os.environ.get("TRTRUN_MATRIX_OUT")
    if out and _RESULTS:
        old = {}
        if os.path.exists(out):
            with open(out) as f:
                old = json.load(f)
        old.update(_RESULTS)
        with open(out, "w") as f:
            json.dump(old, f, indent=1, sort_keys=True)


# ---------------------------------------------------------------------- the real MiniLM, hybrid
@pytest.mark.parametrize("variant", ["ort-O2", "fp16-io32", "int8-dynamic", "ort-O2-int8-dynamic", "int4-nbits",
                                     *ST_ONNX_VARIANTS])
def test_minilm_variants(exported, tmp_path, request, variant):
    import trtrun
    from trtrun.reference import ReferenceBackend

    src = exported("minilm")
    if variant in ST_ONNX_VARIANTS:
        path = request.getfixturevalue("minilm_st_onnx")[variant]
    else:
        path = make_variant(variant, src, tmp_path / "model.onnx", "minilm")
    plan = trtrun.build(path, precision="hybrid")
    feeds, mask = _feeds([i["name"] for i in plan.inputs], vocab=30000)
    y = ReferenceBackend(plan).run(feeds)[plan.outputs[0]["name"]]
    ref = _ort(src, feeds)
    cos = worst_token_cosine(y, ref, mask)
    _RESULTS[f"minilm|{variant}|hybrid"] = {"ok": True, "cos": cos, "nan": int(np.isnan(y).sum())}
    assert not np.isnan(y).any()
    assert _gpu_program(plan) == _gpu_program(trtrun.build(src, precision="hybrid"))  # the same kernels as the plain export
    if variant not in QUANTIZED and "qint8" not in variant:
        assert cos >= 0.9999  # real weights: hybrid on a plain export reaches 0.99999+ per token
        return
    # int8 (and int4) weights move MiniLM's token states by themselves: onnxruntime on the int8 file reaches only ~0.88
    # per token (random ids) against the fp32 original. The plan (dequantized weights, float activations)
    # must be at least as close to the original as that, and agree with the int8 file to ~0.98 (the rest is
    # the file's run-time activation quantization, which the plan does not do).
    same = _ort(path, feeds)
    assert cos >= worst_token_cosine(same, ref, mask) - 1e-3
    assert worst_token_cosine(y, same, mask) >= 0.98


@pytest.fixture(scope="module")
def minilm_optimum(tmp_path_factory):
    """The real MiniLM folder through Optimum (which exports it as a sentence-transformers model, from its
    modules.json: token_embeddings and the pooled, normalized sentence_embedding) and its O1-O3 levels."""
    return optimum_export(_minilm_dir(), tmp_path_factory.mktemp("minilm-optimum"), env=_optimum_env())


@pytest.mark.parametrize("variant", OPTIMUM_VARIANTS)
def test_minilm_optimum(exported, minilm_optimum, variant):
    """Real MiniLM as Optimum writes it: the token states against onnxruntime fp32 on the plain export, the
    pooled output against onnxruntime on the same file, and the same GPU program as the plain export."""
    import trtrun
    from trtrun.reference import ReferenceBackend

    src, path = exported("minilm"), minilm_optimum[variant]
    plan = trtrun.build(path, precision="hybrid")
    assert [o["name"] for o in plan.outputs] == ["token_embeddings", "sentence_embedding"]
    feeds, mask = _feeds(["input_ids", "attention_mask", "token_type_ids"], vocab=30000)  # the export has all 3
    out = ReferenceBackend(plan).run({i["name"]: feeds[i["name"]] for i in plan.inputs})
    y = out["token_embeddings"]
    cos = worst_token_cosine(y, _ort(src, feeds), mask)
    _RESULTS[f"minilm|{variant}|hybrid"] = {"ok": True, "cos": cos, "nan": int(np.isnan(y).sum())}
    assert not np.isnan(y).any()
    assert cos >= 0.9999  # as the other MiniLM variants: hybrid on real weights reaches 0.99999+ per token
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = s.run(["sentence_embedding"], {k: v for k, v in feeds.items() if k in {i.name for i in s.get_inputs()}})[0]
    a, b = out["sentence_embedding"].astype(np.float64), ref.astype(np.float64)
    assert ((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min() >= 0.9999
    tokens = trtrun.build(path, precision="hybrid", outputs=["token_embeddings"])
    # Optimum's sentence-transformers export has no token_type_ids input
    got, want = _gpu_program(tokens, False), _gpu_program(trtrun.build(src, precision="hybrid"), False)
    if variant in _TANH_GELU:
        got, want = _tanh(got), _tanh(want)
    assert got == want


@pytest.fixture(scope="module")
def minilm_st_onnx(tmp_path_factory):
    """The real MiniLM through sentence-transformers' own ONNX backend: its model.onnx and its dynamic int8
    file for avx512_vnni (which also quantizes attention's two activation MatMuls), as the Hub carries them."""
    return st_onnx_export(_minilm_dir(), tmp_path_factory.mktemp("minilm-st-onnx"), env=_optimum_env())


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """family(arch) -> {variant: path}: torch.onnx with eager and sdpa attention, for the BERT family Optimum's
    O2, for OPTIMUM_FAMILIES Optimum's plain export."""
    from producers_corpus import family_dir
    from trtrun.export import export_model

    root, cache = tmp_path_factory.mktemp("family"), {}

    def get(arch):
        if arch not in cache:
            hf = family_dir(arch, root / arch / "hf")
            cache[arch] = {v: export_model(hf, root / arch / f"{v}.onnx", attention=att, exporter=exp)
                           for v, (att, exp) in TORCH_ONNX_EXPORTS.items()
                           if v == family_baseline(arch) or v in family_variants(arch)}
            if arch in BERT_FAMILY and optimum_env() is not None:
                cache[arch]["optimum-O2"] = optimum_export(hf, root / arch / "optimum", ("O2",))["optimum-O2"]
            elif "optimum" in family_variants(arch) and optimum_env() is not None:
                cache[arch]["optimum"] = optimum_export(hf, root / arch / "optimum", ())["optimum"]
        return cache[arch]

    return get


@pytest.mark.parametrize("arch,variant", [(a, v) for a in FAMILY for v in family_variants(a)])
def test_family_producers(family, arch, variant):
    """Architectures `trtrun export` does not name, as users' tools write them: the BERT family through
    transformers' default (sdpa) attention and Optimum's O2; decoders through eager and sdpa torch.onnx (the
    dynamo exporter for DYNAMO_FAMILIES). Against onnxruntime on the eager-attention export, hybrid; the same GPU
    program as that export's (where the GPU runs it)."""
    import trtrun
    from trtrun.reference import ReferenceBackend

    files = family(arch)
    if variant not in files:
        _optimum_env()
    plan = trtrun.build(files[variant], precision="hybrid")
    feeds, mask = _feeds(["input_ids", "attention_mask", "token_type_ids"])
    y = ReferenceBackend(plan).run({i["name"]: feeds[i["name"]] for i in plan.inputs})[plan.outputs[0]["name"]]
    base = files[family_baseline(arch)]
    cos = worst_token_cosine(y, _ort(base, feeds), mask)
    _RESULTS[f"{arch}|{variant}|hybrid"] = {"ok": True, "cos": cos, "nan": int(np.isnan(y).sum())}
    assert cos >= 0.9999  # hybrid, as the matrix
    try:
        want = _gpu_program(trtrun.build(base, precision="hybrid"), False)
    except trtrun.PlanError:
        return  # a form the GPU runtime does not run yet (gpu_missing)
    assert _gpu_program(plan, False) == want


def _t5_encoder(path, ffn):
    """A tiny random T5 folder (encoder-decoder, as published) through `trtrun export`, which exports its encoder
    (sentence-t5, GTR, Instructor embed with it)."""
    import torch
    import transformers

    from trtrun.export import _randomize, export_model

    cfg = transformers.T5Config(vocab_size=1000, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
                                feed_forward_proj=ffn)
    torch.manual_seed(0)
    model = transformers.T5Model(cfg)
    _randomize(torch, model, 0)
    model.save_pretrained(path.with_suffix(""))
    return export_model(path.with_suffix(""), path)


@pytest.mark.parametrize("ffn", ["gated-gelu", "relu"])
def test_t5_encoder(tmp_path, ffn):
    """T5 hands every layer one tensor: its relative-position bias with the padding mask folded in
    (Where(mask, bias, min)). The bias is read as the relative-bucket table, the mask by its effect, as for
    MPNet. v1.1's gated-GELU MLP and v1.0's ReLU MLP (t5-base, sentence-t5) build and match onnxruntime."""
    pytest.importorskip("transformers")
    import trtrun
    from trtrun.reference import ReferenceBackend

    path = _t5_encoder(tmp_path / "t5.onnx", ffn)
    for precision in PRECISIONS:
        plan = trtrun.build(path, precision=precision)
        attn = [op for op in plan.ops if op["type"] == "Attention"]
        assert len(attn) == 2 and all(op["weights"].get("relative_bias") for op in attn)
        assert all(op["attrs"]["scale"] == 1.0 and not op["attrs"]["causal"] for op in attn)  # T5 does not scale
        fc = [op for op in plan.ops if op["type"] == "Linear" and op["attrs"].get("activation", "none") != "none"]
        assert len(fc) == 2 and all(op["attrs"]["activation"] == ("relu" if ffn == "relu" else "gelu_tanh")
                                    and op["attrs"].get("gated", False) == (ffn != "relu") for op in fc)
        feeds, mask = _feeds(["input_ids", "attention_mask"])
        y = ReferenceBackend(plan).run(feeds)["last_hidden_state"]
        cos = worst_token_cosine(y, _ort(path, feeds), mask)
        family = "t5-relu" if ffn == "relu" else "t5"
        _RESULTS[f"{family}|torchscript|{precision}"] = {"ok": True, "cos": cos, "nan": int(np.isnan(y).sum())}
        assert cos >= _threshold("torchscript", precision), (ffn, precision, cos)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_optimum_decoder_tasks(tmp_path, arch):
    """Decoders as Optimum exports them for generation: `text-generation` (logits from the LM head) builds and
    matches onnxruntime on the file (`text-generation-with-past`, its default, with a key/value cache in and out:
    tests/builder/test_prefill.py)."""
    import trtrun
    from producers_corpus import causal_lm_dir
    from trtrun.reference import ReferenceBackend

    env = _optimum_env()
    hf = causal_lm_dir(arch, tmp_path / "hf")
    path = optimum_export(hf, tmp_path / "lm", levels=(), env=env, task="text-generation")["optimum"]
    plan = trtrun.build(path, precision="hybrid")
    assert [o["name"] for o in plan.outputs] == ["logits"]
    feeds, mask = _feeds([i["name"] for i in plan.inputs])
    y = ReferenceBackend(plan).run(feeds)["logits"]
    positions = np.broadcast_to(np.arange(mask.shape[1]), mask.shape).astype(np.int64)
    ref = _ort(path, {**feeds, "position_ids": positions})  # the plan's positions: arange, as transformers'
    assert y.shape == ref.shape and y.shape[-1] > 30000
    assert worst_token_cosine(y, ref, mask) >= 0.9999  # hybrid, as the token states


# ---------------------------------------------------------------------- outputs
@pytest.fixture(scope="session")
def st_tiny(tmp_path_factory):
    """A tiny random BERT as a sentence-transformers model, exported with its pooled output."""
    pytest.importorskip("sentence_transformers")
    from conftest import TINY, _data_dir
    from trtrun.export import load_torch_model

    root = tmp_path_factory.mktemp("st")
    model = load_torch_model("bert-base", overrides=dict(TINY), seed=0)
    model.save_pretrained(root / "hf")
    tok = _data_dir() / "minilm"
    if not (tok / "tokenizer.json").exists():
        pytest.skip("MiniLM tokenizer missing from the data folder")
    tokenizer_files(tok, root / "hf")
    sentence_transformers_export(root / "hf", root / "st.onnx")
    return root / "st.onnx"


def test_sentence_embedding_output_is_pooled(st_tiny):
    import trtrun
    from trtrun.reference import ReferenceBackend

    plan = trtrun.build(st_tiny, precision="hybrid")
    assert [o["name"] for o in plan.outputs] == ["token_embeddings", "sentence_embedding"]
    pool = [o for o in plan.ops if o["type"] == "Pool"]
    assert len(pool) == 1 and pool[0]["attrs"] == {"mode": "mean", "normalize": True}
    feeds, mask = _feeds(["input_ids", "attention_mask"])
    out = ReferenceBackend(plan).run(feeds)
    import onnxruntime as ort
    ref = ort.InferenceSession(str(st_tiny), providers=["CPUExecutionProvider"]).run(None, feeds)
    a, b = out["sentence_embedding"].astype(np.float64), ref[1].astype(np.float64)
    assert a.shape == b.shape == (3, 128)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.9999  # hybrid vs fp32, as for the token states above
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)  # normalized in the plan


def test_check_takes_a_pooled_output(st_tiny, tmp_path):
    """`trtrun check` on a file with a pooled output: its headroom pass reads every op's output per token, and a
    Pool's [B, N] has no token axis (it failed with a numpy broadcast error)."""
    from conftest import _data_dir
    from trtrun.cli.main import main

    tok = _data_dir() / "minilm"
    assert main(["check", str(st_tiny), "--tokenizer", str(tok), "--max-samples", "4", "--downstream", "off",
                 "--out", str(tmp_path / "report"), "-q"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["verdict"] == "pass"


def test_outputs_subset_and_unknown(st_tiny):
    import trtrun

    plan = trtrun.build(st_tiny, precision="fp32", outputs=["sentence_embedding"])
    assert [o["name"] for o in plan.outputs] == ["sentence_embedding"]
    plan = trtrun.build(st_tiny, precision="fp32", outputs=["token_embeddings"])
    assert [o["name"] for o in plan.outputs] == ["token_embeddings"]
    assert not any(o["type"] == "Pool" for o in plan.ops)
    with pytest.raises(ValueError, match="no output 'nope'.*token_embeddings, sentence_embedding"):
        trtrun.build(st_tiny, outputs=["nope"])


def test_keep_outputs(st_tiny, tmp_path):
    """Plan.keep_outputs: a built plan narrowed to some of its outputs computes them exactly as before, with the
    ops and weights they need only (the Embedder drops a Pool this way)."""
    import trtrun
    from trtrun.reference import ReferenceBackend

    plan = trtrun.build(st_tiny, precision="hybrid")
    feeds, _ = _feeds(["input_ids", "attention_mask"])
    full = ReferenceBackend(plan).run(feeds)
    tokens = plan.keep_outputs(["token_embeddings"])
    assert [o["name"] for o in tokens.outputs] == ["token_embeddings"]
    assert [op["type"] for op in tokens.ops] == [op["type"] for op in plan.ops if op["type"] != "Pool"]
    assert np.array_equal(ReferenceBackend(tokens).run(feeds)["token_embeddings"], full["token_embeddings"])
    pooled = plan.keep_outputs(["sentence_embedding"])
    assert np.array_equal(ReferenceBackend(pooled).run(feeds)["sentence_embedding"], full["sentence_embedding"])
    assert plan.keep_outputs(["token_embeddings", "sentence_embedding"]) is plan
    tokens.save(tmp_path / "t.plan")
    assert trtrun.load_plan(tmp_path / "t.plan").weight_stats() == tokens.weight_stats()
    with pytest.raises(ValueError, match="no output 'nope'"):
        plan.keep_outputs(["nope"])

    passthrough = trtrun.build(_export_with_mask_out(tmp_path / "m.onnx", "torchscript"), precision="fp32")
    with pytest.raises(ValueError, match="input passed through"):
        passthrough.keep_outputs(["mask_out"])
    assert [o["name"] for o in passthrough.keep_outputs(["last_hidden_state"]).outputs] == ["last_hidden_state"]


def _with_extra_output(src, dst, make):
    import onnx
    from onnx import helper

    m = onnx.load(str(src))
    last = m.graph.output[0].name
    nodes, outs = make(last)
    m.graph.node.extend(nodes)
    m.graph.output.extend(outs)
    onnx.save(m, str(dst))
    return dst


def _export_with_mask_out(path, exporter):
    """A tiny random BERT whose torch.onnx export returns its attention_mask beside the token states (as some
    exports do): both exporters write the second output as Identity(attention_mask) named mask_out."""
    import warnings

    import torch

    from conftest import TINY
    from trtrun.export import load_torch_model

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask

    model = Wrapper(load_torch_model("bert-base", overrides=dict(TINY), seed=0)).eval()
    ids, mask = torch.randint(0, 1000, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    names = ["input_ids", "attention_mask"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(model, (ids, mask), str(path), input_names=names,
                              output_names=["last_hidden_state", "mask_out"], opset_version=17, dynamo=False,
                              dynamic_axes={n: {0: "b", 1: "s"} for n in names + ["last_hidden_state", "mask_out"]})
        else:
            dim = {0: torch.export.Dim("b", min=1, max=64), 1: torch.export.Dim("s", min=2, max=512)}
            torch.onnx.export(model, (ids, mask), input_names=names, output_names=["last_hidden_state", "mask_out"],
                              dynamic_shapes={n: dim for n in names}, dynamo=True, verbose=False).save(str(path))
    return path


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_input_passed_through_is_kept(tmp_path, exporter):
    """The failure the issue quotes: an output that is an input passed through. It is a plan output under the
    model's name, with "input" naming the input (no op writes it, the GPU lowering gives it no buffer), and the
    backends return the input's value: the same int64 array onnxruntime returns, exactly."""
    pytest.importorskip("transformers")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    import onnx
    import onnxruntime as ort

    import trtrun
    from trtrun.reference import ReferenceBackend
    from trtrun.runtime.lower import lower_plan

    path = _export_with_mask_out(tmp_path / "m.onnx", exporter)
    assert any(n.op_type == "Identity" and list(n.input) == ["attention_mask"] for n in onnx.load(str(path)).graph.node)
    plan = trtrun.build(path, precision="hybrid")  # was: left out of the plan (and before that, refused)
    assert plan.outputs[1] == {"name": "mask_out", "dtype": "int64", "shape": ["B", "S"], "input": "attention_mask"}
    assert [o["name"] for o in plan.outputs] == ["last_hidden_state", "mask_out"]
    plan.save(tmp_path / "m.plan")
    plan = trtrun.load_plan(tmp_path / "m.plan")  # the format takes it back
    assert len(lower_plan(plan)["outputs"]) == 1  # the GPU runtime computes the states only
    feeds, mask = _feeds(["input_ids", "attention_mask"])
    out = ReferenceBackend(plan).run(feeds)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert out["mask_out"].dtype == ref[1].dtype == np.int64 and np.array_equal(out["mask_out"], ref[1])
    assert out["mask_out"] is not feeds["attention_mask"]  # a copy: the caller's array stays the caller's
    assert worst_token_cosine(out["last_hidden_state"], ref[0], mask) >= 0.9999  # hybrid, as the matrix

    # --outputs names it as the model does, in the order asked
    plan = trtrun.build(path, precision="fp32", outputs=["mask_out", "last_hidden_state"])
    assert [o["name"] for o in plan.outputs] == ["mask_out", "last_hidden_state"]
    plan = trtrun.build(path, precision="fp32", outputs=["last_hidden_state"])
    assert [o["name"] for o in plan.outputs] == ["last_hidden_state"]
    with pytest.raises(trtrun.BuildError, match="every graph output is an input passed through"):
        trtrun.build(path, precision="fp32", outputs=["mask_out"])
    with pytest.raises(ValueError, match="no output 'nope'.*last_hidden_state, mask_out"):
        trtrun.build(path, precision="fp32", outputs=["nope"])


def test_passthrough_output_fields_are_checked(tmp_path):
    """A plan output's "input" must name a graph input, and its name must not also be a tensor of the plan."""
    import copy

    import trtrun

    path = _export_with_mask_out(tmp_path / "m.onnx", "torchscript")
    plan = trtrun.build(path, precision="fp32")
    for change, words in ((dict(input="nope"), "must name a graph input"),
                          (dict(name="input_ids"), "also a tensor of the plan"),
                          (dict(dtype="float32"), "here but int64")):
        h = copy.deepcopy(plan.header)
        h["outputs"][1].update(change)
        with pytest.raises(trtrun.PlanError, match=words):
            trtrun.Plan.from_parts(h, plan.weights)


def test_uncomputable_output_is_named(exported, tmp_path):
    import onnx
    from onnx import helper
    import trtrun

    # a [B, S, N] output through an op no pattern has: named, with the --outputs that leaves it out
    path = _with_extra_output(exported("bert"), tmp_path / "m.onnx", lambda last: (
        [helper.make_node("Sin", [last], ["wavy"], name="my_sin")],
        [helper.make_tensor_value_info("wavy", onnx.TensorProto.FLOAT, ["b", "s", 128])]))
    with pytest.raises(trtrun.UnsupportedOpError, match="'my_sin'.*graph output 'wavy' cannot be computed.*"
                                                        "--outputs last_hidden_state"):
        trtrun.build(path)
    plan = trtrun.build(path, outputs=["last_hidden_state"])
    assert [o["name"] for o in plan.outputs] == ["last_hidden_state"]


# ---------------------------------------------------------------------- refused forms, external data
def test_contrib_form_not_lowered_is_named(corpus, tmp_path):
    """QuickGelu with an alpha other than 1 (silu) and 1.702 (CLIP's quick_gelu) is no IR activation: one line
    naming the node and why."""
    import onnx
    import trtrun

    m = onnx.load(str(corpus("bert", "ort-O2")))
    n = next(n for n in m.graph.node if n.op_type == "BiasGelu")
    n.op_type, n.name = "QuickGelu", "my_quick_gelu"
    del n.input[1:]
    n.attribute.append(onnx.helper.make_attribute("alpha", 2.0))
    onnx.save(m, str(tmp_path / "q.onnx"))
    with pytest.raises(trtrun.UnsupportedOpError, match="'QuickGelu' at node 'my_quick_gelu'.*sigmoid"):
        trtrun.build(tmp_path / "q.onnx")


def test_contrib_attention_with_past_is_refused(corpus, tmp_path):
    import onnx
    from onnx import helper
    import trtrun

    m = onnx.load(str(corpus("bert", "ort-O2")))
    n = next(n for n in m.graph.node if n.op_type == "Attention")
    n.attribute.append(helper.make_attribute("do_rotary", 1))
    onnx.save(m, str(tmp_path / "a.onnx"))
    with pytest.raises(trtrun.UnsupportedOpError, match=f"'Attention' at node '{n.name}'.*rotary"):
        trtrun.build(tmp_path / "a.onnx")


def test_external_data_beside_the_model_and_outside_refused(corpus, tmp_path):
    import onnx
    import trtrun

    path = corpus("bert", "external-data")
    assert any(p.suffix == ".data" for p in path.parent.iterdir())
    plan = trtrun.build(path, precision="fp32")
    assert plan.model["hidden"] == 128
    # the same file pointing at data one folder up: refused before anything is read
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = "../" + kv.value
    (tmp_path / "sub").mkdir()
    onnx.save(m, str(tmp_path / "sub" / "m.onnx"))
    with pytest.raises(trtrun.ModelError, match="outside the model's folder"):
        trtrun.build(tmp_path / "sub" / "m.onnx")


def test_inspect_says_int8(corpus):
    import trtrun

    plan = trtrun.build(corpus("bert", "int8-dynamic"), precision="hybrid")
    text = plan.summary()
    assert "source weights: int8" in text and "dequantized at build time" in text
    w = {e["dtype"] for e in plan.header["weights"].values()}
    assert "int8" not in w and "float16" in w  # dequantized into the plan's precision


def test_cli_outputs(st_tiny, tmp_path, capsys):
    import trtrun
    from trtrun.cli.main import main

    assert main(["build", str(st_tiny), "-o", str(tmp_path / "p.plan"), "--outputs", "sentence_embedding", "-q"]) == 0
    assert [o["name"] for o in trtrun.load_plan(tmp_path / "p.plan").outputs] == ["sentence_embedding"]
    capsys.readouterr()
    assert main(["build", str(st_tiny), "-o", str(tmp_path / "q.plan"), "--outputs", "nope", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no output 'nope'" in err[0]
    assert not (tmp_path / "q.plan").exists()


def test_qattention_needs_the_dynamic_quantization_of_its_input(corpus, tmp_path):
    """QAttention's input is x quantized by DynamicQuantizeLinear; dequantizing its weight alone is x @ W only
    with that op's own scale and zero point: another scale (here a constant) is refused naming the node."""
    import onnx
    from onnx import helper, numpy_helper
    import trtrun

    m = onnx.load(str(corpus("bert", "ort-O2-int8-dynamic")))
    n = next(n for n in m.graph.node if n.op_type == "QAttention")
    m.graph.initializer.append(numpy_helper.from_array(np.array(0.05, np.float32), "other_scale"))
    n.input[3] = "other_scale"
    onnx.save(m, str(tmp_path / "q.onnx"))
    with pytest.raises(trtrun.UnsupportedOpError, match=f"'QAttention' at node '{n.name}'.*dynamically quantized"):
        trtrun.build(tmp_path / "q.onnx")
