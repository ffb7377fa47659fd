"""`trtrun serve --workers N --shared-engine` on the CPU path: N HTTP processes, one engine process.

The wire format between them on its own (round trips, every error kind, frames cut anywhere, garbage), then the
server: every front answers right, the requests of different fronts share one micro-batch, SIGTERM finishes the
requests in flight everywhere, an engine process killed outright is started again (503 meanwhile, never a wrong
answer), and an engine that cannot start stops everything with one clear error.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from trtrun.embed import EmbedResult, InputTooLongError, InvalidTextError
from trtrun.errors import InputError, TrtrunError
from trtrun.serve import engine_proc as ep
from trtrun.serve.batcher import BatcherClosedError, QueueFullError


# ------------------------------------------------------------------------------------------- wire format
def _one(frame: bytes) -> bytes:
    frames = ep.Frames().feed(frame)
    assert len(frames) == 1
    return frames[0]


def test_request_round_trip_keeps_every_text_exactly():
    texts = ["a plain sentence", "ünïcødé ✓ 漢字 🙂", "x" * 70_000, "lone surrogate \ud800 kept", "\x00 nul \n"]
    rid, got = ep.decode_request(_one(ep.encode_request(2**40 + 7, texts)))
    assert rid == 2**40 + 7 and got == texts


def test_result_round_trip_is_bitwise():
    rng = np.random.default_rng(0)
    res = EmbedResult(rng.standard_normal((3, 384)).astype(np.float32), np.array([True, False, True]),
                      np.array([5, 256, 1], np.int64))
    rid, got = ep.decode_response(_one(ep.encode_result(9, res)))
    assert rid == 9 and isinstance(got, EmbedResult)
    np.testing.assert_array_equal(got.embeddings, res.embeddings)
    np.testing.assert_array_equal(got.truncated, res.truncated)
    np.testing.assert_array_equal(got.num_tokens, res.num_tokens)
    assert got.total_tokens == 262 and got.any_truncated


@pytest.mark.parametrize("exc,cls", [
    (InputTooLongError("texts 0, 3 are longer than 256 tokens", [0, 3]), InputTooLongError),
    (InputTooLongError("text 0 has 300 tokens, text 3 has 999", [0, 3], [300, 999], 256), InputTooLongError),
    (InvalidTextError("text 2 holds a lone surrogate U+D800", [2, 5], "holds a lone surrogate U+D800"),
     InvalidTextError),
    (InputError("text 1 gives no token"), InputError),
    (QueueFullError("4096 requests are waiting"), QueueFullError),
    (BatcherClosedError("the batcher is shutting down"), BatcherClosedError),
    (TrtrunError("engine: CUDA out of memory"), TrtrunError),
    (RuntimeError("a bug"), TrtrunError),
])
def test_errors_come_back_as_the_same_kind_with_their_message(exc, cls):
    rid, got = ep.decode_response(_one(ep.encode_error(3, exc)))
    assert rid == 3 and type(got) is cls
    assert str(exc) in str(got)
    if cls is InputTooLongError:  # the counts and the limit too, for the front's message naming each input
        assert got.indices == [0, 3]
        assert (got.token_counts, got.limit) == ((exc.token_counts, exc.limit) if exc.limit else (None, None))
    if cls is InvalidTextError:
        assert got.indices == [2, 5] and got.reason == "holds a lone surrogate U+D800"


def test_frames_cut_anywhere_come_out_whole_and_in_order():
    stream = b"".join(ep.encode_request(i, [f"text {i}" * (i + 1)]) for i in range(40))
    rng = np.random.default_rng(1)
    cuts = sorted(set(rng.integers(0, len(stream), 60).tolist()))
    fr, got = ep.Frames(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        got += fr.feed(stream[a:b])
    assert [ep.decode_request(f)[0] for f in got] == list(range(40))
    assert not fr.buf


def test_garbage_is_a_frame_error_not_a_crash():
    with pytest.raises(ep.FrameError, match="beyond"):
        ep.Frames().feed(b"\xff\xff\xff\xff rest")
    with pytest.raises(ep.FrameError, match="too short"):
        ep.decode_request(b"\x01\x02")
    body = _one(ep.encode_request(1, ["abc", "de"]))
    with pytest.raises(ep.FrameError, match="does not hold"):
        ep.decode_request(body[:-1])
    with pytest.raises(ep.FrameError, match="not UTF-8"):
        ep.decode_request(body[:-2] + b"\xff\xfe")
    with pytest.raises(ep.FrameError, match="unknown status"):
        ep.decode_response(b"\x01" + b"\x00" * 7 + b"\x63" + b"\x00" * 8)


# ------------------------------------------------------------------------------------------- the server
pytest.importorskip("starlette", reason="trtrun serve needs starlette (pip install 'trtrun[serve]')")
pytest.importorskip("uvicorn", reason="trtrun serve needs uvicorn (pip install 'trtrun[serve]')")
pytest.importorskip("prometheus_client", reason="trtrun serve needs prometheus-client")
httpx = pytest.importorskip("httpx", reason="the tests' HTTP client needs httpx")

from conftest import free_port, requests_across_a_signal, serve_process  # noqa: E402

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT load spreading is Linux's")
ATOL = 1e-5  # as in test_serve.py: same plan and numpy backend, only BLAS summation order differs




def _metric(text: str, name: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name + " ") or
               ln.startswith(name + "{"))


@linux_only
def test_fronts_share_one_engine_and_its_batches_and_stop_gracefully(tiny_embed_model, emb, texts):
    """Two fronts and one engine process; 8 requests over fresh connections (both fronts) within one 1.5 s
    window all land in ONE micro-batch of the engine; answers are right; SIGTERM while 8 more wait in a window:
    every one is answered right, then everything exits 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve_process(tiny_embed_model, port, "--workers", "2", "--shared-engine", "--contexts", "1",
                       "--max-wait-ms", "1500", "--log-level", "warning", "--truncation", "truncate") as proc:
        fronts, engines = set(), set()
        for _ in range(60):
            h = httpx.get(url + "/health", timeout=5).json()
            fronts.add(h["pid"])
            engines.add(h["engine_pid"])
            assert h["engine"] == "shared engine process" and h["status"] == "ok"
            if len(fronts) == 2:
                break
        assert len(fronts) == 2 and len(engines) == 1, (fronts, engines)
        assert proc.pid not in fronts | engines and not fronts & engines

        out: dict = {}
        seen_fronts: set = set()

        def call(i):
            with httpx.Client() as c:  # its own connection: the kernel spreads them over both fronts
                out[i] = c.post(url + "/embed", json={"inputs": [texts[i]]}, timeout=30)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(8):
            assert out[i].status_code == 200, out[i].text
            np.testing.assert_allclose(np.array(out[i].json(), np.float32), emb.embed([texts[i]]), atol=ATOL)
        m = httpx.get(url + "/metrics", timeout=5).text
        assert _metric(m, 'trtrun_requests_total{endpoint="/embed",status="200"}') == 8.0, m
        # one window of 8 requests (the engine process's histogram): the fronts' requests were batched together
        assert _metric(m, "trtrun_batch_requests_count") == 1.0, m
        assert _metric(m, "trtrun_batch_requests_sum") == 8.0, m
        # bad requests: the front answers them without the engine
        assert httpx.post(url + "/embed", content=b"{not json", timeout=5).status_code == 400
        assert httpx.post(url + "/embed", json={"inputs": []}, timeout=5).status_code == 422
        assert httpx.post(url + "/embed", json={"inputs": "x" * 1_000_000}, timeout=5).status_code == 400
        assert httpx.post(url + "/embed", json={"inputs": [1, 2]}, timeout=5).status_code == 422
        for _ in range(20):  # and both fronts took some of them
            seen_fronts.add(httpx.get(url + "/health", timeout=5).json()["pid"])
        err = requests_across_a_signal(proc, url, texts, 8, signal.SIGTERM, settle=0.6, after=0.5, emb=emb, atol=ATOL)
    assert "shared engine process" in err and "2 workers serving" in err, err
    for p in fronts | engines:
        assert not os.path.exists(f"/proc/{p}") or "zombie" in open(f"/proc/{p}/status").read().lower()


@linux_only
def test_an_engine_that_dies_is_replaced_and_nothing_is_answered_wrong(tiny_embed_model, emb, texts):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve_process(tiny_embed_model, port, "--workers", "2", "--shared-engine", "--contexts", "1",
                       "--log-level", "warning", "--truncation", "truncate") as proc:
        victim = httpx.get(url + "/health", timeout=5).json()["engine_pid"]
        os.kill(victim, signal.SIGKILL)
        codes, end, new = [], time.time() + 90, None
        while time.time() < end:
            r = httpx.post(url + "/embed", json={"inputs": [texts[1]]}, timeout=30)
            codes.append(r.status_code)
            if r.status_code == 200:
                np.testing.assert_allclose(np.array(r.json(), np.float32), emb.embed([texts[1]]), atol=ATOL)
                new = httpx.get(url + "/health", timeout=5).json()["engine_pid"]
                if new != victim:
                    break
            else:
                assert r.status_code == 503 and "engine process" in r.json()["error"]["message"], r.text
                time.sleep(0.1)
        assert new is not None and new != victim, f"codes {codes}; log:\n{proc.stderr.read() if proc.poll() is not None else ''}"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        err = proc.stderr.read()
    assert rc == 0, err
    assert f"engine process (pid {victim}) died" in err and "starting it again" in err, err


def test_errors_found_in_the_engine_process_are_the_same_4xx(tiny_embed_model, emb, texts):
    """A text over the model's tokens with truncation "reject" is refused by the Embedder in the engine process;
    its kind (and the texts' indices) cross the socket, so the answer is the same 400 as from one process, and
    the server keeps serving."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve_process(tiny_embed_model, port, "--shared-engine", "--contexts", "1", "--truncation", "reject",
                       "--log-level", "warning") as proc:
        r = httpx.post(url + "/v1/embeddings", json={"input": ["fine", "word " * 3000]}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["type"] == "input_too_long", r.text
        assert "'input[1]' has 3002 tokens, more than this model's limit of 32" in r.json()["error"]["message"], r.text
        r = httpx.post(url + "/embed", json={"inputs": ["a fine film", "dull"]}, timeout=30)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json(), np.float32), emb.embed(["a fine film", "dull"]), atol=ATOL)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read()


def test_socket_folder_stays_short_under_a_deep_tmpdir(tmp_path, monkeypatch):
    import tempfile

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    d = ep.socket_dir()
    try:
        assert len((d + "/engine.sock").encode()) <= 100 and (os.stat(d).st_mode & 0o777) == 0o700, d
    finally:
        os.rmdir(d)


def test_engine_process_answers_what_it_holds_when_stopped(tiny_embed_model, emb, texts, tmp_path):
    """The engine process alone, spoken to over its socket: requests waiting in a 1.5 s window when it gets
    SIGTERM are still answered (right rows, in any order, matched by request id), then it exits 0."""
    import multiprocessing as mp
    import socket as sk

    from trtrun.embed import Embedder
    from trtrun.serve.app import ServeConfig

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    path = str(tmp_path / "e.sock")
    make = functools.partial(Embedder, str(tiny_embed_model["plan"]), str(tiny_embed_model["tok"]), truncation="truncate",
                             backend="reference", contexts=1)
    p = ctx.Process(target=ep.engine_main, args=(make, ServeConfig(max_wait_ms=1500), path, events, -1, 3))
    p.start()
    try:
        kind, _, pid, info = events.get(timeout=120)
        assert kind == "ready" and pid == p.pid and info["dim"] == emb.dim, (kind, info)
        c = sk.socket(sk.AF_UNIX)
        c.connect(path)
        c.sendall(b"".join(ep.encode_request(10 + i, [texts[i], texts[i + 5]]) for i in range(5)))
        time.sleep(0.5)  # all five wait in the window
        os.kill(p.pid, signal.SIGTERM)
        fr, got = ep.Frames(), {}
        c.settimeout(30)
        while len(got) < 5:
            data = c.recv(1 << 16)
            assert data, f"the engine closed the connection with {len(got)} of 5 answers"
            for body in fr.feed(data):
                rid, res = ep.decode_response(body)
                if rid:  # 0: the hello frame
                    got[rid] = res
        c.close()
        p.join(60)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
    for i in range(5):
        res = got[10 + i]
        assert isinstance(res, EmbedResult), res
        np.testing.assert_allclose(res.embeddings, emb.embed([texts[i], texts[i + 5]]), atol=ATOL)


def test_health_says_when_the_engine_is_not_reachable(tmp_path):
    """A front's /health is 503 with the reason while its engine process cannot be reached (a load balancer
    routes around it), and ok once it can: check_engine connects by itself."""
    import asyncio

    path = str(tmp_path / "engine.sock")
    client = ep.EngineClient(path, dim=4)

    async def scenario():
        down = await client.check_engine()
        assert down is not None and "not reachable" in down and path in down, down
        server = await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, path)
        try:
            assert await client.check_engine() is None
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_an_engine_that_cannot_start_stops_everything(tmp_path):
    from trtrun.embed import Embedder
    from trtrun.serve.workers import run_workers

    make = functools.partial(Embedder, str(tmp_path / "missing.plan"), backend="reference")
    t0 = time.time()
    with pytest.raises(TrtrunError, match=r"engine process .* could not start: InputError: .*missing\.plan"):
        run_workers(make, workers=2, host="127.0.0.1", port=0, log_level="warning", shared_engine=True)
    assert time.time() - t0 < 60
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
