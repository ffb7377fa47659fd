"""The embedding server on the CPU path (reference backend, tiny BERT): API shapes, every bad request,
metrics, concurrent clients over real HTTP, and graceful shutdown on SIGTERM/SIGINT losing nothing.

Bad requests and shapes use Starlette's TestClient (in-process, with the app's lifespan); concurrency
uses a real uvicorn server on a free loopback port in a thread; shutdown uses `trtrun serve` in a child
process, signalled like a service manager would.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="trtrun serve needs starlette (pip install 'trtrun[serve]')")
pytest.importorskip("uvicorn", reason="trtrun serve needs uvicorn (pip install 'trtrun[serve]')")
pytest.importorskip("prometheus_client", reason="trtrun serve needs prometheus-client")
httpx = pytest.importorskip("httpx", reason="the tests' HTTP client (and TestClient) need httpx")

from conftest import free_port, requests_across_a_signal, serve_process, wait_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Same plan and numpy backend on both sides; only BLAS summation order differs with the batch shape
# (see test_embedder.py): 1e-5 on unit vectors. JSON carries float32 values exactly (repr of a double).
ATOL = 1e-5
MAX_INPUTS = 8


@pytest.fixture(scope="module")
def tiny(tiny_embed_model):
    return tiny_embed_model


@pytest.fixture(scope="module")
def client(emb):
    from starlette.testclient import TestClient

    from trtrun.serve import ServeConfig, create_app

    app = create_app(emb, ServeConfig(max_inputs=MAX_INPUTS, max_wait_ms=1.0, model_name="tiny"))
    with TestClient(app) as c:  # runs the lifespan: the batcher starts and, at the end, drains
        yield c



def _ok(client, texts, emb):
    """A good request succeeds and gives the right vectors: the server is still serving."""
    r = client.post("/v1/embeddings", json={"input": texts[:2]})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
    np.testing.assert_allclose(got, emb.embed(texts[:2]), atol=ATOL)


# ------------------------------------------------------------------------------------------ API shapes

def test_openai_embeddings_shape_and_values(client, emb, texts):
    r = client.post("/v1/embeddings", json={"input": texts[:5], "model": "whatever"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny"
    assert [d["object"] for d in body["data"]] == ["embedding"] * 5
    assert [d["index"] for d in body["data"]] == list(range(5))
    got = np.array([d["embedding"] for d in body["data"]], np.float32)
    want = emb.embed_result(texts[:5])
    np.testing.assert_allclose(got, want.embeddings, atol=ATOL)
    assert body["usage"] == {"prompt_tokens": want.total_tokens, "total_tokens": want.total_tokens}
    # a single string is one input
    one = client.post("/v1/embeddings", json={"input": texts[0]}).json()
    assert len(one["data"]) == 1 and one["data"][0]["index"] == 0
    np.testing.assert_allclose(one["data"][0]["embedding"], want.embeddings[0], atol=ATOL)
    # base64: little-endian float32 bytes, as OpenAI's clients decode them
    b = client.post("/v1/embeddings", json={"input": texts[:2], "encoding_format": "base64"}).json()
    dec = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b["data"]])
    np.testing.assert_allclose(dec, want.embeddings[:2], atol=ATOL)


def test_embed_endpoint_and_health(client, emb, texts):
    r = client.post("/embed", json={"inputs": texts[:3]})
    assert r.status_code == 200
    np.testing.assert_allclose(np.array(r.json(), np.float32), emb.embed(texts[:3]), atol=ATOL)
    r = client.post("/embed", json={"inputs": "just one"})
    assert r.status_code == 200 and len(r.json()) == 1 and len(r.json()[0]) == emb.dim
    h = client.get("/health")
    assert h.status_code == 200
    hb = h.json()
    assert hb["status"] == "ok" and hb["backend"] == "reference" and hb["dim"] == 32 and hb["batching"] is True


BAD = [
    # (what, endpoint, raw body, status, words in the message)
    ("empty body", "/v1/embeddings", b"", 400, "empty"),
    ("wrong JSON", "/v1/embeddings", b'{"input": ["a", }', 400, "not valid JSON"),
    ("not UTF-8", "/embed", b'{"inputs": "\xff\xfe\xfd"}', 400, "UTF-8"),
    ("JSON array body", "/v1/embeddings", b'["a", "b"]', 422, "must be a JSON object"),
    ("missing field", "/v1/embeddings", b'{"inputs": "a"}', 422, "missing field 'input'"),
    ("wrong type: number", "/v1/embeddings", b'{"input": 3}', 422, "must be a string or a list of strings"),
    ("wrong type: null", "/embed", b'{"inputs": null}', 422, "got null"),
    ("wrong element type", "/v1/embeddings", b'{"input": ["a", {"b": 1}]}', 422, "'input[1]' is an object"),
    ("token ids", "/v1/embeddings", b'{"input": [[101, 102]]}', 422, "token-id inputs are not supported"),
    ("empty list", "/v1/embeddings", b'{"input": []}', 422, "empty list"),
    ("empty string", "/embed", b'{"inputs": ""}', 422, "empty string"),
    ("empty string in list", "/v1/embeddings", b'{"input": ["a", ""]}', 422, "'input[1]' is an empty string"),
    ("too many inputs", "/v1/embeddings", json.dumps({"input": ["a"] * (MAX_INPUTS + 1)}).encode(), 422,
     f"at most {MAX_INPUTS} per request"),
    ("1 MB string", "/v1/embeddings", json.dumps({"input": "x" * 1_000_000}).encode(), 400,
     "1000000 characters; at most 20000"),
    ("body over the limit", "/embed", json.dumps({"inputs": ["y" * 15000] * 150}).encode(), 413,
     "larger than the limit of 2000000 bytes"),
    ("bad encoding_format", "/v1/embeddings", b'{"input": "a", "encoding_format": "int8"}', 422, "encoding_format"),
    ("wrong dimensions", "/v1/embeddings", b'{"input": "a", "dimensions": 16}', 422, "32-dimensional"),
    ("model not a string", "/v1/embeddings", b'{"input": "a", "model": 5}', 422, "'model' must be a string"),
]


@pytest.mark.parametrize("what,endpoint,body,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(client, emb, texts, what, endpoint, body, status,
                                                           words):
    r = client.post(endpoint, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, (what, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert err["code"] == status and words.lower() in err["message"].lower(), err
    _ok(client, texts, emb)


def test_body_in_several_messages_and_a_client_that_goes_away(client, emb, texts):
    """The embedding endpoints read the ASGI body themselves: a body in several http.request messages
    (chunked transfer) is joined, one over --max-body-bytes in pieces is a 413, and a client that disconnects
    before its body is complete gets no response and leaves the server serving."""
    import asyncio

    app = client.app

    def call(pieces, path="/v1/embeddings", disconnect=False):
        msgs = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
        if disconnect:
            msgs[-1] = {"type": "http.disconnect"}
        sent = []

        async def receive():
            return msgs.pop(0)

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 2)}
        asyncio.run(app(scope, receive, send))
        return sent

    body = json.dumps({"input": texts[:3]}).encode()
    sent = call([body[:5], b"", body[5:17], body[17:]])
    assert sent[0]["status"] == 200 and dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    assert int(dict(sent[0]["headers"])[b"content-length"]) == len(sent[1]["body"])
    got = np.array([d["embedding"] for d in json.loads(sent[1]["body"])["data"]], np.float32)
    np.testing.assert_allclose(got, emb.embed(texts[:3]), atol=ATOL)
    big = json.dumps({"inputs": ["z" * 10_000] * 250}).encode()  # 2.5 MB in 100 kB pieces, no Content-Length
    sent = call([big[i:i + 100_000] for i in range(0, len(big), 100_000)], "/embed")
    assert sent[0]["status"] == 413 and b"larger than the limit" in sent[1]["body"]
    assert call([body[:10], b"never sent"], disconnect=True) == []
    _ok(client, texts, emb)


def test_unknown_route_and_method(client, emb, texts):
    assert client.get("/v1/embeddings").status_code == 405
    assert client.post("/nope", json={}).status_code == 404
    _ok(client, texts, emb)


def test_too_long_input_with_reject_policy_is_400(tiny, texts):
    from starlette.testclient import TestClient

    from trtrun.embed import Embedder
    from trtrun.serve import create_app

    with Embedder(tiny["plan"], tiny["tok"], backend="reference", truncation="reject") as e, \
            TestClient(create_app(e)) as c:
        r = c.post("/embed", json={"inputs": ["fine", "a fine film, " * 30]})
        assert r.status_code == 400, r.text
        assert "'inputs[1]' has 122 tokens, more than this model's limit of 32" in r.json()["error"]["message"]
        assert c.post("/embed", json={"inputs": ["fine"]}).status_code == 200


def test_metrics_expose_counters_and_histograms(client, emb, texts):
    client.post("/v1/embeddings", json={"input": texts[:3]})
    client.post("/v1/embeddings", json={"input": []})
    client.post("/embed", content=b"{", headers={"content-type": "application/json"})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    fam = {f.name: f for f in text_string_to_metric_families(r.text)}

    def sample(name, suffix="", **labels):
        vals = [s.value for s in fam[name].samples
                if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())]
        return sum(vals)

    assert sample("trtrun_requests", "_total", endpoint="/v1/embeddings", status="200") >= 1
    assert sample("trtrun_requests", "_total", endpoint="/v1/embeddings", status="422") >= 1
    assert sample("trtrun_requests", "_total", endpoint="/embed", status="400") >= 1
    assert sample("trtrun_request_latency_seconds", "_count", endpoint="/v1/embeddings") >= 2
    assert sample("trtrun_engine_batch_size", "_count") >= 1 and sample("trtrun_engine_batch_size", "_sum") >= 3
    assert sample("trtrun_batch_requests", "_count") >= 1
    assert sample("trtrun_queue_time_seconds", "_count") >= 1
    assert sample("trtrun_inputs", "_total") >= 3 and sample("trtrun_tokens", "_total") >= 3
    assert "trtrun_queue_depth" in fam and "trtrun_engine_seconds" in fam


def test_bulk_histogram_updates_equal_one_observe_per_value():
    """metrics.observe_many (per-window and per-flush recording) leaves exactly the exposition that one
    Histogram.observe per value leaves: the same bucket counts, sum and count, bucket bounds included."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from trtrun.serve.metrics import LATENCY_BUCKETS, observe_many

    rng = np.random.default_rng(5)
    values = list(rng.exponential(0.02, 500)) + list(LATENCY_BUCKETS) + [0.0, 1e-9, 12.0, 1e6]
    out = []
    for bulk in (False, True):
        reg = CollectorRegistry()
        h = Histogram("t_seconds", "t", ["endpoint"], buckets=LATENCY_BUCKETS, registry=reg)
        child = h.labels("/x")
        if bulk:
            observe_many(child, values[:100])
            observe_many(child, values[100:])
            observe_many(child, [])
        else:
            for v in values:
                child.observe(v)
        out.append(dict(ln.rsplit(" ", 1) for ln in generate_latest(reg).decode().splitlines()
                        if not ln.startswith(("#", "t_seconds_created"))))
    assert len(out[0]) == len(LATENCY_BUCKETS) + 3 and out[0].keys() == out[1].keys()
    for k in out[0]:
        if k.startswith("t_seconds_sum"):  # one sum of many values vs a running sum: the order of additions
            assert float(out[0][k]) == pytest.approx(float(out[1][k]), rel=1e-12)
        else:
            assert out[0][k] == out[1][k], k


# ------------------------------------------------------------------------------------------ real HTTP





def test_concurrent_http_clients_each_get_their_own_rows(emb, texts):
    """A real uvicorn server (thread) and 16 client threads: every response has its own texts' vectors,
    in order, and requests shared micro-batches."""
    import uvicorn

    from trtrun.serve import ServeConfig, create_app

    app = create_app(emb, ServeConfig(max_wait_ms=20))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        expected = emb.embed(texts)
        rng = np.random.default_rng(2)
        jobs = [rng.choice(len(texts), size=int(rng.integers(1, 5)), replace=False) for _ in range(64)]
        failures, done = [], []
        start = threading.Barrier(16)

        def worker(k):
            with httpx.Client(base_url=url, timeout=60) as c:
                start.wait()
                for j in range(k, len(jobs), 16):
                    idx = jobs[j]
                    r = c.post("/v1/embeddings", json={"input": [texts[i] for i in idx]})
                    if r.status_code != 200:
                        failures.append((j, r.status_code, r.text[:200]))
                        continue
                    d = r.json()["data"]
                    if [x["index"] for x in d] != list(range(len(idx))) or not np.allclose(
                            np.array([x["embedding"] for x in d]), expected[idx], atol=ATOL):
                        failures.append((j, "mismatch"))
                    done.append(j)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures[:5]
        assert sorted(done) == list(range(len(jobs)))
        m = httpx.get(url + "/metrics").text
        line = [ln for ln in m.splitlines() if ln.startswith("trtrun_batch_requests_count")][0]
        windows = float(line.split()[-1])
        assert windows < len(jobs), f"{windows} micro-batches for {len(jobs)} concurrent requests: no sharing"
        # requests answered while others were in flight are recorded in bulk: all of them are there now
        def value(prefix):
            return float([ln for ln in m.splitlines() if ln.startswith(prefix)][0].split()[-1])
        assert value('trtrun_requests_total{endpoint="/v1/embeddings",status="200"}') == len(jobs)
        assert value('trtrun_request_latency_seconds_count{endpoint="/v1/embeddings"}') == len(jobs)
        assert value("trtrun_inputs_total") == sum(len(j) for j in jobs)
        assert value("trtrun_queue_time_seconds_count") == len(jobs)
    finally:
        server.should_exit = True
        th.join(30)
    assert not th.is_alive()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_finishes_requests_in_flight(tiny, emb, texts, sig):
    """Requests wait 1.5 s in a micro-batch window; the signal comes while they wait. Each still gets its
    right answer, new connections are refused at once, and the process exits 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve_process(tiny, port, "--max-wait-ms", "1500", "--contexts", "1", "--truncation", "truncate") as proc:
        # all six wait inside the micro-batch window (1.5 s) when the signal comes; uvicorn notices it within
        # 0.1 s and closes its listening socket
        requests_across_a_signal(proc, url, texts, 6, sig, settle=0.5, after=0.4, emb=emb, atol=ATOL)


def test_example_service_answers_and_uses_the_batcher(emb, texts):
    """examples/embed_service.py: the search app built on Embedder + MicroBatcher works as documented."""
    import importlib.util

    from starlette.testclient import TestClient

    spec = importlib.util.spec_from_file_location("embed_service", ROOT / "examples" / "embed_service.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    corpus = texts[:12]
    with TestClient(mod.build_app(emb, corpus)) as c:
        r = c.post("/search", json={"query": corpus[4], "k": 3})
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert len(hits) == 3 and hits[0]["text"] == corpus[4] and abs(hits[0]["score"] - 1.0) < 1e-4
        assert c.post("/search", json={"k": 3}).status_code == 422
        r = c.post("/search", content=b'{"query": "x\\ud800y"}')
        assert r.status_code == 400 and "lone surrogate" in r.json()["error"]


class _StubEmbedder:
    """Just enough of an Embedder for the app: text "nan" gives a NaN vector, others a fixed one."""

    contexts, dim, max_seq_len, max_tokens_per_batch, max_batch_size = 1, 4, 16, 64, 4
    model_name = "stub"

    @staticmethod
    def check_texts(texts):
        from trtrun.embed import Embedder

        return Embedder.check_texts(texts)

    def describe(self):
        return {"dim": self.dim}

    def embed_groups(self, groups, observer=None):
        from trtrun.embed import EmbedResult

        out = []
        for g in groups:
            v = np.tile(np.array([0.5, -0.5, 0.5, -0.5], np.float32), (len(g), 1))
            v[[t == "nan" for t in g]] = np.nan
            out.append(EmbedResult(v, np.zeros(len(g), bool), np.full(len(g), 3, np.int64)))
        return out


def test_nan_embeddings_are_a_clear_500_and_json_fallback_works(monkeypatch):
    from starlette.testclient import TestClient

    from trtrun.serve import app as app_mod

    with TestClient(app_mod.create_app(_StubEmbedder())) as c:
        r = c.post("/v1/embeddings", json={"input": ["fine", "nan"]})
        assert r.status_code == 500 and "NaN or Inf for input(s) [1]" in r.json()["error"]["message"]
        monkeypatch.setattr(app_mod, "_orjson", None)  # the plain-json path (no orjson installed)
        r = c.post("/v1/embeddings", json={"input": ["fine"]})
        assert r.status_code == 200 and r.json()["data"][0]["embedding"] == [0.5, -0.5, 0.5, -0.5]
        assert c.post("/embed", json={"inputs": ["a", "b"]}).json() == [[0.5, -0.5, 0.5, -0.5]] * 2


def test_port_in_use_is_one_clear_error(tiny):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "trtrun", "serve", str(tiny["plan"]), "--tokenizer", str(tiny["tok"]),
                            "--backend", "reference", "--port", str(port), "-q"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "trtrun: error: the server could not start" in r.stderr and "Traceback" not in r.stderr
