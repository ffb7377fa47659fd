"""Prometheus metrics of the embedding server, in a registry of their own (one per app, so several apps
and tests in one process do not collide).

With several worker processes (`trtrun serve --workers N`) the values live in prometheus-client's
multiprocess files (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before the workers start), and /metrics,
whichever worker answers it, sums every worker's counters and histograms; the gauges (queue depth, requests
in flight) are the sum of the live workers' last values.
"""

from __future__ import annotations

import os
import threading
import time

# Latency buckets in seconds: 0.5 ms .. 10 s, dense around the few-ms range a small encoder lives in.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                   0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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
        self.cpu = Counter("trtrun_process_cpu_seconds", "CPU time (user + system) of the server process(es), "
                           "all threads (for CPU cost per request: divide by trtrun_requests_total)", registry=r)
        self.queue_depth = Gauge("trtrun_queue_depth", "requests waiting for a micro-batch", registry=r, **gauge_mode)
        self.in_flight = Gauge("trtrun_requests_in_flight", "requests being served", registry=r, **gauge_mode)
        # Per request only plain Python work: labeled children are looked up once, and the in-flight count
        # is an int on the event loop, copied into its gauge per micro-batch and when /metrics is read.
        self.requests_in_flight = 0
        self._done: dict = {}  # (endpoint, status) -> (requests counter child, latency histogram child)
        self._cpu_lock = threading.Lock()
        self._cpu_seen = time.process_time()
        self.queue_depth_fn = None  # set by the app: () -> requests waiting

    def request_done(self, endpoint: str, status: str, seconds: float) -> None:
        """One HTTP request answered (called on the event loop)."""
        c = self._done.get((endpoint, status))
        if c is None:
            c = self._done[(endpoint, status)] = (self.requests.labels(endpoint, status),
                                                   self.latency.labels(endpoint))
        c[0].inc()
        c[1].observe(seconds)

    def _refresh(self) -> None:
        """Bring the CPU counter and the gauges up to date (per micro-batch, and when /metrics is read)."""
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
        for q in queue_seconds:
            self.queue_time.observe(q)
        self._refresh()

    def on_engine_batch(self, rows: int, seq: int, real_tokens: int, seconds: float) -> None:
        self.engine_batch_size.observe(rows)
        self.engine_batch_tokens.observe(rows * seq)
        self.engine_time.observe(seconds)
        self.tokens.inc(real_tokens)
        self.padding.inc(rows * seq - real_tokens)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        self._refresh()
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)  # every worker's files, summed
        return generate_latest(reg), CONTENT_TYPE_LATEST
