"""The HTTP embedding service: a Starlette app around an Embedder and a MicroBatcher, run by uvicorn.

Endpoints
    POST /v1/embeddings  OpenAI shape: {"input": str | [str], "model"?, "encoding_format"?: "float"|"base64"}
                         -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
                             "model", "usage": {"prompt_tokens", "total_tokens"}}
    POST /embed          {"inputs": str | [str]} -> [[float, ...], ...]  (Text Embeddings Inference's shape)
    GET  /v1/models      OpenAI shape: {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}
    GET  /v1/models/{id} that model, or 404
    GET  /health         200 {"status": "ok", ...} while serving, 503 before start / after shutdown
    GET  /metrics        Prometheus text (trtrun_* counters and histograms)

Every error, whatever its status, is JSON, {"error": {"message", "type", "code"}}:
    400  body is not JSON / not UTF-8 / empty / nested deeper than max_json_depth; an input longer than
         --max-chars characters, or (truncation "reject", the default) longer than the model's maximum
         tokens (the message says its token count and the limit); an input that is not valid Unicode
         (a lone surrogate); a malformed HTTP request. The message names the input's index.
    401  --api-key set and the request lacks "Authorization: Bearer <key>" (or has another key)
    404, 405  no such path, or not that method there
    408  the request head or body did not arrive within --header-timeout / --body-timeout
    413  body larger than --max-body-bytes (refused while reading, so a huge body is never held)
    422  valid JSON of the wrong shape: not an object, a missing field, wrong types, an empty list or
         empty string, more than --max-inputs inputs, an unknown encoding_format
    503  queue full (overloaded), more than --max-connections connections, or shutting down
    500  an engine failure (the message says what); the server keeps serving
With truncation "truncate", a response whose inputs were cut says which: the header X-Truncated-Inputs
(their indices, comma-separated), and in /v1/embeddings "truncated": true on those items.
The connection limits and read timeouts live in the HTTP protocol (protocol.py says why uvicorn's own
settings do not cover them).
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
from dataclasses import asdict, dataclass, field

import numpy as np

from ..embed import InputTooLongError, InvalidTextError, text_problem
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
    max_json_depth: int = 32  # nesting of a request's JSON (a request needs 2: an object holding a list)
    # Connections and timeouts (enforced by the HTTP protocol, protocol.py; per worker process)
    max_connections: int = 1000  # open connections of one process (--workers N: N times this in all); beyond, a
    # quick 503 (capped below the file-descriptor limit)
    header_timeout: float = 10.0  # seconds for a request head to arrive
    body_timeout: float = 30.0  # seconds for a request body to arrive, after its head
    keep_alive_timeout: float = 5.0  # seconds an idle keep-alive connection stays open (uvicorn's)
    api_key: str | None = field(default=None, repr=False)  # Bearer token every request must carry
    public_health: bool = False  # with api_key: /health and /metrics answer without it

    def __post_init__(self):
        for name in ("max_inputs", "max_chars", "max_body_bytes", "max_queue", "max_json_depth", "max_connections"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError("api_key must be a non-empty string (or None for no key)")


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


class _TooDeep(ValueError):
    pass


def json_depth(body: bytes, limit: int) -> int:
    """The nesting depth of JSON text, or a bound of it that is <= limit when the depth is (cheap first: the
    number of opening brackets bounds the depth; only a body with more than `limit` of them is scanned, with
    its strings removed, at C speed by re and numpy)."""
    n = body.count(b"[") + body.count(b"{")
    if n <= limit:
        return n
    import re

    # A string may also end at the end of the body (unterminated: the JSON is refused anyway), so every match
    # succeeds and the scan is linear; requiring the closing quote made it retry from each escaped quote.
    bare = np.frombuffer(re.sub(rb'(?s)"(?:[^"\\]|\\.)*(?:"|\\?\Z)', b"", body), np.uint8)
    step = (np.isin(bare, (0x5B, 0x7B)).astype(np.int32) - np.isin(bare, (0x5D, 0x7D)).astype(np.int32))
    return int(np.cumsum(step).max(initial=0))


def _loads(body: bytes, max_depth: int = 32):
    """Parse a request body: UTF-8 only (json.loads would also take UTF-16 and UTF-32), at most max_depth
    levels of nesting (json's parser recurses: 1,500 levels raised RecursionError). orjson where installed
    (~7x faster on small bodies); a body it refuses goes to json, which gives the error message (and accepts
    what json always accepted: NaN, huge integers)."""
    if json_depth(body, max_depth) > max_depth:
        raise _TooDeep(f"request JSON is nested deeper than {max_depth} levels")
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except ValueError:
            pass
    return json.loads(body.decode("utf-8"))


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
        _auth = None  # with an API key: scope -> whether the request may pass (_bearer_check)
        _refuse = None  # ServerMetrics.refuse

        async def __call__(self, scope, receive, send):
            if self._auth is not None and scope["type"] == "http" and not self._auth(scope):
                self._refuse("api_key")
                await send({"type": "http.response.start", "status": 401, "headers": _UNAUTHORIZED[0]})
                await send({"type": "http.response.body", "body": _UNAUTHORIZED[1]})
                return
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
_UNAUTHORIZED_BODY = json.dumps({"error": {
    "message": "this server needs an API key: send the header 'Authorization: Bearer <key>'",
    "type": "invalid_api_key", "code": 401}}).encode()
_UNAUTHORIZED = ([(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                  (b"content-length", str(len(_UNAUTHORIZED_BODY)).encode())], _UNAUTHORIZED_BODY)


def _bearer_check(api_key: str, open_paths=()):
    """scope -> True when the request carries "Authorization: Bearer <api_key>" (or asks for an open path).
    The key is compared in constant time (hmac.compare_digest), so the time taken says nothing of how much
    of a guess was right."""
    import hmac

    want = api_key.strip().encode("utf-8")  # (a header value has no surrounding whitespace: a key's own never matches)
    open_paths = frozenset(open_paths)

    def allowed(scope) -> bool:
        if open_paths and scope["path"] in open_paths:
            return True
        for k, v in scope["headers"]:
            if k == b"authorization":
                scheme, _, token = v.strip().partition(b" ")
                return hmac.compare_digest(token.strip(), want) and scheme.lower() == b"bearer"
        return False

    return allowed


def quiet_accept_errors(loop) -> None:
    """At the file-descriptor limit, asyncio's accept loop reports "socket.accept() out of system resource"
    with a traceback for every failed accept (up to the listen backlog, 2048, per loop turn): 197 MB of log
    in 30 s was seen. --max-connections keeps a server below the limit; should it be reached anyway (other
    files, several servers in one process), these reports become one warning line every few seconds."""
    from .protocol import _RateLog

    prev = loop.get_exception_handler()
    rate = _RateLog("could not accept")

    def handler(lp, context):
        if context.get("message") == "socket.accept() out of system resource":
            exc = context.get("exception")
            rate.hit(f"{exc.strerror if isinstance(exc, OSError) else exc}; lower --max-connections or raise "
                     f"the open-file limit (ulimit -n)")
            return
        if prev is not None:
            prev(lp, context)
        else:
            lp.default_exception_handler(context)

    loop.set_exception_handler(handler)


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

    def refused(reason: str, status: int, message: str, kind: str = "invalid_request_error") -> ApiError:
        """The error of a request refused while its body is read, counted by reason (metrics.REFUSALS)."""
        metrics.refuse(reason)
        return ApiError(status, message, kind)

    async def read_json(scope, receive):
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    raise refused("bad_http", 400, f"Content-Length {v.decode('latin-1')!r} is not a number") from None
                if n > drain_cap:
                    raise refused("body_too_large", 413, f"request body of {n} bytes is larger than the limit of "
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
            raise refused("body_too_large", 413, f"request body of {size}{'+' if size > drain_cap else ''} bytes is "
                                                 f"larger than the limit of {max_body} bytes (--max-body-bytes)",
                          "payload_too_large")
        if chunks is not None:
            body = b"".join(chunks)
        if not body.strip():
            raise refused("bad_json", 400, "request body is empty; send a JSON object")
        try:
            return _loads(body, cfg.max_json_depth)
        except UnicodeDecodeError as e:
            raise refused("bad_json", 400, f"request body is not UTF-8 text: {e}") from None
        except _TooDeep as e:
            raise refused("bad_json", 400, str(e)) from None
        except RecursionError:
            raise refused("bad_json", 400, f"request JSON is nested too deeply (at most {cfg.max_json_depth} "
                                           f"levels)") from None
        except ValueError as e:
            raise refused("bad_json", 400, f"request body is not valid JSON: {e}") from None

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
            if not t.isascii():
                why = text_problem(t)
                if why is not None:
                    raise ApiError(400, f"{where} {why}", "invalid_input")
        return texts

    def input_error(e: InputError, key: str, single: bool) -> ApiError:
        """400/422 for an input problem found past the request checks (in the Embedder or the engine process),
        naming the input by its place in the request."""
        def where(i):
            return f"'{key}'" if single else f"'{key}[{i}]'"

        if isinstance(e, InputTooLongError):
            if e.token_counts is not None and e.limit is not None:
                parts = [f"{where(i)} has {n} tokens" for i, n in zip(e.indices[:5], e.token_counts)]
                more = f" (and {len(e.indices) - 5} more)" if len(e.indices) > 5 else ""
                msg = (f"{', '.join(parts)}{more}, more than this model's limit of {e.limit} tokens per input; "
                       f"shorten {'them' if len(e.indices) > 1 else 'it'} (this server rejects long inputs: "
                       f"--truncation reject)")
            else:
                msg = str(e)
            return ApiError(400, msg, "input_too_long")
        if isinstance(e, InvalidTextError):
            if e.indices and e.reason:
                return ApiError(400, f"{where(e.indices[0])} {e.reason}", "invalid_input")
            return ApiError(400, str(e), "invalid_input")
        return ApiError(422, str(e))

    async def embed(texts, key: str = "input", single: bool = False):
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
            raise input_error(e, key, single) from None
        try:
            res = await fut
        except QueueFullError as e:  # (from a shared engine process: its queue is full)
            raise ApiError(503, f"server overloaded: {e}; retry later", "overloaded") from None
        except BatcherClosedError as e:  # (shared engine process: stopping, or restarting after a crash)
            raise ApiError(503, str(e), "unavailable") from None
        except InputError as e:
            raise input_error(e, key, single) from None
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
                    code, body, *more = await fn(scope, receive)
                    headers = _JSON_HEADERS + more[0] if more else _JSON_HEADERS
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

    def truncated_header(res) -> list:
        """X-Truncated-Inputs: the indices of the inputs that were cut (truncation "truncate"), or nothing."""
        if not res.any_truncated:
            return []
        return [(b"x-truncated-inputs", ",".join(map(str, np.flatnonzero(res.truncated).tolist())).encode())]

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
        res = await embed(texts, "input", isinstance(obj["input"], str))
        if fmt == "float":
            vecs = list(np.ascontiguousarray(res.embeddings, dtype=np.float32))  # rows, serialized by _dumps
        else:
            vecs = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in res.embeddings]
        n = res.total_tokens
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)]
        if res.any_truncated:
            for i in np.flatnonzero(res.truncated).tolist():
                data[i]["truncated"] = True
        return 200, _dumps({
            "object": "list",
            "data": data,
            "model": model_name,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }), truncated_header(res)

    async def tei_embed(scope, receive):
        obj = await read_json(scope, receive)
        texts = get_texts(obj, "inputs")
        res = await embed(texts, "inputs", isinstance(obj["inputs"], str))
        return 200, _dumps(np.ascontiguousarray(res.embeddings, dtype=np.float32)), truncated_header(res)

    created = int(time.time())
    model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "trtrun"}

    async def list_models(request):
        return json_response({"object": "list", "data": [model_card]})

    async def get_model(request):
        mid = request.path_params["model"]
        if mid != model_name:
            raise ApiError(404, f"the model {mid!r} does not exist here; this server serves {model_name!r}",
                           "not_found")
        return json_response(model_card)

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

    async def api_error(request, exc: ApiError):
        status, body, extra = error_parts(exc)
        return Response(body, status_code=status, media_type="application/json", headers=dict(
            (k.decode(), v.decode()) for k, v in extra))

    async def http_error(request, exc):
        """Starlette's own errors (404 no route, 405 wrong method, ...) in the JSON error shape."""
        status = int(getattr(exc, "status_code", 500))
        phrase = {404: f"no such path: {request.method} {request.url.path} (the endpoints: POST /v1/embeddings, "
                       f"POST /embed, GET /v1/models, GET /health, GET /metrics)",
                  405: f"method {request.method} is not allowed on {request.url.path}"}.get(status)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request_error")
        status, body, extra = error_parts(ApiError(status, phrase or str(getattr(exc, "detail", "")) or "error", kind))
        headers = dict(getattr(exc, "headers", None) or {})
        headers.update((k.decode(), v.decode()) for k, v in extra)
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    async def server_error(request, exc):
        log.error("internal error in %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        _, body, _ = error_parts(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error"))
        return Response(body, status_code=500, media_type="application/json")

    @asynccontextmanager
    async def lifespan(app):
        quiet_accept_errors(asyncio.get_running_loop())
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

    from starlette.exceptions import HTTPException

    hot = {"/v1/embeddings": endpoint("/v1/embeddings", openai_embeddings),
           "/embed": endpoint("/embed", tei_embed)}
    app = _app_class()(routes=[
        Route("/v1/embeddings", _Asgi(hot["/v1/embeddings"]), methods=["POST"]),
        Route("/embed", _Asgi(hot["/embed"]), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ], lifespan=lifespan, exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app._hot = hot
    app._refuse = metrics.refuse
    if cfg.api_key is not None:
        app._auth = _bearer_check(cfg.api_key, open_paths=("/health", "/metrics") if cfg.public_health else ())
    app.state.batcher = None
    app.state.accepting = False
    app.state.metrics = metrics
    app.state.config = {k: v for k, v in asdict(cfg).items() if k != "api_key"}
    return app


_STATUS = {c: str(c) for c in (200, 400, 413, 422, 500, 503)}


# Python's cyclic garbage collector runs a young-generation pass every 700 net allocations of container
# objects. A server allocates dozens per request (scope, messages, coroutines, futures), and with 64
# requests in flight their objects outlive a pass, so passes came every ~20 requests, each walking every
# live young object and promoting them to be walked again in the older generations: ~14 us of CPU per
# request before the hot endpoints left Starlette's stack, ~3.5 us after (measured with gc.callbacks on the
# stub server). A request makes no reference cycles in steady state (no pass ran at all at 10,000:
# docs/performance.md, "Serving"), so a larger threshold costs no memory there.
GC_GEN0_THRESHOLD = 10_000


# The GIL's switch interval in serving processes (Python's default is 5 ms). A thread that comes back from
# GIL-free work (the GPU run, the tokenizer) waits for the GIL until its holder lets go, or at most this long
# before the holder is asked to: in a busy process (event loop, gatherer, batch workers) those waits were most
# of an engine call's time (H200 host, shared engine, 64 clients: 2.61 -> 2.43 ms a call at 5 -> 0.5
# ms; results/serve-h200/README.md). TRTRUN_SWITCH_INTERVAL_MS overrides it (0: Python's own).
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


# File descriptors a server process keeps beside its connections: what it holds at start (libraries, the
# engine, the metrics files; measured from /proc where there is one), connections answered with a 503, 408 or
# 400 while they linger (protocol.MAX_LINGERING, fewer where the open-file limit is tight), and a margin for
# files opened later.
FD_MARGIN = 32


def connection_budget(max_connections: int) -> tuple[int, int, str | None]:
    """(connections this process may hold open, answered ones it may keep lingering, a note when the
    connections are fewer than asked). The soft open-file limit is raised towards the hard one where needed
    (as servers do); if it still does not leave room for max_connections and protocol.MAX_LINGERING beside
    the process's own files, fewer answered connections linger (down to protocol.MIN_LINGERING), and then
    the connection limit is lowered, so that accept() never fails with "Too many open files" (at that point
    the server stops accepting and asyncio floods the log)."""
    from .protocol import MAX_LINGERING, MIN_LINGERING

    try:
        import resource
    except ImportError:  # not a POSIX system
        return max_connections, MAX_LINGERING, None
    try:
        own = len(os.listdir("/proc/self/fd"))
    except OSError:
        own = 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    need = max_connections + own + MAX_LINGERING + FD_MARGIN
    if soft != inf and soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == inf else min(need, hard), hard))
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ValueError, OSError):
            pass
    if soft == inf or soft >= need:
        return max_connections, MAX_LINGERING, None
    spare = soft - own - FD_MARGIN - max_connections
    if spare >= MIN_LINGERING:
        return max_connections, spare, None
    reserve = own + MIN_LINGERING + FD_MARGIN
    n = max(1, soft - reserve)
    return n, MIN_LINGERING, (f"--max-connections {max_connections} lowered to {n}: the open-file limit (ulimit -n) "
                              f"is {soft} and {reserve} are kept for the server's own files and for "
                              f"connections being answered with an error")


def uvicorn_server(app, config: ServeConfig, *, on_started=None, **uvicorn_options):
    """A uvicorn.Server for `app` with this config's connection limits and timeouts: uvicorn's own settings
    where it has them (timeout_keep_alive; the listen backlog and the request-head size limit stay at
    uvicorn's defaults), the rest in the protocol (protocol.py says why). on_started(server): called on the
    event loop once the listening sockets are bound."""
    import uvicorn

    from .protocol import Guard, guarded_protocol

    n, lingering, note = connection_budget(config.max_connections)
    if note:
        log.warning("%s", note)
    metrics = getattr(getattr(app, "state", None), "metrics", None)  # create_app's: refusals count in /metrics
    guard = Guard(n, config.header_timeout, config.body_timeout,
                  on_refused=metrics.refuse if metrics is not None else None, max_lingering=lingering)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and on_started is not None:
                on_started(self)

    uconf = uvicorn.Config(app, lifespan="on", http=guarded_protocol(guard),
                           timeout_keep_alive=config.keep_alive_timeout, **uvicorn_options)
    server = Server(uconf)
    server.guard = guard
    return server


def bound_address(server) -> str:
    """http://host:port of a started uvicorn server's first listening socket."""
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_server(embedder, config: ServeConfig | None = None, *, host: str = "127.0.0.1", port: int = 8080,
               log_level: str = "info", access_log: bool = False, graceful_timeout: float = 30.0,
               on_started=None) -> None:
    """Serve until SIGTERM/SIGINT (then stop accepting, finish requests in flight, drain, return).
    on_started(address): called once the socket is bound and the server accepts connections."""
    cfg = config or ServeConfig()
    app = create_app(embedder, cfg)
    server = uvicorn_server(app, cfg, host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=graceful_timeout,
                            on_started=(lambda srv: on_started(bound_address(srv))) if on_started else None)
    tune_process()
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind; library code must not end the process
        raise TrtrunError(f"the server could not start on {host}:{port} (see the log above; port in use?)") from e
