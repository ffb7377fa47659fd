"""`trtrun embed`: embed a corpus (JSON lines, Parquet or plain text) into Parquet shards, resumable,
in-process or on a Ray cluster (--ray)."""

from __future__ import annotations

import sys
import time

import click

from ..types import (CORPUS_FORMATS, DEFAULT_CHUNK_ROWS, DEFAULT_CONTEXTS, DEFAULT_MAX_TOKENS_PER_BATCH, DEFAULT_SHARD_ROWS,
                     ON_ERROR, TRUNCATIONS)
from ._ui import Progress, status
from .options import backend_option, onnx_precision_option, pooling_options, quiet_option

# bad rows printed one a line before the rest are only counted (all of them are in OUTPUT/_errors/)
MAX_BAD_ROWS_SHOWN = 20


def _clock(s: float | None) -> str:
    if s is None:
        return "--:--"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _RateLine:
    """The job's progress on stderr: texts done of the total, texts/s and tokens/s of this run, ETA. Redrawn in
    place on a terminal (at most 10 times a second); elsewhere one line every 10 s."""

    def __init__(self, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t_draw = 0.0
        self.last = None

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        self.last = p
        now = time.monotonic()
        if now - self.t_draw < (0.1 if self.tty else 10.0):
            return
        self.t_draw = now
        self._draw(p)

    def _draw(self, p, end: bool = False) -> None:
        done = p.rows_resumed + p.rows_done
        pct = 100.0 * done / p.rows_total if p.rows_total else 100.0
        line = (f"  embedded {done:,}/{p.rows_total:,} texts ({pct:.1f}%), {p.rows_per_s:,.0f} texts/s, "
                f"{p.tokens_per_s:,.0f} tokens/s, {'elapsed ' + _clock(p.elapsed_s) if end else 'ETA ' + _clock(p.eta_s)}")
        if p.bad_rows:
            line += f", {p.bad_rows:,} bad"
        self.stream.write(f"\r{line}\x1b[K" + ("\n" if end else "") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.last is not None:
            self._draw(self.last, end=True)


@click.command("embed")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="output folder: Parquet shards part-NNNNN.parquet (id, embedding, num_tokens, truncated) and "
                   "_manifest.json; an existing one of the same job is resumed. Locked while the job runs: a "
                   "second job on it fails at once naming the pid of the first")
@click.option("-m", "--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="a .plan, or an .onnx built to a hybrid plan on first use (cached beside it)")
@click.option("--tokenizer", type=click.Path(file_okay=False), default=None,
              help="tokenizer folder (default: beside the source model, or by vocabulary size in the data folder)")
@click.option("--format", "fmt", type=click.Choice(CORPUS_FORMATS), default=None,
              help="input format (default: from the suffix: .jsonl/.ndjson/.json, .parquet/.pq, .txt)")
@click.option("--text-column", default="text", show_default=True, help="JSON field or Parquet column of the text")
@click.option("--id-column", default=None,
              help="JSON field or Parquet column of the row's id (default: the row number, from 0)")
@click.option("--on-error", type=click.Choice(ON_ERROR), default="fail", show_default=True,
              help="a bad row (not a string, empty, invalid text, too long under --truncation reject, a line "
                   "that is not JSON): stop the job (shards written so far are kept), or skip it and list it "
                   "in OUTPUT/_errors/")
@click.option("--truncation", type=click.Choice(sorted(TRUNCATIONS)), default="reject", show_default=True,
              help="texts longer than the model's maximum tokens: a bad row (as trtrun serve answers 400), or cut "
                   "(flagged in the truncated column)")
@click.option("--max-seq-len", type=click.IntRange(min=2), default=None,
              help="tokens per text (default: the plan's profile, capped by the model's own limit)")
@pooling_options
@backend_option
@click.option("--contexts", type=click.IntRange(min=1), default=DEFAULT_CONTEXTS, show_default=True,
              help="engine contexts (in-process: of this process; with --ray: of each actor)")
@click.option("--max-batch-tokens", type=click.IntRange(min=1), default=None,
              help=f"padded tokens per engine batch (default {DEFAULT_MAX_TOKENS_PER_BATCH}, capped by the profile)")
@onnx_precision_option
@click.option("--shard-rows", type=click.IntRange(min=1), default=DEFAULT_SHARD_ROWS, show_default=True,
              help="rows per shard: the unit written at once and skipped by a rerun")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=DEFAULT_CHUNK_ROWS, show_default=True,
              help="texts per Embedder call within a shard (packed into engine batches by length)")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="run on a Ray cluster (pip install 'trtrun[ray]'): Ray Data read tasks, one embedding actor per "
                   "GPU (--backend gpu, or auto where the cluster has GPUs), write tasks. ADDRESS as ray.init "
                   "takes it (auto, HOST:PORT, ray://HOST:PORT); without one: RAY_ADDRESS, else a local Ray")
@click.option("--ray-actors", type=click.IntRange(min=1), default=None,
              help="with --ray: embedding actors (default: one per GPU of the cluster; on the reference backend, "
                   "the cluster's CPUs less one, over --ray-cpus-per-actor)")
@click.option("--ray-cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=None,
              help="with --ray: CPUs each actor asks for, its threads (default: a GPU actor half its node's CPUs "
                   "per GPU, 1 to 8; a reference-backend actor 1)")
@quiet_option
def command(input_path, output, model, tokenizer, fmt, text_column, id_column, on_error, truncation, max_seq_len,
            pooling, no_normalize, backend, contexts, max_batch_tokens, precision, shard_rows, chunk_rows,
            ray_address, ray_actors, ray_cpus_per_actor, quiet):
    """Embed the texts of INPUT into Parquet shards in the folder OUTPUT.

    \b
    INPUT: JSON lines (--text-column, --id-column), Parquet, or plain text (one text a line).
    OUTPUT/part-NNNNN.parquet: id, embedding (float32 x dim), num_tokens, truncated; rows in input order.
    Resumable: a rerun with the same input and model skips the finished shards (and refuses another
    input or model in the same folder). Progress with rate and ETA on stderr.
    --ray [ADDRESS]: the same job on a Ray cluster, the same vectors (docs/ray.md).
    """
    from ..corpus import embed_corpus

    bad_shown = [0]

    def on_bad_row(row, id_, why):
        bad_shown[0] += 1
        if bad_shown[0] <= MAX_BAD_ROWS_SHOWN and not quiet:
            who = f" (id {id_!r})" if id_ is not None and id_ != row else ""
            line.stream.write(("\n" if line.tty else "") + f"trtrun: skipped row {row}{who}: {why}\n")

    line = _RateLine(enabled=not quiet)
    build = Progress(enabled=not quiet)
    ray_opts = {"actors": ray_actors, "cpus_per_actor": ray_cpus_per_actor}
    try:
        summary = embed_corpus(input_path, output, model=model, tokenizer=tokenizer, fmt=fmt, text_column=text_column,
                               id_column=id_column, shard_rows=shard_rows, chunk_rows=chunk_rows, on_error=on_error,
                               truncation=truncation, max_seq_len=max_seq_len, pooling=pooling,
                               normalize=not no_normalize, backend=backend, contexts=contexts,
                               max_tokens_per_batch=max_batch_tokens, precision=precision, ray=ray_address,
                               ray_options=ray_opts, progress=line, on_bad_row=on_bad_row, build_progress=build)
    finally:
        build.close()
        line.close()
    s = summary
    msg = (f"{s.output}: {s.rows_embedded:,} texts embedded in {s.shards_written} shard(s) in {s.seconds:.1f} s "
           f"({s.rows_per_s:,.1f} texts/s, {s.tokens_per_s:,.0f} tokens/s) {s.where}")
    if s.shards_skipped:
        msg += f"; {s.shards_skipped} shard(s) ({s.rows_resumed:,} rows) were done already"
    if s.bad_rows:
        more = f" ({s.bad_rows - MAX_BAD_ROWS_SHOWN} not shown)" if s.bad_rows > MAX_BAD_ROWS_SHOWN else ""
        msg += f"; {s.bad_rows:,} bad row(s) skipped{more}, listed in {s.errors_dir}"
    status(msg, quiet)
    return 0
