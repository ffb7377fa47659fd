"""The HTTP embedding service: a Starlette app around an Embedder and a MicroBatcher, run by uvicorn.

Endpoints
    POST /v1/embeddings  OpenAI shape: {"input": str | [str], "model"?, "encoding_format"?: "float"|"base64"}
                         -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
                             "model", "usage": {"prompt_tokens", "total_tokens"}}
    POST /embed          {"inputs": str | [str]} -> [[float, ...], ...]  (Text Embeddings Inference's shape)
    GET  /health         200 {"status": "ok", ...} while serving, 503 before start / after shutdown
    GET  /metrics        Prometheus text (trtrun_* counters and histograms)

Errors are JSON, {"error": {"message", "type", "code"}}, with these status codes:
    400  body is not JSON / not UTF-8 / empty; an input longer than --max-chars characters, or (with
         truncation "reject") longer than the model's maximum tokens
    413  body larger than --max-body-bytes (refused while reading, so a huge body is never held)
    422  valid JSON of the wrong shape: not an object, a missing field, wrong types, an empty list or
         empty string, more than --max-inputs inputs, an unknown encoding_format
    503  queue full (overloaded), or shutting down
    500  an engine failure (the message says what); the server keeps serving
Graceful shutdown is uvicorn's: on SIGTERM/SIGINT it stops accepting connections, lets requests in
flight finish, then the lifespan hook drains the batcher.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import numpy as np

from ..embedder import InputTooLongError
from ..errors import InputError, TrtrunError
from .batcher import BatcherClosedError, MicroBatcher, QueueFullError
from .metrics import ServerMetrics

log = logging.getLogger("trtrun.serve")

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


@dataclass
class ServeConfig:
    """Limits and batching of one server (the `trtrun serve` options)."""

    model_name: str | None = None  # what responses call the model (default: the plan's file name)
    max_inputs: int = 128  # texts per request
    max_chars: int = 20_000  # characters per text (tokens beyond the model's maximum are cut or rejected)
    max_body_bytes: int = 2_000_000  # request body (Text Embeddings Inference's default payload limit)
    max_wait_ms: float = 0.5  # micro-batching: longest wait for other requests (docs/serve.md: why 0.5)
    max_batch_tokens: int | None = None  # micro-batch token budget (default: the Embedder's)
    batching: bool = True  # False: every request is its own engine call (max batch 1 request)
    max_queue: int = 4096  # waiting requests beyond which requests get 503

    def __post_init__(self):
        for name in ("max_inputs", "max_chars", "max_body_bytes", "max_queue"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


def _json_type(v) -> str:
    return _JSON_TYPES.get(type(v), type(v).__name__)


try:  # orjson writes a 384-float vector ~30x faster than json (10 us vs 350 us here): the largest
    # per-request cost on the event loop. Optional; json does the same job more slowly.
    import orjson as _orjson
except ImportError:
    _orjson = None


def _loads(body: bytes):
    """Parse a request body. orjson where installed (~7x faster on small bodies); a body it refuses goes to
    json, which gives the error message (and accepts what json always accepted: NaN, huge integers)."""
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except ValueError:
            pass
    return json.loads(body)


def _dumps(obj) -> bytes:
    """JSON bytes; numpy float32 arrays become lists of their shortest round-tripping float32 decimals."""
    if _orjson is not None:
        return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=lambda o: o.tolist()).encode("utf-8")


class _Disconnected(Exception):
    """The client went away before its request body was read."""


def _app_class():
    """A Starlette app whose two embedding endpoints (POST /v1/embeddings, POST /embed) skip Starlette's
    per-request machinery: they are plain ASGI handlers that answer every error themselves, so the error
    middlewares, the router, and Request/Response objects would only add CPU to the hot path (~10% of a
    request's event-loop time). Everything else (other methods and paths: 404, 405, redirects; /health,
    /metrics; the lifespan; a root_path) goes through Starlette as usual, and the same handlers are also
    registered as its routes."""
    from starlette.applications import Starlette

    class App(Starlette):
        _hot: dict = {}

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
                handler = self._hot.get(scope["path"])
                if handler is not None:
                    scope["app"] = self
                    await handler(scope, receive, send)
                    return
            await Starlette.__call__(self, scope, receive, send)

    return App


class _Asgi:
    """An ASGI callable for a Starlette Route (a plain function would be wrapped in a Request/Response)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    async def __call__(self, scope, receive, send):
        await self.fn(scope, receive, send)


_JSON_HEADERS = [(b"content-type", b"application/json")]
_RETRY_HEADERS = [(b"retry-after", b"1")]


def create_app(embedder, config: ServeConfig | None = None):
    """A Starlette app serving `embedder` (the batcher starts and stops with the app's lifespan)."""
    from starlette.responses import Response
    from starlette.routing import Route

    cfg = config or ServeConfig()
    model_name = cfg.model_name or embedder.model_name
    metrics = ServerMetrics()
    # A request body is read into memory up to max_body_bytes; past that it is read and dropped (so the
    # client sees the 413 rather than a reset connection) up to this hard cap, then the connection closes.
    drain_cap = max(16 << 20, 4 * cfg.max_body_bytes)
    max_body = cfg.max_body_bytes
    live = {"batcher": None, "accepting": False}  # what the lifespan started (also in app.state)

    def json_response(obj, status: int = 200, headers=None) -> Response:
        return Response(_dumps(obj), status_code=status, media_type="application/json", headers=headers)

    def error_parts(e: ApiError) -> tuple[int, bytes, list]:
        body = _dumps({"error": {"message": e.message, "type": e.kind, "code": e.status}})
        return e.status, body, _RETRY_HEADERS if e.status == 503 else []

    async def read_json(scope, receive):
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    raise ApiError(400, f"Content-Length {v.decode('latin-1')!r} is not a number") from None
                if n > drain_cap:
                    raise ApiError(413, f"request body of {n} bytes is larger than the limit of "
                                        f"{max_body} bytes (--max-body-bytes)", "payload_too_large")
                break
        body, chunks, size = b"", None, 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # http.disconnect
                raise _Disconnected()
            chunk = msg.get("body", b"")
            if chunk:
                size += len(chunk)
                if size <= max_body:
                    if not body and chunks is None:
                        body = chunk  # the usual case: the whole body in one message
                    else:
                        if chunks is None:
                            chunks = [body]
                        chunks.append(chunk)
                elif size > drain_cap:
                    break
            if not msg.get("more_body", False):
                break
        if size > max_body:
            raise ApiError(413, f"request body of {size}{'+' if size > drain_cap else ''} bytes is larger than "
                                f"the limit of {max_body} bytes (--max-body-bytes)", "payload_too_large")
        if chunks is not None:
            body = b"".join(chunks)
        if not body.strip():
            raise ApiError(400, "request body is empty; send a JSON object")
        try:
            return _loads(body)
        except UnicodeDecodeError as e:
            raise ApiError(400, f"request body is not UTF-8 text: {e}") from None
        except ValueError as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None

    def get_texts(obj, key: str) -> list[str]:
        if not isinstance(obj, dict):
            raise ApiError(422, f"request body must be a JSON object with field '{key}', got {_json_type(obj)}")
        if key not in obj:
            raise ApiError(422, f"missing field '{key}' (a string or a list of strings)")
        v = obj[key]
        if isinstance(v, str):
            texts = [v]
        elif isinstance(v, list):
            if not v:
                raise ApiError(422, f"'{key}' is an empty list; send at least one text")
            if len(v) > cfg.max_inputs:
                raise ApiError(422, f"'{key}' has {len(v)} inputs; at most {cfg.max_inputs} per request "
                                    f"(--max-inputs)")
            for i, t in enumerate(v):
                if not isinstance(t, str):
                    hint = "; token-id inputs are not supported, send text" if isinstance(t, (int, list)) else ""
                    raise ApiError(422, f"'{key}[{i}]' is {_json_type(t)}, expected a string{hint}")
            texts = v
        else:
            raise ApiError(422, f"'{key}' must be a string or a list of strings, got {_json_type(v)}")
        for i, t in enumerate(texts):
            where = f"'{key}[{i}]'" if isinstance(v, list) else f"'{key}'"
            if not t:
                raise ApiError(422, f"{where} is an empty string")
            if len(t) > cfg.max_chars:
                raise ApiError(400, f"{where} has {len(t)} characters; at most {cfg.max_chars} per input "
                                    f"(--max-chars)", "input_too_long")
        return texts

    async def embed(texts):
        batcher: MicroBatcher | None = live["batcher"]
        if batcher is None or not live["accepting"]:
            raise ApiError(503, "the server is not running (starting up or shutting down)", "unavailable")
        try:
            fut = batcher.submit_async(texts)
        except QueueFullError as e:
            raise ApiError(503, f"server overloaded: {e}; retry later", "overloaded") from None
        except BatcherClosedError:
            raise ApiError(503, "the server is shutting down", "unavailable") from None
        except InputError as e:
            raise ApiError(422, str(e)) from None
        try:
            res = await fut
        except QueueFullError as e:  # (from a shared engine process: its queue is full)
            raise ApiError(503, f"server overloaded: {e}; retry later", "overloaded") from None
        except BatcherClosedError as e:  # (shared engine process: stopping, or restarting after a crash)
            raise ApiError(503, str(e), "unavailable") from None
        except InputTooLongError as e:
            raise ApiError(400, str(e), "input_too_long") from None
        except InputError as e:
            raise ApiError(422, str(e)) from None
        except TrtrunError as e:
            log.error("engine error: %s", e)
            raise ApiError(500, f"engine error: {e}", "server_error") from None
        if not np.isfinite(res.embeddings).all():
            bad = np.flatnonzero(~np.isfinite(res.embeddings).all(axis=1)).tolist()
            log.error("engine produced NaN/Inf for inputs %s", bad[:10])
            raise ApiError(500, f"the engine produced NaN or Inf for input(s) {bad[:10]} (a precision overflow?)",
                           "server_error")
        if res.any_truncated:
            metrics.truncated.inc(int(res.truncated.sum()))
        metrics.inputs_done += len(res)
        return res

    def endpoint(name: str, fn):
        """fn(scope, receive) -> (status, JSON body bytes), or raises ApiError: an ASGI handler that answers
        every outcome itself (a bug too: 500 with its message) and counts it in the metrics."""
        async def handler(scope, receive, send):
            t0 = time.perf_counter()
            metrics.requests_in_flight += 1
            status = "cancelled"
            try:
                try:
                    code, body = await fn(scope, receive)
                    headers = _JSON_HEADERS
                except ApiError as e:
                    code, body, extra = error_parts(e)
                    headers = _JSON_HEADERS + extra
                except _Disconnected:
                    return
                except Exception as e:  # noqa: BLE001 - a bug must not take the server down
                    log.exception("internal error in %s", name)
                    code, body, extra = error_parts(ApiError(500, f"internal error: {type(e).__name__}: {e}",
                                                             "server_error"))
                    headers = _JSON_HEADERS
                status = _STATUS.get(code) or str(code)
            finally:
                metrics.requests_in_flight -= 1
                metrics.request_done(name, status, time.perf_counter() - t0)
            await send({"type": "http.response.start", "status": code,
                        "headers": [(b"content-length", str(len(body)).encode()), *headers]})
            await send({"type": "http.response.body", "body": body})
        return handler

    async def openai_embeddings(scope, receive):
        obj = await read_json(scope, receive)
        texts = get_texts(obj, "input")
        fmt = obj.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise ApiError(422, f"encoding_format must be 'float' or 'base64', got {fmt!r}")
        if "model" in obj and not isinstance(obj["model"], str):
            raise ApiError(422, f"'model' must be a string, got {_json_type(obj['model'])}")
        dims = obj.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims != embedder.dim):
            raise ApiError(422, f"'dimensions' {dims!r} is not supported: this model makes {embedder.dim}-dimensional "
                                f"embeddings")
        res = await embed(texts)
        if fmt == "float":
            vecs = list(np.ascontiguousarray(res.embeddings, dtype=np.float32))  # rows, serialized by _dumps
        else:
            vecs = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in res.embeddings]
        n = res.total_tokens
        return 200, _dumps({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)],
            "model": model_name,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        })

    async def tei_embed(scope, receive):
        obj = await read_json(scope, receive)
        texts = get_texts(obj, "inputs")
        res = await embed(texts)
        return 200, _dumps(np.ascontiguousarray(res.embeddings, dtype=np.float32))

    async def health(request):
        batcher = live["batcher"]
        ok = batcher is not None and live["accepting"]
        engine_down = None
        if ok and hasattr(batcher, "check_engine"):  # a front of a shared engine process: is it reachable?
            engine_down = await batcher.check_engine()
            ok = engine_down is None
        body = {"status": "ok" if ok else "unavailable", "model": model_name, **embedder.describe(),
                "batching": cfg.batching, "max_wait_ms": cfg.max_wait_ms, "pid": os.getpid(),
                "queue_depth": batcher.queue_depth() if batcher is not None else 0}
        if engine_down is not None:
            body["reason"] = engine_down
        return json_response(body, 200 if ok else 503)

    async def metrics_endpoint(request):
        data, ctype = metrics.render()
        return Response(data, media_type=ctype.split(";")[0], headers={"Content-Type": ctype})

    @asynccontextmanager
    async def lifespan(app):
        make_batcher = getattr(embedder, "make_batcher", None)
        if make_batcher is not None:  # a front of a shared engine process (engine_proc.RemoteEmbedder)
            batcher = make_batcher(cfg)
        else:
            batcher = MicroBatcher.for_server(embedder, cfg, metrics)
        app.state.batcher = live["batcher"] = batcher
        # (a front of a shared engine: the engine process reports the queue; this one's waiting requests are
        # in it, or running)
        metrics.queue_depth_fn = batcher.queue_depth if make_batcher is None else None
        app.state.accepting = live["accepting"] = True
        log.info("serving %s: %s", model_name, embedder.describe())
        try:
            yield
        finally:
            app.state.accepting = live["accepting"] = False
            # uvicorn has already waited for the requests in flight; this finishes anything still queued
            await asyncio.get_running_loop().run_in_executor(None, batcher.close)
            metrics.flush()

    hot = {"/v1/embeddings": endpoint("/v1/embeddings", openai_embeddings),
           "/embed": endpoint("/embed", tei_embed)}
    app = _app_class()(routes=[
        Route("/v1/embeddings", _Asgi(hot["/v1/embeddings"]), methods=["POST"]),
        Route("/embed", _Asgi(hot["/embed"]), methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ], lifespan=lifespan)
    app._hot = hot
    app.state.batcher = None
    app.state.accepting = False
    app.state.metrics = metrics
    app.state.config = asdict(cfg)
    return app


_STATUS = {c: str(c) for c in (200, 400, 413, 422, 500, 503)}


# Python's cyclic garbage collector runs a young-generation pass every 700 net allocations of container
# objects. A server allocates dozens per request (scope, messages, coroutines, futures), and with 64
# requests in flight their objects outlive a pass, so passes came every ~20 requests, each walking every
# live young object and promoting them to be walked again in the older generations: ~14 us of CPU per
# request before the hot endpoints left Starlette's stack, ~3.5 us after (measured with gc.callbacks on the
# stub server). A request makes no reference cycles in steady state (no pass ran at all at 10,000:
# bench/NOTES-serve.md), so a larger threshold costs no memory there.
GC_GEN0_THRESHOLD = 10_000


# The GIL's switch interval in serving processes (Python's default is 5 ms). A thread that comes back from
# GIL-free work (the GPU run, the tokenizer) waits for the GIL until its holder lets go, or at most this long
# before the holder is asked to: in a busy process (event loop, gatherer, batch workers) those waits were most
# of an engine call's time (H200 host, 2026-11-26, shared engine, 64 clients: 2.61 -> 2.43 ms a call at 5 -> 0.5
# ms, bench/NOTES-serve.md, session 6). TRTRUN_SWITCH_INTERVAL_MS overrides it (0: Python's own).
SWITCH_INTERVAL_MS = 0.5


def tune_process() -> None:
    """For a process that serves from now on (run_server and each --workers process call it just before
    serving; an application embedding create_app in its own server decides for itself):

    - garbage collector: everything allocated so far (modules, the engine, the app) is moved out of its
      reach (gc.freeze: full passes no longer walk it), and young passes run every GC_GEN0_THRESHOLD net
      allocations instead of 700;
    - the GIL's switch interval: SWITCH_INTERVAL_MS (0.5 ms) instead of 5 ms;
    - tokenizer: TOKENIZERS_PARALLELISM=false unless set, so a window's texts are tokenized in the batch
      worker's own thread (without the GIL, as before) instead of being spread over a rayon pool of one
      thread per core: for windows of tens of short texts the pool's hand-offs and idle spinning cost more
      CPU than they save (~8 us a request on 2 cores, more with a thread per core of a big host); windows
      still tokenize in parallel with each other (one per context).
    """
    import gc

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        sw = float(os.environ.get("TRTRUN_SWITCH_INTERVAL_MS", SWITCH_INTERVAL_MS))
    except ValueError:
        sw = SWITCH_INTERVAL_MS
    if sw > 0:
        import sys

        sys.setswitchinterval(sw / 1000.0)
    gc.collect()
    gc.freeze()
    g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(g0, GC_GEN0_THRESHOLD), g1, g2)


def run_server(embedder, config: ServeConfig | None = None, *, host: str = "127.0.0.1", port: int = 8080,
               log_level: str = "info", access_log: bool = False, graceful_timeout: float = 30.0) -> None:
    """Serve until SIGTERM/SIGINT (then stop accepting, finish requests in flight, drain, return)."""
    import uvicorn

    app = create_app(embedder, config)
    uconf = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                           lifespan="on", timeout_graceful_shutdown=graceful_timeout)
    server = uvicorn.Server(uconf)
    tune_process()
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind; library code must not end the process
        raise TrtrunError(f"the server could not start on {host}:{port} (see the log above; port in use?)") from e
