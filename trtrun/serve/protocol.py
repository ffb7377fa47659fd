"""What uvicorn's HTTP protocols leave open to slow or too many clients, closed at the connection.

Checked in uvicorn's source (0.55; the h11 and httptools protocols behave the same):
- `timeout_keep_alive` is armed only after a response is complete, and any byte received cancels it. A
  connection that sends nothing, or trickles a request head or body a byte at a time, is never timed out:
  uvicorn has no header or body read timeout.
- `limit_concurrency` is checked only once a complete request head has arrived, so a trickling connection
  is never refused and keeps its file descriptor; the 503 it sends is plain text, and it logs a warning per
  refused request (a log flood under exactly the load it is for).
- At the file-descriptor limit, asyncio's accept loop logs "socket.accept() out of system resource" with a
  traceback for every try (up to `backlog` per loop turn) and stops accepting for a second each time.
- `h11_max_incomplete_event_size` (default 16 KiB) bounds a request head; uvicorn answers a head over it
  (or any malformed request) with a plain-text 400.

So `guarded_protocol` makes a subclass of uvicorn's protocol class (httptools where installed, else h11:
what uvicorn's "auto" picks) that
- refuses a connection beyond `max_connections` open ones at once, with a JSON 503, and logs refusals at
  most once per LOG_EVERY_S seconds;
- gives every request `header_timeout` seconds for its head (from the connection's start, or from its first
  byte after the previous response) and `body_timeout` seconds for its body (from the end of its head);
  past that the client gets a JSON 408 (an idle connection that never sent a byte is closed quietly);
- answers uvicorn's own 400 (malformed request, head over the size limit) in the JSON error shape.
Each of these three answers ends its connection the same way ("lingering", `_linger`): the answer, with
`Connection: close`, and at once the end of the stream (a FIN); then the connection is kept open, reading and
dropping what the client still sends, until the client closes it or goes quiet for LINGER_S (at most the body
timeout, or LINGER_MAX_BYTES). Lingering connections are bounded (past `max_lingering`, the one heard from
least recently is closed) and no longer count towards `max_connections`. Why linger: a socket closed while
data it received is unread, or that receives data once closed, is reset by the kernel instead of closed
(Linux, as RFC 2525 2.17 says TCP should), which discards the answer where it is not delivered yet and fails
the client's next write before it reads anything; an HTTP client writes its whole request first, a client
answered 408 is one still sending it, and a malformed request may be followed by more. So an answered
connection is closed only with nothing unread (drain_socket) and once its client has stopped sending.
Two body timeouts end the connection the same way with nothing more to write: a request answered early
(413, 401: the app answers before reading the body) whose remaining body does not arrive within the body
timeout (its answer is already out whole), and a request whose response had already begun when its body
timed out (no 408 can follow a begun response; what was written goes out, then the FIN, so the client reads
a response cut short of its length, an error it can tell, rather than a reset that may discard even that).
uvicorn's `timeout_keep_alive` still closes idle keep-alive connections; `limit_concurrency` is not used.
"""

from __future__ import annotations

import json
import logging
import time

from ..errors import TrtrunError

log = logging.getLogger("trtrun.serve")

LOG_EVERY_S = 10.0  # refusals and timeouts are logged as counts, at most this often
# An answered connection (503, 408, 400; or one ended at a body timeout with nothing more to answer) is
# closed once its client has sent nothing for LINGER_S (it has its whole request out; an HTTP client then
# reads the answer), after at most the body timeout, or after LINGER_MAX_BYTES.
LINGER_S = 1.0
LINGER_MAX_BYTES = 16 << 20  # (as an accepted request's body is read and dropped past its limit: app.py)
# Answered connections lingering at once, where the open-file limit has room for them beside max_connections
# (app.connection_budget), never fewer than MIN_LINGERING. A flood of answered connections faster than this
# many per LINGER_S closes the ones heard from least recently sooner.
MAX_LINGERING = 1024
MIN_LINGERING = 64


def drain_socket(transport, limit: int = 1 << 20) -> None:
    """Read and drop what the transport's socket has received and nobody read yet, without blocking (on a
    duplicate of its descriptor, with MSG_DONTWAIT), so that closing it sends a FIN rather than a reset."""
    import os
    import socket

    sock = transport.get_extra_info("socket")
    try:
        fd = sock.fileno() if sock is not None else -1
        if fd < 0:
            return
        with socket.socket(fileno=os.dup(fd)) as s:
            got = 0
            while got < limit:
                data = s.recv(65536, socket.MSG_DONTWAIT)
                if not data:
                    return
                got += len(data)
    except OSError:  # nothing more has arrived (EAGAIN), or the connection is gone
        return


def error_bytes(status: int, reason: str, message: str, kind: str, extra: list[tuple[str, str]] = ()) -> bytes:
    """A complete HTTP/1.1 response in the server's JSON error shape, closing the connection."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class _RateLog:
    """Counts events and logs them at most once per LOG_EVERY_S (the first one at once)."""

    def __init__(self, what: str):
        self.what = what
        self.count = 0
        self.total = 0
        self.last = 0.0

    def hit(self, detail: str) -> None:
        self.count += 1
        self.total += 1
        now = time.monotonic()
        if now - self.last >= LOG_EVERY_S:
            if self.last == 0.0:
                log.warning("%s a connection (%s); more are reported as counts, at most every %.0f s",
                            self.what, detail, LOG_EVERY_S)
            else:
                log.warning("%s %d connection(s) in the last %.0f s (%s; %d in all)", self.what, self.count,
                            now - self.last, detail, self.total)
            self.count = 0
            self.last = now


class Guard:
    """The limits of one server process, shared by its connections (and counted for /metrics: on_refused(reason)
    for each refusal, reason as in metrics.REFUSALS)."""

    def __init__(self, max_connections: int, header_timeout: float, body_timeout: float, on_refused=None,
                 max_lingering: int = MIN_LINGERING):
        self.on_refused = on_refused
        self.max_connections = int(max_connections)
        self.header_timeout = float(header_timeout)
        self.body_timeout = float(body_timeout)
        self.max_lingering = max(1, int(max_lingering))
        # answered connections lingering now, the one heard from least recently first (dicts keep insertion order)
        self.lingering: dict = {}
        self.refused = _RateLog("refused")
        self.head_timeouts = _RateLog("closed")
        self.body_timeouts = _RateLog("closed")
        self.busy = error_bytes(503, "Service Unavailable",
                                f"too many connections (more than {self.max_connections} open); retry later",
                                "overloaded", [("retry-after", "1")])
        self.head_late = error_bytes(408, "Request Timeout",
                                     f"the request head did not arrive within {self.header_timeout:g} s "
                                     f"(--header-timeout)", "request_timeout")
        self.body_late = error_bytes(408, "Request Timeout",
                                     f"the request body did not arrive within {self.body_timeout:g} s "
                                     f"(--body-timeout)", "request_timeout")

    def count(self, reason: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason)

    def linger(self, proto) -> None:
        """An answered connection (503, 408, 400, or ended at a body timeout) starts lingering; at the bound,
        the one heard from least recently ends."""
        while len(self.lingering) >= self.max_lingering:
            next(iter(self.lingering))._end_linger()
        self.lingering[proto] = None


def _base_protocol():
    """The protocol class uvicorn's http="auto" uses."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


def guarded_protocol(guard: Guard, base=None):
    """A subclass of uvicorn's HTTP protocol (base, default what http="auto" picks) enforcing `guard`."""
    base = base or _base_protocol()
    # The uvicorn internals the guard overrides or calls (the module doc says where they were checked): a
    # uvicorn without one would fail on a live connection, so it is refused when the server starts.
    missing = [m for m in ("send_400_response", "on_response_complete", "_unset_keepalive_if_required",
                           "data_received", "eof_received", "connection_lost") if not callable(getattr(base, m, None))]
    if missing:
        import uvicorn

        raise TrtrunError(
            f"trtrun serve's connection guard needs uvicorn's HTTP protocol methods {', '.join(missing)}, which "
            f"{base.__name__} of uvicorn {uvicorn.__version__} lacks; install a uvicorn that has them (checked: 0.55)")

    class Guarded(base):
        _guard = guard

        def connection_made(self, transport) -> None:
            g = self._guard
            # answered (503, 408, 400) or ended at a body timeout, and waiting for the client to be done
            self._lingering = False
            self._registered = False  # in uvicorn's server_state.connections until it lingers
            self._timer = None
            self._phase = "head"  # head: waiting for a request head; body: for its body; queued: its
            # body waits behind a running pipelined request; drain: the rest of a body answered early;
            # app: neither
            self._seen = False  # a byte of the current request head has arrived
            self._timed_cycle = None
            if len(self.server_state.connections) >= g.max_connections:
                # Refused before uvicorn ever sees it (so it takes no place in server_state.connections).
                self.transport = transport
                g.refused.hit(f"--max-connections {g.max_connections}")
                g.count("connections")
                self._linger(g.busy)
                return
            super().connection_made(transport)
            self._registered = True
            self._arm(g.header_timeout)

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._lingering:
                self._guard.lingering.pop(self, None)
            if self._registered:  # uvicorn's own clean-up (idempotent where _linger did part of it)
                super().connection_lost(exc)

        def eof_received(self):
            if self._lingering:  # the client is done (it has read the answer, or gave up)
                self._end_linger()
                return None
            return super().eof_received()

        # ------------------------------------------------------------ an answered connection lingering
        def _linger(self, answer: bytes = b"") -> None:
            """Send `answer` (an error closing the connection; none where the response was already sent or has
            begun) and the end of the stream at once, so the client has all of it whatever follows; then read
            and drop what it still sends (the module doc says why) until it is done, bounded by Guard.linger."""
            g = self._guard
            self._disarm()
            self._lingering = True
            if self._registered:
                # Released from uvicorn now, as its connection_lost would: it no longer counts towards
                # --max-connections (lingering ones have their own bound and file-descriptor budget), and a
                # request in flight is told the client is gone, so the app writes nothing after the end of the
                # stream (its send() is a no-op) and awaits no more body. The rest of uvicorn's clean-up runs
                # in connection_lost.
                self.server_state.connections.discard(self)
                self._unset_keepalive_if_required()
                cyc = self.cycle
                if cyc is not None and not cyc.response_complete:
                    cyc.disconnected = True
                    cyc.waiting_for_100_continue = False  # (receive() would write "100 Continue")
                    cyc.message_event.set()
                if self.flow is not None:
                    self.flow.resume_writing()
                    self.flow.resume_reading()  # (paused for a pipelined request or a large body)
            t = self.transport
            if answer:
                t.write(answer)
            try:
                t.write_eof()
            except (OSError, NotImplementedError, RuntimeError):
                pass
            self._linger_from = self._heard = self.loop.time()
            self._dropped = 0
            g.linger(self)
            self._timer = self.loop.call_later(LINGER_S, self._linger_check)

        def _linger_check(self) -> None:
            self._timer = None
            now = self.loop.time()
            quiet = now - self._heard
            if quiet >= LINGER_S or now - self._linger_from >= self._guard.body_timeout:
                self._end_linger()
            else:
                self._timer = self.loop.call_later(LINGER_S - quiet, self._linger_check)

        def _end_linger(self) -> None:
            self._guard.lingering.pop(self, None)
            self._disarm()
            t = self.transport
            if t is not None and not t.is_closing():
                drain_socket(t)
                t.close()

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                g = self._guard
                if g.lingering.pop(self, 0) is None:  # (still lingering: it is now the one heard from last)
                    g.lingering[self] = None
                self._heard = self.loop.time()
                self._dropped += len(data)
                if self._dropped > LINGER_MAX_BYTES:
                    self._end_linger()
                return
            cyc = self.cycle
            if self._phase == "idle" and cyc is not None and cyc.response_complete and cyc.more_body:
                # The rest of a body whose request was answered early (413, 401), which uvicorn discards:
                # not a new request head. uvicorn does not say when it has all arrived (and the data
                # cancelled its keep-alive timer), so the connection is ended after the body timeout (with
                # nothing more to answer: _expired) unless a new request's head completes by then.
                self._phase = "drain"
                self._arm(self._guard.body_timeout)
            elif self._phase == "idle":  # the first byte of the next request on a kept-alive connection
                self._phase = "head"
                self._arm(self._guard.header_timeout)
            if self._phase != "drain":
                self._seen = True
            super().data_received(data)
            self._progress()  # (nothing once the data was a malformed request: send_400_response)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport is None or self.transport.is_closing() or self._lingering:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # A pipelined request is taken up: time it if its head was not seen yet; one already timed
                # (its head came with the previous request) keeps its body timer, or starts it if it was queued.
                if self.cycle is not self._timed_cycle:
                    self._progress()
                elif self._phase == "queued":
                    self._phase = "body"
                    self._arm(self._guard.body_timeout)
                return
            self._disarm()  # uvicorn's keep-alive timeout covers the idle time
            self._phase, self._seen = "idle", False

        def send_400_response(self, msg: str) -> None:
            # (uvicorn's parser has stopped: what the client still sends is dropped while it lingers)
            self._guard.count("bad_http")
            self._linger(error_bytes(400, "Bad Request", f"invalid HTTP request ({msg.rstrip('.')}: "
                                                         "malformed, or a request head over the size limit)",
                                     "invalid_request_error"))

        # ------------------------------------------------------------ timers
        def _progress(self) -> None:
            cyc = self.cycle
            if cyc is None or self.transport is None or self.transport.is_closing() or self._lingering:
                return
            if cyc is not self._timed_cycle and not cyc.response_complete:  # a new request's head is complete
                self._timed_cycle = cyc
                if cyc.more_body and any(c is cyc for c, _ in getattr(self, "pipeline", ())):
                    # Queued behind a running request, with reading paused: its body cannot arrive yet, and
                    # a 408 now would go out in place of the running request's answer.
                    self._phase = "queued"
                elif cyc.more_body:
                    self._phase = "body"
                    self._arm(self._guard.body_timeout)
                else:
                    self._phase = "app"
                    self._disarm()
            elif self._phase in ("body", "queued") and not cyc.more_body:
                self._phase = "app"
                self._disarm()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            t = self.transport
            if t is None or t.is_closing():
                return
            g = self._guard
            if self._phase == "body":
                cyc = self.cycle
                g.body_timeouts.hit(f"request body not complete within --body-timeout {g.body_timeout:g} s")
                if cyc is not None and not cyc.response_started:
                    # (the app's receive() now says http.disconnect; its send() is a no-op: _linger)
                    g.count("body_timeout")
                    self._linger(g.body_late)
                    return
                # The app began its response before reading the whole body: a 408 written now would land inside
                # it. The app is told the client is gone (_linger), what it wrote goes out and then the end of the
                # stream, so the client reads a response short of its Content-Length (or of its last chunk), which
                # it can tell from a whole one, and its writes meet no reset. Not a refusal (the app answered):
                # logged above, not counted in refused_total.
                self._linger()
            elif self._phase == "head":
                if self._seen:
                    g.head_timeouts.hit(f"request head not complete within --header-timeout {g.header_timeout:g} s")
                    g.count("header_timeout")
                    self._linger(g.head_late)
                    return
                # a connection that never sent a byte is closed quietly (nothing unread: a FIN, not a reset)
                g.count("idle_timeout")
                t.close()
            elif self._phase == "drain":
                # The rest of a body answered early (401, 413, 404) did not all arrive, or the connection stayed
                # silent after it, within the body timeout. The answer went out whole; the end of the stream
                # follows and the client's remaining body is read and dropped, so a client still writing it
                # reads the answer rather than meeting a reset. Not counted here: the answer was the app's (a
                # 401 or 413 is counted as a refusal where it is sent).
                self._linger()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded
