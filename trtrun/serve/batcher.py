"""Micro-batching: concurrent callers' requests gathered into shared engine batches.

    batcher = MicroBatcher(embedder, max_wait_ms=0.5)
    fut = batcher.submit(["a text", "another"])      # concurrent.futures.Future -> EmbedResult
    vectors = fut.result().embeddings                # exactly this caller's rows, in its order

One gatherer thread takes the oldest waiting request and keeps adding requests (in arrival order) until
the window is full (the token budget, by an estimate of 1 token per 4 characters + specials, or the
request/input caps) or `max_wait_ms` have passed since that oldest request arrived. The window then goes
to one of `workers` worker threads (default: the Embedder's contexts), which tokenizes it in one call,
packs it into engine batches under the exact token budget (Embedder.embed_groups) and resolves each
request's future with its own rows. While every worker is busy, requests queue up, so the next window is
larger: under load batches grow by themselves, and a lone request waits at most max_wait_ms.

`max_batch_requests=1` turns micro-batching off (each request is its own engine call): the plain path
that services without a batcher have, kept for comparison.

Per-request cost is kept small because a server's throughput is capped by the Python work per request:
a submit wakes the gatherer only when it has something to do (the first request of an empty queue, or
a window that may now be full), and `submit_async` (for coroutines) resolves all of a window's asyncio
futures with one callback on their event loop instead of one cross-thread wake-up per request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from ..errors import TrtrunError

# A text's token count before tokenizing it, for deciding when a window is full: English WordPiece and
# BPE average about 4-5 characters per token; 4 errs towards fuller windows. Exact packing comes later.
CHARS_PER_TOKEN = 4


class QueueFullError(TrtrunError):
    """More requests are waiting than the batcher's max_queue: the service is overloaded (HTTP 503)."""


class BatcherClosedError(TrtrunError):
    """The batcher is shutting down or closed and takes no new requests (HTTP 503)."""


class _Request:
    """One caller's texts waiting for a window (a plain slotted class: made on the event loop per request)."""

    __slots__ = ("texts", "future", "est_tokens", "loop", "t_submit")

    def __init__(self, texts: list, future, est_tokens: int, loop=None):
        self.texts = texts
        self.future: Future | asyncio.Future = future
        self.est_tokens = est_tokens
        self.loop: asyncio.AbstractEventLoop | None = loop  # set for an asyncio future (submit_async)
        self.t_submit = time.perf_counter()


def _settle(fut, res) -> None:
    """Resolve one future with a result or an exception (an asyncio one only if nobody cancelled it)."""
    if isinstance(fut, asyncio.Future) and fut.done():
        return
    if isinstance(res, BaseException):
        fut.set_exception(res)
    else:
        fut.set_result(res)


def _settle_all(items) -> None:
    """On an event loop: resolve its futures of one window, [(future, result or exception)]."""
    for fut, res in items:
        _settle(fut, res)


class MicroBatcher:
    """Gathers concurrent `submit` calls into shared engine batches (see the module docstring).

    embedder: a trtrun.Embedder.
    max_wait_ms: the longest a request waits for others before its window is sent (0: send what is there).
    max_batch_tokens: window budget in tokens (default: the Embedder's max_tokens_per_batch).
    max_batch_inputs: texts per window (default: the Embedder's max_batch_size x workers, so a window
        keeps every context busy).
    max_batch_requests: requests per window (None: no cap; 1: micro-batching off).
    max_queue: requests waiting at most; beyond that submit raises QueueFullError.
    workers: windows in flight at once (default: the Embedder's contexts).
    on_window / observer: metrics hooks; on_window(requests, inputs, queue_seconds_list), observer is
        passed to Embedder.embed_groups (per engine batch).
    """

    def __init__(self, embedder, *, max_wait_ms: float = 0.5, max_batch_tokens: int | None = None,
                 max_batch_inputs: int | None = None, max_batch_requests: int | None = None,
                 max_queue: int = 4096, workers: int | None = None, on_window=None, observer=None):
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.embedder = embedder
        self.max_wait = float(max_wait_ms) / 1000.0
        self.workers = int(workers or embedder.contexts)
        self.max_batch_tokens = int(max_batch_tokens or embedder.max_tokens_per_batch)
        self.max_batch_inputs = int(max_batch_inputs or embedder.max_batch_size * self.workers)
        self.max_batch_requests = max_batch_requests
        self.max_queue = int(max_queue)
        for name in ("workers", "max_batch_tokens", "max_batch_inputs", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if max_batch_requests is not None and max_batch_requests < 1:
            raise ValueError(f"max_batch_requests must be >= 1 or None, got {max_batch_requests}")
        self.on_window = on_window
        self.observer = observer
        self._q: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._slots = threading.Semaphore(self.workers)
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="trtrun-batch")
        self._closing = False
        self._inflight = 0
        self._max_len = int(embedder.max_seq_len)
        self._q_inputs = self._q_tokens = 0  # texts and estimated tokens waiting in the queue
        self._idle = False  # the gatherer waits for a request (queue empty, no window open)
        self._win_open = False  # the gatherer waits for its open window to fill (sizes below)
        self._win_requests = self._win_inputs = self._win_tokens = 0
        self._thread = threading.Thread(target=self._loop, name="trtrun-batcher", daemon=True)
        self._thread.start()

    @property
    def batching(self) -> bool:
        return self.max_batch_requests != 1

    def queue_depth(self) -> int:
        return len(self._q)

    # ---------------------------------------------------------------- callers
    def submit(self, texts) -> Future:
        """Queue texts (a str or a list of str); the Future resolves to an EmbedResult or raises.

        Raises at once (not through the Future): InputError for wrong types, QueueFullError,
        BatcherClosedError. An empty list resolves at once to an empty result.
        """
        fut: Future = Future()
        self._enqueue(self.embedder.check_texts(texts), fut, None)
        return fut

    def submit_async(self, texts) -> asyncio.Future:
        """submit() for a coroutine on a running event loop: an asyncio.Future to await (call it on the loop).

        Cheaper than asyncio.wrap_future(submit(texts)): a window's worker resolves all of its requests from
        one loop with a single call_soon_threadsafe. Cancelling the future (a client that went away) drops
        the request if its window has not started yet. Raises at once like submit().
        """
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._enqueue(self.embedder.check_texts(texts), fut, loop)
        return fut

    def _enqueue(self, texts: list, fut, loop) -> None:
        if not texts:
            from ..embed import EmbedResult

            fut.set_result(EmbedResult.empty(self.embedder.dim))
            return
        max_len = self._max_len
        est = sum(min(len(t) // CHARS_PER_TOKEN + 2, max_len) for t in texts)
        with self._cv:
            if self._closing:
                raise BatcherClosedError("the batcher is shutting down")
            q = self._q
            if len(q) >= self.max_queue:
                raise QueueFullError(f"{len(q)} requests are waiting (max_queue {self.max_queue})")
            q.append(_Request(texts, fut, est, loop))
            self._q_inputs += len(texts)
            self._q_tokens += est
            # Wake the gatherer only when it can act: it waits for a first request, or for its open window
            # to fill (window + queue now reach a cap); otherwise it wakes by itself at the window's
            # deadline, or is busy (waiting for a free worker) and looks at the queue when it comes back.
            # Once woken it is not woken again: the woken thread runs only when it gets the GIL, often after
            # the event loop has queued a whole burst of requests, and each of those would notify again.
            if self._idle or (self._win_open and (
                    self._q_inputs + self._win_inputs >= self.max_batch_inputs
                    or self._q_tokens + self._win_tokens >= self.max_batch_tokens
                    or (self.max_batch_requests is not None
                        and len(q) + self._win_requests >= self.max_batch_requests))):
                self._idle = self._win_open = False
                self._cv.notify()

    def embed(self, texts, timeout: float | None = None):
        """submit(texts).result(timeout): an EmbedResult with this caller's rows."""
        return self.submit(texts).result(timeout)

    # ---------------------------------------------------------------- gatherer
    def _take(self, window: list, state: dict) -> bool:
        """Move requests from the queue into the window while they fit; True when the window is full."""
        while self._q:
            r = self._q[0]
            n_req = len(window) + 1
            if window and (
                (self.max_batch_requests is not None and n_req > self.max_batch_requests)
                or state["inputs"] + len(r.texts) > self.max_batch_inputs
                or state["tokens"] + r.est_tokens > self.max_batch_tokens
            ):
                return True
            self._q.popleft()
            self._q_inputs -= len(r.texts)
            self._q_tokens -= r.est_tokens
            if r.loop is None:
                if not r.future.set_running_or_notify_cancel():  # the caller gave up (cancelled)
                    continue
            elif r.future.cancelled():  # read across threads: a cancel that comes later is harmless
                continue
            window.append(r)
            state["inputs"] += len(r.texts)
            state["tokens"] += r.est_tokens
            if ((self.max_batch_requests is not None and len(window) >= self.max_batch_requests)
                    or state["inputs"] >= self.max_batch_inputs or state["tokens"] >= self.max_batch_tokens):
                return True
        return False

    def _loop(self) -> None:
        while True:
            self._slots.acquire()  # a worker is free
            with self._cv:
                while not self._q and not self._closing:
                    self._idle = True  # submit() wakes us for the next request
                    self._cv.wait()
                    self._idle = False
                if not self._q:  # closing and drained
                    self._slots.release()
                    return
                window: list[_Request] = []
                state = {"inputs": 0, "tokens": 0}
                deadline = self._q[0].t_submit + self.max_wait
                while True:
                    full = self._take(window, state)
                    if full or self._closing:
                        break
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._win_open = True  # submit() wakes us if window + queue reach a cap
                    self._win_requests, self._win_inputs, self._win_tokens = \
                        len(window), state["inputs"], state["tokens"]
                    self._cv.wait(left)
                    self._win_open = False
                if not window:  # every taken request had been cancelled
                    self._slots.release()
                    continue
                self._inflight += 1
            try:
                self._pool.submit(self._run, window)
            except RuntimeError:  # close(timeout) gave up waiting and shut the pool down: no request is
                # left without an answer (its caller would otherwise wait forever)
                err = BatcherClosedError("the batcher was closed (close timeout passed) before this request "
                                         "could run")
                self._resolve(window, [err] * len(window))
                with self._cv:
                    self._inflight -= 1
                    self._cv.notify_all()
                self._slots.release()

    def _run(self, window: list[_Request]) -> None:
        try:
            t0 = time.perf_counter()
            if self.on_window is not None:
                try:
                    self.on_window(len(window), sum(len(r.texts) for r in window),
                                   [t0 - r.t_submit for r in window])
                except Exception:  # noqa: BLE001 - metrics must never fail a request
                    pass
            try:
                results = self.embedder.embed_groups([r.texts for r in window], self.observer)
            except BaseException as e:  # noqa: BLE001 - every waiting caller must hear of it
                results = [e] * len(window)
            self._resolve(window, results)
        finally:
            with self._cv:
                self._inflight -= 1
                if self._closing:  # close() waits for the windows in flight; nobody else needs to hear
                    self._cv.notify_all()
            self._slots.release()

    @staticmethod
    def _resolve(window: list[_Request], results: list) -> None:
        """Answer every request of a window: concurrent futures here, asyncio ones by one callback per loop."""
        by_loop: dict = {}
        for r, res in zip(window, results):
            if r.loop is None:
                _settle(r.future, res)
            else:
                by_loop.setdefault(r.loop, []).append((r.future, res))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, items)
            except RuntimeError:  # that loop is closed: nobody is left to await these futures
                pass

    # ---------------------------------------------------------------- lifetime
    def close(self, timeout: float | None = None) -> None:
        """Take no new requests, finish every queued and running one, stop the threads (idempotent)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        with self._cv:
            end = None if timeout is None else time.perf_counter() + timeout
            while self._inflight:
                left = None if end is None else end - time.perf_counter()
                if left is not None and left <= 0:
                    break
                self._cv.wait(left)
        self._pool.shutdown(wait=timeout is None)

    @classmethod
    def for_server(cls, embedder, config, metrics) -> "MicroBatcher":
        """The batcher of a server (create_app, or a shared engine process): a ServeConfig's batching settings,
        the ServerMetrics hooks."""
        return cls(embedder, max_wait_ms=config.max_wait_ms, max_batch_tokens=config.max_batch_tokens,
                   max_batch_requests=None if config.batching else 1, max_queue=config.max_queue,
                   on_window=metrics.on_window, observer=metrics.on_engine_batch)

    def __enter__(self) -> "MicroBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
