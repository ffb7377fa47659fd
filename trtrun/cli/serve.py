"""`trtrun serve`: an HTTP embedding server (OpenAI /v1/embeddings, /embed, /health, /metrics)."""

from __future__ import annotations

import signal

import click

from ..types import DEFAULT_CONTEXTS, DEFAULT_MAX_TOKENS_PER_BATCH, GEMM_SEARCH_DEFAULTS, GEMM_SEARCHES, TRUNCATIONS
from ._ui import Progress, status
from .options import backend_option, onnx_precision_option, pooling_options, quiet_option
from .ray_options import ray_serve_options


class _Stopped(Exception):
    """SIGTERM after uvicorn's graceful shutdown (uvicorn re-raises the signal it caught)."""


@click.command("serve")
@click.argument("model", metavar="MODEL", type=click.Path(exists=True, dir_okay=False))
@click.option("--tokenizer", type=click.Path(file_okay=False), default=None,
              help="tokenizer folder (default: beside the source model, or by vocabulary size in the data folder)")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="port to listen on")
@backend_option
@click.option("--contexts", type=click.IntRange(min=1), default=DEFAULT_CONTEXTS, show_default=True,
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
@click.option("--gemm-search", type=click.Choice(GEMM_SEARCHES), default=GEMM_SEARCH_DEFAULTS["serve"],
              show_default=True,
              help="how a GPU context chooses the GEMM algorithm of a shape it meets first (in a request, which "
                   "waits for it): heuristic ~0.1 s a shape; focused up to 3-5 s, 1-4% faster on H200s: pair it with "
                   "--gemm-cache tuned before")
@pooling_options
@click.option("--truncation", type=click.Choice(sorted(TRUNCATIONS)), default="reject", show_default=True,
              help="texts longer than the model's maximum tokens: answer 400 with the token count and the limit "
                   "(as OpenAI's API), or cut them (the response's X-Truncated-Inputs header and "
                   "\"truncated\": true items say which)")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="micro-batching: how long a request may wait for others to share its batch")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None,
              help=f"token budget of a micro-batch and of one engine call (default {DEFAULT_MAX_TOKENS_PER_BATCH}, "
                   "capped by the profile)")
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
@click.option("--max-connections", type=click.IntRange(min=1), default=1000, show_default=True,
              help="open connections per worker process (with --workers N, up to N times this in all; the kernel "
                   "spreads connections over the workers by their addresses, not their load, so one worker may "
                   "refuse while another has room); one more gets a quick JSON 503. Lowered to fit the open-file "
                   "limit, ulimit -n")
@click.option("--header-timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="seconds a client has to send a request's head (more: 408 and the connection is closed)")
@click.option("--body-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="seconds a client has to send a request's body, after its head (more: 408, closed)")
@click.option("--keep-alive-timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="seconds an idle keep-alive connection stays open")
@click.option("--api-key", envvar="TRTRUN_API_KEY", default=None, show_envvar=True,
              help="require 'Authorization: Bearer KEY' on every request (401 otherwise); better given as the "
                   "environment variable, so that it does not show in the process list")
@click.option("--public-health", is_flag=True,
              help="with --api-key: /health and /metrics answer without the key (for probes and scrapers)")
@click.option("--model-name", default=None, help="model name in responses (default: the plan's file name)")
@onnx_precision_option
@click.option("--graceful-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="seconds to let requests in flight finish on SIGTERM/SIGINT")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
@click.option("--access-log", is_flag=True, help="log every request (slower)")
@quiet_option
@ray_serve_options
def command(model, tokenizer, host, port, backend, contexts, workers, shared_engine, gemm_cache, gemm_search, pooling, no_normalize, truncation, max_wait_ms,
            max_batch_tokens, no_batching, max_inputs, max_chars, max_body_bytes, max_queue, max_connections,
            header_timeout, body_timeout, keep_alive_timeout, api_key, public_health, model_name,
            precision, graceful_timeout, log_level, access_log, quiet, **ray):
    """Serve embeddings of MODEL (a .plan, or an .onnx built to a plan on first use) over HTTP.

    \b
    POST /v1/embeddings  {"input": "text" | ["text", ...]}  (OpenAI's request and response)
    POST /embed          {"inputs": "text" | ["text", ...]} -> [[...], ...]
    GET  /v1/models, GET /health, GET /metrics (Prometheus)
    Concurrent requests share engine batches (micro-batching; --max-wait-ms, --max-batch-tokens).
    A bad input (too long, not valid Unicode) fails only its own request: 400 naming its index.
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
    if api_key is not None and not api_key.strip():
        raise click.BadParameter("the API key is empty", param_hint="--api-key / TRTRUN_API_KEY")
    if public_health and api_key is None:
        raise click.BadParameter("needs --api-key (or TRTRUN_API_KEY)", param_hint="--public-health")
    if ray.get("ray_haproxy") and ray.get("ray_address") is None:
        raise click.BadParameter("needs --ray", param_hint="--ray-haproxy")
    if ray.get("ray_haproxy") and ray.get("ray_address"):
        raise click.BadParameter(
            f"starts a local Ray of its own, so it takes --ray without an ADDRESS (got {ray['ray_address']!r}): Ray "
            f"reads its HAProxy settings from the environment its processes start in, so on a running cluster set "
            f"them where the cluster starts (docs/ray.md, \"Ray Serve behind HAProxy\")", param_hint="--ray-haproxy")
    from ..embed import Embedder
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
                      batching=not no_batching, max_queue=max_queue, max_connections=max_connections,
                      header_timeout=header_timeout, body_timeout=body_timeout, keep_alive_timeout=keep_alive_timeout,
                      api_key=api_key, public_health=public_health)
    if ray.get("ray_address") is not None:  # Ray Serve replicas instead of this machine's processes
        ingress = None
        if ray.pop("ray_haproxy", False):
            from ..serve.ray_haproxy import HAProxyIngress

            # before ray.serve is imported and the local Ray starts: both read the settings from the environment
            ingress = HAProxyIngress.prepare(client_timeout_s=max(header_timeout, body_timeout),
                                             max_connections=max_connections)
            ingress.apply()
            ray["ray_address"] = "local"
        try:
            from ..serve.ray_serve import serve_on_ray
        except BaseException:
            if ingress is not None:
                ingress.stop()
            raise
        return serve_on_ray(emb, cfg, host=host, port=port, backend=backend, contexts=contexts, quiet=quiet,
                            access_log=access_log, ingress=ingress, **ray)
    d = emb.describe()

    def announce(address: str) -> None:
        """Said once the socket is bound (a port in use is an error instead)."""
        where = address + (f" with {workers} worker processes" if workers > 1 else "")
        if shared_engine:
            where += " and a shared engine process"
        status(f"serving {d['model']} ({d['precision']}, {d['backend']}, {contexts} context(s), dim {d['dim']}, "
               f"pooling {d['pooling']}, max {d['max_seq_len']} tokens/text, {d['truncation']} longer) on {where} "
               f"[{'micro-batching, max wait ' + str(max_wait_ms) + ' ms' if not no_batching else 'no batching'}"
               f"{', API key required' if api_key else ''}]", quiet)

    if workers > 1 or shared_engine:
        return _serve_workers(emb, tokenizer, pooling, cfg, workers=workers, host=host, port=port, quiet=quiet,
                              log_level="warning" if quiet else log_level, access_log=access_log,
                              graceful_timeout=graceful_timeout, shared_engine=shared_engine, announce=announce)

    def on_term(signum, frame):
        raise _Stopped()

    old = signal.signal(signal.SIGTERM, on_term)  # uvicorn re-raises SIGTERM after its graceful shutdown
    try:
        run_server(emb, cfg, host=host, port=port, log_level="warning" if quiet else log_level,
                   access_log=access_log, graceful_timeout=graceful_timeout, on_started=announce)
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        emb.close()
    status("server stopped", quiet)
    return 0


def _serve_workers(emb, tokenizer, pooling, cfg, *, workers, host, port, quiet, log_level, access_log, graceful_timeout,
                   shared_engine=False, announce=None):
    """--workers N: the Embedder built here was the check (a plan built from an ONNX file, tokenizer and
    pooling found, backend usable); each worker builds its own from the same resolved settings."""
    import functools

    from ..embed import Embedder
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
    h, p = socks[0].getsockname()[:2]
    address = f"http://[{h}]:{p}" if ":" in h else f"http://{h}:{p}"

    def on_ready(pids):
        if announce is not None:
            announce(address)
        status(f"{len(pids)} workers serving (pids {', '.join(map(str, pids))})", quiet)

    rc = run_workers(make, cfg, workers=workers, sockets=socks, log_level=log_level, access_log=access_log,
                     graceful_timeout=graceful_timeout, shared_engine=shared_engine, on_ready=on_ready)
    status("server stopped" if rc == 0 else "server stopped; a worker did not exit cleanly (see the log)", quiet)
    return rc
