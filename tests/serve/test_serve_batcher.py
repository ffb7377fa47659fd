"""MicroBatcher's asyncio path (submit_async) and its wake-ups: each coroutine gets exactly its own rows,
a window that fills is sent at once (not at its deadline), a cancelled request is dropped before it runs,
and a window finishing after its event loop closed harms nothing. Stub embedders: no model needed."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from trtrun.embed import EmbedResult, Embedder
from trtrun.serve import MicroBatcher


class _Echo:
    """Just enough of an Embedder for the batcher: a text's vector is [len(text), first char code]."""

    contexts, dim, max_seq_len, max_tokens_per_batch, max_batch_size = 2, 2, 64, 4096, 64
    check_texts = staticmethod(Embedder.check_texts)

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.calls: list[list[list[str]]] = []

    def embed_groups(self, groups, observer=None):
        if self.gate is not None:
            self.gate.wait(30)
        self.calls.append([list(g) for g in groups])
        return [EmbedResult(np.array([[len(t), ord(t[0])] for t in g], np.float32), np.zeros(len(g), bool),
                            np.full(len(g), 3, np.int64)) for g in groups]


def test_submit_async_gives_each_coroutine_its_rows_in_shared_windows():
    echo = _Echo()
    windows = []
    rng = np.random.default_rng(4)
    jobs = [[f"{chr(97 + int(k))}" * int(n) for k, n in zip(rng.integers(0, 26, m), rng.integers(1, 40, m))]
            for m in rng.integers(1, 6, 40)]

    async def main(mb):
        async def one(texts):
            await asyncio.sleep(0)
            return await mb.submit_async(texts)
        return await asyncio.gather(*(one(j) for j in jobs))

    with MicroBatcher(echo, max_wait_ms=50, on_window=lambda n, k, q: windows.append(n)) as mb:
        results = asyncio.run(main(mb))
        # a plain str is one text; an empty list resolves at once
        empty = asyncio.run(_call(mb.submit_async, []))
        one = asyncio.run(_call(mb.submit_async, "xyz"))
    for texts, res in zip(jobs, results):
        np.testing.assert_array_equal(res.embeddings, [[len(t), ord(t[0])] for t in texts])
    assert len(empty) == 0 and one.embeddings.tolist() == [[3.0, 120.0]]
    assert sum(windows) == len(jobs) + 1 and max(windows) > 1, windows  # requests shared windows


async def _call(fn, *args):
    return await fn(*args)


def test_a_full_window_goes_at_once_not_at_its_deadline():
    """max_wait_ms is 10 s; the window is full after 3 requests (or by its token budget), so they are
    answered at once: submit wakes the gatherer when window + queue reach a cap."""
    echo = _Echo()
    with MicroBatcher(echo, max_wait_ms=10_000, max_batch_requests=3) as mb:
        t0 = time.perf_counter()
        futs = [mb.submit([f"text {i}"]) for i in range(3)]
        assert [f.result(5).embeddings[0, 0] for f in futs] == [6.0] * 3
        assert time.perf_counter() - t0 < 2.0
    echo = _Echo()
    # token budget 40: each 120-character text is estimated at 32 tokens, so two fill a window
    with MicroBatcher(echo, max_wait_ms=10_000, max_batch_tokens=40) as mb:
        t0 = time.perf_counter()
        a, b = mb.submit(["a" * 120]), mb.submit(["b" * 120])
        a.result(5)
        assert time.perf_counter() - t0 < 2.0
        assert echo.calls[0] == [["a" * 120]]  # the first filled its window alone (adding b would pass 40)
    assert b.result(5).embeddings[0, 0] == 120.0  # close() sent b's window without waiting out its 10 s


def test_cancelled_async_request_is_dropped_before_it_runs():
    gate = threading.Event()
    echo = _Echo(gate)

    async def main(mb):
        first = mb.submit_async(["first"])
        while mb.queue_depth():  # "first" is with the only worker, blocked on the gate
            await asyncio.sleep(0.005)
        second = mb.submit_async(["second"])
        third = mb.submit_async(["third"])
        second.cancel()  # the client went away while its request waited
        gate.set()
        r1, r3 = await first, await third
        return r1, r3, second

    with MicroBatcher(echo, max_wait_ms=0, max_batch_requests=1, workers=1) as mb:
        r1, r3, second = asyncio.run(main(mb))
    assert second.cancelled()
    assert r1.embeddings[0, 0] == 5.0 and r3.embeddings[0, 0] == 5.0
    assert [c[0][0] for c in echo.calls] == ["first", "third"]


def test_window_finishing_after_its_loop_closed_is_harmless():
    gate = threading.Event()
    echo = _Echo(gate)
    mb = MicroBatcher(echo, max_wait_ms=0)

    async def submit_and_leave():
        return mb.submit_async(["orphan"])

    loop = asyncio.new_event_loop()
    fut = loop.run_until_complete(submit_and_leave())
    loop.close()  # nobody will ever await fut
    gate.set()
    mb.close()  # the worker's call_soon_threadsafe on the closed loop must not break the batcher
    assert echo.calls == [[["orphan"]]] and not fut.done()
    good = MicroBatcher(_Echo(), max_wait_ms=0)
    assert good.embed(["ok"]).embeddings.tolist() == [[2.0, 111.0]]
    good.close()


def test_submit_async_needs_a_running_loop():
    with MicroBatcher(_Echo(), max_wait_ms=0) as mb, pytest.raises(RuntimeError, match="no running event loop"):
        mb.submit_async(["x"])
