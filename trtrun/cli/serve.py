"""`trtrun serve`: an HTTP embedding server (OpenAI /v1/embeddings, /embed, /health, /metrics)."""

from __future__ import annotations

import signal

import click

from ._ui import Progress, status
from .options import backend_option, quiet_option


class _Stopped(Exception):
    """SIGTERM after uvicorn's graceful shutdown (uvicorn re-raises the signal it caught)."""


@click.command("serve")
@click.argument("model", metavar="MODEL", type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", type=click.Path(file_okay=False), default=None,
              help="tokenizer folder (default: beside the source model, or by vocabulary size in the data folder)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="port to listen on")
@backend_option
@click.option("--contexts", type=click.IntRange(min=1), default=2, show_default=True,
              help="engine contexts per worker process (engine batches that may run at once)")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="server processes sharing the port, each with its own engine, batcher and event loop "
                   "(one process is capped by its per-request CPU work; /metrics sums all of them)")
@click.option("--shared-engine", is_flag=True,
              help="one engine process runs the model and the micro-batcher for all --workers, which only "
                   "speak HTTP: batches gather the requests of every worker (for more requests/s at many clients)")
@click.option("--gemm-cache", type=click.Path(exists=True, dir_okay=False), default=None,
              help="GEMM algorithms tuned before (trtrun.runtime.save_gemm_cache), taken by every engine process "
                   "before its first run (GPU backend)")
@click.option("--gemm-search", type=click.Choice(["heuristic", "focused", "exhaustive"]), default="heuristic",
              show_default=True,
              help="how a GPU context chooses the GEMM algorithm of a shape it meets first (in a request, which "
                   "waits for it): heuristic ~0.1 s a shape; focused up to 3-5 s, 1-4% faster on H200s: pair it with "
                   "--gemm-cache tuned before")
@click.option("--pooling", type=click.Choice(["mean", "cls", "max", "mean_sqrt_len"]), default=None,
              help="default: the model folder's sentence-transformers pooling config, else mean")
@click.option("--no-normalize", is_flag=True, help="do not L2-normalize the embeddings")
@click.option("--truncation", type=click.Choice(["truncate", "reject"]), default="truncate", show_default=True,
              help="texts longer than the model's maximum tokens: cut them, or answer 400")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="micro-batching: how long a request may wait for others to share its batch")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None,
              help="token budget of a micro-batch and of one engine call (default 16384, capped by the profile)")
@click.option("--no-batching", is_flag=True,
              help="turn micro-batching off: every request is its own engine call (for comparison)")
@click.option("--max-inputs", type=click.IntRange(min=1), default=128, show_default=True,
              help="texts per request (more: 422)")
@click.option("--max-chars", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="characters per text (more: 400)")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=2_000_000, show_default=True,
              help="request body size (more: 413)")
@click.option("--max-queue", type=click.IntRange(min=1), default=4096, show_default=True,
              help="waiting requests (more: 503)")
@click.option("--model-name", default=None, help="model name in responses (default: the plan's file name)")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "hybrid"]), default="hybrid", show_default=True,
              help="for an .onnx MODEL: the plan to build (cached beside it)")
@click.option("--graceful-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="seconds to let requests in flight finish on SIGTERM/SIGINT")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
@click.option("--access-log", is_flag=True, help="log every request (slower)")
@quiet_option
def command(model, tokenizer, host, port, backend, contexts, workers, shared_engine, gemm_cache, gemm_search, pooling, no_normalize, truncation, max_wait_ms,
            max_batch_tokens, no_batching, max_inputs, max_chars, max_body_bytes, max_queue, model_name,
            precision, graceful_timeout, log_level, access_log, quiet):
    """Serve embeddings of MODEL (a .plan, or an .onnx built to a plan on first use) over HTTP.

    \b
    POST /v1/embeddings  {"input": "text" | ["text", ...]}  (OpenAI's request and response)
    POST /embed          {"inputs": "text" | ["text", ...]} -> [[...], ...]
    GET  /health, GET /metrics (Prometheus)
    Concurrent requests share engine batches (micro-batching; --max-wait-ms, --max-batch-tokens).
    --workers N: N processes on one port (SO_REUSEPORT), for more requests/s than one Python process serves.
    --shared-engine: the N processes only speak HTTP; one engine process batches all their requests.
    SIGTERM or Ctrl-C: stop accepting, finish the requests in flight, exit.
    """
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError as e:
        raise click.ClickException(f"trtrun serve needs {e.name}: pip install 'trtrun[serve]' "
                                   f"(starlette, uvicorn, prometheus-client)") from None
    from ..embedder import Embedder
    from ..serve.app import ServeConfig, run_server

    progress = Progress(enabled=not quiet)
    try:
        emb = Embedder(model, tokenizer, pooling=pooling, normalize=not no_normalize, contexts=contexts,
                       max_tokens_per_batch=max_batch_tokens, truncation=truncation, backend=backend,
                       precision=precision, progress=progress, gemm_cache=gemm_cache, gemm_search=gemm_search)
    finally:
        progress.close()
    if emb.backend != backend and backend == "auto":
        status(f"note: {emb.backend_reason}; using the reference backend (slow: for testing)", quiet)
    cfg = ServeConfig(model_name=model_name, max_inputs=max_inputs, max_chars=max_chars,
                      max_body_bytes=max_body_bytes, max_wait_ms=max_wait_ms, max_batch_tokens=max_batch_tokens,
                      batching=not no_batching, max_queue=max_queue)
    d = emb.describe()
    where = f"http://{host}:{port}" + (f" with {workers} worker processes" if workers > 1 else "")
    if shared_engine:
        where += " and a shared engine process"
    status(f"serving {d['model']} ({d['precision']}, {d['backend']}, {contexts} context(s), dim {d['dim']}, "
           f"pooling {d['pooling']}, max {d['max_seq_len']} tokens/text) on {where} "
           f"[{'micro-batching, max wait ' + str(max_wait_ms) + ' ms' if not no_batching else 'no batching'}]",
           quiet)
    if workers > 1 or shared_engine:
        return _serve_workers(emb, tokenizer, pooling, cfg, workers=workers, host=host, port=port, quiet=quiet,
                              log_level="warning" if quiet else log_level, access_log=access_log,
                              graceful_timeout=graceful_timeout, shared_engine=shared_engine)

    def on_term(signum, frame):
        raise _Stopped()

    old = signal.signal(signal.SIGTERM, on_term)  # uvicorn re-raises SIGTERM after its graceful shutdown
    try:
        run_server(emb, cfg, host=host, port=port, log_level="warning" if quiet else log_level,
                   access_log=access_log, graceful_timeout=graceful_timeout)
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        emb.close()
    status("server stopped", quiet)
    return 0


def _serve_workers(emb, tokenizer, pooling, cfg, *, workers, host, port, quiet, log_level, access_log, graceful_timeout,
                   shared_engine=False):
    """--workers N: the Embedder built here was the check (a plan built from an ONNX file, tokenizer and
    pooling found, backend usable); each worker builds its own from the same resolved settings."""
    import functools

    from ..embedder import Embedder
    from ..serve.workers import bind_sockets, run_workers

    make = functools.partial(
        Embedder, str(emb.plan_path), str(emb.tokenizer_dir) if emb.tokenizer_dir is not None else tokenizer,
        pooling=pooling, normalize=emb.normalize, contexts=emb.contexts,
        max_tokens_per_batch=emb.max_tokens_per_batch, truncation=emb.truncation, backend=emb.backend,
        gemm_cache=emb.gemm_cache, gemm_search=emb.gemm_search)
    try:
        socks = bind_sockets(host, port, workers)  # a port in use fails here, before any worker starts
    finally:
        emb.close()  # its engine and contexts: the workers have their own
    rc = run_workers(make, cfg, workers=workers, sockets=socks, log_level=log_level, access_log=access_log,
                     graceful_timeout=graceful_timeout, shared_engine=shared_engine,
                     on_ready=lambda pids: status(f"{len(pids)} workers serving (pids {', '.join(map(str, pids))})",
                                                  quiet))
    status("server stopped" if rc == 0 else "server stopped; a worker did not exit cleanly (see the log)", quiet)
    return rc
