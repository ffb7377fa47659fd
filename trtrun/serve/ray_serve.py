"""trtrun's embedding service on Ray Serve: the app of `trtrun serve` (trtrun.serve.app.create_app: the same
OpenAI-style API, validation, limits, micro-batching and metrics) as a Ray Serve deployment, one replica
per GPU, with Ray Serve's autoscaling.

Two ways to start it (docs/ray.md):
    trtrun serve PLAN --ray [ADDRESS] [--ray-replicas N] [--ray-max-replicas M]    (serve_on_ray)
    serve run / serve deploy of a config file with  import_path: trtrun.serve.ray_serve:app_builder

Each replica is a Ray actor that builds an Embedder (num_gpus=1: Ray gives it one GPU, which it sees as
device 0; or a CPU replica on the reference backend) and serves create_app(embedder, config) through Ray
Serve's ASGI ingress; Ray Serve runs the app's lifespan, so each replica's micro-batcher starts and drains
with it. Ray's HTTP proxy spreads requests over the replicas. GET /metrics and /health answer from the
replica that took the request (Ray Serve's own metrics cover the whole deployment).

With `trtrun serve --ray` the plan and tokenizer files go to the replicas through Ray's object store (one
ray.put from the `trtrun serve` process, which owns them and stays up while the app serves), so they need
no shared filesystem. A config file names paths, which must exist on every node that runs a replica.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from ..backends import choose_cluster_backend, ray_connect
from ..errors import TrtrunError
from ..types import DEFAULT_CONTEXTS

try:
    import ray
    from ray import serve
except ImportError as _e:  # the caller says what to install
    raise ImportError(f"--ray needs Ray Serve: pip install 'trtrun[ray]' ({_e})") from None

APP_NAME = "trtrun"
# Requests a replica holds at once (Ray Serve's default is 5). The app micro-batches concurrent requests, so a
# replica needs many in flight to form batches; beyond this Ray's proxy queues them (and the app's own
# --max-queue limit answers 503).
DEFAULT_MAX_ONGOING = 256
# Autoscaling target: requests in flight per replica that Ray Serve keeps (adds replicas above it).
DEFAULT_TARGET_ONGOING = 64


def _blas_env(cpus: float) -> dict:
    t = str(max(1, int(round(cpus))))
    return {"env_vars": {k: t for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}


class EmbeddingService:
    """One replica: an Embedder and trtrun's Starlette app around it."""

    def __init__(self, model: dict, settings: dict, config):
        from ..embed import Embedder

        if "ref" in model:  # shipped through the object store (trtrun serve --ray)
            from ..corpus.job import node_local_file as _local_copy

            blob = ray.get(model["ref"])
            plan = _local_copy(f"{model['plan_sha256'][:16]}.plan", blob["plan"])
            tok = None
            if blob["tokenizer"]:
                for name, data in blob["tokenizer"].items():
                    _local_copy(f"tok-{model['tokenizer_sha256'][:16]}/{name}", data)
                tok = plan.parent / f"tok-{model['tokenizer_sha256'][:16]}"
        else:  # paths (a config file): the same on every node
            plan, tok = model["model"], model.get("tokenizer")
        self.emb = Embedder(plan, tok, **settings)
        self.config = config

    def __serve_build_asgi_app__(self):
        from .app import create_app

        return create_app(self.emb, self.config)

    def check_health(self):  # Ray Serve calls it periodically; raising restarts the replica
        if getattr(self.emb, "_closed", False):
            raise RuntimeError("the replica's Embedder is closed")

    def __del__(self):
        emb = getattr(self, "emb", None)
        if emb is not None:
            emb.close()


def deployment(model: dict, settings: dict, config, *, gpu: bool, replicas: int = 1, max_replicas: int | None = None,
               cpus_per_replica: float = 1.0, max_ongoing: int = DEFAULT_MAX_ONGOING,
               target_ongoing: int = DEFAULT_TARGET_ONGOING, replicas_per_gpu: int = 1, access_log: bool = False):
    """The bound Ray Serve application: EmbeddingService replicas (num_gpus=1/replicas_per_gpu each with gpu),
    `replicas` of them, or autoscaling between `replicas` and `max_replicas` around `target_ongoing` requests per
    replica. access_log: Ray Serve's line per request in the replicas' logs (off, as in `trtrun serve`: writing it
    is part of a replica's work per request, docs/ray.md)."""
    if replicas_per_gpu < 1:
        raise TrtrunError(f"replicas per GPU must be >= 1, got {replicas_per_gpu}")
    actor = {"num_cpus": cpus_per_replica}
    if gpu:
        actor["num_gpus"] = 1 / replicas_per_gpu
    else:
        actor["runtime_env"] = _blas_env(cpus_per_replica)
    opts = {"ray_actor_options": actor, "max_ongoing_requests": max_ongoing,
            "logging_config": {"enable_access_log": access_log}}
    if max_replicas is not None and max_replicas > replicas:
        opts["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                      "target_ongoing_requests": target_ongoing}
    else:
        opts["num_replicas"] = replicas
    dep = serve.deployment(serve.ingress()(EmbeddingService), name="EmbeddingService", **opts)
    return dep.bind(model, settings, config)


def _settings(emb, backend: str, contexts: int) -> dict:
    """An Embedder's resolved settings, for the replicas to build the same one."""
    return {"pooling": emb.pooling, "normalize": emb.normalize, "contexts": contexts,
            "max_tokens_per_batch": emb.max_tokens_per_batch, "max_batch_size": emb.max_batch_size,
            "max_seq_len": emb.max_seq_len, "truncation": emb.truncation, "backend": backend,
            "gemm_cache": emb.gemm_cache, "gemm_search": emb.gemm_search}


def app_builder(args: dict):
    """For a Ray Serve config file (`import_path: trtrun.serve.ray_serve:app_builder`). args: model (a .plan on
    every node), tokenizer, pooling, normalize, truncation, max_seq_len, max_batch_tokens, contexts, backend
    (gpu: one GPU per replica, or 1/replicas_per_gpu of one), replicas, max_replicas, cpus_per_replica, max_ongoing,
    target_ongoing, replicas_per_gpu, access_log, and the server limits of ServeConfig (max_inputs, max_chars,
    max_body_bytes, max_wait_ms, max_queue, model_name, ...)."""
    from .app import ServeConfig

    a = dict(args or {})
    if "model" not in a:
        raise TrtrunError("the trtrun Ray Serve app needs args.model: the path of a .plan on every node")
    model = {"model": str(a.pop("model")), "tokenizer": a.pop("tokenizer", None)}
    backend = a.pop("backend", "gpu")
    gpu = backend == "gpu"
    settings = {"pooling": a.pop("pooling", None), "normalize": bool(a.pop("normalize", True)),
                "contexts": int(a.pop("contexts", DEFAULT_CONTEXTS)), "max_tokens_per_batch": a.get("max_batch_tokens"),
                "max_seq_len": a.pop("max_seq_len", None), "truncation": a.pop("truncation", "reject"),
                "backend": backend}
    dep = {k: a.pop(k) for k in ("replicas", "max_replicas", "cpus_per_replica", "max_ongoing", "target_ongoing",
                                 "replicas_per_gpu", "access_log")
           if k in a}
    fields = set(ServeConfig.__dataclass_fields__)
    unknown = sorted(set(a) - fields)
    if unknown:
        raise TrtrunError(f"unknown args for the trtrun Ray Serve app: {', '.join(unknown)}")
    return deployment(model, settings, ServeConfig(**a), gpu=gpu, **dep)


def ship(emb) -> dict:
    """The Embedder's plan and tokenizer files in Ray's object store (one ray.put): the replicas' `model`."""
    from ..corpus.job import model_identity, tokenizer_files
    import hashlib

    import numpy as np

    if emb.plan_path is None or not Path(emb.plan_path).is_file():
        raise TrtrunError("serving on Ray needs the plan as a file")
    data = Path(emb.plan_path).read_bytes()
    tok = tokenizer_files(emb.tokenizer_dir)
    ident = model_identity(emb, hashlib.sha256(data).hexdigest(), tok)
    ref = ray.put({"plan": np.frombuffer(data, np.uint8), "tokenizer": tok})
    return {"ref": ref, "plan_sha256": ident["plan_sha256"], "tokenizer_sha256": ident["tokenizer_sha256"] or "none"}


def start(emb, config, *, backend: str = "auto", contexts: int = DEFAULT_CONTEXTS, replicas: int | None = None,
          max_replicas: int | None = None, cpus_per_replica: float = 1.0, max_ongoing: int = DEFAULT_MAX_ONGOING,
          target_ongoing: int = DEFAULT_TARGET_ONGOING, replicas_per_gpu: int = 1, access_log: bool = False,
          host: str = "127.0.0.1", port: int = 8000, name: str = APP_NAME) -> dict:
    """Deploy `emb`'s model as a Ray Serve app in the connected cluster (Ray Serve's HTTP proxy on host:port)
    -> a description (replicas, backend, url). Returns when the replicas serve. Replicas default to
    replicas_per_gpu on each of the cluster's GPUs (one CPU replica on the reference backend)."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    gpu = choose_cluster_backend(backend, gpus) == "gpu"
    n = replicas or (gpus * replicas_per_gpu if gpu else 1)
    model = ship(emb)
    app = deployment(model, _settings(emb, "gpu" if gpu else "reference", contexts), config, gpu=gpu, replicas=n,
                     max_replicas=max_replicas, cpus_per_replica=cpus_per_replica, max_ongoing=max_ongoing,
                     replicas_per_gpu=replicas_per_gpu, access_log=access_log,
                     target_ongoing=target_ongoing)
    serve.start(http_options={"host": host, "port": port}, logging_config={"enable_access_log": access_log})
    serve.run(app, name=name, route_prefix="/", blocking=False)
    return {"replicas": n, "max_replicas": max_replicas, "backend": "gpu" if gpu else "reference",
            "url": f"http://{host}:{port}"}


def serve_on_ray(emb, config, *, host: str, port: int, backend: str, contexts: int, quiet: bool = False,
                 ray_address: str | None = "", ray_replicas: int | None = None, ray_max_replicas: int | None = None,
                 ray_cpus_per_replica: float = 1.0, ray_max_ongoing: int = DEFAULT_MAX_ONGOING,
                 ray_replicas_per_gpu: int = 1, access_log: bool = False, ingress=None, **_) -> int:
    """`trtrun serve PLAN --ray`: deploy on Ray Serve and stay up until SIGTERM or Ctrl-C (then delete the app,
    letting requests in flight finish, and disconnect). `emb` (built by trtrun serve) resolved the settings; its
    engine is closed here, the replicas build their own. `ingress`: the HAProxyIngress (trtrun.serve.ray_haproxy)
    applied before this module was imported, with ray_address "local"; stopped here after Ray shuts down."""
    from ..cli._ui import status

    emb.close()
    try:
        started = ray_connect(ray_address)
    except BaseException:
        if ingress is not None:
            ingress.stop()
        raise
    # after ray.init, whose own SIGTERM handler (a crash report, then abort) would otherwise replace these
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *a: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        d = start(emb, config, backend=backend, contexts=contexts, replicas=ray_replicas,
                  max_replicas=ray_max_replicas, cpus_per_replica=ray_cpus_per_replica, max_ongoing=ray_max_ongoing,
                  replicas_per_gpu=ray_replicas_per_gpu, access_log=access_log, host=host, port=port)
        scale = f"{d['replicas']}" + (f"-{d['max_replicas']} (autoscaling)" if d["max_replicas"] else "")
        status(f"serving {emb.model_name} on Ray Serve at {d['url']}: {scale} {d['backend']} replica(s), "
               f"{contexts} context(s) each" + (f", {ingress.describe()}" if ingress is not None else ""), quiet)
        stop.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        try:
            serve.delete(APP_NAME)
        except Exception:  # noqa: BLE001 - stopping anyway
            pass
        if started:
            serve.shutdown()
            ray.shutdown()
        if ingress is not None:
            ended = ingress.stop()
            if ended:
                status(f"ended the HAProxy process(es) Ray left running: pid {', '.join(map(str, ended))}", quiet)
    status("server stopped", quiet)
    return 0

