"""trtrun on Ray (a local Ray of 2 CPUs, reference backend): `trtrun embed --ray` against the in-process job,
resumption after a failed Ray job, and the Ray Serve deployment against `trtrun serve`.

One ray.init for the module (Ray's start-up costs seconds). Skipped where Ray is not installed.

Why the vectors match exactly: the Ray actors embed the same shards with the same function (the same chunks,
so the same engine batches) and run 1 BLAS thread each (their CPU count); the in-process run compared with
them runs with OMP_NUM_THREADS=1 too. OpenBLAS rounds differently at another thread count, which hybrid's
fp16 rounding turns into ~1e-4 (docs/ray.md), so the thread count is part of "the same computation".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'trtrun[ray]')")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'trtrun[ray]')")
pa = pytest.importorskip("pyarrow")

from trtrun import data  # noqa: E402

from conftest import free_port, serve_process  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield
    try:
        from ray import serve

        serve.shutdown()
    except Exception:  # noqa: BLE001
        pass
    ray.shutdown()


def _vectors(table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)


@pytest.fixture(scope="module")
def minilm_plan(exported, tmp_path_factory):
    from trtrun.builder import build

    d = tmp_path_factory.mktemp("minilm-ray")
    return build(exported("minilm"), precision="hybrid",
                 profile={"batch": (1, 32, 64), "seq": (1, 32, 64)}).save(d / "minilm.hybrid.plan")


def test_ray_corpus_job_gives_the_in_process_vectors_on_2000_real_texts(ray_local, minilm_plan, tmp_path):
    """2,000 real texts (1,000 Rotten Tomatoes sentences, 1,000 Wikipedia paragraphs cut at 32 tokens) through
    Ray (2 actors) and in-process (`trtrun embed` with 2 contexts): the same ids, token counts and vectors. Shards of
    300 rows: six full ones and a short last one, which must reach an actor alone too (ray_job.map_kwargs)."""
    from trtrun.corpus import embed_corpus, read_output

    texts = data.load_texts("rt", n=1000, seed=22) + data.load_texts("wiki", n=1000, seed=22)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"doc": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    tok = data.data_dir() / "minilm"
    common = dict(tokenizer=tok, id_column="doc", shard_rows=300, max_seq_len=32, truncation="truncate",
                  backend="reference")
    local = subprocess.run(
        [sys.executable, "-m", "trtrun", "embed", str(path), "-o", str(tmp_path / "local"), "-m", str(minilm_plan),
         "--tokenizer", str(tok), "--id-column", "doc", "--shard-rows", "300", "--max-seq-len", "32",
         "--truncation", "truncate", "--backend", "reference", "--contexts", "2", "-q"],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"), capture_output=True,
        text=True, timeout=300)
    assert local.returncode == 0, local.stderr
    s = embed_corpus(path, tmp_path / "ray", model=minilm_plan, ray="", contexts=1,
                     ray_options={"actors": 2, "cpus_per_actor": 0.75}, **common)
    assert s.where.startswith("ray (2 reference actor(s)") and (s.rows_embedded, s.shards_written) == (2000, 7)
    a, b = read_output(tmp_path / "local"), read_output(tmp_path / "ray")
    assert b.column("id").to_pylist() == [f"t{i}" for i in range(2000)] == a.column("id").to_pylist()
    assert b.column("num_tokens").to_pylist() == a.column("num_tokens").to_pylist()
    assert b.column("truncated").to_pylist() == a.column("truncated").to_pylist()
    assert sum(b.column("truncated").to_pylist()) > 500  # the wiki paragraphs
    diff = float(np.abs(_vectors(a) - _vectors(b)).max())
    assert diff <= 1e-6, diff
    assert np.allclose(np.linalg.norm(_vectors(b), axis=1), 1, atol=1e-5)  # real vectors, not zeros
    assert s.tokens == int(np.sum(a.column("num_tokens").to_numpy()))


def test_a_ray_started_by_trtrun_has_no_dashboard(monkeypatch):
    """The local Ray that --ray starts lives as long as the command: no dashboard, whose start was 61 s of an 88 s
    `trtrun embed --ray` on an H100 (results/ray-h100). An address given is passed through; Ray already
    initialized in the process is used as it is."""
    import ray

    from trtrun.backends import ray_connect

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    assert ray_connect("") is True and ray_connect("ray://head:10001") is True
    assert [(c["address"], c["include_dashboard"]) for c in calls] == [(None, False), ("ray://head:10001", False)]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert ray_connect(None) is False and len(calls) == 2


def test_gpu_actors_arguments_pass_ray_datas_own_checks(ray_local):
    """Ray Data refuses map_batches(batch_size=None) for actors that ask for GPUs (a ValueError at the call, before
    anything runs): the arguments trtrun gives GPU actors must pass it. No GPU is needed, nothing executes."""
    import ray.data

    from trtrun.corpus.ray_job import EmbedActor, map_kwargs

    kw = map_kwargs({"ref": None}, {"shard_rows": 4096}, 2, {"num_cpus": 1, "num_gpus": 1})
    assert kw["batch_size"] == 4096 and kw["num_gpus"] == 1
    ray.data.range(8).map_batches(EmbedActor, **kw)  # raises if Ray would refuse it
    with pytest.raises(ValueError, match="batch_size"):  # the check this guards against is Ray's, and it is live
        ray.data.range(8).map_batches(EmbedActor, **dict(kw, batch_size=None))


def test_gpu_actors_default_cpus_fit_the_smallest_gpu_node():
    """A GPU actor asks for half its node's CPUs per GPU (1 to 8), judged on the GPU node with the fewest, so every
    GPU node can place its actors; CPU-only and dead nodes do not count."""
    from trtrun.corpus.ray_job import gpu_actor_cpus

    def node(cpu, gpu=0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}

    assert gpu_actor_cpus([node(16, 1)]) == 8.0            # the GPU machine of docs/ray.md
    assert gpu_actor_cpus([node(128, 8)]) == 8.0           # 16 a GPU, capped
    assert gpu_actor_cpus([node(64), node(4, 1)]) == 2.0    # a large CPU head does not lift a small GPU node
    assert gpu_actor_cpus([node(2, 1)]) == 1.0 and gpu_actor_cpus([node(1, 2)]) == 1.0  # never below 1
    assert gpu_actor_cpus([node(16, 1), node(6, 1)]) == 3.0
    assert gpu_actor_cpus([node(16, 1), node(2, 1, alive=False)]) == 8.0
    assert gpu_actor_cpus([node(8)]) == 1.0                # no GPU node: the CPU actors' default


def test_gpu_actor_resources_read_the_nodes_ray_reports(ray_local, monkeypatch):
    """actor_resources' GPU branch on what ray.nodes() really returns (its keys: "Alive", "Resources"), with the
    cluster's GPU count faked (no GPU here): this 2-CPU node with one GPU would give its actor 1 CPU; an explicit
    --ray-cpus-per-actor wins."""
    from trtrun.corpus import ray_job

    nodes = ray.nodes()
    assert nodes and all("Alive" in n and "CPU" in n["Resources"] for n in nodes)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    monkeypatch.setattr(ray, "nodes", lambda: [dict(n, Resources=dict(n["Resources"], GPU=1.0)) for n in nodes])
    assert ray_job.actor_resources("auto", None, None) == ("gpu", 1, {"num_gpus": 1, "num_cpus": 1.0})
    assert ray_job.actor_resources("gpu", 2, 3.0) == ("gpu", 2, {"num_gpus": 1, "num_cpus": 3.0})
    big = [dict(n, Resources=dict(n["Resources"], CPU=16.0, GPU=1.0)) for n in nodes]
    monkeypatch.setattr(ray, "nodes", lambda: big)
    assert ray_job.actor_resources("auto", None, None)[2]["num_cpus"] == 8.0


def test_a_failed_ray_job_reruns_only_its_unfinished_shards(ray_local, tiny_embed_model, tmp_path):
    """A bad row in the last shard stops the Ray job (--on-error fail) after the shards before it are written;
    the rerun (--on-error skip) embeds only the others and leaves the written ones untouched."""
    from trtrun.corpus import embed_corpus, read_output
    from trtrun.corpus.job import BadRowError

    texts = data.load_texts("rt", n=120, seed=23)
    rows = [{"text": t} for t in texts]
    rows[115] = {"text": ""}
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    opts = dict(model=tiny_embed_model["plan"], tokenizer=tiny_embed_model["tok"], shard_rows=20,
                truncation="truncate", backend="reference", ray="", contexts=1,
                ray_options={"actors": 1, "cpus_per_actor": 1.0})
    with pytest.raises(BadRowError, match=r"row 115: is an empty text.*of 6 shards are written"):
        embed_corpus(path, out, on_error="fail", **opts)
    first = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.glob("part-*.parquet")}
    assert "part-00005.parquet" not in first and len(first) >= 1, first  # one actor takes the shards in order
    s = embed_corpus(path, out, on_error="skip", **opts)
    assert s.shards_skipped == len(first) and s.shards_written == 6 - len(first)
    assert s.rows_embedded + s.bad_rows == 120 - 20 * len(first) and s.bad_rows == 1
    assert {n: (p.stat().st_mtime_ns, p.stat().st_ino) for n in first for p in [out / n]} == first
    t = read_output(out)
    assert t.column("id").to_pylist() == [i for i in range(120) if i != 115]
    from trtrun.embed import Embedder

    with Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=1,
                  truncation="truncate") as e:
        want = e.embed([t for i, t in enumerate(texts) if i != 115])
    # fp32 tiny model, another process and batch mates: rounding of differently shaped GEMMs only
    np.testing.assert_allclose(_vectors(t), want, atol=1e-6)


def test_ray_write_tasks_write_only_under_their_jobs_lock(tmp_path):
    """The Ray driver holds OUTPUT's job lock; the shards are written by write tasks in other processes, which
    check before each shard that the lock is held by their own job (its token). A task whose job no longer
    holds it (another job took the folder, or its driver has ended and nobody holds it) writes nothing.
    (The sink alone, as a write task calls it: no Ray cluster is needed.)"""
    from trtrun.corpus.job import OutputLock
    from trtrun.corpus.ray_job import ShardSink
    from trtrun.errors import TrtrunError

    vec = np.array([[0.6, 0.8], [1.0, 0.0]], np.float32)
    block = pa.table({
        "shard": pa.array([0, 0], pa.int32()), "row": pa.array([0, 1], pa.int64()), "id": pa.array([0, 1], pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), pa.float32()), 2),
        "num_tokens": pa.array([3, 4], pa.int32()), "truncated": pa.array([False, False]),
        "error": pa.array([None, None], pa.string()), "backend": pa.array(["reference"] * 2)})
    out = tmp_path / "out"
    part = out / "part-00000.parquet"
    with OutputLock(out) as lock:
        stale = ShardSink(out, 2, 2, pa.int64(), 2, "m", lock_token="a-job-that-ended")
        with pytest.raises(TrtrunError, match=rf"another job \(pid {os.getpid()}\) holds the folder's lock now; "
                                              r"shard 0 was not written"):
            stale.write([block], None)
        assert not part.exists()
        sink = ShardSink(out, 2, 2, pa.int64(), 2, "m", lock_token=lock.token)
        assert sink.write([block], None) == [(0, 2, 0, 7)]
        from trtrun.corpus import read_output

        np.testing.assert_array_equal(_vectors(read_output(out)), vec)
    part.unlink()
    with pytest.raises(TrtrunError, match="no job holds the folder's lock any more"):
        sink.write([block], None)
    assert not part.exists()


# ------------------------------------------------------------------------------------------------ Ray Serve

# Ray Serve's HTTP proxy keeps the port of the first serve.start in the cluster: both serve tests use it
SERVE_PORT = free_port()

BAD_REQUESTS = [
    b"",
    b"{not json",
    b"\xff\xfe",
    b"[1, 2]",
    b'{"inputs": ["x"]}',
    b'{"input": []}',
    b'{"input": [1, 2]}',
    b'{"input": ""}',
    b'{"input": ["a", "b", "c", "d", "e"]}',
    b'{"input": "x", "encoding_format": "hex"}',
    b'{"input": "x", "dimensions": 7}',
    json.dumps({"input": "y" * 301}).encode(),
]


def test_ray_serve_answers_like_trtrun_serve(ray_local, tiny_embed_model, monkeypatch):
    """The Ray Serve deployment (one CPU replica) and `trtrun serve` with the same limits: the same vectors for
    real texts and the same status and error for each bad request."""
    import httpx
    from ray import serve

    from trtrun.serve import ray_serve
    from trtrun.serve.app import ServeConfig

    texts = data.load_texts("rt", n=6, seed=24)
    limits = ["--max-inputs", "4", "--max-chars", "300", "--truncation", "truncate", "--contexts", "1"]
    cfg = ServeConfig(max_inputs=4, max_chars=300)
    # deployed as a Ray Serve config file does it (app_builder with paths); `trtrun serve --ray`'s way (the plan
    # shipped through the object store) is the next test's
    app = ray_serve.app_builder({"model": str(tiny_embed_model["plan"]), "tokenizer": str(tiny_embed_model["tok"]),
                                 "backend": "reference", "contexts": 1, "truncation": "truncate", "replicas": 1,
                                 "max_inputs": cfg.max_inputs, "max_chars": cfg.max_chars})
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    serve.run(app, name=ray_serve.APP_NAME, route_prefix="/")
    d = {"url": f"http://127.0.0.1:{SERVE_PORT}"}
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the replica's BLAS threads (see the module doc)
        with serve_process(tiny_embed_model, free_port(), *limits) as proc:
            plain = proc.args[proc.args.index("--port") + 1]
            urls = {"ray": d["url"], "serve": f"http://127.0.0.1:{plain}"}
            got = {}
            for name, url in urls.items():
                r = httpx.post(url + "/v1/embeddings", json={"input": texts[:4]}, timeout=60)
                assert r.status_code == 200, r.text
                body = r.json()
                got[name] = (np.array([x["embedding"] for x in body["data"]], np.float32), body["usage"])
                one = httpx.post(url + "/embed", json={"inputs": texts[4]}, timeout=60)
                assert one.status_code == 200
                got[name + "/embed"] = np.array(one.json(), np.float32)
                got[name + "/bad"] = [(r.status_code, r.json()["error"]["message"]) for r in
                                      (httpx.post(url + "/v1/embeddings", content=b, timeout=60) for b in BAD_REQUESTS)]
            assert got["ray"][1] == got["serve"][1]
            diff = float(np.abs(got["ray"][0] - got["serve"][0]).max())
            assert diff <= 1e-6, diff
            assert np.abs(got["ray/embed"] - got["serve/embed"]).max() <= 1e-6
            assert got["ray/bad"] == got["serve/bad"]
            assert {s for s, _ in got["ray/bad"]} == {400, 422}
            h = httpx.get(urls["ray"] + "/health", timeout=30)
            assert h.status_code == 200 and h.json()["backend"] == "reference"
            m = httpx.get(urls["ray"] + "/metrics", timeout=30).text
            assert "trtrun_requests_total" in m
    finally:
        serve.delete(ray_serve.APP_NAME)


def test_ray_serve_replicas_share_a_gpu_and_log_no_request_lines_unless_asked():
    """--ray-replicas-per-gpu N gives each replica 1/N of a GPU (Ray Serve's work per request runs in the replica's
    process, so more processes on one GPU take more requests); access lines only with --access-log, as in
    `trtrun serve`. No Ray needed: the options of the bound deployment."""
    from trtrun.errors import TrtrunError
    from trtrun.serve import ray_serve
    from trtrun.serve.app import ServeConfig

    dep = ray_serve.deployment({"model": "m.plan"}, {}, ServeConfig(), gpu=True, replicas=8,
                               replicas_per_gpu=4)._bound_deployment
    assert dep.ray_actor_options["num_gpus"] == 0.25 and dep.num_replicas == 8
    assert dep.logging_config["enable_access_log"] is False
    dep = ray_serve.deployment({"model": "m.plan"}, {}, ServeConfig(), gpu=True, access_log=True)._bound_deployment
    assert dep.ray_actor_options["num_gpus"] == 1 and dep.logging_config["enable_access_log"] is True
    with pytest.raises(TrtrunError, match="replicas per GPU"):
        ray_serve.app_builder({"model": "m.plan", "replicas_per_gpu": 0})


def test_trtrun_serve_ray_deploys_serves_and_stops_on_sigterm(ray_local, tiny_embed_model):
    """`trtrun serve PLAN --ray ADDRESS` (a process connecting to this module's Ray): healthy, right vectors,
    SIGTERM deletes the app and exits 0."""
    import signal

    import httpx

    gcs = ray.get_runtime_context().gcs_address
    url = f"http://127.0.0.1:{SERVE_PORT}"
    with serve_process(tiny_embed_model, SERVE_PORT, "--contexts", "1", "--truncation", "truncate", "--ray", gcs,
                       "--ray-replicas", "1", timeout=120) as proc:
        texts = data.load_texts("rt", n=3, seed=25)
        r = httpx.post(url + "/v1/embeddings", json={"input": texts}, timeout=60)
        assert r.status_code == 200, r.text
        got = np.array([x["embedding"] for x in r.json()["data"]], np.float32)
        from trtrun.embed import Embedder

        with Embedder(tiny_embed_model["plan"], tiny_embed_model["tok"], backend="reference", contexts=1,
                      truncation="truncate") as e:
            want = e.embed(texts)
        np.testing.assert_allclose(got, want, atol=1e-6)  # fp32: another BLAS thread count changes ~1e-7
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        err = proc.stderr.read()
        assert "on Ray Serve at" in err and "server stopped" in err, err
        try:  # the app is gone (and with it the proxy, where that process started Ray Serve)
            assert httpx.get(url + "/health", timeout=10).status_code != 200
        except httpx.ConnectError:
            pass
