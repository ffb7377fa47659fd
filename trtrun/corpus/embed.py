"""embed_corpus: the one call that plans a corpus job and runs it in-process (trtrun.corpus.job) or on a Ray
cluster (trtrun.corpus.ray_job); both of those build on job's shards, so this choice sits above them."""

from __future__ import annotations

from typing import Any, Callable

from ..types import DEFAULT_CONTEXTS
from .job import DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_ROWS, JobProgress, JobSummary, OutputLock, plan_job, run_local


def embed_corpus(input_path, output, *, model=None, embedder=None, tokenizer=None, fmt: str | None = None,
                 text_column: str = "text", id_column: str | None = None, shard_rows: int = DEFAULT_SHARD_ROWS,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, on_error: str = "fail", truncation: str = "reject",
                 max_seq_len: int | None = None, pooling: str | None = None, normalize: bool = True,
                 backend: str = "auto", contexts: int = DEFAULT_CONTEXTS, max_tokens_per_batch: int | None = None,
                 precision: str = "hybrid", ray: str | None = None, ray_options: dict | None = None,
                 progress: Callable[[JobProgress], None] | None = None,
                 on_bad_row: Callable[[int, Any, str], None] | None = None, build_progress=None) -> JobSummary:
    """Embed the texts of `input_path` into Parquet shards under `output` (a folder); resumable.

    model: a .plan or .onnx (or pass a ready `embedder`). ray: None runs in-process; an address ("auto",
    "HOST:PORT", "ray://...", or "" for ray.init()'s default) runs on a Ray cluster
    (trtrun.corpus.ray_job.run_ray; ray_options: actors, cpus_per_actor, ...). Returns a JobSummary.

    This process holds `output`'s job lock (job.OutputLock) from the start, before a plan is built, until it
    returns: another job on the same folder raises OutputLockedError at once. On Ray too: the driver holds
    it, and the write tasks check it before each shard.
    """
    from pathlib import Path

    from ..embed import Embedder
    from ..errors import InputError

    if embedder is None and model is None:
        raise ValueError("embed_corpus needs model= (a .plan or .onnx file) or embedder=")
    if not Path(input_path).is_file():  # (before the output folder is made for its lock)
        raise InputError(f"{input_path}: no such file")
    lock = OutputLock(output).acquire()
    own = embedder is None
    try:
        if own:
            # On Ray the driver's Embedder only resolves the settings (plan built, tokenizer, pooling, limits):
            # the actors run the model, so it takes the reference backend and one context here.
            embedder = Embedder(model, tokenizer, pooling=pooling, normalize=normalize,
                                contexts=1 if ray is not None else contexts,
                                max_tokens_per_batch=max_tokens_per_batch, max_seq_len=max_seq_len,
                                truncation=truncation, backend="reference" if ray is not None else backend,
                                precision=precision, progress=build_progress)
        job = plan_job(input_path, output, embedder, fmt=fmt, text_column=text_column, id_column=id_column,
                       shard_rows=shard_rows, chunk_rows=chunk_rows, on_error=on_error, lock=lock)
        if ray is not None:
            from .._optional import require

            require("ray.data", "trtrun embed --ray")
            from .ray_job import run_ray

            opts = dict(ray_options or {})
            opts.setdefault("backend", backend)
            opts.setdefault("contexts", contexts)
            return run_ray(job, ray, progress=progress, on_bad_row=on_bad_row, **opts)
        return run_local(job, progress, on_bad_row)
    finally:
        if own and embedder is not None:
            embedder.close()
        lock.release()
