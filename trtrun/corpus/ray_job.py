"""The corpus job on a Ray cluster: Ray Data read tasks -> embedding actors -> write tasks.

    read_datasource(ShardSource)   one read task per unfinished shard: the same reader as in-process
                                   (CorpusInput.read), one Arrow block per shard: shard, row, id, text, error
    map_batches(EmbedActor)        one actor per GPU (num_gpus=1; or CPU actors on the reference backend),
                                   each with an Embedder; embeds a block with the in-process function
                                   (embed_shard: the same chunks, so the same engine batches and vectors)
    write_datasink(ShardSink)      writes each shard's part file atomically (write_shard, as in-process),
                                   after checking that the driver still holds OUTPUT's job lock

Why a datasource and a datasink of our own rather than read_json/read_parquet/write_parquet: Ray's file
readers give rows no global row number and cut blocks where they like, and its writers name files per write
task, so neither could say which shard a row belongs to, nor make "part-K.parquet exists" mean "shard K
is complete". With shards as read tasks and part files as the only output, a rerun skips finished shards
exactly as in-process, and either path may finish a job the other started.

The plan is shipped once: its bytes (and the tokenizer's files) go into Ray's object store with one
ray.put, every actor gets the reference; Ray copies the object once to each node that runs an actor, and
the first actor on a node writes it to a local temporary file that the node's other actors reuse. So the
plan needs no shared filesystem. INPUT and OUTPUT do on a cluster of several hosts: read tasks and write
tasks run on any node, so both must be at the same path on every node (NFS or the like).

The job lock (job.OutputLock) is the driver's: it holds OUTPUT/.trtrun-embed.lock for the whole job, so a
second job on the folder, with or without Ray, fails at once. The writing happens in the write tasks, in
Ray's worker processes, which cannot hold the driver's flock; each checks before every shard that the lock
is held and carries its job's token (check_lock_owner). Ray ends a job's tasks when its driver exits, but
not at the same instant: the check keeps a task of a killed driver from writing into a folder that a newer
job has locked (or that nobody holds any more).
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..backends import choose_cluster_backend, ray_connect
from ..errors import TrtrunError
from ..types import DEFAULT_CONTEXTS
from .job import (ERRORS_DIR, BadRowError, Job, JobProgress, JobSummary, Shard, ShardRows, check_lock_owner,
                  embed_shard, node_local_file, shard_table, stopped_by, write_shard)

try:
    import ray
    from ray.data import Datasink, Datasource, ReadTask
    from ray.data.block import BlockAccessor, BlockMetadata
except ImportError as _e:  # the caller says what to install
    raise ImportError(f"--ray needs Ray Data: pip install 'trtrun[ray]' ({_e})") from None

# CPUs a read or write task asks for. Parsing a shard and writing its Parquet take a small fraction of the
# time embedding it takes, and asking less than one CPU lets them run beside actors that hold the cores.
IO_TASK_CPUS = 0.25


# ------------------------------------------------------------------------------------------------ read

def _read_shard(inp, shard: Shard):
    import pyarrow as pa

    rows = inp.read(shard)
    return [pa.table({
        "shard": pa.array(np.full(shard.rows, shard.index, np.int32)),
        "row": pa.array(np.arange(shard.start, shard.end, dtype=np.int64)),
        "id": pa.array(rows.ids, type=inp.id_type),
        "text": pa.array(rows.texts, type=pa.large_string()),
        "error": pa.array(rows.errors, type=pa.string()),
    })]


class ShardSource(Datasource):
    """The unfinished shards of a job as read tasks, one block each."""

    def __init__(self, inp, shards: list):
        super().__init__()
        self.inp, self.shards = inp, list(shards)
        size = inp.path.stat().st_size
        total = max(1, shards[-1].end if shards else 1)
        self._bytes_per_row = max(1, size // total)

    def estimate_inmemory_data_size(self):
        return sum(s.rows for s in self.shards) * self._bytes_per_row

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        inp = self.inp
        return [ReadTask(lambda s=s: _read_shard(inp, s),
                         BlockMetadata(num_rows=s.rows, size_bytes=s.rows * self._bytes_per_row,
                                       input_files=[str(inp.path)], exec_stats=None))
                for s in self.shards]

    def get_name(self) -> str:
        return "TrtrunShards"


# ------------------------------------------------------------------------------------------------ embed

class EmbedActor:
    """A Ray Data actor holding one Embedder; called with blocks of whole shards (Arrow tables)."""

    def __init__(self, shipped: dict, settings: dict):
        from ..embed import Embedder

        blob = ray.get(shipped["ref"])  # {"plan": uint8 array, "tokenizer": {name: bytes}} (fetched once a node)
        sha = settings["plan_sha256"][:16]
        plan_path = node_local_file(f"{sha}.plan", blob["plan"])
        tok_dir = None
        if blob["tokenizer"]:
            tok_sha = (settings["tokenizer_sha256"] or "none")[:16]
            for name, data in blob["tokenizer"].items():
                node_local_file(f"tok-{tok_sha}/{name}", data)
            tok_dir = plan_path.parent / f"tok-{tok_sha}"
        self.s = settings
        self.emb = Embedder(plan_path, tok_dir, pooling=settings["pooling"], normalize=settings["normalize"],
                            contexts=settings["contexts"], max_tokens_per_batch=settings["max_tokens_per_batch"],
                            max_batch_size=settings["max_batch_size"], max_seq_len=settings["max_seq_len"],
                            truncation=settings["truncation"], backend=settings["backend"])

    def __call__(self, batch):
        import pyarrow as pa

        s = self.s
        table = BlockAccessor.for_block(batch).to_arrow()
        shard_col = table.column("shard").to_numpy()
        out = []
        for k in np.unique(shard_col):
            part = table.filter(pa.array(shard_col == k))
            rows_n = part.column("row").to_numpy()
            order = np.argsort(rows_n, kind="stable")
            part = part.take(pa.array(order))
            rows_n = rows_n[order]
            start = int(k) * s["shard_rows"]
            shard = Shard(int(k), start, min(s["rows_total"], start + s["shard_rows"]))
            rows = ShardRows(shard, part.column("id").to_pylist(), part.column("text").to_pylist(),
                             part.column("error").to_pylist(), rows_n.tolist())
            res = embed_shard(self.emb, rows, chunk_rows=s["chunk_rows"], on_error=s["on_error"])
            n, dim = len(rows_n), self.emb.dim
            vec = np.zeros((n, dim), np.float32)
            ntok = np.zeros(n, np.int32)
            trunc = np.zeros(n, bool)
            err: list = [None] * n
            pos = {r: i for i, r in enumerate(rows_n.tolist())}
            good = [pos[r] for r in res.rows]
            vec[good], ntok[good], trunc[good] = res.vectors, res.num_tokens, res.truncated
            for r, _, why in res.bad:
                err[pos[r]] = why
            out.append(pa.table({
                "shard": part.column("shard"), "row": part.column("row"), "id": part.column("id"),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), pa.float32()), dim),
                "num_tokens": pa.array(ntok, pa.int32()), "truncated": pa.array(trunc, pa.bool_()),
                "error": pa.array(err, pa.string()),
                "backend": pa.array([self.emb.backend] * n, pa.string()),
            }))
        return pa.concat_tables(out) if out else table.slice(0, 0)


# ------------------------------------------------------------------------------------------------ write

class ShardSink(Datasink):
    """Writes each shard it is given as OUTPUT/part-K.parquet (+ _errors/part-K.jsonl), atomically."""

    def __init__(self, out_dir: Path, shard_rows: int, rows_total: int, id_type, dim: int, model: str,
                 lock_token: str | None = None):
        self.out_dir, self.shard_rows, self.rows_total = Path(out_dir), shard_rows, rows_total
        self.id_type, self.dim, self.model = id_type, dim, model
        self.lock_token = lock_token  # the driver's OutputLock token (None: a job planned without one)
        self.results: list = []

    def write(self, blocks, ctx):
        import pyarrow as pa

        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return []
        table = pa.concat_tables(tables)
        shard_col = table.column("shard").to_numpy()
        done = []
        for k in np.unique(shard_col):
            part = table.filter(pa.array(shard_col == k))
            part = part.take(pa.array(np.argsort(part.column("row").to_numpy(), kind="stable")))
            start = int(k) * self.shard_rows
            shard = Shard(int(k), start, min(self.rows_total, start + self.shard_rows))
            if part.num_rows != shard.rows:  # a shard must reach one write task whole (see the module doc)
                raise TrtrunError(f"shard {shard.index} reached a write task with {part.num_rows} of its "
                                  f"{shard.rows} rows; nothing of it was written (a smaller --shard-rows keeps a "
                                  f"shard in one Ray block)")
            errors = part.column("error").to_pylist()
            good = np.array([e is None for e in errors])
            g = part.filter(pa.array(good))
            ids = g.column("id").to_pylist()
            vec = g.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            backends = sorted(set(g.column("backend").to_pylist()) or {"-"})
            out = shard_table(ids, vec.reshape(-1, self.dim), g.column("num_tokens").to_numpy(),
                              g.column("truncated").to_numpy(zero_copy_only=False), self.id_type, self.dim,
                              {"model": self.model, "backend": ",".join(backends)})
            rows_col = part.column("row").to_pylist()
            ids_all = part.column("id").to_pylist()
            bad = [(r, i, e) for r, i, e in zip(rows_col, ids_all, errors) if e is not None]
            if self.lock_token is not None:
                check_lock_owner(self.out_dir, self.lock_token, f"shard {shard.index}")
            write_shard(self.out_dir, shard, out, bad)
            done.append((shard.index, g.num_rows, len(bad), int(np.asarray(g.column("num_tokens")).sum())))
        return done

    def on_write_complete(self, write_result):
        for r in write_result.write_returns:
            self.results.extend(r or [])

    def get_name(self) -> str:
        return "TrtrunShards"


# ------------------------------------------------------------------------------------------------ driver

def _cause(e: BaseException, kinds) -> BaseException | None:
    """The first exception of one of `kinds` in e's chain (Ray wraps an actor's error in its own)."""
    seen = set()
    stack = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, kinds):
            return x
        stack.extend([getattr(x, "cause", None), x.__cause__, x.__context__])
    return None


class _Watcher:
    """Counts finished shards (their part files) while Ray runs the job: the progress line and the bad rows."""

    def __init__(self, job: Job, todo: list, prog: JobProgress, progress, on_bad_row, t0: float):
        self.job, self.prog, self.progress, self.on_bad_row, self.t0 = job, prog, progress, on_bad_row, t0
        self.pending = {s.name: s for s in todo}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="trtrun-ray-progress", daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.wait(1.0):
            self.poll()

    def poll(self):
        import pyarrow.parquet as pq

        out = self.job.output
        for name in [n for n in self.pending if (out / f"{n}.parquet").is_file()]:
            shard = self.pending.pop(name)
            try:
                tokens = int(np.asarray(pq.read_table(out / f"{name}.parquet", columns=["num_tokens"])
                                        .column("num_tokens")).sum())
            except Exception:  # noqa: BLE001 - progress only
                tokens = 0
            bad = []
            err = out / ERRORS_DIR / f"{name}.jsonl"
            if err.is_file():
                bad = [json.loads(x) for x in err.read_text(encoding="utf-8").splitlines() if x.strip()]
            for b in bad:
                if self.on_bad_row is not None:
                    self.on_bad_row(b.get("row"), b.get("id"), b.get("error"))
            self.prog.rows_done += shard.rows
            self.prog.tokens += tokens
            self.prog.bad_rows += len(bad)
            self.prog.shards_done += 1
        self.prog.elapsed_s = time.perf_counter() - self.t0
        if self.progress is not None:
            self.progress(self.prog)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.poll()


def gpu_actor_cpus(nodes: list[dict]) -> float:
    """The default CPUs of a GPU actor: half its node's CPUs per GPU, 1 to 8, on the GPU node with the fewest
    (so that every GPU node can place its actors; the other half stays for the read and write tasks). Ray sets a
    worker's OMP_NUM_THREADS to its CPUs, and the actor's host work (tokenizing, pooling, Arrow) shares them: a
    25,000-text job on an H200 took 11.7-11.8 s with 1 CPU against 9.7-10.4 with 8 (docs/ray.md)."""
    per_gpu = [n["Resources"].get("CPU", 0) / n["Resources"]["GPU"] for n in nodes
               if n.get("Alive", True) and n.get("Resources", {}).get("GPU", 0) >= 1]
    return float(max(1, min(8, int(min(per_gpu) // 2)))) if per_gpu else 1.0


def actor_resources(backend: str, actors: int | None, cpus_per_actor: float | None) -> tuple[str, int, dict]:
    """-> (the actors' Embedder backend, how many actors, their Ray resources) for this cluster. cpus_per_actor
    None: gpu_actor_cpus for GPU actors, 1 for CPU ones."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 0))
    if choose_cluster_backend(backend, gpus) == "gpu":
        n = actors or gpus
        return "gpu", n, {"num_gpus": 1, "num_cpus": cpus_per_actor or gpu_actor_cpus(ray.nodes())}
    cpus_per_actor = cpus_per_actor or 1.0
    # numpy's BLAS (OpenBLAS) rounds differently with another thread count, and hybrid's fp16 rounding after it
    # turns that into ~1e-4 differences: a CPU actor runs a fixed count (its CPUs), so an in-process run with
    # OMP_NUM_THREADS set to the same count gives the same vectors bit for bit.
    threads = str(max(1, int(round(cpus_per_actor))))
    env = {"runtime_env": {"env_vars": {k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                                "MKL_NUM_THREADS")}}}
    n = actors or max(1, int((cpus - 1) // cpus_per_actor))
    if n * cpus_per_actor + IO_TASK_CPUS > cpus:
        raise TrtrunError(f"{n} actor(s) x {cpus_per_actor:g} CPU leave no CPU for the read and write tasks on a "
                          f"Ray cluster of {cpus:g} CPUs; lower --ray-actors or --ray-cpus-per-actor")
    return "reference", n, {"num_cpus": cpus_per_actor, **env}


def map_kwargs(shipped: dict, settings: dict, n_actors: int, resources: dict) -> dict:
    """map_batches' arguments for the embedding actors. A call must get one whole shard (one read block), so that
    the actor embeds it in the in-process chunks and a write task gets it whole. Ray bundles whole blocks until a
    bundle holds batch_size rows, then cuts batches of batch_size rows: with batch_size = shard_rows a full shard is a
    bundle and a batch alone, and the one short shard (the job's last) is too because blocks arrive in shard order
    (preserve_order). Ray refuses batch_size=None where actors ask for GPUs."""
    import ray.data

    return {"fn_constructor_kwargs": {"shipped": shipped, "settings": settings}, "batch_size": settings["shard_rows"],
            "batch_format": "pyarrow", "compute": ray.data.ActorPoolStrategy(size=n_actors), **resources}


def run_ray(job: Job, address: str | None, *, backend: str = "auto", contexts: int = DEFAULT_CONTEXTS,
            actors: int | None = None, cpus_per_actor: float | None = None,
            progress: Callable[[JobProgress], None] | None = None,
            on_bad_row: Callable[[int, Any, str], None] | None = None) -> JobSummary:
    """Run the job's unfinished shards on Ray (connecting first where this process has not)."""
    import ray.data

    started = ray_connect(address)
    try:
        return _run(job, backend=backend, contexts=contexts, actors=actors, cpus_per_actor=cpus_per_actor,
                    progress=progress, on_bad_row=on_bad_row)
    finally:
        if started:
            ray.shutdown()


def _run(job, *, backend, contexts, actors, cpus_per_actor, progress, on_bad_row) -> JobSummary:
    import ray.data

    t0 = time.perf_counter()
    todo = job.todo
    emb = job.emb
    prog = JobProgress(job.rows_total, sum(s.rows for s in job.shards if s.index in job.done), shards_todo=len(todo))
    actor_backend, n_actors, resources = actor_resources(backend, actors, cpus_per_actor)
    where = f"ray ({n_actors} {actor_backend} actor(s), {contexts} context(s) each)"
    if not todo:
        return JobSummary(str(job.output), job.rows_total, 0, prog.rows_resumed, 0, 0, 0, len(job.done), 0.0, where)
    ident = job.manifest["identity"]["model"]
    shipped = {"ref": ray.put({"plan": np.frombuffer(job.plan_bytes, np.uint8), "tokenizer": job.tokenizer_files})}
    settings = {"plan_sha256": ident["plan_sha256"], "tokenizer_sha256": ident["tokenizer_sha256"],
                "pooling": emb.pooling, "normalize": emb.normalize, "max_seq_len": emb.max_seq_len,
                "truncation": emb.truncation, "max_tokens_per_batch": emb.max_tokens_per_batch,
                "max_batch_size": emb.max_batch_size, "contexts": contexts, "backend": actor_backend,
                "chunk_rows": job.chunk_rows, "on_error": job.on_error,
                "shard_rows": job.manifest["identity"]["shard_rows"], "rows_total": job.rows_total}
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job's own line reports progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx.raise_original_map_exception = True  # an actor's BadRowError reaches the driver as itself
    # blocks reach the actors in shard order, so that the one short shard (the last) comes last (map_kwargs)
    ctx.execution_options.preserve_order = True
    ds = ray.data.read_datasource(ShardSource(job.input, todo), override_num_blocks=len(todo),
                                  num_cpus=IO_TASK_CPUS)
    ds = ds.map_batches(EmbedActor, **map_kwargs(shipped, settings, n_actors, resources))
    sink = ShardSink(job.output, settings["shard_rows"], job.rows_total, job.input.id_type, emb.dim,
                     ident["plan_sha256"][:16], job.lock_token)
    watcher = _Watcher(job, todo, prog, progress, on_bad_row, t0)
    err = None
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    # Ray Data logs a failed task's whole traceback; the error raised below says what failed in one line
    # (--debug shows the traceback)
    data_log.setLevel(logging.CRITICAL)
    try:
        ds.write_datasink(sink, ray_remote_args={"num_cpus": IO_TASK_CPUS})
    except Exception as e:  # noqa: BLE001 - Ray wraps what the actors raised
        watcher.close()
        written = len(job.done) + prog.shards_done
        bad = _cause(e, (BadRowError,))
        cause = _cause(e, (TrtrunError,))
        if bad is not None:
            err = stopped_by(BadRowError(bad.row, bad.id, bad.reason), job, written)
        elif cause is not None:
            err = TrtrunError(f"the Ray job failed: {cause} ({written} of {len(job.shards)} shards are written; "
                              f"a rerun goes on from there)")
        else:
            raise
    finally:
        data_log.setLevel(level)
    if err is not None:
        # The failed execution's actors hold their CPUs/GPUs until its objects are collected: free them now, so
        # that a rerun in this process finds the resources (else its read tasks wait for them for ever).
        del ds
        gc.collect()
        raise err
    watcher.close()
    rows_embedded = sum(r[1] for r in sink.results)
    return JobSummary(str(job.output), job.rows_total, rows_embedded, prog.rows_resumed,
                      sum(r[2] for r in sink.results), sum(r[3] for r in sink.results), len(sink.results),
                      len(job.done), time.perf_counter() - t0, where,
                      str(job.output / ERRORS_DIR) if any(r[2] for r in sink.results) else None)
