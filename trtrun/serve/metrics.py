"""Prometheus metrics of the embedding server, in a registry of their own (one per app, so several apps
and tests in one process do not collide).

With several worker processes (`trtrun serve --workers N`) the values live in prometheus-client's
multiprocess files (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before the workers start), and /metrics,
whichever worker answers it, sums every worker's counters and histograms; the gauges (queue depth, requests
in flight) are the sum of the live workers' last values.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from bisect import bisect_left

# Latency buckets in seconds: 0.5 ms .. 10 s, dense around the few-ms range a small encoder lives in.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

# Why a connection or request was refused before an endpoint embedded anything, and the status it was
# answered with ("none": closed without an answer). The first four happen in the HTTP protocol
# (protocol.py: a request that never reaches the app), api_key in front of the app, the last two while
# the endpoint reads the body (those requests are also in trtrun_requests_total, by status).
REFUSALS = (("connections", "503"),  # more than --max-connections open
            ("header_timeout", "408"),  # a request head not complete within --header-timeout
            ("body_timeout", "408"),  # a body not complete within --body-timeout
            ("idle_timeout", "none"),  # a connection that sent nothing within --header-timeout
            ("bad_http", "400"),  # not HTTP, or a request head over uvicorn's size limit
            ("api_key", "401"),  # --api-key set and the request lacks it
            ("body_too_large", "413"),  # a body over --max-body-bytes
            ("bad_json", "400"))  # a body that is empty, not UTF-8, not JSON, or nested too deep

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Per-request counts and latencies are recorded in bulk (see ServerMetrics.request_done): at the latest after
# this many seconds or requests while others are still in flight, at once when none is.
FLUSH_S = 0.1
FLUSH_N = 256
# The CPU counter and the gauges are brought up to date per micro-batch, and at a flush when they are older.
REFRESH_S = 0.5


def observe_many(hist, values) -> None:
    """hist.observe(v) for every v, with one increment per touched bucket and one of the sum (the same
    counts: a value goes to the first bucket whose upper bound is >= it, as Histogram.observe does). Falls
    back to observe() per value if the prometheus-client internals it uses are not there."""
    if not values:
        return
    bounds, buckets, total = (getattr(hist, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            hist.observe(v)
        return
    counts: dict[int, int] = {}
    for v in values:
        i = bisect_left(bounds, v)
        counts[i] = counts.get(i, 0) + 1
    total.inc(sum(values))
    n = len(buckets)
    for i, c in counts.items():
        if i < n:  # past the last bound (+Inf) only for NaN, which observe() puts in no bucket either
            buckets[i].inc(c)


def multiprocess_mode() -> bool:
    """True when prometheus-client keeps its values in multiprocess files (set before it was imported)."""
    if not os.environ.get(MULTIPROC_ENV):
        return False
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


class ServerMetrics:
    """The counters and histograms /metrics exposes (names prefixed trtrun_)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = multiprocess_mode()
        gauge_mode = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("trtrun_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("trtrun_request_latency_seconds", "request latency, body read to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("trtrun_queue_time_seconds",
                                    "time a request waited for its micro-batch to start",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.window_requests = Histogram("trtrun_batch_requests", "requests per micro-batch",
                                         buckets=SIZE_BUCKETS, registry=r)
        self.window_inputs = Histogram("trtrun_batch_inputs", "texts per micro-batch",
                                       buckets=SIZE_BUCKETS, registry=r)
        self.engine_batch_size = Histogram("trtrun_engine_batch_size", "rows per engine call",
                                           buckets=SIZE_BUCKETS, registry=r)
        self.engine_batch_tokens = Histogram("trtrun_engine_batch_tokens",
                                             "padded tokens (rows x length) per engine call",
                                             buckets=TOKEN_BUCKETS, registry=r)
        self.engine_time = Histogram("trtrun_engine_seconds", "time of one engine call",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.inputs = Counter("trtrun_inputs", "texts embedded", registry=r)
        self.tokens = Counter("trtrun_tokens", "tokens embedded (padding not counted)", registry=r)
        self.padding = Counter("trtrun_padding_tokens", "padding tokens computed in engine batches", registry=r)
        self.truncated = Counter("trtrun_truncated_inputs", "texts cut to the maximum sequence length",
                                 registry=r)
        self.refused = Counter("trtrun_refused", "connections and requests refused before an endpoint embedded "
                               "anything, by reason and the status answered (none: closed without an answer)",
                               ["reason", "status"], registry=r)
        # every reason from the start (at 0), so that a rate over them exists before the first refusal
        self._refusals = {reason: self.refused.labels(reason, status) for reason, status in REFUSALS}
        self.cpu = Counter("trtrun_process_cpu_seconds", "CPU time (user + system) of the server process(es), "
                           "all threads (for CPU cost per request: divide by trtrun_requests_total)", registry=r)
        self.queue_depth = Gauge("trtrun_queue_depth", "requests waiting for a micro-batch", registry=r, **gauge_mode)
        self.in_flight = Gauge("trtrun_requests_in_flight", "requests being served", registry=r, **gauge_mode)
        # Per request only plain Python work: labeled children are looked up once, and the in-flight count
        # is an int on the event loop, copied into its gauge per micro-batch and when /metrics is read.
        self.requests_in_flight = 0
        self.inputs_done = 0  # texts embedded since the last flush (an int on the event loop)
        self._done: dict = {}  # (endpoint, status) -> (requests counter child, latency histogram child)
        self._pending: list = []  # (endpoint, status, seconds) not yet recorded; event loop only
        self._t_pending = 0.0
        self._timer = None
        self._cpu_lock = threading.Lock()
        self._cpu_seen = time.process_time()
        self.queue_depth_fn = None  # set by the app: () -> requests waiting
        self._t_refresh = time.monotonic()

    def refuse(self, reason: str) -> None:
        """One connection or request refused, for `reason` (one of REFUSALS)."""
        self._refusals[reason].inc()

    def request_done(self, endpoint: str, status: str, seconds: float) -> None:
        """One HTTP request answered (called on the event loop, after requests_in_flight was decremented).

        Recorded in bulk, since a Counter.inc and a Histogram.observe per request cost the event loop ~4 us
        a request: at once when no other request is in flight (so an idle server's /metrics is always
        exact, as before), otherwise when FLUSH_N have gathered, FLUSH_S after the first one waited (a timer
        on the loop), and before /metrics is rendered."""
        p = self._pending
        p.append((endpoint, status, seconds))
        if self.requests_in_flight == 0 or len(p) >= FLUSH_N:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self._on_timer)
            except RuntimeError:  # no running loop (not called from the app): record now
                self.flush()

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Record the requests answered since the last flush (on the event loop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if time.monotonic() - self._t_refresh > REFRESH_S:  # where no micro-batch runs (a shared engine's front)
            self._refresh()
        n_in, self.inputs_done = self.inputs_done, 0
        if n_in:
            self.inputs.inc(n_in)
        p = self._pending
        if not p:
            return
        self._pending = []
        groups: dict = {}
        for endpoint, status, seconds in p:
            groups.setdefault((endpoint, status), []).append(seconds)
        for key, secs in groups.items():
            c = self._done.get(key)
            if c is None:
                c = self._done[key] = (self.requests.labels(*key), self.latency.labels(key[0]))
            c[0].inc(len(secs))
            observe_many(c[1], secs)

    def _refresh(self) -> None:
        """Bring the CPU counter and the gauges up to date (per micro-batch, and when /metrics is read)."""
        self._t_refresh = time.monotonic()
        with self._cpu_lock:
            now = time.process_time()
            d, self._cpu_seen = now - self._cpu_seen, now
        if d > 0:
            self.cpu.inc(d)
        self.in_flight.set(self.requests_in_flight)
        if self.queue_depth_fn is not None:
            self.queue_depth.set(self.queue_depth_fn())

    # hooks for MicroBatcher
    def on_window(self, n_requests: int, n_inputs: int, queue_seconds: list) -> None:
        self.window_requests.observe(n_requests)
        self.window_inputs.observe(n_inputs)
        observe_many(self.queue_time, queue_seconds)
        self._refresh()

    def on_engine_batch(self, rows: int, seq: int, real_tokens: int, seconds: float) -> None:
        self.engine_batch_size.observe(rows)
        self.engine_batch_tokens.observe(rows * seq)
        self.engine_time.observe(seconds)
        self.tokens.inc(real_tokens)
        self.padding.inc(rows * seq - real_tokens)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        self.flush()
        self._refresh()
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)  # every worker's files, summed
        return generate_latest(reg), CONTENT_TYPE_LATEST
