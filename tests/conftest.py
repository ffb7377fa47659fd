"""Shared pytest fixtures: exported ONNX models (cached for the session) and real-text batches.

Models come from `trtrun.export.export_model`, so every test that uses them also exercises the
exporter. They are small (hidden 128, 2 layers, 4 heads) but keep the real vocabularies (BERT's
30522, GPT-2's 50257) so real text tokenized by the real tokenizers fits. MiniLM is the real
all-MiniLM-L6-v2 from the data folder. Fixtures skip (never fail) when torch/transformers or the
data folder are missing.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

# hidden 128, 2 layers, 4 heads of 32: small enough for CI's two cores, big enough to have every
# pattern (two layers, so the residual stream crosses a layer boundary; several heads)
TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512}


def _need_torch():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


def _data_dir():
    from trtrun.data import data_dir
    return data_dir()


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(source, exporter="torchscript", opset=None) -> path of the ONNX (cached per session).

    source: "bert" / "gpt2" (tiny random models, TINY sizes, seed 0) or "minilm" (real weights).
    """
    cache = {}
    root = tmp_path_factory.mktemp("exported")

    def get(source: str, exporter: str = "torchscript", opset: int | None = None):
        key = (source, exporter, opset)
        if key in cache:
            return cache[key]
        _need_torch()
        from trtrun.export import export_model
        path = root / f"{source}-{exporter}-{opset or 'default'}.onnx"
        if source == "minilm":
            d = _data_dir() / "minilm"
            if not (d / "config.json").exists():
                pytest.skip(f"MiniLM is not in the data folder ({d}); fetch it with ../shared/data/get-data.sh")
            export_model(d, path, exporter=exporter, opset=opset)
        else:
            arch = {"bert": "bert-base", "gpt2": "gpt2"}[source]
            export_model(arch, path, exporter=exporter, opset=opset, overrides=dict(TINY), seed=0)
        cache[key] = path
        return path

    return get


@pytest.fixture(scope="session")
def tokenizer_of():
    """tokenizer_of("bert" | "gpt2" | "minilm") -> the real tokenizer from the data folder."""
    cache = {}

    def get(source: str):
        if source not in cache:
            pytest.importorskip("transformers")
            from trtrun.data import load_tokenizer
            sub = "gpt2-tokenizer" if source == "gpt2" else "minilm"
            d = _data_dir() / sub
            if not d.exists():
                pytest.skip(f"tokenizer folder {d} missing; fetch it with ../shared/data/get-data.sh")
            cache[source] = load_tokenizer(d)
        return cache[source]

    return get


@pytest.fixture(scope="session")
def real_text_batches(tokenizer_of):
    """real_text_batches(source) -> [feeds, ...]: right-padded batches of real text, mixed lengths.

    One batch of 8 Rotten Tomatoes sentences (short: a few to ~50 tokens) and one of 3 Wikipedia
    paragraphs truncated at 96 tokens (long rows next to short ones), both through the model's own
    tokenizer, so padding really occurs.
    """
    cache = {}

    def get(source: str):
        if source not in cache:
            from trtrun.data import encode, load_texts
            try:
                rt = load_texts("rt", n=8, seed=1)
                wiki = load_texts("wiki", n=3, seed=2)
            except Exception as e:  # DataError: the data folder is not there
                pytest.skip(f"real text not available: {e}")
            tok = tokenizer_of(source)
            wiki = [wiki[0], wiki[1][:200], wiki[2][:60]]  # mixed lengths within the batch
            batches = [encode(tok, rt, 64), encode(tok, wiki, 96)]
            for b in batches:
                assert (b["attention_mask"] == 0).any(), "a real-text batch without padding tests less"
            cache[source] = batches
        return cache[source]

    return get


def random_feeds(onnx_path, *, batch=4, seq=23, vocab=None, seed=0) -> dict:
    """Random token ids with right padding of different lengths (and random token types)."""
    import onnx
    m = onnx.load(str(onnx_path), load_external_data=False)
    names = [i.name for i in m.graph.input]
    if vocab is None:
        vocab = 30522 if "token_type_ids" in names else 50257
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64)}
    mask = np.ones((batch, seq), np.int64)
    for b in range(batch):  # lengths seq, seq - 6, seq - 12, ... (at least 1)
        mask[b, max(1, seq - 6 * b):] = 0
    feeds["attention_mask"] = mask
    if "token_type_ids" in names:
        feeds["token_type_ids"] = rng.integers(0, 2, (batch, seq)).astype(np.int64)
    return feeds


def cosine_per_sample(a, b, mask) -> np.ndarray:
    """Cosine similarity of each sample's hidden states over its valid (attention_mask == 1) tokens.

    Padded rows are excluded: docs/plan-format.md lets a padded query row attend anywhere (a row
    whose keys are all masked becomes uniform), and nobody reads those rows.
    """
    out = []
    for i in range(a.shape[0]):
        m = np.asarray(mask[i]).astype(bool)
        x = np.asarray(a[i][m], np.float64).ravel()
        y = np.asarray(b[i][m], np.float64).ravel()
        out.append(float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y))))
    return np.array(out)


def onnxruntime_run(onnx_path, feeds) -> np.ndarray:
    """The first output of the graph in onnxruntime (CPU, fp32 unless the graph says otherwise)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


# The tiny BERT that the Embedder and server tests share (hidden 32, one layer, BERT's real vocabulary so the
# MiniLM tokenizer fits), fp32, profile batch 1..8 x sequence 1..EMBED_SEQ_MAX.
EMBED_SEQ_MAX = 32
EMBED_PROFILE = {"batch": (1, 4, 8), "seq": (1, 16, EMBED_SEQ_MAX)}
EMBED_TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64, vocab_size=30522)


@pytest.fixture(scope="session")
def tiny_embed_model(tmp_path_factory):
    """{"onnx", "plan", "tok", "dir"}: the shared tiny BERT exported, built (fp32) and its tokenizer dir."""
    pytest.importorskip("torch")
    from trtrun import data
    from trtrun.builder import build
    from trtrun.export import export_model

    tok_dir = data.data_dir() / "minilm"
    if not (tok_dir / "tokenizer.json").exists():
        pytest.skip(f"MiniLM tokenizer not in {tok_dir} (fetch it with ../shared/data/get-data.sh)")
    d = tmp_path_factory.mktemp("embed-tiny")
    onnx_path = export_model("bert-base", d / "tiny.onnx", overrides=EMBED_TINY, seed=3)
    plan_path = build(onnx_path, precision="fp32", profile=EMBED_PROFILE).save(d / "tiny.fp32.plan")
    return {"onnx": onnx_path, "plan": plan_path, "tok": tok_dir, "dir": d}


# ---------------------------------------------------------------------------------------- HTTP servers
@pytest.fixture(scope="module")
def emb(tiny_embed_model):
    """An Embedder of the tiny model on the reference backend (two contexts, long texts truncated: real
    sentences run past the tiny model's 32 tokens): the embedding, corpus and serve tests' expected answers, and
    the servers' own configuration (--truncation truncate)."""
    from trtrun.embed import Embedder

    e = Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=2,
                 truncation="truncate")
    yield e
    e.close()


def native_extension():
    """trtrun._C, or a skip saying why it cannot be imported (not built on this machine)."""
    from trtrun.runtime.extension import load_extension

    try:
        return load_extension()
    except Exception as e:  # RuntimeUnavailableError: not built here
        pytest.skip(f"the CUDA extension is not importable: {e}")


def engine_args(low) -> tuple:
    """_C.Engine's positional arguments for a lowered plan (trtrun.runtime.lower.lower_plan), device 0."""
    return (low["tensors"], low["ops"], low["weights"], low["inputs"], low["outputs"], low["batch_max"],
            low["seq_max"], low["tf32"], 0)


def engine_refusal(c, low, change) -> str:
    """The InputError message _C.Engine (extension `c`) gives for a copy of the lowered plan `low` that
    change(description, weights) edited in place (the weights a list of (name, array)); the test fails if the
    Engine takes it."""
    import json

    from trtrun.errors import InputError

    bad = json.loads(json.dumps({k: v for k, v in low.items() if k != "weights"}))
    weights = list(low["weights"])
    change(bad, weights)
    with pytest.raises(InputError) as err:
        c.Engine(*engine_args(dict(bad, weights=weights)))
    return str(err.value)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, below the kernel's ephemeral range (trtrun._net: a port
    picked at collection time inside that range was taken by a client socket in CI)."""
    from trtrun._net import free_port as pick

    return pick("127.0.0.1")


def wait_healthy(url: str, proc=None, timeout: float = 90.0) -> None:
    """Wait until GET url/health answers 200; AssertionError (with the server's stderr) if `proc` exits
    first or the time runs out."""
    import time

    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited early ({proc.returncode}): {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become healthy in {timeout} s")


@contextlib.contextmanager
def serve_process(tiny: dict, port: int, *args: str, env: dict | None = None, timeout: float = 90.0):
    """`trtrun serve` on the tiny model (reference backend) as a subprocess on `port`, healthy (within `timeout` s)
    when yielded; killed on the way out if the test has not stopped it (stderr is a text pipe for the test to read).
    env: the subprocess's environment instead of this process's (PYTHONUNBUFFERED is set either way)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen(
        [sys.executable, "-m", "trtrun", "serve", str(tiny["plan"]), "--tokenizer", str(tiny["tok"]),
         "--backend", "reference", "--port", str(port), *args],
        cwd=Path(__file__).resolve().parent.parent, env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=timeout)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def requests_across_a_signal(proc, url: str, texts: list, n: int, sig, *, settle: float, after: float,
                             emb, atol: float) -> str:
    """Graceful-shutdown check of a `trtrun serve` subprocess: n concurrent /v1/embeddings requests (texts i and
    i + n each), `sig` sent `settle` s after they start (while they wait in micro-batch windows), a new
    connection `after` s later must be refused; every request must still get its right answer (against
    `emb`, within `atol`), the process must exit 0 within 30 s of the signal. Returns its stderr."""
    import threading
    import time

    import httpx

    results: dict[int, object] = {}

    def call(i):
        try:
            results[i] = httpx.post(url + "/v1/embeddings", json={"input": [texts[i], texts[i + n]]}, timeout=60)
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(settle)
    t_sig = time.time()
    proc.send_signal(sig)
    time.sleep(after)
    with pytest.raises(httpx.ConnectError):  # nothing takes new connections any more
        httpx.post(url + "/v1/embeddings", json={"input": "late"}, timeout=5)
    for t in threads:
        t.join(60)
    rc = proc.wait(60)
    err = proc.stderr.read()
    assert rc == 0, err
    assert "server stopped" in err and "Traceback" not in err, err
    for i in range(n):
        r = results[i]
        assert not isinstance(r, Exception), f"request {i} lost: {r!r}\n{err}"
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
        np.testing.assert_allclose(got, emb.embed([texts[i], texts[i + n]]), atol=atol)
    assert time.time() - t_sig < 30
    return err


@pytest.fixture(scope="module")
def texts():
    """24 Rotten Tomatoes sentences (real text for the embedder and server tests)."""
    from trtrun import data

    return data.load_texts("rt", n=24, seed=3)
