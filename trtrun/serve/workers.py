"""Several server processes on one port: `trtrun serve --workers N`, `run_workers(...)`.

Why: one server process is capped by the CPU work per request on its event loop (HTTP parsing, JSON,
asyncio, metrics: a few hundred microseconds a request, all under one GIL), long before the GPU is busy:
a micro-batch of all-MiniLM-L6-v2 takes the GPU well under a millisecond. N processes, each with its own
Embedder (engine, contexts), micro-batcher and event loop, multiply what the CPU side can serve until the
GPU or the clients are the limit.

How:
- The supervisor (the process that calls run_workers) binds N listening sockets to host:port with
  SO_REUSEPORT, so that the kernel spreads new connections evenly over the workers (one shared socket
  where SO_REUSEPORT is missing), and starts N worker processes with the "spawn" method (no CUDA state is
  inherited), each given its socket and a picklable `make_embedder` callable.
- A worker builds its Embedder, the app (create_app) and a uvicorn server on its socket, then reports
  ready. A worker that fails to start stops them all (TrtrunError with its message); one that dies while
  serving is started again on the same socket.
- Metrics: PROMETHEUS_MULTIPROC_DIR (a temporary folder unless already set) makes prometheus-client keep
  every worker's values in files, so /metrics, whichever worker answers, sums all workers.
- `shared_engine=True` (`trtrun serve --shared-engine`): the workers only speak HTTP and one more process,
  the engine process, holds the Embedder and the micro-batcher for all of them (engine_proc.py). It starts
  first, stops last, and is started again if it dies.
- SIGTERM or SIGINT to the supervisor: it closes its copies of the sockets and sends SIGTERM to every
  worker; each stops accepting, finishes its requests in flight (up to graceful_timeout), drains its
  batcher and exits 0. run_workers returns 0 when every worker exited cleanly, else 1.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

from ..errors import TrtrunError
from .child import child_signals
from .metrics import MULTIPROC_ENV

log = logging.getLogger("trtrun.serve")

STARTUP_FAILED = 3  # a worker's exit code when it could not start (uvicorn uses the same)


def bind_sockets(host: str, port: int, n: int) -> list[socket.socket]:
    """n listening sockets on host:port sharing it through SO_REUSEPORT (or one socket n times where the
    option is missing). A port that anything else listens on is refused, even if that one also set
    SO_REUSEPORT: a probe without the option binds first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuseport = n > 1 and hasattr(socket, "SO_REUSEPORT")
    socks: list[socket.socket] = []
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:  # EADDRINUSE if the port is taken at all
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]  # port 0: the one the system chose
        for _ in range(n if reuseport else 1):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            s.listen(2048)
    except OSError as e:
        for s in socks:
            s.close()
        raise TrtrunError(f"the server could not start on {host}:{port}: {e.strerror or e} (port in use?)") from None
    return socks if reuseport else socks * n


def _forget_gauges(pid: int) -> None:
    """A dead worker's gauges (queue depth, in flight) leave the /metrics sums; its counters stay."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
    except Exception:  # noqa: BLE001 - metrics housekeeping must not stop the supervisor
        pass


def _worker(index: int, make_embedder, config, sock: socket.socket, uv: dict, events) -> None:
    """A worker process: its own Embedder, app and uvicorn server on the socket it was given."""
    stop_asked = child_signals()  # (until uvicorn takes the signals over, and after it gives them back)
    try:
        emb = make_embedder()
    except BaseException as e:  # noqa: BLE001 - reported to the supervisor, which stops the others
        events.put(("failed", index, os.getpid(), f"{type(e).__name__}: {e}"))
        sys.exit(STARTUP_FAILED)
    try:
        if stop_asked:
            return
        from .app import ServeConfig, create_app, tune_process, uvicorn_server

        config = config or ServeConfig()
        server = uvicorn_server(create_app(emb, config), config, **uv)
        tune_process()
        done = threading.Event()

        def report_ready():
            while not done.is_set() and not server.started:
                time.sleep(0.02)
            if server.started:
                events.put(("ready", index, os.getpid(), None))

        threading.Thread(target=report_ready, daemon=True).start()
        try:
            server.run(sockets=[sock])
        finally:
            done.set()
        if not server.started and not stop_asked:
            events.put(("failed", index, os.getpid(), "the server did not start (see the log above)"))
            sys.exit(STARTUP_FAILED)
    finally:
        # The supervisor repeats SIGTERM until this process is gone, and interpreter shutdown puts the
        # default action (death by signal) back for any signal with a Python handler: ignore them now.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        emb.close()


ENGINE = -1  # the shared engine process's index in the supervisor's events


def run_workers(make_embedder, config=None, *, workers: int, host: str = "127.0.0.1", port: int = 8080,
                log_level: str = "info", access_log: bool = False, graceful_timeout: float = 30.0,
                on_ready=None, sockets: list[socket.socket] | None = None, shared_engine: bool = False) -> int:
    """Serve with `workers` processes until SIGTERM/SIGINT; see the module docstring. Returns 0 after a
    clean shutdown of every worker, 1 otherwise; raises TrtrunError when the port cannot be bound or a
    worker fails to start.

    make_embedder: a picklable callable returning an Embedder (e.g. functools.partial(Embedder, plan, tok,
        contexts=2)); each worker calls it once. config: a ServeConfig. on_ready(pids): called once when
    every worker serves. sockets: already bound listening sockets, one per worker (default: bind_sockets).
    shared_engine: one engine process (the only one to call make_embedder) runs the model and the
        micro-batcher for all workers, which only speak HTTP (engine_proc.py). It starts first; the workers
        start once it serves; on SIGTERM it stops last, after the workers finished their requests; if it
        dies it is started again (the workers answer 503 meanwhile).
    """
    from .app import ServeConfig

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    config = config or ServeConfig()
    socks = sockets if sockets is not None else bind_sockets(host, port, workers)
    if len(socks) != workers:
        raise ValueError(f"{len(socks)} sockets for {workers} workers")
    uv = {"log_level": log_level, "access_log": access_log, "timeout_graceful_shutdown": graceful_timeout}
    saved_env = {k: os.environ.get(k) for k in (MULTIPROC_ENV, "RAYON_NUM_THREADS")}
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="trtrun-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    if not os.environ.get("RAYON_NUM_THREADS"):
        # the tokenizer's thread pool: one per worker would otherwise start a thread per core in each
        os.environ["RAYON_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))

    stop = threading.Event()
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs: list = [None] * workers
    if shared_engine:
        from .engine_proc import socket_dir

        eng_dir = socket_dir()  # mode 0700
    else:
        eng_dir = None
    eng_path = os.path.join(eng_dir, "engine.sock") if eng_dir else None
    engine = {"proc": None, "info": None, "ready": False, "quick": 0}
    ready: set[int] = set()
    served: set[int] = set()  # pids of workers that were ready at some point
    failure = None
    announced = False

    def start(i: int) -> None:
        if shared_engine:
            from .engine_proc import RemoteEmbedder

            make = functools.partial(RemoteEmbedder, eng_path, engine["info"])
        else:
            make = make_embedder
        p = ctx.Process(target=_worker, args=(i, make, config, socks[i], uv, events),
                        name=f"trtrun-serve-{i}", daemon=False)
        p.start()
        procs[i] = p

    def start_engine() -> None:
        from .engine_proc import engine_main

        p = ctx.Process(target=engine_main, args=(make_embedder, config, eng_path, events, ENGINE, STARTUP_FAILED),
                        name="trtrun-engine", daemon=False)
        p.start()
        engine["proc"] = p

    quick_deaths = [0] * workers  # deaths in a row of a worker that was never seen ready

    def handle(event) -> None:
        nonlocal failure
        kind, i, pid, msg = event
        if i == ENGINE:
            if kind == "ready" and engine["proc"] is not None and engine["proc"].pid == pid:
                engine.update(ready=True, quick=0, info=msg)
                served.add(pid)
            elif kind == "failed":
                failure = failure or f"the engine process (pid {pid}) could not start: {msg}"
        elif kind == "ready" and procs[i] is not None and procs[i].pid == pid:
            ready.add(i)
            served.add(pid)
            quick_deaths[i] = 0
        elif kind == "failed":
            failure = failure or f"worker {i} (pid {pid}) could not start: {msg}"

    fronts_started = False
    try:
        if shared_engine:
            start_engine()
        else:
            for i in range(workers):
                start(i)
            fronts_started = True
        while not stop.is_set() and failure is None:
            try:
                handle(events.get(timeout=0.2))
                while True:  # everything else already waiting, before any death is judged below
                    handle(events.get_nowait())
            except queue.Empty:
                pass
            if shared_engine:
                ep = engine["proc"]
                if not ep.is_alive() and not stop.is_set() and failure is None:
                    if not engine["ready"] and (ep.exitcode is None or ep.exitcode >= 0 or engine["quick"] >= 3):
                        failure = f"the engine process (pid {ep.pid}) exited with code {ep.exitcode} before serving"
                        continue
                    if not engine["ready"]:
                        engine["quick"] += 1
                    log.warning("the engine process (pid %d) died with exit code %s; starting it again (the "
                                "workers answer 503 meanwhile)", ep.pid, ep.exitcode)
                    _forget_gauges(ep.pid)
                    engine["ready"] = False
                    start_engine()
                if not fronts_started and engine["ready"]:
                    for i in range(workers):
                        start(i)
                    fronts_started = True
            if not announced and len(ready) == workers:
                announced = True
                if on_ready is not None:
                    on_ready([p.pid for p in procs])
            for i, p in enumerate(procs):
                if p is None or p.is_alive() or stop.is_set() or failure is not None:
                    continue
                # A worker can serve before its "ready" reaches this loop (it is reported by a thread that
                # polls uvicorn), so a death before "ready" is a failed start only when the worker said so
                # (exit code STARTUP_FAILED, or any other plain exit), or when it keeps dying.
                if i not in ready and (p.exitcode is None or p.exitcode >= 0 or quick_deaths[i] >= 3):
                    failure = failure or f"worker {i} (pid {p.pid}) exited with code {p.exitcode} before serving"
                else:
                    if i not in ready:
                        quick_deaths[i] += 1
                    log.warning("worker %d (pid %d) died with exit code %s; starting it again", i, p.pid, p.exitcode)
                    _forget_gauges(p.pid)
                    ready.discard(i)
                    start(i)
    finally:
        # Stop: no new connections reach this process's copies of the sockets, every worker finishes the
        # requests it holds. SIGTERM is sent again while a worker runs (one that was still starting may
        # have missed it); a second SIGTERM never cuts uvicorn's graceful shutdown short.
        for s in socks:
            s.close()
        # The workers first; a shared engine process after them (they need it for the requests they finish).
        for group in ([p for p in procs if p is not None], [engine["proc"]] if engine["proc"] is not None else []):
            deadline = time.monotonic() + graceful_timeout + 60
            while True:
                alive = [p for p in group if p.is_alive()]
                if not alive:
                    break
                if time.monotonic() > deadline:
                    for p in alive:
                        log.error("%s pid %d did not stop in time; killing it", p.name, p.pid)
                        p.kill()
                        p.join(5)
                    break
                for p in alive:
                    try:
                        os.kill(p.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                for p in alive:
                    p.join(max(0.05, 1.0 / len(alive)))
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        events.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
        if eng_dir is not None:
            shutil.rmtree(eng_dir, ignore_errors=True)
    if failure is not None:
        raise TrtrunError(failure)
    # clean: exit code 0; or killed by our SIGTERM before it ever served (it was still starting: it held
    # no request, and a SIGTERM that early meets Python's default handler)
    bad = [(f"worker {i}", p.exitcode) for i, p in enumerate(procs)
           if p is not None and p.exitcode != 0 and not (p.exitcode == -signal.SIGTERM and p.pid not in served)]
    ep = engine["proc"]
    if ep is not None and ep.exitcode != 0 and not (ep.exitcode == -signal.SIGTERM and ep.pid not in served):
        bad.append(("the engine process", ep.exitcode))
    for who, c in bad:
        log.error("%s exited with code %s", who, c)
    return 0 if not bad else 1
