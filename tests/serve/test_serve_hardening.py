"""The embedding server against hostile and careless clients, on the CPU path (reference backend, tiny BERT):
a bad text fails only its own request (also when it shares a micro-batch), bodies that are not UTF-8 or are
nested too deep, every error status in the JSON shape, /v1/models, the API key, long inputs rejected by
default, and the connection guards: trickling heads and bodies closed within their timeouts while normal
requests are answered, a quick 503 beyond the connection limit with the log kept short, "serving on" only
once bound. Bounded: short timeouts, a few connections, seconds.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="trtrun serve needs starlette (pip install 'trtrun[serve]')")
pytest.importorskip("uvicorn", reason="trtrun serve needs uvicorn (pip install 'trtrun[serve]')")
pytest.importorskip("prometheus_client", reason="trtrun serve needs prometheus-client")
httpx = pytest.importorskip("httpx", reason="the tests' HTTP client (and TestClient) need httpx")

from conftest import free_port, serve_process, wait_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# Same plan and numpy backend on both sides; only BLAS summation order differs with the batch shape
# (test_embedder.py): 1e-5 on unit vectors. JSON carries float32 values exactly.
ATOL = 1e-5


@pytest.fixture(scope="module")
def client(emb):
    from starlette.testclient import TestClient

    from trtrun.serve import ServeConfig, create_app

    with TestClient(create_app(emb, ServeConfig(model_name="tiny"))) as c:
        yield c


def _err(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    e = r.json()["error"]
    assert e["code"] == status and e["message"] and e["type"], e
    return e["message"]


class _Server:
    """A real uvicorn server (the one run_server makes: guarded protocol, timeouts) in a thread."""

    def __init__(self, emb, app=None, **cfg):
        from trtrun.serve import ServeConfig, create_app
        from trtrun.serve.app import uvicorn_server

        self.config = ServeConfig(**cfg)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn_server(app or create_app(emb, self.config), self.config, host="127.0.0.1",
                                     port=self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_healthy(self.url)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()


# ------------------------------------------------------------------------------------------ bad text

def test_lone_surrogate_is_a_400_naming_its_index(client, emb, texts):
    """A lone surrogate escape is valid JSON and becomes a str the tokenizer refuses (TypeError: a 500 before)."""
    r = client.post("/v1/embeddings", content=b'{"input": ["fine", "x\\ud800y"]}')
    assert "'input[1]' holds a lone surrogate U+D800" in _err(r, 400)
    r = client.post("/embed", content=b'{"inputs": "\\udfff"}')
    assert "'inputs' holds a lone surrogate U+DFFF" in _err(r, 400)
    r = client.post("/v1/embeddings", content=b'{"input": ["smile \\ud83d\\ude00", "ok"]}')  # a proper pair
    assert r.status_code == 200 and len(r.json()["data"]) == 2


def test_a_poisoned_request_in_a_shared_batch_fails_alone(emb, texts):
    """12 good requests and one with a lone surrogate arrive within one 300 ms micro-batch window over real
    HTTP: the poisoned one gets 400 naming the index, every good one its own right vectors (before: the
    window's TypeError gave its batch mates 500)."""
    with _Server(emb, max_wait_ms=300) as srv:
        out: dict = {}
        start = threading.Barrier(13)

        def call(i):
            body = {"input": [texts[i], "x\ud800y"]} if i == 12 else {"input": [texts[i], texts[i + 12]]}
            with httpx.Client() as c:
                start.wait()
                out[i] = c.post(srv.url + "/v1/embeddings", content=json.dumps(body), timeout=60)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(13)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert "'input[1]' holds a lone surrogate" in _err(out[12], 400)
        for i in range(12):
            assert out[i].status_code == 200, out[i].text
            got = np.array([d["embedding"] for d in out[i].json()["data"]], np.float32)
            np.testing.assert_allclose(got, emb.embed([texts[i], texts[i + 12]]), atol=ATOL)
        m = httpx.get(srv.url + "/metrics").text
        windows = float([ln for ln in m.splitlines() if ln.startswith("trtrun_batch_requests_count")][0].split()[-1])
        assert windows < 12, f"{windows} windows for 12 concurrent requests: they did not share"


# ------------------------------------------------------------------------------------------ bodies, errors, routes

def test_non_utf8_and_deeply_nested_bodies_are_400(client, emb, texts):
    utf16 = json.dumps({"input": "a fine film"}).encode("utf-16")  # json.loads(bytes) would take it
    assert "not UTF-8" in _err(client.post("/v1/embeddings", content=utf16), 400)
    latin1 = '{"input": "caf\xe9"}'.encode("latin-1")
    assert "not UTF-8" in _err(client.post("/embed", content=latin1), 400)
    deep = b'{"input": ' + b"[" * 1500 + b'"a"' + b"]" * 1500 + b"}"  # RecursionError: a 500 before
    assert "nested deeper than 32 levels" in _err(client.post("/v1/embeddings", content=deep), 400)
    deep_obj = b'{"a":' * 2000 + b"1" + b"}" * 2000
    assert "nested deeper" in _err(client.post("/embed", content=deep_obj), 400)
    # brackets inside strings are text, not nesting
    r = client.post("/v1/embeddings", json={"input": ["[[[[" * 20 + "{{" * 20, "ok"]})
    assert r.status_code == 200, r.text
    r = client.post("/v1/embeddings", json={"input": texts[:1]})
    assert r.status_code == 200


def test_every_error_status_is_json(client):
    msg = _err(client.get("/nope"), 404)
    assert "no such path: GET /nope" in msg
    r = client.get("/v1/embeddings")
    assert "method GET is not allowed" in _err(r, 405) and r.headers["allow"] == "POST"
    assert "not allowed" in _err(client.post("/health"), 405)
    assert "does not exist" in _err(client.get("/v1/models/other"), 404)


def test_v1_models_lists_the_model_in_openai_shape(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    m = body["data"][0]
    assert m["id"] == "tiny" and m["object"] == "model" and m["owned_by"] == "trtrun"
    assert isinstance(m["created"], int) and m["created"] > 1_600_000_000
    assert client.get("/v1/models/tiny").json() == m


@pytest.mark.parametrize("public_health", [False, True])
def test_api_key(emb, texts, public_health):
    from starlette.testclient import TestClient

    from trtrun.serve import ServeConfig, create_app

    app = create_app(emb, ServeConfig(api_key="s3cret-key", public_health=public_health))
    assert "s3cret" not in json.dumps(app.state.config) and "s3cret" not in repr(ServeConfig(api_key="s3cret"))
    with TestClient(app) as c:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret-key"},
                        {"authorization": "Bearer s3cret-key-and-more"}, {"authorization": "s3cret-key"}):
            r = c.post("/v1/embeddings", json={"input": "a"}, headers=headers)
            assert "API key" in _err(r, 401) and r.headers["www-authenticate"] == "Bearer", headers
        assert c.get("/nope").status_code == 401  # nothing is told to a client without the key
        ok = {"authorization": "Bearer s3cret-key"}
        r = c.post("/v1/embeddings", json={"input": texts[:2]}, headers=ok)
        assert r.status_code == 200
        np.testing.assert_allclose(np.array([d["embedding"] for d in r.json()["data"]], np.float32),
                                   emb.embed(texts[:2]), atol=ATOL)
        assert c.get("/v1/models", headers={"authorization": "bearer s3cret-key"}).status_code == 200
        for path in ("/health", "/metrics"):
            assert c.get(path).status_code == (200 if public_health else 401)
            assert c.get(path, headers=ok).status_code == 200
    with pytest.raises(ValueError, match="api_key must be a non-empty string"):
        ServeConfig(api_key=" ")


# ------------------------------------------------------------------------------------------ long inputs

def test_long_inputs_rejected_by_default_and_truncation_reported(tiny_embed_model, texts):
    from starlette.testclient import TestClient
    from tokenizers import Tokenizer

    from trtrun.embed import Embedder
    from trtrun.serve import create_app

    long_text = "a fine film, " * 30
    ref = Tokenizer.from_file(str(tiny_embed_model["tok"] / "tokenizer.json"))
    ref.no_truncation()
    ref.no_padding()
    n = len(ref.encode(long_text).ids)
    with Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=1) as e, \
            TestClient(create_app(e)) as c:
        r = c.post("/v1/embeddings", json={"input": ["fine", long_text]})
        msg = _err(r, 400)
        assert f"'input[1]' has {n} tokens, more than this model's limit of 32 tokens" in msg
        r = c.post("/v1/embeddings", json={"input": ["fine", "dull"]})
        assert r.status_code == 200 and "x-truncated-inputs" not in r.headers
        assert all("truncated" not in d for d in r.json()["data"])
    with Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=1,
                  truncation="truncate") as e, TestClient(create_app(e)) as c:
        r = c.post("/v1/embeddings", json={"input": ["fine", long_text, "dull"]})
        assert r.status_code == 200 and r.headers["x-truncated-inputs"] == "1"
        data = r.json()["data"]
        assert [d.get("truncated", False) for d in data] == [False, True, False]
        assert r.json()["usage"]["prompt_tokens"] == 3 + 32 + 3
        r = c.post("/embed", json={"inputs": [long_text, "fine", long_text]})
        assert r.status_code == 200 and r.headers["x-truncated-inputs"] == "0,2"


# ------------------------------------------------------------------------------------------ slow and many clients

def _read_all(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or `limit` s pass), and when it closed."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                break
            data += d
    except (socket.timeout, ConnectionResetError):
        pass
    return data, time.monotonic() - t0


def test_trickling_clients_are_cut_off_while_others_are_served(emb, texts, caplog):
    """Header timeout 0.6 s, body timeout 0.8 s: 6 connections trickle a request head a byte every 0.1 s, 6
    send a head and then trickle the body, 2 connect and send nothing; meanwhile a client sends normal
    requests and every one is answered right. Each trickling connection gets a JSON 408 and is closed
    within its timeout (plus 0.5 s of scheduling slack); the silent ones are closed quietly. The log holds
    one line about it, not one per connection."""
    head_t, body_t = 0.6, 0.8
    caplog.set_level(logging.WARNING, logger="trtrun.serve")
    with _Server(emb, header_timeout=head_t, body_timeout=body_t, max_wait_ms=1) as srv:
        body = json.dumps({"input": "a fine film"}).encode()
        head = (f"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        stop = threading.Event()
        results: dict = {}

        def trickle(i):
            s = socket.create_connection(("127.0.0.1", srv.port))
            t0 = time.monotonic()
            kind = "head" if i < 6 else "body" if i < 12 else "silent"
            try:
                if kind == "body":
                    s.sendall(head)
                    todo = body
                else:
                    todo = head if kind == "head" else b""
                for b in todo:  # a byte every 0.1 s until the server answers (or closes)
                    if stop.is_set() or select.select([s], [], [], 0)[0]:
                        break
                    try:
                        s.sendall(bytes([b]))
                    except OSError:
                        break
                    time.sleep(0.1)
                data, _ = _read_all(s, 5)
                results[i] = (kind, data, time.monotonic() - t0)
            finally:
                s.close()

        threads = [threading.Thread(target=trickle, args=(i,)) for i in range(14)]
        for t in threads:
            t.start()
        served = []
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            t_end = time.monotonic() + 2.0
            k = 0
            while time.monotonic() < t_end:
                r = c.post("/v1/embeddings", json={"input": [texts[k % 24]]})
                assert r.status_code == 200, r.text
                np.testing.assert_allclose(r.json()["data"][0]["embedding"], emb.embed([texts[k % 24]])[0], atol=ATOL)
                served.append(k)
                k += 1
        for t in threads:
            t.join(10)
        stop.set()
        assert len(served) >= 5, served
        assert len(results) == 14
        for i, (kind, data, took) in results.items():
            limit = head_t if kind in ("head", "silent") else head_t + body_t
            assert took < limit + 0.5, (i, kind, took)
            if kind == "silent":
                assert data == b"", (i, data)
                continue
            assert data.startswith(b"HTTP/1.1 408 "), (i, kind, data[:200])
            hdr, _, payload = data.partition(b"\r\n\r\n")
            assert b"connection: close" in hdr.lower()
            err = json.loads(payload)["error"]
            assert err["code"] == 408 and ("--header-timeout" if kind == "head" else "--body-timeout") in err["message"]
    lines = [r for r in caplog.records if r.name == "trtrun.serve" and "connection" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]


def test_beyond_the_connection_limit_a_quick_503_and_a_short_log(emb, texts, caplog):
    """max_connections 6: 6 idle connections are held open; 40 more requests each get a JSON 503 with
    Retry-After within a second, the log has one line about them (not 40), and once the 6 close a request
    is served again."""
    caplog.set_level(logging.WARNING, logger="trtrun.serve")
    with _Server(emb, max_connections=6, header_timeout=30) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(6)]
        time.sleep(0.2)
        times = []
        for _ in range(40):
            t0 = time.monotonic()
            r = httpx.post(srv.url + "/v1/embeddings", json={"input": "a"}, timeout=5)
            times.append(time.monotonic() - t0)
            assert "too many connections (more than 6 open)" in _err(r, 503)
            assert r.headers["retry-after"] == "1"
        assert max(times) < 1.0, max(times)
        for s in held:
            s.close()
        time.sleep(0.3)
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": texts[:1]}, timeout=30)
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], emb.embed(texts[:1])[0], atol=ATOL)
    lines = [r.getMessage() for r in caplog.records if r.name == "trtrun.serve" and "refused" in r.getMessage()]
    assert len(lines) == 1 and "--max-connections 6" in lines[0], lines


def test_a_flood_past_the_connection_limit_reads_every_503_while_others_are_served(emb, texts):
    """The limit (8) is held by idle connections and one keep-alive client; then 200 more clients connect at
    once, each sending its request head, then (0.1 s later, as an HTTP client writing a body) its body, and
    reading the answer. Every one must read the JSON 503 and then the end of the connection, not a reset:
    before, only the first 64 refused connections were kept open to read their request, the others were
    closed at once with the request unread, which makes the kernel answer with a reset (and a client's next
    write fails with it before it reads anything). Meanwhile the keep-alive client keeps getting right
    answers, and /metrics counts the 200 refusals."""
    with _Server(emb, max_connections=8, header_timeout=30, keep_alive_timeout=30, max_wait_ms=1) as srv:
        keep = httpx.Client(base_url=srv.url, timeout=30)
        assert keep.post("/v1/embeddings", json={"input": "a"}).status_code == 200
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(7)]
        time.sleep(0.2)
        body = json.dumps({"input": "a fine film"}).encode()
        head = (f"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        got: dict = {}
        start = threading.Barrier(200)

        def over(i):
            start.wait()
            try:
                with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                    s.sendall(head)
                    time.sleep(0.1)
                    s.sendall(body)
                    got[i] = _read_all(s, 10)[0]
            except OSError as e:  # a reset on the write or the read: no answer read
                got[i] = type(e).__name__

        threads = [threading.Thread(target=over, args=(i,)) for i in range(200)]
        _serve_meanwhile(keep, threads, texts, emb)
        read = [i for i, d in got.items() if isinstance(d, bytes) and d.startswith(b"HTTP/1.1 503 ")
                and json.loads(d.partition(b"\r\n\r\n")[2])["error"]["code"] == 503]
        others = sorted({d if isinstance(d, str) else d[:12].decode("latin-1") for i, d in got.items()
                         if i not in read})
        assert len(read) == 200, f"{len(read)} of 200 read their 503; the others: {others}"
        counts = _refusals(keep.get("/metrics").text)
        assert counts[("connections", "503")] == 200, counts
        keep.close()
        for s in held:
            s.close()


def _refusals(metrics_text: str) -> dict:
    """{(reason, status): count} of trtrun_refused_total in Prometheus text."""
    out = {}
    for ln in metrics_text.splitlines():
        if ln.startswith("trtrun_refused_total{"):
            labels, value = ln[len("trtrun_refused_total{"):].rsplit("} ", 1)
            kv = dict(part.split("=", 1) for part in labels.split(","))
            out[(kv["reason"].strip('"'), kv["status"].strip('"'))] = float(value)
    return out


def _send_then_read(port: int, first: bytes, more: bytes = b"", until: float = 0.0, every: float = 0.05):
    """A client that writes its whole request before it reads, as HTTP clients do: `first`, then `more` every
    `every` s until `until` s after connecting, then everything the server sends until it ends the stream.
    (error, data): error None when every write went through and the read ended with the server's FIN, else
    the name of the OSError that cut it short (a reset: the answer, if any, is lost)."""
    data = b""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    t0 = time.monotonic()
    try:
        s.sendall(first)
        while time.monotonic() - t0 < until:
            time.sleep(every)
            s.sendall(more)
        while True:
            d = s.recv(65536)
            if not d:
                return None, data
            data += d
    except OSError as e:
        return type(e).__name__, data
    finally:
        s.close()


def _json_answer(data: bytes, status: int, closing: bool = True) -> str:
    """The message of a complete JSON error answer (all of its Content-Length there, and nothing after it;
    `closing`: saying it closes the connection)."""
    assert data.startswith(f"HTTP/1.1 {status} ".encode()), data[:200]
    hdr, _, payload = data.partition(b"\r\n\r\n")
    headers = dict(ln.split(b": ", 1) for ln in hdr.lower().split(b"\r\n")[1:])
    assert int(headers[b"content-length"]) == len(payload), data
    assert headers.get(b"connection") == b"close" or not closing, data
    err = json.loads(payload)["error"]
    assert err["code"] == status, err
    return err["message"]


def _use_http(http: str, monkeypatch) -> None:
    """Servers made from now on use uvicorn's `http` protocol ("httptools": what "auto" picks where installed)."""
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        monkeypatch.setattr("trtrun.serve.protocol._base_protocol", lambda: H11Protocol)
    else:
        pytest.importorskip("httptools")


def _assert_http(srv, http: str) -> None:
    want = {"httptools": "GuardedHttpToolsProtocol", "h11": "GuardedH11Protocol"}[http]
    assert srv.server.config.http_protocol_class.__name__ == want


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_408_or_400_is_read_by_a_client_still_sending(emb, texts, http, monkeypatch):
    """Answers of the guarded protocol to a client that is still sending must reach it, as the 503 does: two
    clients trickle a 1 MB body for 0.5 s past the body timeout, then read; one sends a malformed request and
    then more bytes for 0.5 s; one sends a malformed request and 2 MB after it in one write (more than the
    socket buffers hold). Each must read its complete JSON 408 or 400 and then the end of the stream (before,
    the connection was closed right after the answer: the kernel answered the client's next bytes, or the
    bytes still unread, with a reset, and the client's write or read failed with it). While the two 408s
    linger they no longer hold places of --max-connections (2 here): a new client is served. Both of
    uvicorn's HTTP protocols (httptools, what "auto" picks where installed, and h11)."""
    _use_http(http, monkeypatch)
    body_t = 1.0
    with _Server(emb, max_connections=2, header_timeout=5, body_timeout=body_t, max_wait_ms=1) as srv:
        guard, conns = srv.server.guard, srv.server.server_state.connections
        _assert_http(srv, http)
        head = (b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 1000000\r\n\r\n{")
        bad = b"NOT HTTP AT ALL\r\n\r\n"
        got: dict = {}

        def client(key, *args):
            got[key] = _send_then_read(srv.port, *args)

        slow = [threading.Thread(target=client, args=(i, head, b" " * 1000, body_t + 0.5)) for i in range(2)]
        t0 = time.monotonic()
        for t in slow:
            t.start()
        time.sleep(max(0.0, t0 + body_t + 0.15 - time.monotonic()))  # the 408s are out, the clients still send
        assert len(guard.lingering) == 2 and len(conns) == 0, (len(guard.lingering), len(conns))
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": texts[:1]}, timeout=5)  # a third connection
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], emb.embed(texts[:1])[0], atol=ATOL)
        for t in slow:
            t.join(10)
        late = [threading.Thread(target=client, args=("trickle", bad, b"x" * 1000, 0.5)),
                threading.Thread(target=client, args=("bulk", bad + b"x" * 2_000_000))]
        for t in late:
            t.start()
        for t in late:
            t.join(10)
        for key in (0, 1):
            error, data = got[key]
            assert error is None, (key, error, data[:200])
            assert "--body-timeout" in _json_answer(data, 408)
        for key in ("trickle", "bulk"):
            error, data = got[key]
            assert error is None, (key, error, data[:200])
            assert "invalid HTTP request" in _json_answer(data, 400)
        counts = _refusals(httpx.get(srv.url + "/metrics", timeout=5).text)
        assert counts[("body_timeout", "408")] == 2 and counts[("bad_http", "400")] == 2, counts
        end = time.monotonic() + 5
        while guard.lingering and time.monotonic() < end:
            time.sleep(0.05)
        assert not guard.lingering


def test_a_flood_of_clients_still_sending_after_their_408_or_400_lingers_within_the_bound(emb, texts):
    """20 clients trickle a body past the body timeout and 20 send a malformed request and then more bytes,
    all at once, with the lingering bound lowered to 4: at no time do more than 4 connections linger (the ones
    past it, heard from least recently, are closed), at least 4 clients read their whole answer, every other
    one its whole answer or a reset (never a partial or wrong one), a keep-alive client gets right answers
    throughout, and afterwards nothing lingers and only the keep-alive connection is open."""
    body_t, bound = 1.0, 4
    with _Server(emb, header_timeout=5, body_timeout=body_t, keep_alive_timeout=30, max_wait_ms=1) as srv:
        guard, conns = srv.server.guard, srv.server.server_state.connections
        guard.max_lingering = bound
        keep = httpx.Client(base_url=srv.url, timeout=30)
        assert keep.post("/v1/embeddings", json={"input": "a"}).status_code == 200
        head = (b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 1000000\r\n\r\n{")
        got: dict = {}
        start = threading.Barrier(40)

        def client(i):
            start.wait()
            if i % 2:
                got[i] = _send_then_read(srv.port, head, b" " * 500, body_t + 0.4)
            else:
                got[i] = _send_then_read(srv.port, b"GET / HTTP/1.1\r\nbad header\r\n\r\n", b"x" * 500, 0.4)

        most = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                most[0] = max(most[0], len(guard.lingering))
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
        _serve_meanwhile(keep, threads, texts, emb)
        end = time.monotonic() + 5
        while guard.lingering and time.monotonic() < end:
            time.sleep(0.05)
        done.set()
        sampler.join(5)
        assert 1 <= most[0] <= bound, most[0]
        assert not guard.lingering and len(conns) == 1, (len(guard.lingering), len(conns))
        whole = 0
        for i, (error, data) in got.items():
            if error is None:
                _json_answer(data, 408 if i % 2 else 400)
                whole += 1
            else:  # closed past the bound while still sending
                assert error in ("ConnectionResetError", "BrokenPipeError"), (i, error)
        assert whole >= bound, {i: e for i, (e, _) in got.items()}
        keep.close()


def test_every_refusal_is_counted_in_metrics_by_reason(emb, texts):
    """Each way the server refuses a connection or request before an endpoint embeds anything shows in
    /metrics as trtrun_refused_total{reason,status}, counted exactly (before: the connection-level ones were
    counted nowhere, a 401 nowhere, and a 413 or a bad body only as one status among others): 2 connections
    over the limit (503), a request without the key (401), a body over the limit (413), two bodies that are
    not JSON or not UTF-8 (400), a request that is not HTTP (400), a trickled head and a trickled body (408),
    a connection that sends nothing (closed). A 422 and a 200 are not refusals."""
    with _Server(emb, max_connections=3, header_timeout=1.0, body_timeout=1.0, api_key="k", public_health=True,
                 max_body_bytes=1000) as srv:
        assert set(_refusals(httpx.get(srv.url + "/metrics").text).values()) == {0.0}  # all there, at 0
        time.sleep(0.2)
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        time.sleep(0.2)
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                assert _read_all(s, 5)[0].startswith(b"HTTP/1.1 503 ")
        for s in held:
            s.close()
        time.sleep(0.3)
        ok = {"authorization": "Bearer k"}
        url = srv.url + "/v1/embeddings"
        _err(httpx.post(url, json={"input": "a"}, timeout=30), 401)
        _err(httpx.post(url, content=b"[" + b" " * 2000 + b"]", headers=ok, timeout=30), 413)
        _err(httpx.post(url, content=b"{not json", headers=ok, timeout=30), 400)
        _err(httpx.post(url, content=b'{"input": "caf\xe9"}', headers=ok, timeout=30), 400)
        _err(httpx.post(url, json={"input": 5}, headers=ok, timeout=30), 422)
        assert httpx.post(url, json={"input": texts[:1]}, headers=ok, timeout=30).status_code == 200

        def raw(send: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                if send:
                    s.sendall(send)
                return _read_all(s, 5)[0]

        got = {}
        sends = {"bad": b"NOT HTTP AT ALL\r\n\r\n", "head": b"POST /embed HTTP/1.1\r\nhost: x\r\n",
                 "body": b"POST /embed HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\ncontent-length: 50\r\n\r\n{",
                 "idle": b""}
        threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, raw(sends[k]))) for k in sends]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert got["bad"].startswith(b"HTTP/1.1 400 ") and got["head"].startswith(b"HTTP/1.1 408 ")
        assert got["body"].startswith(b"HTTP/1.1 408 ") and got["idle"] == b"", got
        counts = _refusals(httpx.get(srv.url + "/metrics").text)
    assert counts == {("connections", "503"): 2, ("header_timeout", "408"): 1, ("body_timeout", "408"): 1,
                      ("idle_timeout", "none"): 1, ("bad_http", "400"): 1, ("api_key", "401"): 1,
                      ("body_too_large", "413"): 1, ("bad_json", "400"): 2}, counts


def test_connection_limit_fits_the_open_file_limit():
    """With an open-file limit too small for max_connections beside the process's own files, the limit is
    lowered (so accept() never runs out of descriptors) and a note says so."""
    code = ("import resource; from trtrun.serve.app import connection_budget\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n"
            "n, lingering, note = connection_budget(1000); print(n); print(lingering); print(note)\n"
            "n, lingering, note = connection_budget(10); print(n, lingering, note)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    n, lingering, note, small = r.stdout.splitlines()
    assert 0 < int(n) < 256 - 64 and "lowered to" in note and "ulimit -n" in note and "256" in note
    assert int(lingering) == 64 and int(n) + 64 < 256  # room for the fewest lingering refused connections too
    n, lingering, note = small.split()
    # 10 connections fit, and as many lingering refused ones as the rest of the limit holds (fewer than 1024)
    assert n == "10" and note == "None" and 64 < int(lingering) < 256 - 10


# ------------------------------------------------------------------------------------------ the command

def test_serving_is_announced_only_once_bound_with_the_bound_port(tiny_embed_model):
    """`--port 0`: the line names the port the system chose (it was ':0' before, printed before binding); a
    port in use gives the error and no 'serving' line."""
    proc = subprocess.Popen([sys.executable, "-m", "trtrun", "serve", str(tiny_embed_model["plan"]), "--tokenizer",
                             str(tiny_embed_model["tok"]), "--backend", "reference", "--port", "0",
                             "--log-level", "warning"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        end = time.time() + 90
        while time.time() < end and "serving" not in line:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        assert "serving" in line and ":0 " not in line, line
        url = line.split(" on ")[1].split()[0]
        assert httpx.get(url + "/health", timeout=5).status_code == 200  # it answers at once
    finally:
        proc.kill()
        proc.wait()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "trtrun", "serve", str(tiny_embed_model["plan"]), "--tokenizer",
                            str(tiny_embed_model["tok"]), "--backend", "reference", "--port", str(port)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "could not start" in r.stderr and "serving" not in r.stderr, r.stderr


def test_workers_and_shared_engine_have_the_guards_and_the_key(tiny_embed_model, texts, monkeypatch):
    """`--workers 2 --shared-engine` with the key from TRTRUN_API_KEY (not in the command line): the fronts
    answer 401 without it, a lone surrogate with 400 naming the index, a too-long text with the engine's token
    count, and cut off a trickling head with 408 within the timeout. /metrics, whichever front answers, counts
    the refusals of both (8 requests without the key on 8 connections, spread over the fronts by the kernel)."""
    from trtrun.embed import Embedder

    monkeypatch.setenv("TRTRUN_API_KEY", "k-123")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ok = {"authorization": "Bearer k-123"}
    with Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=1) as ref, \
            serve_process(tiny_embed_model, port, "--workers", "2", "--shared-engine", "--contexts", "1",
                          "--header-timeout", "0.7", "--public-health", "--log-level", "warning") as proc:
        assert "k-123" not in " ".join(proc.args)
        for _ in range(8):
            assert httpx.post(url + "/embed", json={"inputs": "a"}, timeout=5).status_code == 401
        r = httpx.post(url + "/embed", json={"inputs": ["fine", "dull"]}, headers=ok, timeout=30)
        assert r.status_code == 200
        np.testing.assert_allclose(np.array(r.json(), np.float32), ref.embed(["fine", "dull"]), atol=ATOL)
        r = httpx.post(url + "/embed", content=b'{"inputs": ["a", "b", "\\ud800"]}', headers=ok, timeout=30)
        assert "'inputs[2]' holds a lone surrogate" in _err(r, 400)
        r = httpx.post(url + "/v1/embeddings", json={"input": ["ok", "a fine film, " * 30]}, headers=ok, timeout=30)
        assert "'input[1]' has 122 tokens, more than this model's limit of 32" in _err(r, 400)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /embed HTTP/1.1\r\nhost: x\r\n")
        data, took = _read_all(s, 5)
        s.close()
        assert data.startswith(b"HTTP/1.1 408 ") and took < 0.7 + 0.5, (data[:100], took)
        for _ in range(6):  # fresh connections: each may reach either front
            counts = _refusals(httpx.get(url + "/metrics", timeout=5).text)
            assert counts[("api_key", "401")] == 8 and counts[("header_timeout", "408")] == 1, counts


def test_a_pipelined_request_whose_body_stalls_still_gets_its_408(emb, texts):
    """A client pipelines a complete request and then the head and half the body of a second one, and sends
    nothing more. The first is answered; the second, now running and waiting for its body, must get the
    body timeout's JSON 408 and the connection closed, not hold the connection (and a request task) open
    for ever."""
    body_t = 0.6
    with _Server(emb, header_timeout=5, body_timeout=body_t, keep_alive_timeout=5, max_wait_ms=1) as srv:
        body = json.dumps({"input": texts[0]}).encode()
        head = (f"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        s = socket.create_connection(("127.0.0.1", srv.port))
        try:
            t0 = time.monotonic()
            s.sendall(head + body + head + body[: len(body) // 2])
            data, _ = _read_all(s, 4)
            took = time.monotonic() - t0
        finally:
            s.close()
        first, _, rest = data.partition(b"HTTP/1.1 408 ")
        assert first.startswith(b"HTTP/1.1 200 "), data[:200]
        assert rest, data[-300:]
        assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"]["code"] == 408
        assert took < body_t + 1.0, took


def test_a_pipelined_body_is_timed_only_once_its_request_runs(emb, texts):
    """The first of two pipelined requests takes longer than the body timeout (a 1.2 s micro-batch window);
    the second's body is held back by the server while the first runs (uvicorn stops reading). The first
    must still get its 200 first; the second's body timer starts only when it is taken up, so it gets its
    408 only after that (before: its timer ran out during the first, and a 408 was sent in place of the
    first's answer)."""
    body_t, window = 0.5, 1.2
    with _Server(emb, header_timeout=5, body_timeout=body_t, keep_alive_timeout=5, max_wait_ms=window * 1000) as srv:
        body = json.dumps({"input": texts[0]}).encode()
        head = (f"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        s = socket.create_connection(("127.0.0.1", srv.port))
        try:
            s.sendall(head + body + head + body[: len(body) // 2])
            data, _ = _read_all(s, 6)
        finally:
            s.close()
        assert data.startswith(b"HTTP/1.1 200 "), data[:300]
        hdr, _, rest = data.partition(b"\r\n\r\n")
        n = int([ln.split(b":")[1] for ln in hdr.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
        got = np.array(json.loads(rest[:n])["data"][0]["embedding"], np.float32)
        np.testing.assert_allclose(got, emb.embed(texts[:1])[0], atol=ATOL)
        assert rest[n:].startswith(b"HTTP/1.1 408 "), rest[n:n + 200]


def test_the_rest_of_a_body_answered_early_is_not_taken_for_a_late_request_head(emb):
    """A POST without the API key is answered 401 at once, while its 200 kB body is still arriving; the client
    sends the rest at normal speed and then keeps the connection idle. The server drains that body and
    closes the connection quietly within the body timeout: the client must read the 401 and nothing else (before: the rest of
    the body started the request-head timer, and a stray 408 "request head did not arrive" followed the
    401, which a client reusing the connection would take for its next request's answer)."""
    with _Server(emb, api_key="k", public_health=True, header_timeout=0.5, body_timeout=1.0, keep_alive_timeout=5) as srv:
        n = 200_000
        head = (f"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {n}\r\n\r\n").encode()
        s = socket.create_connection(("127.0.0.1", srv.port))
        try:
            s.sendall(head + b" " * 1000)
            s.settimeout(5)
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 401 "), first[:200]
            s.sendall(b" " * (n - 1000))
            data, took = _read_all(s, 5)
        finally:
            s.close()
        assert data == b"", data[:300]
        assert took < 1.0 + 0.5, took  # the body timeout, plus scheduling slack


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_client_still_writing_a_body_answered_early_reads_its_answer_past_the_body_timeout(emb, texts, http,
                                                                                              monkeypatch):
    """Two POSTs are answered before their body is read: a 401 (no API key) and a 413 (a Content-Length over
    the hard cap of 16 MiB). Both clients go on writing their body 0.6 s past the body timeout, and then read.
    Each must read its whole JSON answer and then the end of the stream (before: at the body timeout the
    connection was closed at once while the client still wrote; its next write met a reset and it never read
    its answer). While they linger they hold no place of --max-connections (a third client is served), and the
    two are counted once each, as 401 and 413, and not as body timeouts."""
    _use_http(http, monkeypatch)
    body_t = 0.8
    with _Server(emb, max_connections=2, api_key="k", public_health=True, header_timeout=5, body_timeout=body_t,
                 keep_alive_timeout=5, max_body_bytes=1000) as srv:
        guard, conns = srv.server.guard, srv.server.server_state.connections
        _assert_http(srv, http)
        heads = {401: b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n{",
                 413: b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nauthorization: Bearer k\r\n"
                      b"content-length: 20000000\r\n\r\n{"}
        got: dict = {}
        threads = [threading.Thread(target=lambda k=k: got.__setitem__(
            k, _send_then_read(srv.port, heads[k], b" " * 1000, body_t + 0.6))) for k in heads]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        # the bodies' timers start with their first byte after the answer (0.05 s in); the clients still send
        time.sleep(max(0.0, t0 + body_t + 0.3 - time.monotonic()))
        assert len(guard.lingering) == 2 and len(conns) == 0, (len(guard.lingering), len(conns))
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": texts[:1]}, headers={"authorization": "Bearer k"},
                       timeout=5)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], emb.embed(texts[:1])[0], atol=ATOL)
        for t in threads:
            t.join(10)
        for status, (error, data) in got.items():
            assert error is None, (status, error, data[:200])
        assert "API key" in _json_answer(got[401][1], 401, closing=False)
        assert "--max-body-bytes" in _json_answer(got[413][1], 413, closing=False)
        counts = _refusals(httpx.get(srv.url + "/metrics", timeout=5).text)
        assert counts[("api_key", "401")] == 1 and counts[("body_too_large", "413")] == 1, counts
        assert counts[("body_timeout", "408")] == 0, counts
        end = time.monotonic() + 5
        while guard.lingering and time.monotonic() < end:
            time.sleep(0.05)
        assert not guard.lingering


def _answer_before_the_body_app(seen: list):
    """A raw ASGI app that begins its answer to a POST before reading the body (as a streaming handler may):
    the head and the first 500 of 1,000 bytes, framed by Content-Length (path /length) or chunked (/chunked);
    the rest once the whole request body has arrived. What receive() says instead of the body goes to `seen`.
    /health answers 200 (for _Server)."""
    part = b"x" * 500

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        framing = [(b"content-length", b"1000")] if scope["path"] == "/length" else []  # (uvicorn: else chunked)
        await send({"type": "http.response.start", "status": 200, "headers": framing})
        await send({"type": "http.response.body", "body": part, "more_body": True})
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                seen.append(msg["type"])
                return
            if not msg.get("more_body", False):
                break
        await send({"type": "http.response.body", "body": part})

    return app


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_body_timeout_after_the_response_began_ends_it_short_not_with_a_reset(emb, http, monkeypatch):
    """An app begins its answer (head and half the body, framed by Content-Length or chunked) before reading the
    request body; two clients go on writing their body 0.6 s past the body timeout, and then read. A 408 can no
    longer be sent (it would land inside the begun response). Each client must read what was sent, the end of
    the stream, and no reset on its writes (before: the connection was closed at once while it still wrote); an
    HTTP parser (h11, httpx's) must find the response incomplete, not take it for a whole one. The app is told
    the client is gone (http.disconnect), and nothing is counted as a refusal (no 408 was answered)."""
    import h11

    _use_http(http, monkeypatch)
    body_t = 0.8
    seen: list = []
    with _Server(emb, app=_answer_before_the_body_app(seen), max_connections=2, header_timeout=5,
                 body_timeout=body_t) as srv:
        guard, conns = srv.server.guard, srv.server.server_state.connections
        _assert_http(srv, http)
        counted: list = []
        guard.on_refused = counted.append
        got: dict = {}

        def client(path):
            head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n{{".encode()
            got[path] = _send_then_read(srv.port, head, b" " * 1000, body_t + 0.6)

        threads = [threading.Thread(target=client, args=(p,)) for p in ("/length", "/chunked")]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(max(0.0, t0 + body_t + 0.3 - time.monotonic()))
        assert len(guard.lingering) == 2 and len(conns) == 0, (len(guard.lingering), len(conns))
        for t in threads:
            t.join(10)
        for path, (error, data) in got.items():
            assert error is None, (path, error, data[:200])
            conn = h11.Connection(h11.CLIENT)
            conn.send(h11.Request(method="POST", target=path, headers=[("host", "x"), ("content-length", "1")]))
            conn.receive_data(data)
            conn.receive_data(b"")  # the end of the stream
            events = []
            with pytest.raises(h11.RemoteProtocolError, match="without sending complete message body"):
                while (ev := conn.next_event()) is not h11.NEED_DATA:
                    events.append(ev)
            assert isinstance(events[0], h11.Response) and events[0].status_code == 200, (path, events)
            assert b"".join(e.data for e in events if isinstance(e, h11.Data)) == b"x" * 500, (path, data[-200:])
        assert seen == ["http.disconnect"] * 2 and counted == [], (seen, counted)
        end = time.monotonic() + 5
        while guard.lingering and time.monotonic() < end:
            time.sleep(0.05)
        assert not guard.lingering


def test_depth_check_is_linear_on_an_unterminated_string_of_escaped_quotes(client):
    """A body with more brackets than the depth limit and then an unterminated string of escaped quotes
    ('"\\"\\"\\"...'): the string-stripping scan tried a match at every escaped quote and ran each to the end
    (quadratic: a 32 kB body held the event loop 2 s, a 2 MB one would for hours). Now 200 kB takes well
    under a second (a linear scan of it takes milliseconds; the bound leaves room for a slow CI machine),
    the depth is still right where strings are closed, and the request is a 400."""
    from trtrun.serve.app import json_depth

    body = b"[" * 40 + b'"' + b'\\"' * 100_000
    t0 = time.perf_counter()
    json_depth(body, 32)
    assert time.perf_counter() - t0 < 0.5
    def depth(v):  # the reference: the nesting of the parsed value
        return 1 + max(map(depth, v.values() if isinstance(v, dict) else v), default=0) \
            if isinstance(v, (dict, list)) else 0

    closed = b'[[["]]]]\\"[[[", "a\\\\"], {"b": [1]}]]' + b" " * 40
    assert json_depth(closed, 1) == depth(json.loads(closed)) == 4
    assert "nested deeper" in _err(client.post("/embed", content=body), 400)


def test_an_api_key_with_a_trailing_newline_still_matches(emb, texts):
    """A key read from a file or a secret often ends in a newline (TRTRUN_API_KEY="$(<file)" strips it,
    a mounted secret does not). An HTTP header value cannot carry surrounding whitespace, so such a key
    could never match: every request got 401. The key is taken without it."""
    from starlette.testclient import TestClient

    from trtrun.serve import ServeConfig, create_app

    with TestClient(create_app(emb, ServeConfig(api_key="s3cret-key\n"))) as c:
        r = c.post("/v1/embeddings", json={"input": texts[:1]}, headers={"authorization": "Bearer s3cret-key"})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], emb.embed(texts[:1])[0], atol=ATOL)
        assert _err(c.post("/v1/embeddings", json={"input": "a"}, headers={"authorization": "Bearer s3cret"}), 401)


def test_a_uvicorn_without_the_guarded_protocol_methods_is_refused_at_start():
    """The connection guard overrides and calls uvicorn's protocol internals: a uvicorn whose protocol lacks one
    is refused when the server is set up, naming what is missing, not on a live connection."""
    pytest.importorskip("uvicorn")
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from trtrun.errors import TrtrunError
    from trtrun.serve.protocol import Guard, guarded_protocol

    g = Guard(4, 1.0, 1.0)
    assert issubclass(guarded_protocol(g, H11Protocol), H11Protocol)

    class Older(H11Protocol):
        _unset_keepalive_if_required = None

    with pytest.raises(TrtrunError, match="_unset_keepalive_if_required"):
        guarded_protocol(g, Older)


def _serve_meanwhile(keep, threads, texts, emb):
    """Start `threads` (hostile clients) and, until they are done, keep asking the kept-alive client `keep` for
    real embeddings, each checked: other users' requests are answered right throughout. Then join them."""
    for t in threads:
        t.start()
    served = 0
    while served < 3 or any(t.is_alive() for t in threads):
        k = served % 24
        r = keep.post("/v1/embeddings", json={"input": [texts[k]]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], emb.embed([texts[k]])[0], atol=ATOL)
        served += 1
    for t in threads:
        t.join(15)
