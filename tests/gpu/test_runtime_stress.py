"""Concurrency and endurance (issue 3): 8 threads, each with its own Context on one Engine, 1,000 runs each,
every output equal to the single-threaded one; 10,000 runs with no growth of device memory
(cudaMemGetInfo) or host RSS; contexts and engines made and dropped repeatedly give their memory back.
TRTRUN_STRESS_SCALE (default 1.0) scales the run counts (e.g. 0.1 under compute-sanitizer)."""

from __future__ import annotations

import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import rt_helpers as h

pytestmark = pytest.mark.gpu

SCALE = float(os.environ.get("TRTRUN_STRESS_SCALE", "1.0"))
KIND = "bert-tiny"
SHAPES = [(1, 7), (4, 33), (8, 64), (2, 129), (3, 17)]


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _free() -> int:
    from trtrun import _C  # type: ignore[attr-defined]

    return int(_C.mem_get_info(0)[0])


@pytest.fixture(scope="module")
def setup():
    h.need_runtime()
    plan = h.plan_of(KIND, "hybrid")
    engine = h.engine_of(KIND, "hybrid")
    feeds = [h.random_feeds(plan, b, s, padded=True, seed=i) for i, (b, s) in enumerate(SHAPES)]
    return plan, engine, feeds


def test_threads_with_own_contexts_match_single_thread(setup):
    plan, engine, feeds = setup
    ctx0 = engine.create_context()
    expected = [ctx0.run(f)["last_hidden_state"] for f in feeds]
    runs = max(10, int(1000 * SCALE))
    threads = 8
    start = threading.Barrier(threads)

    def worker(t):
        ctx = engine.create_context()
        start.wait()
        bad = 0
        for r in range(runs):
            i = (r + t) % len(feeds)
            out = ctx.run(feeds[i])["last_hidden_state"]
            if not np.array_equal(out, expected[i]):
                bad += 1
        return bad

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        bads = list(pool.map(worker, range(threads)))
    dt = time.perf_counter() - t0
    h.report("stress", f"concurrency: {threads} threads x {runs} runs ({KIND} hybrid, shapes {SHAPES}) in "
                       f"{dt:.1f} s; runs differing from single-threaded outputs: {sum(bads)}")
    assert sum(bads) == 0, bads


def test_threads_sharing_one_context_are_serialized(setup):
    plan, engine, feeds = setup
    ctx = engine.create_context()
    expected = [ctx.run(f)["last_hidden_state"] for f in feeds]
    runs = max(5, int(100 * SCALE))

    def worker(t):
        return sum(not np.array_equal(ctx.run(feeds[(r + t) % len(feeds)])["last_hidden_state"],
                                      expected[(r + t) % len(feeds)]) for r in range(runs))

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(worker, range(4))) == 0


def test_threads_run_device_on_own_streams(setup):
    torch = h.need_torch_cuda()
    plan, engine, feeds = setup
    ctx0 = engine.create_context()
    expected = [ctx0.run(f)["last_hidden_state"] for f in feeds]
    runs = max(5, int(200 * SCALE))

    def worker(t):
        ctx = engine.create_context()
        stream = torch.cuda.Stream()
        bad = 0
        with torch.cuda.stream(stream):
            dev = [{k: torch.as_tensor(v).cuda() for k, v in f.items()} for f in feeds]
            for r in range(runs):
                i = (r + t) % len(feeds)
                out = ctx.run_device(dev[i], stream=stream)["last_hidden_state"]
                stream.synchronize()
                bad += not np.array_equal(out.cpu().numpy(), expected[i])
        return bad

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(worker, range(4))) == 0


def test_endurance_memory_is_flat(setup):
    plan, engine, feeds = setup
    ctx = engine.create_context()
    for f in feeds:  # warm up: every shape captured once
        for _ in range(3):
            ctx.run(f)
    gc.collect()
    free0, rss0 = _free(), _rss()
    runs = max(100, int(10000 * SCALE))
    t0 = time.perf_counter()
    checksum = 0.0
    for r in range(runs):
        out = ctx.run(feeds[r % len(feeds)])["last_hidden_state"]
        if r % 1000 == 0:
            checksum += float(out[0, 0, 0])
            assert np.isfinite(out).all()
    dt = time.perf_counter() - t0
    gc.collect()
    free1, rss1 = _free(), _rss()
    stats = ctx.stats()
    h.report("stress", f"endurance: {runs} runs in {dt:.1f} s ({dt / runs * 1e6:.0f} us/run incl. Python); "
                       f"device free {free0 / 2**20:.1f} -> {free1 / 2**20:.1f} MiB "
                       f"(growth {(free0 - free1) / 2**20:+.1f} MiB); host RSS {rss0 / 2**20:.1f} -> "
                       f"{rss1 / 2**20:.1f} MiB (growth {(rss1 - rss0) / 2**20:+.1f} MiB); graphs "
                       f"{stats['graph_count']}, GEMM plans {stats['gemm_plans']}")
    # device memory: not a single allocation per run (cudaMemGetInfo moves in 2 MiB pages)
    assert free0 - free1 <= 2 << 20
    # host: Python's allocator and numpy keep some slack, but no growth proportional to the runs
    assert rss1 - rss0 <= 16 << 20
    from trtrun.runtime import bucket_seq

    assert stats["graph_count"] == len({(b, bucket_seq(s, 512)) for b, s in SHAPES})


def test_contexts_and_engines_give_memory_back(setup):
    plan, engine, feeds = setup
    from trtrun.runtime import Engine

    def cycle(n):
        for _ in range(n):
            e = Engine(plan)
            c = e.create_context()
            c.run(feeds[1])
            del c, e
        gc.collect()

    cycle(2)  # first allocations of the driver, cuBLASLt, module loads
    free0, rss0 = _free(), _rss()
    n = max(5, int(50 * SCALE))
    cycle(n)
    free1, rss1 = _free(), _rss()
    h.report("stress", f"create/destroy: {n} x (Engine + Context + run): device free {free0 / 2**20:.1f} -> "
                       f"{free1 / 2**20:.1f} MiB; host RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB")
    assert free0 - free1 <= 4 << 20
    assert rss1 - rss0 <= 32 << 20
