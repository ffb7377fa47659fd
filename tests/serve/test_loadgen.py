"""bench/loadgen.py: response checks catch what they must, and a short real run against a server with the
stub engine (bench/serve_stub.py: the real server code, a fake engine) reports throughput, latency and
the CPU cost per request of server and load generator."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("aiohttp", reason="the load generator's client (httpx also works, aiohttp is the default)")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def loadgen():
    return _module("loadgen")


def test_response_checks(loadgen):
    v = loadgen._vectors("/v1/embeddings", json.dumps(
        {"data": [{"index": 0, "embedding": [1, 0]}, {"index": 1, "embedding": [0, 2]}]}).encode(), 2)[0]
    np.testing.assert_array_equal(v, [[1, 0], [0, 2]])
    assert loadgen._vectors("/v1/embeddings", b'{"data": [{"index": 1, "embedding": [1]}]}', 1)[1] == \
        "indices out of order"
    assert loadgen._vectors("/v1/embeddings", b'{"data": [3]}', 1)[1] == "a 'data' item is not an object"
    assert "2 embeddings for 1 texts" in loadgen._vectors("/embed", b"[[1], [2]]", 1)[1]
    assert loadgen._vectors("/embed", b"nope", 1)[1] == "response is not JSON"
    refs = loadgen._unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(refs, [[0.6, 0.8], [0, 0]])
    np.testing.assert_allclose(loadgen._cosines(np.array([[6.0, 8.0], [1.0, 1.0]]), refs), [1.0, 0.0])
    np.testing.assert_allclose(loadgen._cosines(np.array([[-0.8, 0.6]]), refs[:1]), [0.0], atol=1e-12)
    # a NaN embedding: its cosine is NaN, and the reported minimum says so (min(1.0, nan) would say 1.0)
    cos = loadgen._cosines(np.array([[np.nan, 1.0]]), refs[:1])
    assert np.isnan(cos[0])
    assert np.isnan(loadgen._min_nan([0.99, cos.min(), 0.5]))
    assert loadgen._min_nan([0.99, 0.5]) == 0.5 and loadgen._min_nan([]) == 1.0


def test_summary_padding_fraction_and_nan(loadgen):
    """server_padding_fraction is padding / (padding + real tokens), the share of computed token slots; a part
    whose minimum cosine is NaN makes the target's NaN."""
    spec = {"endpoint": "/embed", "clients": 2, "inputs": (1, 1), "warmup": 0.0, "duration": 1.0}
    part = {"lat": [0.001, 0.002], "n_in": [1, 1], "fails": {}, "examples": [], "client": "x", "sent": 2,
            "cpu_s": 0.1, "wall_s": 1.0, "checked_requests": 2, "checked_inputs": 2, "min_cos": 0.9999}
    m0 = {"trtrun_padding_tokens_total": 10.0, "trtrun_tokens_total": 100.0}
    m1 = {"trtrun_padding_tokens_total": 40.0, "trtrun_tokens_total": 190.0}  # +30 padding, +90 real
    r = loadgen._summarize("t", "http://x", [part], spec, m0, m1)
    assert r["server_padding_fraction"] == 0.25 and r["min_cosine"] == 0.9999
    r = loadgen._summarize("t", "http://x", [part, dict(part, min_cos=float("nan"))], spec, m0, m1)
    assert np.isnan(r["min_cosine"])
    assert loadgen._summarize("t", "http://x", [part], spec, {}, {})["server_padding_fraction"] is None


def test_short_run_against_the_stub_server(loadgen, tmp_path):
    import uvicorn

    from trtrun import data
    from trtrun.serve import ServeConfig, create_app

    stub = _module("serve_stub")
    tok = data.data_dir() / "minilm"
    if not (tok / "tokenizer.json").exists():
        pytest.skip(f"MiniLM tokenizer not in {tok}")
    emb = stub.StubEmbedder(tok, contexts=2, fixed_s=2e-4, per_token_s=1e-7)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(emb, ServeConfig(max_wait_ms=2)), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    url = f"http://127.0.0.1:{port}"
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(data.load_texts("rt", n=20, seed=1)) + "\n", encoding="utf-8")
    out = tmp_path / "load.json"
    try:
        end = time.time() + 30
        while not server.started and time.time() < end:
            time.sleep(0.05)
        rc = loadgen.main(["--target", f"stub={url}", "--clients", "6", "--duration", "1.5", "--warmup", "0.3",
                           "--procs", "2", "--inputs", "1-3", "--texts", str(texts), "--out", str(out)])
    finally:
        server.should_exit = True
        th.join(30)
        emb.close()
    assert rc == 0
    r = json.loads(out.read_text())
    t = r["targets"][0]
    assert r["ok"] and t["failed"] == 0 and t["mismatched"] == 0 and t["requests"] > 0
    assert t["min_cosine"] > 0.9999 and t["latency_ms"]["p50"] > 0
    assert t["server_cpu_us_per_request"] and t["server_cpu_us_per_request"] > 0
    assert t["client_cpu_us_per_request"] > 0 and 0 < t["client_busy"] <= 2.0
    assert t["server_mean_requests_per_microbatch"] >= 1.0
