"""One engine process shared by N HTTP worker processes: `trtrun serve --workers N --shared-engine`.

Why: a server process is capped by the Python work per request under its one GIL (HTTP, JSON, asyncio:
~90 us a request on the event loop, docs/performance.md, "Serving"), long before a small encoder keeps the GPU busy.
`--workers N` multiplies the processes, but each one then has its own engine and batcher, so the clients are
split N ways, every micro-batch is N times smaller, and N processes' CUDA contexts take turns on the GPU.
With `--shared-engine` the N worker processes ("fronts") only speak HTTP: parse and check the request,
send its texts to one engine process over a Unix socket, and write the JSON answer. The engine process holds
the one Embedder (engine, contexts) and the one MicroBatcher, so the requests of all fronts share its windows.
Text Embeddings Inference is built the same way (a router in front of one model backend).

Wire format (little-endian; both ends are this module, so no versioning): every message is a frame
    u32 length of the rest | body
request body:  u64 request id | u32 n | n x u32 UTF-8 byte lengths | the texts' bytes
response body: u64 request id | u8 status |
    status OK:    u32 rows | u32 dim | rows*dim float32 | rows int64 tokens | rows uint8 truncated
    status HELLO: u32 the engine process's pid (request id 0: the first frame on every connection)
    otherwise:    u32 message length | message (UTF-8) | u32 k | k x int32 (the too-long or invalid texts'
                  indices) | status TOO_LONG: k x int32 token counts | int32 limit (-1: unknown);
                  status BAD_TEXT: u32 reason length | reason (UTF-8)
Request ids are the front's; answers come in any order. Texts travel as `surrogatepass` UTF-8, so a lone
surrogate that JSON let through reaches the tokenizer exactly as in a single-process server.

The socket lives in a private temporary folder (mode 0700) made by the supervisor: only this user's processes
can connect. A malformed frame closes that connection (its requests are failed on the front's side).

Failure: if the engine process dies, every front fails its requests in flight with 503 ("the engine process
stopped"), the supervisor starts the engine again, and the fronts connect again on their next request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import struct
import sys

import numpy as np

from ..embed import EmbedResult, InputTooLongError, InvalidTextError
from ..errors import InputError, TrtrunError
from .batcher import BatcherClosedError, MicroBatcher, QueueFullError
from .child import child_signals

log = logging.getLogger("trtrun.serve")

_LEN = struct.Struct("<I")
_REQ = struct.Struct("<QI")  # request id, number of texts
_RESP = struct.Struct("<QB")  # request id, status
_DIMS = struct.Struct("<II")  # rows, dim
MAX_FRAME = 1 << 30  # a frame longer than this is taken for garbage (requests are limited to a few MB)

OK, E_INPUT, E_TOO_LONG, E_QUEUE_FULL, E_CLOSED, E_ENGINE, HELLO, E_BAD_TEXT = range(8)
_ERRORS = {E_INPUT: InputError, E_QUEUE_FULL: QueueFullError, E_CLOSED: BatcherClosedError, E_ENGINE: TrtrunError}


class FrameError(ValueError):
    """A frame that does not follow the wire format."""


# ------------------------------------------------------------------------------------------- wire format
def encode_request(rid: int, texts: list) -> bytes:
    blobs = [t.encode("utf-8", "surrogatepass") for t in texts]
    n = len(blobs)
    body = b"".join((_REQ.pack(rid, n), struct.pack(f"<{n}I", *map(len, blobs)), *blobs))
    return _LEN.pack(len(body)) + body


def decode_request(body: bytes) -> tuple[int, list]:
    try:
        rid, n = _REQ.unpack_from(body, 0)
        lens = struct.unpack_from(f"<{n}I", body, _REQ.size)
    except struct.error as e:
        raise FrameError(f"request frame of {len(body)} bytes is too short: {e}") from None
    off = _REQ.size + 4 * n
    if off + sum(lens) != len(body):
        raise FrameError(f"request frame of {len(body)} bytes does not hold {n} texts of {sum(lens)} bytes")
    texts = []
    try:
        for ln in lens:
            texts.append(body[off:off + ln].decode("utf-8", "surrogatepass"))
            off += ln
    except UnicodeDecodeError as e:
        raise FrameError(f"text {len(texts)} of request {rid} is not UTF-8: {e}") from None
    return rid, texts


def encode_result(rid: int, res: EmbedResult) -> bytes:
    e = np.ascontiguousarray(res.embeddings, dtype="<f4")
    if e.ndim != 2:
        raise ValueError(f"embeddings must be [rows, dim], got shape {e.shape}")
    rows, dim = e.shape
    body = b"".join((_RESP.pack(rid, OK), _DIMS.pack(rows, dim), e.tobytes(),
                     np.ascontiguousarray(res.num_tokens, dtype="<i8").tobytes(),
                     np.ascontiguousarray(res.truncated, dtype=np.uint8).tobytes()))
    return _LEN.pack(len(body)) + body


def encode_error(rid: int, exc: BaseException) -> bytes:
    tail = b""
    if isinstance(exc, InputTooLongError):
        kind, idx = E_TOO_LONG, list(exc.indices)
        counts = exc.token_counts if exc.token_counts is not None and len(exc.token_counts) == len(idx) \
            else [-1] * len(idx)
        tail = struct.pack(f"<{len(idx)}ii", *counts, exc.limit if exc.limit is not None else -1)
    elif isinstance(exc, InvalidTextError):
        kind, idx = E_BAD_TEXT, list(exc.indices)
        rb = (exc.reason or "").encode("utf-8", "replace")
        tail = _LEN.pack(len(rb)) + rb
    else:
        idx = []
        kind = (E_QUEUE_FULL if isinstance(exc, QueueFullError) else E_CLOSED if isinstance(exc, BatcherClosedError)
                else E_INPUT if isinstance(exc, InputError) else E_ENGINE)
    msg = str(exc) if isinstance(exc, TrtrunError) else f"{type(exc).__name__}: {exc}"
    mb = msg.encode("utf-8", "replace")
    body = b"".join((_RESP.pack(rid, kind), _LEN.pack(len(mb)), mb, _LEN.pack(len(idx)),
                     struct.pack(f"<{len(idx)}i", *idx), tail))
    return _LEN.pack(len(body)) + body


def decode_response(body: bytes) -> tuple[int, EmbedResult | BaseException | int]:
    try:
        rid, status = _RESP.unpack_from(body, 0)
        off = _RESP.size
        if status == HELLO:
            return rid, int(_LEN.unpack_from(body, off)[0])
        if status == OK:
            rows, dim = _DIMS.unpack_from(body, off)
            off += _DIMS.size
            need = off + rows * dim * 4 + rows * 9
            if need != len(body):
                raise FrameError(f"answer frame of {len(body)} bytes does not hold {rows} x {dim} floats")
            emb = np.frombuffer(body, "<f4", rows * dim, off).reshape(rows, dim)
            off += rows * dim * 4
            ntok = np.frombuffer(body, "<i8", rows, off)
            trunc = np.frombuffer(body, np.uint8, rows, off + rows * 8).astype(bool)
            return rid, EmbedResult(emb, trunc, ntok)
        (mlen,) = _LEN.unpack_from(body, off)
        off += 4
        msg = body[off:off + mlen].decode("utf-8", "replace")
        off += mlen
        (k,) = _LEN.unpack_from(body, off)
        idx = list(struct.unpack_from(f"<{k}i", body, off + 4))
        off += 4 + 4 * k
        if status == E_TOO_LONG:
            *counts, limit = struct.unpack_from(f"<{k}ii", body, off)
            return rid, InputTooLongError(msg, idx, None if any(c < 0 for c in counts) else counts,
                                          None if limit < 0 else limit)
        if status == E_BAD_TEXT:
            (rlen,) = _LEN.unpack_from(body, off)
            reason = body[off + 4:off + 4 + rlen].decode("utf-8", "replace")
            return rid, InvalidTextError(msg, idx, reason or None)
    except struct.error as e:
        raise FrameError(f"answer frame of {len(body)} bytes is too short: {e}") from None
    if status not in _ERRORS:
        raise FrameError(f"answer frame with unknown status {status}")
    return rid, _ERRORS[status](msg)


class Frames:
    """Splits a byte stream into frame bodies."""

    __slots__ = ("buf",)

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        buf = self.buf
        buf += data
        out, pos, end = [], 0, len(buf)
        while end - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > MAX_FRAME:
                raise FrameError(f"frame length {n} is beyond {MAX_FRAME} bytes (not this protocol?)")
            if end - pos - 4 < n:
                break
            out.append(bytes(buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


# ------------------------------------------------------------------------------------------- engine side
class _EngineConn(asyncio.Protocol):
    """One front's connection in the engine process: requests in, answers out (written once per loop turn)."""

    def __init__(self, batcher: MicroBatcher, conns: set):
        self.batcher = batcher
        self.conns = conns
        self.frames = Frames()
        self.transport = None
        self.out: list = []
        self.flush_due = False
        self.pending = 0  # requests submitted and not answered yet
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conns.add(self)
        hello = _RESP.pack(0, HELLO) + _LEN.pack(os.getpid())
        transport.write(_LEN.pack(len(hello)) + hello)

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
            reqs = [decode_request(f) for f in frames]
        except FrameError as e:
            log.error("engine process: closing a front's connection: %s", e)
            self.transport.close()
            return
        for rid, texts in reqs:
            try:
                fut = self.batcher.submit_async(texts)
            except BaseException as e:  # noqa: BLE001 - QueueFullError, BatcherClosedError, InputError: answered
                self._send(encode_error(rid, e))
                continue
            self.pending += 1
            fut.add_done_callback(functools.partial(self._done, rid))

    def _done(self, rid: int, fut) -> None:
        self.pending -= 1
        if fut.cancelled():
            frame = encode_error(rid, BatcherClosedError("the engine process cancelled the request (shutting down)"))
        else:
            exc = fut.exception()
            try:
                frame = encode_error(rid, exc) if exc is not None else encode_result(rid, fut.result())
            except Exception as e:  # noqa: BLE001 - an answer that cannot be encoded is still an answer
                frame = encode_error(rid, TrtrunError(f"the engine's result could not be sent: {e}"))
        self._send(frame)

    def _send(self, frame: bytes) -> None:
        if self.transport is None:  # the front went away: nobody waits for this answer
            return
        self.out.append(frame)
        if not self.flush_due:
            self.flush_due = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_due = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()


def socket_dir() -> str:
    """A new private folder (mode 0700) for the engine's socket. A Unix socket path is limited to ~107 bytes, so
    when the temporary folder's path is long (a deep TMPDIR) the folder is made in /tmp instead."""
    import tempfile

    d = tempfile.mkdtemp(prefix="trtrun-engine-")
    if len(os.path.join(d, "engine.sock").encode()) > 100 and os.path.isdir("/tmp"):
        os.rmdir(d)
        d = tempfile.mkdtemp(prefix="trtrun-engine-", dir="/tmp")
    return d


def engine_info(embedder) -> dict:
    """What the fronts need to know of the engine process's Embedder (sent to them by the supervisor)."""
    return {"model_name": embedder.model_name, "dim": int(embedder.dim),
            "describe": {**embedder.describe(), "engine_pid": os.getpid()}}


async def _serve(batcher: MicroBatcher, path: str, on_ready, stop_asked: list, metrics) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if stop_asked:
        return
    conns: set = set()
    if os.path.exists(path):  # a previous engine process's socket (it died): ours replaces it
        os.unlink(path)
    server = await loop.create_unix_server(lambda: _EngineConn(batcher, conns), path)
    os.chmod(path, 0o600)

    def refresh():  # the CPU counter and gauges of this process, between windows too
        metrics._refresh()
        loop.call_later(0.5, refresh)

    refresh()
    on_ready()
    await stop.wait()
    # The supervisor stops the fronts first (they finish their requests in flight, which needs us), then
    # this process: no new connection; what is still queued is finished and answered, then the connections close.
    server.close()
    await loop.run_in_executor(None, batcher.close)
    # the last windows' answers reach this loop as callbacks (resolve, then _done, then _flush): let them run
    end = loop.time() + 5.0
    while any(c.pending or c.out for c in conns) and loop.time() < end:
        await asyncio.sleep(0.005)
    for c in list(conns):
        c._flush()
        if c.transport is not None:
            c.transport.close()
    await server.wait_closed()


def engine_main(make_embedder, config, path: str, events, index: int, startup_failed: int) -> None:
    """The engine process (started by run_workers with shared_engine=True)."""
    stop_asked = child_signals()  # (until _serve's event loop takes the signals over)
    try:
        emb = make_embedder()
    except BaseException as e:  # noqa: BLE001 - reported to the supervisor, which stops everything
        events.put(("failed", index, os.getpid(), f"{type(e).__name__}: {e}"))
        sys.exit(startup_failed)
    batcher = None
    try:
        from .app import tune_process
        from .metrics import ServerMetrics

        metrics = ServerMetrics()
        batcher = MicroBatcher.for_server(emb, config, metrics)
        metrics.queue_depth_fn = batcher.queue_depth
        info = engine_info(emb)
        tune_process()
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        ready: list = []

        def on_ready():
            ready.append(True)
            events.put(("ready", index, os.getpid(), info))

        try:
            run(_serve(batcher, path, on_ready, stop_asked, metrics))
        except Exception as e:  # noqa: BLE001 - e.g. the socket cannot be made: the supervisor says why
            if ready:
                raise
            events.put(("failed", index, os.getpid(), f"{type(e).__name__}: {e}"))
            sys.exit(startup_failed)
        metrics.flush()
        metrics._refresh()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if batcher is not None:
            batcher.close()
        emb.close()


# ------------------------------------------------------------------------------------------- front side
class _FrontConn(asyncio.Protocol):
    def __init__(self, client: "EngineClient"):
        self.client = client
        self.frames = Frames()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pending = self.client._pending
        try:
            for body in self.frames.feed(data):
                rid, res = decode_response(body)
                if isinstance(res, int):  # HELLO: which engine process answers
                    self.client.engine_pid = res
                    continue
                fut = pending.pop(rid, None)
                if fut is None or fut.done():  # cancelled: its client went away
                    continue
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        except FrameError as e:
            log.error("front: a malformed answer from the engine process (%s); reconnecting", e)
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.client._lost(self, exc)


class EngineClient:
    """A front process's stand-in for MicroBatcher: the same submit_async / queue_depth / close, answered by
    the engine process. Lives on the front's event loop (submit_async must be called there)."""

    def __init__(self, path: str, dim: int, *, batching: bool = True, max_queue: int = 4096):
        self.path = path
        self.dim = dim
        self.batching = batching
        self.max_queue = max_queue
        self._pending: dict = {}  # request id -> asyncio future, sent and not answered
        self._waiting: list = []  # frames to send once connected
        self._out: list = []  # frames to write at the end of this turn of the loop
        self._flush_due = False
        self._conn: _FrontConn | None = None
        self._connecting = False
        self._rid = 0
        self._closing = False
        self._loop = None
        self.engine_pid: int | None = None  # from the engine's first frame on the current connection
        self._last_error: str | None = None  # why the last connection attempt failed
        self._connect_task = None

    def _transport(self):
        """The open connection's transport, or None."""
        conn = self._conn
        t = conn.transport if conn is not None else None
        return t if t is not None and not t.is_closing() else None

    def queue_depth(self) -> int:
        """Requests sent to the engine process and not answered yet."""
        return len(self._pending)

    def submit_async(self, texts) -> asyncio.Future:
        from ..embed import Embedder

        texts = Embedder.check_texts(texts)
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        loop = self._loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not texts:
            fut.set_result(EmbedResult.empty(self.dim))
            return fut
        if len(self._pending) >= self.max_queue:
            raise QueueFullError(f"{len(self._pending)} requests are waiting for the engine process "
                                 f"(max_queue {self.max_queue})")
        self._rid += 1
        rid = self._rid
        self._pending[rid] = fut
        frame = encode_request(rid, texts)
        if self._transport() is not None:
            # written once per turn of the loop: a burst of requests is one write and one engine wake-up
            self._out.append(frame)
            if not self._flush_due:
                self._flush_due = True
                loop.call_soon(self._flush)
        else:
            self._waiting.append((rid, frame))
            if not self._connecting:
                self._connecting = True
                self._connect_task = loop.create_task(self._connect())  # (held: the loop keeps only a weak reference)
        return fut

    async def check_engine(self) -> str | None:
        """None when the engine process is connected (connecting first if need be), else why not (for /health:
        a front whose engine is down answers 503 there, so a load balancer can route around it)."""
        if self._transport() is not None:
            return None
        if self._closing:
            return "shutting down"
        self._loop = asyncio.get_running_loop()
        if not self._connecting:
            self._connecting = True
            await self._connect()
        else:  # another caller is connecting: give it a moment
            for _ in range(50):
                await asyncio.sleep(0.01)
                if not self._connecting:
                    break
        if self._transport() is not None:
            return None
        return f"the engine process is not reachable at {self.path} ({self._last_error or 'connecting'})"

    def _flush(self) -> None:
        self._flush_due = False
        out, self._out = self._out, []
        t = self._transport()
        if out and t is not None:
            t.write(b"".join(out))
        # (else the connection was lost in between: _lost failed those requests)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_unix_connection(lambda: _FrontConn(self), self.path)
        except OSError as e:
            self._connecting = False
            self._last_error = e.strerror or str(e)
            waiting, self._waiting = self._waiting, []
            err = BatcherClosedError(f"the engine process is not reachable ({e.strerror or e}); it may be "
                                     f"restarting, retry later")
            for rid, _ in waiting:
                fut = self._pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(err)
            return
        self._conn = conn
        self._connecting = False
        self._last_error = None
        waiting, self._waiting = self._waiting, []
        if waiting:
            conn.transport.write(b"".join(f for _, f in waiting))

    def _lost(self, conn: _FrontConn, exc) -> None:
        if self._conn is conn:
            self._conn = None
        waiting = {rid for rid, _ in self._waiting}
        err = BatcherClosedError("the engine process stopped while this request was in flight (it is restarted); "
                                 "retry")
        for rid in [r for r in self._pending if r not in waiting]:
            fut = self._pending.pop(rid)
            if not fut.done():
                fut.set_exception(err)

    def close(self, timeout: float | None = None) -> None:
        """Take no new requests and close the connection (the app calls it after its requests finished;
        from any thread)."""
        self._closing = True
        conn, loop = self._conn, self._loop
        if conn is not None and conn.transport is not None and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(conn.transport.close)
            except RuntimeError:
                pass


class RemoteEmbedder:
    """What a front process has instead of an Embedder: the engine process's description, and a batcher
    (EngineClient) that sends it the texts. create_app serves it like an Embedder."""

    def __init__(self, path: str, info: dict):
        self.path = path
        self.model_name = info["model_name"]
        self.dim = int(info["dim"])
        self._describe = dict(info["describe"])
        self._client: EngineClient | None = None

    def describe(self) -> dict:
        d = {**self._describe, "engine": "shared engine process"}
        if self._client is not None and self._client.engine_pid is not None:
            d["engine_pid"] = self._client.engine_pid  # the one answering now (it changes if one is restarted)
        return d

    def make_batcher(self, config) -> EngineClient:
        self._client = EngineClient(self.path, self.dim, batching=config.batching, max_queue=config.max_queue)
        return self._client

    def close(self) -> None:
        pass
