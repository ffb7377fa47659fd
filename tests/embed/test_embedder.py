"""trtrun.Embedder and the micro-batcher on the CPU (numpy reference backend).

The model is a tiny BERT (hidden 32, one layer, BERT's real vocabulary so the MiniLM tokenizer fits) built
in fp32 with profile batch 1..8, sequence 1..32; one test uses all-MiniLM-L6-v2's real weights. The
independent references are direct ReferenceBackend runs on one text at a time (tokenized by
trtrun.data.encode, pooled here in float64) and, for MiniLM, fp32 PyTorch (transformers) mean pooling.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from trtrun import data
from trtrun.errors import InputError, ShapeError, TrtrunError

from conftest import EMBED_SEQ_MAX as SEQ_MAX  # noqa: E402  (the shared tiny model's sequence limit)

# fp32 plan, same numpy backend on both sides: the only differences come from BLAS summing a dot product
# in another order when the batch shape differs: a few fp32 ulps (1.2e-7 relative) on values of order 1,
# through one layer and the pooling. 1e-5 on unit vectors is ~100 ulps: tight enough to catch a row mixed
# up with another (those differ by ~0.1 and more), loose enough for reordered sums.
ATOL = 1e-5


def _minilm_dir():
    d = data.data_dir() / "minilm"
    if not (d / "tokenizer.json").exists():
        pytest.skip(f"MiniLM tokenizer not in {d} (fetch it with ../shared/data/get-data.sh)")
    return d


@pytest.fixture(scope="module")
def tiny(tiny_embed_model):
    return tiny_embed_model


@pytest.fixture(scope="module")
def texts():
    t = data.load_texts("rt", n=40, seed=7)
    # a mix of lengths: very short, empty-ish, and one far over SEQ_MAX tokens
    return t[:20] + ["ok", " ", "a fine film, " * 30, "Ünïcödé façade — naïve café"] + t[20:]


@functools.lru_cache(maxsize=4)
def _backend_and_tokenizer(plan_path, tok_dir):
    from trtrun.plan import load_plan
    from trtrun.reference import ReferenceBackend

    plan = load_plan(plan_path)
    return ReferenceBackend(plan), {i["name"] for i in plan.inputs}, data.load_tokenizer(tok_dir)


def _direct(plan_path, tok_dir, text, max_len=SEQ_MAX, pooling="mean"):
    """One text alone through ReferenceBackend, pooled and normalized in float64: the reference."""
    backend, names, tok = _backend_and_tokenizer(plan_path, tok_dir)
    feeds = data.encode(tok, [text], max_len)
    h = backend.run({k: v for k, v in feeds.items() if k in names})["last_hidden_state"]
    h = h.astype(np.float64)[0]
    m = feeds["attention_mask"][0].astype(bool)
    v = h[0] if pooling == "cls" else h[m].mean(axis=0)
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------------------------------ Embedder

def test_matches_direct_reference_runs_in_callers_order(tiny, emb, texts):
    res = emb.embed_result(texts)
    assert res.embeddings.shape == (len(texts), 32) and res.embeddings.dtype == np.float32
    for i, t in enumerate(texts):
        ref = _direct(tiny["plan"], tiny["tok"], t)
        np.testing.assert_allclose(res.embeddings[i], ref, atol=ATOL, err_msg=f"text {i}: {t[:40]!r}")
    np.testing.assert_allclose(np.linalg.norm(res.embeddings, axis=1), 1.0, atol=1e-6)
    # token counts are the tokenizer's (special tokens included, after truncation)
    tok = data.load_tokenizer(tiny["tok"])
    want = [min(len(tok(t)["input_ids"]), SEQ_MAX) for t in texts]
    assert res.num_tokens.tolist() == want
    assert res.total_tokens == sum(want)


def test_packing_gives_one_at_a_time_vectors_and_order_follows_input(emb, texts):
    batched = emb.embed(texts)
    single = np.stack([emb.embed([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=ATOL)
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(emb.embed([texts[i] for i in perm]), batched[perm], atol=ATOL)
    # rows really differ (a mix-up would show): distinct texts are far apart
    assert np.abs(batched[0] - batched[1]).max() > 100 * ATOL


def test_pack_batches_respects_budget_and_pads_little():
    from trtrun.embed import pack_batches

    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 120, size=500)
    batches = pack_batches(lengths, max_tokens=1024, max_rows=16)
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(500))
    padded = 0
    for b in batches:
        width = lengths[b].max()
        assert len(b) <= 16 and (len(b) * width <= 1024 or len(b) == 1)
        padded += len(b) * width - lengths[b].sum()
    # sorted by length, neighbours in a batch differ by little: padding is a few % of the real tokens
    # (unsorted batches of 16 random lengths in 3..120 would pad ~50%)
    assert padded < 0.05 * lengths.sum(), padded / lengths.sum()
    # a text longer than the budget still gets a batch of its own
    assert pack_batches([50, 5000, 10], max_tokens=100, max_rows=8)[0] == [1]


def test_engine_batches_stay_inside_the_profile(tiny, texts):
    from trtrun.embed import Embedder

    seen = []
    with Embedder(tiny["plan"], tiny["tok"], backend="reference", max_tokens_per_batch=64, contexts=1) as e:
        e.run_encoded(e.tokenize(texts * 3), observer=lambda rows, seq, tok, dt: seen.append((rows, seq, tok)))
    assert sum(r for r, _, _ in seen) == 3 * len(texts)
    assert all(1 <= r <= 8 and 1 <= s <= SEQ_MAX and (r * s <= 64 or r == 1) for r, s, _ in seen), seen


def test_truncation_policy(tiny, texts):
    from trtrun.embed import Embedder, InputTooLongError

    long_text = texts[22]
    assert long_text.startswith("a fine film")
    with Embedder(tiny["plan"], tiny["tok"], backend="reference", truncation="truncate") as e:
        res = e.embed_result(["short one", long_text])
        assert res.truncated.tolist() == [False, True] and res.any_truncated
        assert res.num_tokens[1] == SEQ_MAX == e.max_seq_len
        np.testing.assert_allclose(res.embeddings[1], _direct(tiny["plan"], tiny["tok"], long_text), atol=ATOL)
        # a shorter limit: the vector is that of the text cut there, [SEP] kept at the end
        with Embedder(tiny["plan"], tiny["tok"], backend="reference", max_seq_len=8, truncation="truncate") as e8:
            r8 = e8.embed_result([texts[0]])
            assert r8.truncated.tolist() == [True] and r8.num_tokens.tolist() == [8]
            np.testing.assert_allclose(r8.embeddings[0], _direct(tiny["plan"], tiny["tok"], texts[0], max_len=8),
                                       atol=ATOL)
    with Embedder(tiny["plan"], tiny["tok"], backend="reference") as e:  # the default: reject, as OpenAI's API
        assert e.truncation == "reject"
        # the token count is the tokenizer's own, without truncation (special tokens included)
        from tokenizers import Tokenizer

        ref = Tokenizer.from_file(str(tiny["tok"] / "tokenizer.json"))
        ref.no_truncation()
        ref.no_padding()  # (this tokenizer.json pads to 128)
        want = len(ref.encode(long_text).ids)
        assert want > SEQ_MAX
        with pytest.raises(InputTooLongError, match=rf"text 1 has {want} tokens, more than the limit of 32 tokens") as ei:
            e.embed(["short one", long_text])
        assert ei.value.indices == [1] and ei.value.token_counts == [want] and ei.value.limit == SEQ_MAX
        assert isinstance(ei.value, InputError)
        assert e.embed_result(["short one"]).truncated.tolist() == [False]


def test_profile_bounds_give_clear_errors(tiny):
    from trtrun.embed import Embedder

    with pytest.raises(ShapeError, match=r"max_batch_size 9 is outside the plan's profile batch range \[1, 8\]"):
        Embedder(tiny["plan"], tiny["tok"], backend="reference", max_batch_size=9)
    with pytest.raises(ShapeError, match="max_seq_len 33 exceeds the plan's profile sequence max 32"):
        Embedder(tiny["plan"], tiny["tok"], backend="reference", max_seq_len=33)
    with pytest.raises(ValueError, match="max_tokens_per_batch must be an integer >= max_seq_len"):
        Embedder(tiny["plan"], tiny["tok"], backend="reference", max_tokens_per_batch=16)
    with pytest.raises(ValueError, match="pooling must be one of"):
        Embedder(tiny["plan"], tiny["tok"], pooling="sum")
    with pytest.raises(ValueError, match="truncation must be one of"):
        Embedder(tiny["plan"], tiny["tok"], truncation="cut")


def test_bad_texts_and_empty_input(emb):
    assert emb.embed([]).shape == (0, 32)
    assert emb.embed("one text").shape == (1, 32)
    with pytest.raises(InputError, match="text 1 is a int, expected str"):
        emb.embed(["ok", 3])
    with pytest.raises(InputError, match="texts must be a str or a list of str, got bytes"):
        emb.embed(b"bytes")


def test_pooling_from_sentence_transformers_config(tiny, tmp_path, texts):
    from trtrun.embed import Embedder

    tok_dir = tmp_path / "tok"
    shutil.copytree(tiny["tok"], tok_dir, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with Embedder(tiny["plan"], tok_dir, backend="reference") as e:  # MiniLM's own config says mean
        assert e.pooling == "mean" and e.pooling_source.endswith("1_Pooling/config.json")
    cfg = tok_dir / "1_Pooling" / "config.json"
    conf = json.loads(cfg.read_text())
    conf.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    cfg.write_text(json.dumps(conf))
    with Embedder(tiny["plan"], tok_dir, backend="reference") as e:
        assert e.pooling == "cls"
        np.testing.assert_allclose(e.embed([texts[0]])[0], _direct(tiny["plan"], tiny["tok"], texts[0], pooling="cls"),
                                   atol=ATOL)
    conf.update(pooling_mode_cls_token=False, pooling_mode_weightedmean_tokens=True)
    cfg.write_text(json.dumps(conf))
    with pytest.raises(TrtrunError, match="pooling_mode_weightedmean_tokens is not supported"):
        Embedder(tiny["plan"], tok_dir, backend="reference")
    with Embedder(tiny["plan"], tok_dir, backend="reference", pooling="mean") as e:  # given wins
        assert e.pooling == "mean" and e.pooling_source == "given"
    shutil.rmtree(tok_dir / "1_Pooling")
    (tok_dir / "modules.json").unlink()
    with Embedder(tiny["plan"], tok_dir, backend="reference") as e:
        assert e.pooling == "mean" and e.pooling_source.startswith("default")


def test_concurrent_threads_each_get_their_own_rows(emb, texts):
    expected = emb.embed(texts)
    rng = np.random.default_rng(5)
    jobs = [rng.choice(len(texts), size=int(rng.integers(1, 6)), replace=False) for _ in range(24)]
    got: dict[int, np.ndarray] = {}
    errors = []
    start = threading.Barrier(8)

    def worker(k):
        try:
            start.wait()
            for j in range(k, len(jobs), 8):
                got[j] = emb.embed([texts[i] for i in jobs[j]])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for j, idx in enumerate(jobs):
        np.testing.assert_allclose(got[j], expected[idx], atol=ATOL)


def test_onnx_path_builds_a_cached_hybrid_plan(tiny, tmp_path, monkeypatch):
    import trtrun.plan
    from trtrun.embed import Embedder

    reads = []
    real_load = trtrun.plan.load_plan
    monkeypatch.setattr(trtrun.plan, "load_plan", lambda p: (reads.append(Path(p)), real_load(p))[1])
    onnx_path = tmp_path / "m.onnx"
    shutil.copy(tiny["onnx"], onnx_path)
    with Embedder(onnx_path, tiny["tok"], backend="reference") as e:
        assert e.plan_path == tmp_path / "m.hybrid.plan" and e.plan.precision == "hybrid"
        assert e.plan.path == e.plan_path and tmp_path / "m.hybrid.plan" not in reads  # built: not read back
        v = e.embed(["a fine film"])
    mtime = (tmp_path / "m.hybrid.plan").stat().st_mtime_ns
    reads.clear()
    with Embedder(onnx_path, tiny["tok"], backend="reference") as e:  # reused, not rebuilt
        assert e.plan_path == tmp_path / "m.hybrid.plan"
        assert reads == [tmp_path / "m.hybrid.plan"]  # read once: checked and kept
        np.testing.assert_array_equal(e.embed(["a fine film"]), v)
    assert (tmp_path / "m.hybrid.plan").stat().st_mtime_ns == mtime


def test_gpu_backend_refused_clearly_without_a_gpu(tiny):
    from trtrun import runtime
    from trtrun.embed import Embedder
    from trtrun.errors import RuntimeUnavailableError

    ok, _ = runtime.gpu_available()
    if ok:
        pytest.skip("a GPU is usable here")
    with pytest.raises(RuntimeUnavailableError, match="backend='gpu'"):
        Embedder(tiny["plan"], tiny["tok"], backend="gpu")
    with Embedder(tiny["plan"], tiny["tok"], backend="auto") as e:
        assert e.backend == "reference" and "GPU runtime not usable" in e.backend_reason


def test_minilm_hybrid_matches_pytorch_mean_pooling(tmp_path_factory):
    """Real weights: the acceptance criterion (cosine >= 0.9998 vs fp32 PyTorch), on a few sentences here."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from trtrun.builder import build
    from trtrun.embed import Embedder
    from trtrun.export import export_model

    d = _minilm_dir()
    if not (d / "model.safetensors").exists():
        pytest.skip("MiniLM weights missing")
    sents = data.load_texts("rt", n=12, seed=11)
    w = tmp_path_factory.mktemp("minilm")
    onnx_path = export_model(d, w / "minilm.onnx")
    plan = build(onnx_path, precision="hybrid", profile={"batch": (1, 8, 16), "seq": (1, 64, 128)})
    with Embedder(plan, d, backend="reference") as e:
        assert e.pooling == "mean" and e.max_seq_len == 128
        got = e.embed(sents)
    tok = transformers.AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(d), local_files_only=True).eval()
    b = tok(sents, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1).numpy()
    cos = (got.astype(np.float64) * ref).sum(1)
    assert cos.min() >= 0.9998, cos


# ------------------------------------------------------------------------------------------ micro-batching

def test_microbatcher_gathers_callers_and_returns_each_its_rows(emb, texts):
    from trtrun.serve import MicroBatcher

    expected = emb.embed(texts)
    windows = []
    rng = np.random.default_rng(9)
    jobs = [rng.choice(len(texts), size=int(rng.integers(1, 5)), replace=False) for _ in range(32)]
    results: dict[int, object] = {}
    start = threading.Barrier(16)
    with MicroBatcher(emb, max_wait_ms=100, on_window=lambda n, k, q: windows.append((n, k, max(q)))) as mb:
        def worker(k):
            start.wait()
            for j in range(k, len(jobs), 16):
                results[j] = mb.submit([texts[i] for i in jobs[j]]).result(60)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(results) == len(jobs)
    for j, idx in enumerate(jobs):
        np.testing.assert_allclose(results[j].embeddings, expected[idx], atol=ATOL)
        assert results[j].num_tokens.shape == (len(idx),)
    assert sum(n for n, _, _ in windows) == len(jobs)
    assert max(n for n, _, _ in windows) > 1, windows  # requests really shared windows


def test_microbatcher_wait_cap_and_batching_off(emb, texts):
    from trtrun.serve import MicroBatcher

    windows = []
    with MicroBatcher(emb, max_wait_ms=30, on_window=lambda n, k, q: windows.append((n, max(q)))) as mb:
        t0 = time.perf_counter()
        mb.embed([texts[0]])
        # a lone request waits max_wait_ms (30 ms) for company, then runs: well under a second
        assert time.perf_counter() - t0 < 1.0
        assert 0.02 <= windows[0][1] < 0.5, windows
    windows.clear()
    with MicroBatcher(emb, max_wait_ms=50, max_batch_requests=1,
                      on_window=lambda n, k, q: windows.append(n)) as mb:
        assert not mb.batching
        futs = [mb.submit([t]) for t in texts[:10]]
        got = np.concatenate([f.result(60).embeddings for f in futs])
    assert windows == [1] * 10
    np.testing.assert_allclose(got, emb.embed(texts[:10]), atol=ATOL)


def test_microbatcher_rejects_only_the_too_long_caller(tiny, texts):
    from trtrun.embed import Embedder, InputTooLongError
    from trtrun.serve import MicroBatcher

    with Embedder(tiny["plan"], tiny["tok"], backend="reference", truncation="reject") as e, \
            MicroBatcher(e, max_wait_ms=200) as mb:
        short = ["a fine film", "ok", "the acting is wooden and the plot thin"]
        good1 = mb.submit(short[:1])
        bad = mb.submit(["x", texts[22]])
        good2 = mb.submit(short[1:])
        with pytest.raises(InputTooLongError, match="text 1 has [0-9]+ tokens, more than the limit of 32"):
            bad.result(60)
        np.testing.assert_allclose(good1.result(60).embeddings, e.embed(short[:1]), atol=ATOL)
        np.testing.assert_allclose(good2.result(60).embeddings, e.embed(short[1:]), atol=ATOL)


class _SlowEmbedder:
    """Just enough of an Embedder for the batcher; embed_groups blocks until `go` is set."""

    contexts, dim, max_seq_len, max_tokens_per_batch, max_batch_size = 1, 2, 16, 64, 4

    def __init__(self):
        self.go = threading.Event()
        self.calls = []

    check_texts = staticmethod(lambda texts: __import__("trtrun.embed").embed.Embedder.check_texts(texts))

    def embed_groups(self, groups, observer=None):
        from trtrun.embed import EmbedResult

        self.go.wait(30)
        self.calls.append([list(g) for g in groups])
        return [EmbedResult(np.full((len(g), 2), float(len(g[0])), np.float32), np.zeros(len(g), bool),
                            np.ones(len(g), np.int64)) for g in groups]


def test_microbatcher_queue_limit_and_close():
    from trtrun.serve import BatcherClosedError, MicroBatcher, QueueFullError

    slow = _SlowEmbedder()
    mb = MicroBatcher(slow, max_wait_ms=0, max_queue=2, max_batch_requests=1)
    f1 = mb.submit(["a"])
    deadline = time.time() + 10
    while mb.queue_depth() and time.time() < deadline:  # f1 leaves the queue for the (blocked) worker
        time.sleep(0.005)
    f2, f3 = mb.submit(["bb"]), mb.submit(["ccc"])  # the only worker is busy: these wait in the queue
    with pytest.raises(QueueFullError, match="max_queue 2"):
        mb.submit(["dddd"])
    closer = threading.Thread(target=mb.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(BatcherClosedError):  # closing: nothing new is taken
        mb.submit(["e"])
    slow.go.set()
    closer.join(30)
    assert not closer.is_alive()
    # close() finished everything queued before returning, each caller with its own rows
    assert [f.result(0).embeddings[0, 0] for f in (f1, f2, f3)] == [1.0, 2.0, 3.0]
    assert slow.calls == [[["a"]], [["bb"]], [["ccc"]]]
    mb2 = MicroBatcher(slow)
    with pytest.raises(InputError, match="text 0 is a NoneType"):
        mb2.submit([None])
    mb2.close()


def test_microbatcher_close_timeout_answers_every_queued_request():
    """close(timeout) that gives up while a request still waits for a worker: that request must fail
    with BatcherClosedError, not stay unanswered forever (its caller would hang)."""
    from trtrun.serve import BatcherClosedError, MicroBatcher

    slow = _SlowEmbedder()
    mb = MicroBatcher(slow, max_wait_ms=0, max_batch_requests=1)
    f1 = mb.submit(["a"])
    deadline = time.time() + 10
    while mb.queue_depth() and time.time() < deadline:  # f1 is with the (blocked) only worker
        time.sleep(0.005)
    f2 = mb.submit(["bb"])  # waits in the queue
    mb.close(timeout=0.1)  # gives up: the worker is still blocked
    slow.go.set()
    assert f1.result(30).embeddings[0, 0] == 1.0
    with pytest.raises(BatcherClosedError, match="closed"):
        f2.result(30)


# ------------------------------------------------------------------------------------------ tokenizer fast path

def test_ascii_fast_path_gives_the_full_tokenizers_ids():
    """TextEncoder's normalizer-free path for printable-ASCII texts must give exactly the ids, type ids and
    truncation flags of the full tokenizer (BertNormalizer included), on real text and on the cases where
    the two could part: special tokens in the text (matched before normalization), upper case, tabs and
    newlines, control characters, accents, CJK, words over the 100-character WordPiece limit, truncation."""
    from tokenizers import Tokenizer

    from trtrun.embed import TextEncoder

    path = str(_minilm_dir() / "tokenizer.json")
    max_len = 512
    enc = TextEncoder(Tokenizer.from_file(path), max_len)
    assert enc.has_fast_path and enc.types_zero
    ref = Tokenizer.from_file(path)
    ref.no_padding()
    ref.enable_truncation(max_len)
    edge = ["[MASK] is a special token", "hello [CLS] there [SEP]", "[mask] in lower case", "[UNK]", "[PAD][PAD]",
            "UPPER and Mixed Case", "tab\there", "new\nline\r\n", "nul\x00char", "bell\x07", "del\x7f",
            "accénted café", "naïve", "日本語のテキスト", "emoji 😀 here", "x" * 150, "a " * 600, "!!!???...",
            "1,234.56 $ % ^ & * ( ) _ + = { } | ~ ` < > / \\", "  leading and trailing  ", "'quoted' \"double\"",
            "ﬁ ligature", "İstanbul", "ß", "KELVIN SIGN \u212a", " ", "a"]
    texts = (data.load_texts("rt") + data.load_texts("wiki") + data.load_texts("imdb", n=2000, seed=1) + edge)
    got, want = enc.encode(texts), ref.encode_batch(texts)
    n_fast = sum(enc.fast_path_applies(t) for t in texts)
    assert n_fast > 0.9 * len(texts)  # the fast path is what real text takes
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.ids == w.ids, f"text {i} {texts[i][:60]!r}"
        assert g.type_ids == w.type_ids and all(x == 0 for x in g.type_ids)
        assert bool(g.overflowing) == bool(w.overflowing), f"text {i}: truncation flag"
    # the cases that must leave the fast path do
    for t in ("[MASK] x", "tab\there", "café", "日本", "nul\x00"):
        assert not enc.fast_path_applies(t), t
    assert enc.fast_path_applies("[mask] in lower case") and enc.fast_path_applies("UPPER")
    # any other normalizer: no fast path at all
    from tokenizers import normalizers

    other = Tokenizer.from_file(path)
    other.normalizer = normalizers.Lowercase()
    assert not TextEncoder(other, 64).has_fast_path


def test_gemm_cache_is_checked_on_every_backend(tiny, tmp_path, texts):
    """Embedder(gemm_cache=FILE): a file that is not a GEMM cache is one InputError naming it, whatever the backend
    (the GPU backend takes the entries: tests/gpu/test_runtime_models.py::test_embedder_takes_a_gemm_cache)."""
    import json

    from trtrun.embed import Embedder
    from trtrun.errors import InputError
    from trtrun.runtime import GEMM_CACHE_FORMAT, GEMM_CACHE_VERSION

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(InputError, match=r"bad\.json is not a trtrun GEMM cache"):
        Embedder(tiny["plan"], tiny["tok"], backend="reference", gemm_cache=bad)
    with pytest.raises(InputError, match=r"missing\.json does not exist"):
        Embedder(tiny["plan"], tiny["tok"], backend="reference", gemm_cache=tmp_path / "missing.json")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"format": GEMM_CACHE_FORMAT, "version": GEMM_CACHE_VERSION, "entries": []}))
    with Embedder(tiny["plan"], tiny["tok"], backend="reference", gemm_cache=good, truncation="truncate") as e:
        d = e.describe()
        assert d["gemm_cache"] == str(good) and d["gemm_cache_entries_taken"] is None  # not used off the GPU
        assert d["gemm_search"] == "heuristic"  # a service's default: first shapes are met in requests
        np.testing.assert_allclose(e.embed(texts[:3]), np.stack([_direct(tiny["plan"], tiny["tok"], t)
                                                                 for t in texts[:3]]), atol=1e-5)


def test_gemm_search_is_checked(tiny):
    """Embedder(gemm_search=...): one of the runtime's searches, else ValueError naming them; kept in describe()."""
    from trtrun.embed import Embedder

    with pytest.raises(ValueError, match="gemm_search must be one of heuristic, focused, exhaustive, got 'fast'"):
        Embedder(tiny["plan"], tiny["tok"], backend="reference", gemm_search="fast")
    with Embedder(tiny["plan"], tiny["tok"], backend="reference", gemm_search="focused") as e:
        assert e.describe()["gemm_search"] == "focused"


# ------------------------------------------------------------------------------------------ bad text, isolation

def test_text_the_tokenizer_refuses_is_an_input_error_naming_its_index(emb):
    """The Hugging Face tokenizer raises TypeError for a str with a lone surrogate (no UTF-8 form; JSON's
    "\\ud800" escape makes one) and for non-str items; the Embedder refuses them first, with InputError naming
    the index. NUL and other control characters it takes (BERT's normalizer drops them): those stay accepted,
    and give the vector of the text without them (the same token ids)."""
    from trtrun.embed import InvalidTextError

    for bad in ("x\ud800y", "\udfff", "ok \ud83d"):
        with pytest.raises(InvalidTextError, match=r"text 1 holds a lone surrogate U\+D[89A-F][0-9A-F]{2}") as ei:
            emb.embed(["fine", bad])
        assert ei.value.indices == [1] and isinstance(ei.value, InputError)
    with pytest.raises(InvalidTextError, match=r"text 0 holds .* \(and 1 more\)") as ei:
        emb.embed(["\ud800", "fine", "\udc00"])
    assert ei.value.indices == [0, 2]
    with pytest.raises(InputError, match="text 2 is a NoneType"):
        emb.embed(["a", "b", None])
    # a proper pair written as two escapes is one character after JSON decoding: valid, and embedded
    assert emb.embed([json.loads('"smile \\ud83d\\ude00"')]).shape == (1, 32)
    np.testing.assert_allclose(emb.embed(["a fine\x00 film\x01"]), emb.embed(["a fine film"]), atol=ATOL)


def test_a_bad_group_fails_alone_in_a_shared_window(emb, texts):
    """embed_groups (what the micro-batcher calls for a window) with a group the checks did not see (a lone
    surrogate that reached it directly): that group gets an InputError naming its text, the others their
    own right rows. Before, the tokenizer's TypeError failed the whole window."""
    from trtrun.embed import EmbedResult

    groups = [texts[:2], ["fine", "x\ud800y"], texts[2:5]]
    out = emb.embed_groups(groups)
    assert isinstance(out[1], InputError) and "text 1" in str(out[1]), out[1]
    for g, r in ((groups[0], out[0]), (groups[2], out[2])):
        assert isinstance(r, EmbedResult)
        np.testing.assert_allclose(r.embeddings, emb.embed(g), atol=ATOL)


def test_an_engine_failure_in_a_shared_batch_is_retried_alone(tiny, texts):
    """A runner that fails on any batch holding one token id (standing for an engine failure only one
    caller's text triggers): the window fails, each group is run again alone, and only the group with that
    text gets the error; the others get the vectors they get alone."""
    from trtrun.embed import EmbedResult, Embedder

    with Embedder(tiny["plan"], tiny["tok"], backend="reference", contexts=1, truncation="truncate") as e:
        poison = e.tokenize(["zebra"]).ids[0][1]  # the id of "zebra" (after [CLS])
        real = e._pool.get()
        calls = []

        def runner(feeds):
            calls.append(feeds["input_ids"].shape[0])
            if (feeds["input_ids"] == poison).any():
                raise TrtrunError("engine failure (injected)")
            return real(feeds)

        e._pool.put(runner)
        groups = [texts[:3], ["a zebra crossing"], texts[3:4], texts[4:6]]
        out = e.embed_groups(groups)
        assert isinstance(out[1], TrtrunError) and "injected" in str(out[1])
        e._pool.get()
        e._pool.put(real)
        for gi in (0, 2, 3):
            assert isinstance(out[gi], EmbedResult), out[gi]
            np.testing.assert_allclose(out[gi].embeddings, e.embed(groups[gi]), atol=ATOL)
        assert len(calls) == 5  # the shared batch (7 rows), then each of the 4 groups alone


@pytest.mark.parametrize("st_pooling,pooling", [("mean", None), ("lasttoken", "last")])
def test_pooled_outputs_the_embedder_does_not_read_are_dropped(tiny, tmp_path, texts, st_pooling, pooling):
    """A sentence-transformers export (token_embeddings and a pooled, normalized sentence_embedding, as Optimum
    writes for such a folder): the Embedder reads the token states and pools them itself, so its plan keeps that
    output only (the Pool op would run on the host after a copy of the token states: trtrun.runtime.tail). Its
    vectors are the plan's own sentence_embedding: mean pooling, and last-token pooling (e5-mistral, gte-Qwen2,
    Qwen3-Embedding: a Pool of mode last, format 6)."""
    pytest.importorskip("sentence_transformers")
    from conftest import EMBED_PROFILE, EMBED_TINY
    from producers_corpus import sentence_transformers_export, tokenizer_files
    from trtrun.builder import build
    from trtrun.embed import Embedder
    from trtrun.export import load_torch_model
    from trtrun.reference import ReferenceBackend
    from trtrun.runtime.lower import check_gpu_support

    heads = {**EMBED_TINY, "num_attention_heads": 1}  # a head size of 32: one the GPU kernels take
    load_torch_model("bert-base", overrides=heads, seed=3).save_pretrained(tmp_path / "hf")
    tokenizer_files(tiny["tok"], tmp_path / "hf")
    sentence_transformers_export(tmp_path / "hf", tmp_path / "st.onnx", pooling=st_pooling)
    full = build(tmp_path / "st.onnx", precision="fp32", profile=EMBED_PROFILE)
    assert [o["name"] for o in full.outputs] == ["token_embeddings", "sentence_embedding"]
    pool = next(op for op in full.ops if op["type"] == "Pool")
    assert pool["attrs"]["mode"] == (pooling or "mean") and pool["attrs"]["normalize"], pool
    assert full.header["version"] == (6 if pooling == "last" else 1)
    check_gpu_support(full)  # the Pool is the host tail's
    emb = Embedder(full.save(tmp_path / "st.plan"), tiny["tok"], backend="reference", truncation="truncate",
                   pooling=pooling)
    assert [o["name"] for o in emb.plan.outputs] == ["token_embeddings"]
    assert not any(op["type"] == "Pool" for op in emb.plan.ops)
    check_gpu_support(emb.plan)  # the GPU runtime takes it now
    got = emb.embed(texts[:6])
    ref, tok = ReferenceBackend(full), data.load_tokenizer(tiny["tok"])
    names = {i["name"] for i in full.inputs}
    for text, vec in zip(texts[:6], got):
        feeds = data.encode(tok, [text], SEQ_MAX)
        want = ref.run({k: v for k, v in feeds.items() if k in names})["sentence_embedding"]
        np.testing.assert_allclose(vec, want[0], atol=ATOL)
    # the plan's Pool against the file's own pooling, on one padded batch
    import onnxruntime as ort

    feeds = {k: v for k, v in data.encode(tok, texts[:6], SEQ_MAX).items() if k in names}
    assert (feeds["attention_mask"] == 0).any()
    want = ort.InferenceSession(str(tmp_path / "st.onnx"), providers=["CPUExecutionProvider"]).run(
        ["sentence_embedding"], feeds)[0]
    np.testing.assert_allclose(ref.run(feeds)["sentence_embedding"], want, atol=ATOL)


def test_protein_embeddings_from_an_esm2_folder(tmp_path):
    """ESM-2, as protein-embedding users hold it: a model folder with its slow EsmTokenizer (vocab.txt only; no
    tokenizer.json) and token dropout on. Exported, built and embedded through the Embedder on the reference
    backend: mean-pooled, normalized vectors against PyTorch fp32 on the same sequences (hybrid: the models'
    0.9998 bound). A sequence holding <mask> is refused naming the token and why (the plan folds token dropout's
    factor for sequences without it)."""
    transformers = pytest.importorskip("transformers")
    import torch

    from trtrun.embed import Embedder
    from trtrun.export import _randomize, export_model

    d = tmp_path / "hf"
    d.mkdir()
    vocab = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.EsmTokenizer(str(d / "vocab.txt"))
    tok.save_pretrained(str(d))
    cfg = transformers.EsmConfig(vocab_size=len(vocab), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=256, position_embedding_type="rotary", pad_token_id=1,
                                 mask_token_id=vocab.index("<mask>"), token_dropout=True)
    torch.manual_seed(0)
    model = transformers.EsmModel(cfg, add_pooling_layer=False).eval()
    _randomize(torch, model, 0)
    model.save_pretrained(str(d))
    emb = Embedder(str(export_model(d, tmp_path / "m.onnx")), d, pooling="mean", backend="reference")
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MLSDEDFKAVFGMTRSAFANLPLWKQQNLKKEKGLF", "MKV"]
    got = emb.embed(seqs)
    enc = tok(seqs, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    want = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    assert (got * want).sum(-1).min() >= 0.9998
    with pytest.raises(InputError, match=r"token id 32 is refused by op 'embeddings': the model rescales its "
                                         r"embeddings by each sequence's count of that token \(ESM's token dropout"):
        emb.embed(["MKT<mask>AYI"])


@pytest.mark.parametrize("pooling,dense", [("mean", ("identity", 24)), ("cls", ("tanh", 32))])
def test_a_dense_module_after_the_pooling_is_the_plans(tiny, tmp_path, texts, pooling, dense):
    """sentence-T5 / GTR (mean pooling, a projection without bias) and LaBSE-style (CLS pooling, which
    sentence-transformers spells as the first token the mask keeps, through ArgMax and an If; a tanh Dense)
    sentence-transformers models, then Normalize. The plan holds Pool -> Linear -> Normalize (format version 4) and
    the Embedder gives that output (pooling the token states itself would skip the Dense), equal to onnxruntime's
    sentence_embedding on the file (fp32 plan: rounding only)."""
    pytest.importorskip("sentence_transformers")
    import onnxruntime as ort
    from conftest import EMBED_PROFILE, EMBED_TINY
    from producers_corpus import sentence_transformers_export, tokenizer_files
    from trtrun.builder import build
    from trtrun.embed import Embedder
    from trtrun.export import load_torch_model

    load_torch_model("bert-base", overrides={**EMBED_TINY, "num_attention_heads": 1}, seed=3).save_pretrained(
        tmp_path / "hf")
    tokenizer_files(tiny["tok"], tmp_path / "hf")
    sentence_transformers_export(tmp_path / "hf", tmp_path / "st.onnx", pooling=pooling, dense=dense)
    plan = build(tmp_path / "st.onnx", precision="fp32", profile=EMBED_PROFILE)
    assert [op["type"] for op in plan.ops[-3:]] == ["Pool", "Linear", "Normalize"]
    assert plan.ops[-3]["attrs"]["mode"] == ("mean" if pooling == "mean" else "first")
    assert plan.header["version"] == 4 and plan.ops[-2]["attrs"]["activation"] == ("tanh" if dense[0] == "tanh"
                                                                                    else "none")
    emb = Embedder(plan.save(tmp_path / "st.plan"), tiny["tok"], backend="reference", truncation="truncate")
    assert emb.output == "sentence_embedding" and emb.pooling == "plan" and emb.dim == dense[1]
    got = emb.embed(texts[:6])
    sess, tok = ort.InferenceSession(str(tmp_path / "st.onnx"), providers=["CPUExecutionProvider"]), \
        data.load_tokenizer(tiny["tok"])
    for text, vec in zip(texts[:6], got):
        feeds = data.encode(tok, [text], SEQ_MAX)
        want = sess.run(["sentence_embedding"], {k: feeds[k] for k in ("input_ids", "attention_mask")})[0][0]
        np.testing.assert_allclose(vec, want, atol=ATOL)
