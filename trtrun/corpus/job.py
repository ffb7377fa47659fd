"""Embedding a corpus in-process: input planning and reading, the shard loop, resumable output.

The job's unit is a shard: a fixed slice of the input's rows (rows k*S .. (k+1)*S - 1 for shard k with
S = shard_rows). A shard is embedded whole and written atomically as OUTPUT/part-<k>.parquet (a temporary
file renamed into place), so a part file that exists is complete, and a rerun skips it. OUTPUT/_manifest.json
records what the shards were made from (the input's size and SHA-256, the plan's and the tokenizer's SHA-256,
pooling, normalization, max_seq_len, truncation, columns, shard size); a rerun with anything else there
refuses instead of mixing vectors of two models or two inputs in one folder. Names that start with "_" or
"." are ignored by Parquet readers (pyarrow, pandas, Ray Data, DuckDB), so OUTPUT reads as one table.

Within a shard, texts go to the Embedder in chunks of chunk_rows (it packs each chunk's texts into engine
batches by length). The chunks are cut at fixed row offsets within the shard, so the Ray path
(trtrun.corpus.ray_job), which embeds the same shards with the same function, gives the same engine
batches and the same vectors.

A bad row (its text is not a string, is empty, is not valid text for the tokenizer, or is over the token
limit with truncation "reject"; a line that is not UTF-8 or not a JSON object; a missing id) is reported
with its row number and id. on_error="fail" stops the job at the first one (the shards written so far are
kept); "skip" leaves it out of the shard and lists it in OUTPUT/_errors/part-<k>.jsonl.

One job at a time per output folder: the process that runs the job (in-process, or the Ray driver) holds an
exclusive flock on OUTPUT/.trtrun-embed.lock from before it reads the folder until the job ends (OutputLock);
a second job on the folder fails at once naming the holder's pid. The OS drops the lock when the holder
exits, however it exits, so a killed job's rerun takes it and resumes. Ray's write tasks run in other
processes: each checks, before it writes a shard, that the lock is still held by its own job (its token in
the lock file), so a task of a job whose driver is gone does not write into a folder another job now owns.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._io import atomic_write
from ..errors import InputError, TrtrunError
from ..types import CORPUS_FORMATS as FORMATS, DEFAULT_CHUNK_ROWS, DEFAULT_SHARD_ROWS, ON_ERROR

MANIFEST_NAME = "_manifest.json"
ERRORS_DIR = "_errors"
# Hidden (Parquet readers skip names starting with "."), and kept after a job: removing a flock's file on
# release lets a process that opened the old file lock it while a third locks a new one of the same name.
LOCK_NAME = ".trtrun-embed.lock"
MANIFEST_VERSION = 1

_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet",
             ".txt": "text", ".text": "text"}
# Files of a tokenizer folder that the job hashes (its identity) and ships to Ray actors; never the weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "added_tokens.json", "spiece.model", "sentencepiece.bpe.model", "config.json",
                   "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                   "1_Pooling/config.json")


def _pa():
    from .._optional import require

    require("pyarrow.parquet", "trtrun embed (its output is Parquet)")
    return require("pyarrow", "trtrun embed (its output is Parquet)")


class BadRowError(InputError):
    """A row that cannot be embedded, with on_error="fail"."""

    def __init__(self, row: int, id_: Any, reason: str):
        self.row, self.id, self.reason = row, id_, reason
        super().__init__(f"row {row}{_id_text(row, id_)}: {reason}")

    def __reduce__(self):  # (it crosses processes: a Ray actor raises it, the driver reports it)
        return (type(self), (self.row, self.id, self.reason))


def stopped_by(e: BadRowError, job, written: int) -> BadRowError:
    """The error that ends a job at a bad row (on_error "fail"), saying what was kept and how to go on."""
    return BadRowError(e.row, e.id, f"{e.reason} [in {job.input.path}]; stopped (--on-error fail): {written} of "
                                    f"{len(job.shards)} shards are written and a rerun goes on from there; "
                                    f"--on-error skip skips bad rows and lists them in {job.output / ERRORS_DIR}")


def _id_text(row: int, id_: Any) -> str:
    return "" if id_ is None or (isinstance(id_, int) and id_ == row) else f" (id {id_!r})"


# ------------------------------------------------------------------------------------------------ input

@dataclass(frozen=True)
class Shard:
    """Rows [start, end) of the input; offset/stop: their bytes in a line-based file."""

    index: int
    start: int
    end: int
    offset: int = 0
    stop: int = 0

    @property
    def rows(self) -> int:
        return self.end - self.start

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"


@dataclass
class ShardRows:
    """A shard's rows as read: per row its id (None where unknown), text (None where bad) and error (None
    where the row was read fine)."""

    shard: Shard
    ids: list
    texts: list
    errors: list
    rows: Sequence[int] | None = None  # row numbers (default: the whole shard, in order)

    def row_numbers(self) -> Sequence[int]:
        return self.rows if self.rows is not None else range(self.shard.start, self.shard.end)


class CorpusInput:
    """One input file: JSON lines (one object a line; the text in `text_column`), Parquet (a string column),
    or plain text (one text a line, no ids: a row's id is its line number, from 0).

    Without id_column a row's id is its row number (int64); JSON ids are written as strings (a JSON integer
    as its decimal text), Parquet ids keep their column's type.
    """

    def __init__(self, path, fmt: str | None = None, text_column: str = "text", id_column: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        if fmt is None:
            fmt = _SUFFIXES.get(self.path.suffix.lower())
            if fmt is None:
                raise InputError(f"{self.path}: cannot tell the format from the suffix {self.path.suffix!r}; "
                                 f"give --format ({', '.join(FORMATS)})")
        if fmt not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if fmt == "text" and id_column is not None:
            raise InputError("a plain-text input has no columns: --id-column needs JSON lines or Parquet "
                             "(a text line's id is its line number)")
        self.format, self.text_column, self.id_column = fmt, text_column, id_column
        self._sha256: str | None = None
        self._line_plan: tuple | None = None  # (every, rows, offsets)
        self._cache = None  # Parquet: (row groups, table) last read
        pa = _pa()
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                schema = pq.read_schema(self.path)
            except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError
                raise InputError(f"{self.path}: not a readable Parquet file: {e}") from None
            names = schema.names
            if text_column not in names:
                raise InputError(f"{self.path}: no column {text_column!r} (it has {', '.join(names)}); "
                                 f"give --text-column")
            t = schema.field(text_column).type
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                raise InputError(f"{self.path}: column {text_column!r} is {t}, expected strings")
            if id_column is not None:
                if id_column not in names:
                    raise InputError(f"{self.path}: no column {id_column!r} (it has {', '.join(names)}); "
                                     f"give --id-column")
                self.id_type = schema.field(id_column).type
            else:
                self.id_type = pa.int64()
        else:
            self.id_type = pa.string() if id_column is not None else pa.int64()

    def __getstate__(self):  # what Ray ships to read tasks: no cached table
        d = dict(self.__dict__)
        d["_cache"] = None
        d["_line_plan"] = None
        return d

    # ---------------------------------------------------------------- planning
    def _scan_lines(self, every: int) -> tuple[int, list[int]]:
        """One pass over a line-based file: its SHA-256, its row count, and the byte offset of every
        `every`-th row (row 0, every, 2 every, ...)."""
        if self._line_plan is not None and self._line_plan[0] == every:
            return self._line_plan[1], self._line_plan[2]
        h = hashlib.sha256()
        offsets, newlines, pos, last, next_row = [0], 0, 0, b"", every
        with open(self.path, "rb") as f:
            while True:
                buf = f.read(1 << 24)
                if not buf:
                    break
                h.update(buf)
                nl = np.flatnonzero(np.frombuffer(buf, np.uint8) == 10)
                # row r starts after newline r - 1
                while next_row - 1 - newlines < len(nl):
                    offsets.append(pos + int(nl[next_row - 1 - newlines]) + 1)
                    next_row += every
                newlines += len(nl)
                pos += len(buf)
                last = buf[-1:]
        rows = newlines + (1 if pos and last != b"\n" else 0)
        self._sha256 = h.hexdigest()
        self._line_plan = (every, rows, offsets)
        return rows, offsets

    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256

    def plan(self, shard_rows: int) -> list[Shard]:
        """The input's shards of shard_rows rows (the last one shorter)."""
        if not isinstance(shard_rows, int) or shard_rows < 1:
            raise ValueError(f"shard_rows must be a positive integer, got {shard_rows!r}")
        if self.format == "parquet":
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(self.path).metadata.num_rows
            return [Shard(k, a, min(rows, a + shard_rows)) for k, a in enumerate(range(0, rows, shard_rows))]
        rows, offs = self._scan_lines(shard_rows)
        size = self.path.stat().st_size
        out = []
        for k, a in enumerate(range(0, rows, shard_rows)):
            out.append(Shard(k, a, min(rows, a + shard_rows), offs[k], offs[k + 1] if k + 1 < len(offs) else size))
        return out

    def identity(self, shard_rows: int) -> dict:
        shards = self.plan(shard_rows)
        return {"format": self.format, "size": self.path.stat().st_size, "sha256": self.sha256(),
                "rows": shards[-1].end if shards else 0, "text_column": self.text_column if self.format != "text"
                else None, "id_column": self.id_column}

    # ---------------------------------------------------------------- reading
    def read(self, shard: Shard) -> ShardRows:
        return self._read_parquet(shard) if self.format == "parquet" else self._read_lines(shard)

    def _read_lines(self, shard: Shard) -> ShardRows:
        with open(self.path, "rb") as f:
            f.seek(shard.offset)
            data = f.read(shard.stop - shard.offset)
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        if len(lines) != shard.rows:
            raise TrtrunError(f"{self.path}: shard {shard.index} has {len(lines)} lines where {shard.rows} were "
                              f"planned: the file changed while the job ran")
        ids: list = []
        texts: list = []
        errors: list = []
        for i, raw in enumerate(lines):
            row = shard.start + i
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            id_, text, err = row, None, None
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                err = f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at {e.start})"
                line = None
            if line is not None and self.format == "text":
                text = line
            elif line is not None:
                id_, text, err = self._parse_json(line, row)
            ids.append(id_)
            texts.append(text if err is None else None)
            errors.append(err)
        return ShardRows(shard, ids, texts, errors)

    def _parse_json(self, line: str, row: int) -> tuple[Any, str | None, str | None]:
        if not line.strip():
            return row if self.id_column is None else None, None, "is an empty line, expected a JSON object"
        try:
            obj = json.loads(line)
        except ValueError as e:
            return (row if self.id_column is None else None), None, f"is not valid JSON: {e}"
        if not isinstance(obj, dict):
            return (row if self.id_column is None else None), None, \
                f"is {_json_type(obj)}, expected a JSON object with field {self.text_column!r}"
        id_ = row
        if self.id_column is not None:
            v = obj.get(self.id_column)
            if isinstance(v, str):
                id_ = v
            elif isinstance(v, int) and not isinstance(v, bool):
                id_ = str(v)
            else:
                what = "has no field" if self.id_column not in obj else f"has {_json_type(v)} in"
                return None, None, f"{what} id field {self.id_column!r} (expected a string or an integer)"
        if self.text_column not in obj:
            return id_, None, f"has no field {self.text_column!r}"
        t = obj[self.text_column]
        if not isinstance(t, str):
            return id_, None, f"field {self.text_column!r} is {_json_type(t)}, expected a string"
        if not t.isascii():
            try:  # JSON's \ud800 escapes make strs that no tokenizer (nor Arrow) takes
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                return id_, None, (f"field {self.text_column!r} holds a lone surrogate U+{ord(t[e.start]):04X} at "
                                   f"character {e.start}: not valid Unicode text")
        return id_, t, None

    def _read_parquet(self, shard: Shard) -> ShardRows:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        md = pf.metadata
        starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
        groups = [g for g in range(md.num_row_groups) if starts[g] < shard.end and starts[g + 1] > shard.start]
        cols = [self.text_column] + ([self.id_column] if self.id_column not in (None, self.text_column) else [])
        # Shards are read in order in-process: a row group larger than a shard is read once for all of its
        # shards (Ray's read tasks each read the groups of their own shard).
        if self._cache is not None and self._cache[0] == tuple(groups):
            table = self._cache[1]
        else:
            table = pf.read_row_groups(groups, columns=cols) if groups else pa.table({c: [] for c in cols})
            self._cache = (tuple(groups), table)
        first = int(starts[groups[0]]) if groups else shard.start
        part = table.slice(shard.start - first, shard.rows)
        if part.num_rows != shard.rows:
            raise TrtrunError(f"{self.path}: shard {shard.index} has {part.num_rows} rows where {shard.rows} were "
                              f"planned: the file changed while the job ran")
        texts = part.column(self.text_column).to_pylist()
        rows = range(shard.start, shard.end)
        ids = part.column(self.id_column).to_pylist() if self.id_column is not None else list(rows)
        errors: list = [None] * shard.rows
        for i, (row, t, id_) in enumerate(zip(rows, texts, ids)):
            if id_ is None:
                errors[i] = f"has a null id in column {self.id_column!r}"
            elif t is None:
                errors[i] = f"has a null text in column {self.text_column!r}"
        texts = [t if e is None else None for t, e in zip(texts, errors)]
        return ShardRows(shard, ids, texts, errors)


def _json_type(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


# ------------------------------------------------------------------------------------------------ embedding

@dataclass
class ShardResult:
    """A shard embedded: the good rows' ids, vectors, token counts and truncation flags (input order), and
    the bad rows as (row, id, reason)."""

    shard: Shard
    ids: list
    vectors: np.ndarray
    num_tokens: np.ndarray
    truncated: np.ndarray
    bad: list
    rows: list = field(default_factory=list)  # the good rows' row numbers

    @property
    def tokens(self) -> int:
        return int(self.num_tokens.sum())


def _reason(e: Exception) -> str:
    msg = str(e).strip()
    return msg[len("text 0 "):] if msg.startswith("text 0 ") else msg


def embed_texts_checked(emb, texts: Sequence[str]) -> tuple[list[int], Any, dict[int, str]]:
    """Embed texts, setting aside the ones the Embedder refuses -> (kept indices, EmbedResult of those in
    order, {index: reason} of the others). Refusals: an empty text, a text the tokenizer cannot take, a text
    over the token limit with truncation "reject". Anything else (an engine failure) raises."""
    from ..embed import InputTooLongError

    bad: dict[int, str] = {i: "is an empty text" for i, t in enumerate(texts) if t == ""}
    cand = [i for i in range(len(texts)) if i not in bad]
    try:
        emb.check_texts([texts[i] for i in cand])
    except InputError:  # which ones: each alone
        for i in cand:
            try:
                emb.check_texts([texts[i]])
            except InputError as e:
                bad[i] = _reason(e)
        cand = [i for i in cand if i not in bad]
    while cand:
        try:
            return cand, emb.embed_result([texts[i] for i in cand]), bad
        except InputTooLongError as e:
            counts = getattr(e, "token_counts", None)
            limit = getattr(e, "limit", None) or emb.max_seq_len
            for j, k in enumerate(e.indices):
                n = f" has {counts[j]} tokens," if counts is not None and j < len(counts) else ""
                bad[cand[k]] = f"is too long:{n} more than the limit of {limit} tokens (truncation 'reject')"
        except InputError:  # refused in a way no check above foresaw: find the text(s) alone
            found = False
            for i in cand:
                try:
                    emb.tokenize([texts[i]])
                except Exception as e1:  # noqa: BLE001 - the tokenizer's own errors too
                    bad[i], found = _reason(e1), True
            if not found:
                raise
        cand = [i for i in cand if i not in bad]
    return [], None, bad


def embed_shard(emb, rows: ShardRows, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, on_error: str = "skip",
                on_chunk: Callable[[int, int], None] | None = None) -> ShardResult:
    """Embed one shard's rows in chunks of chunk_rows (cut at fixed offsets within the shard).

    on_error="fail" raises BadRowError at the first bad row (in row order within its chunk, before that
    chunk is embedded where the row was bad as read or empty). on_chunk(rows, tokens) after each chunk."""
    shard, n = rows.shard, len(rows.texts)
    keep: list[int] = []
    parts, ntok, trunc = [], [], []
    bad: dict[int, str] = {}
    for i, (t, err) in enumerate(zip(rows.texts, rows.errors)):
        if err is not None or t == "":
            bad[i] = err if err is not None else "is an empty text"
    nums = rows.row_numbers()
    # chunks by row number within the shard, so that a shard's rows are chunked alike wherever they are
    # embedded (a Ray actor handed part of a shard cuts the same chunks)
    spans, at = [], 0
    while at < n:
        key = (nums[at] - shard.start) // chunk_rows
        end = at + 1
        while end < n and (nums[end] - shard.start) // chunk_rows == key:
            end += 1
        spans.append(range(at, end))
        at = end
    for span in spans:
        first = next((i for i in span if i in bad), None)
        if first is not None and on_error == "fail":
            raise BadRowError(nums[first], rows.ids[first], bad[first])
        local = [i for i in span if i not in bad]
        kept, res, refused = embed_texts_checked(emb, [rows.texts[i] for i in local]) if local else ([], None, {})
        if refused and on_error == "fail":
            j = min(refused)
            raise BadRowError(nums[local[j]], rows.ids[local[j]], refused[j])
        for j, why in refused.items():
            bad[local[j]] = why
        if res is not None:
            keep.extend(local[j] for j in kept)
            parts.append(res.embeddings)
            ntok.append(res.num_tokens)
            trunc.append(res.truncated)
        if on_chunk is not None:
            on_chunk(len(span), int(res.num_tokens.sum()) if res is not None else 0)
    dim = emb.dim
    return ShardResult(
        shard, [rows.ids[i] for i in keep],
        np.concatenate(parts) if parts else np.zeros((0, dim), np.float32),
        np.concatenate(ntok).astype(np.int32) if ntok else np.zeros(0, np.int32),
        np.concatenate(trunc) if trunc else np.zeros(0, bool),
        [(nums[i], rows.ids[i], bad[i]) for i in sorted(bad)], [nums[i] for i in keep])


# ------------------------------------------------------------------------------------------------ output

def shard_table(ids: list, vectors: np.ndarray, num_tokens: np.ndarray, truncated: np.ndarray, id_type,
                dim: int, meta: dict | None = None):
    """The Parquet table of one shard: id, embedding (fixed_size_list<float32>[dim]), num_tokens, truncated."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    table = pa.table({
        "id": pa.array(ids, type=id_type),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "num_tokens": pa.array(np.asarray(num_tokens, np.int32), pa.int32()),
        "truncated": pa.array(np.asarray(truncated, bool), pa.bool_()),
    })
    if meta:
        table = table.replace_schema_metadata({f"trtrun.{k}": str(v) for k, v in meta.items()})
    return table


def node_local_file(name: str, data) -> Path:
    """A file in this machine's temporary folder holding `data` (bytes or a buffer), written once (atomically)
    and then reused: how a Ray actor keeps the plan it was shipped, one copy a node."""
    import tempfile

    path = Path(tempfile.gettempdir()) / "trtrun-ray" / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, memoryview(data), fsync=True)
    return path


def write_shard(out_dir: Path, shard: Shard, table, bad: list) -> None:
    """Write a shard: its bad rows (if any) first, then its part file (whose existence marks it done)."""
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    if bad:
        (out_dir / ERRORS_DIR).mkdir(exist_ok=True)
        lines = "".join(json.dumps({"row": r, "id": i, "error": why}, default=str) + "\n" for r, i, why in bad)
        atomic_write(out_dir / ERRORS_DIR / f"{shard.name}.jsonl", lines.encode("utf-8"), fsync=True)
    atomic_write(out_dir / f"{shard.name}.parquet", lambda f: pq.write_table(table, f), fsync=True)


def read_output(out_dir):
    """The finished shards of an output folder as one pyarrow Table, in row order (a convenience; any Parquet
    reader reads the folder)."""
    pa = _pa()
    import pyarrow.parquet as pq

    parts = sorted(Path(out_dir).glob("part-*.parquet"))
    if not parts:
        raise InputError(f"{out_dir}: no finished shards (part-*.parquet)")
    return pa.concat_tables([pq.read_table(p) for p in parts])


# ------------------------------------------------------------------------------------------------ the job

def _sha256_bytes(b) -> str:
    return hashlib.sha256(b).hexdigest()


def tokenizer_files(tokenizer_dir) -> dict[str, bytes]:
    """The tokenizer's own files in its folder (TOKENIZER_FILES that exist), by relative path."""
    if tokenizer_dir is None:
        return {}
    d = Path(tokenizer_dir)
    return {name: (d / name).read_bytes() for name in TOKENIZER_FILES if (d / name).is_file()}


def model_identity(emb, plan_sha256: str, tok_files: dict[str, bytes]) -> dict:
    h = hashlib.sha256()
    for name in sorted(tok_files):
        h.update(name.encode() + b"\0" + hashlib.sha256(tok_files[name]).digest())
    return {"plan_sha256": plan_sha256, "tokenizer_sha256": h.hexdigest() if tok_files else None,
            "precision": emb.plan.precision, "dim": emb.dim, "pooling": emb.pooling, "normalize": emb.normalize,
            "max_seq_len": emb.max_seq_len, "truncation": emb.truncation}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class OutputLockedError(TrtrunError):
    """Another process holds an output folder's job lock (another trtrun embed is writing it)."""


def _check_output_folder(out_dir: Path) -> None:
    """OUTPUT must be a folder that is new, empty, or the output of a trtrun embed job."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder (the output is a folder of Parquet shards)")
    if out_dir.is_dir() and not (out_dir / MANIFEST_NAME).is_file() and \
            any(p.name not in (ERRORS_DIR, LOCK_NAME) for p in out_dir.iterdir()):
        raise InputError(f"{out_dir}: the folder is not empty and has no {MANIFEST_NAME}: not the output of a "
                         f"trtrun embed job; use a new or empty folder")


def _read_holder(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder_text(info: dict) -> str:
    pid, host = info.get("pid"), info.get("host")
    if pid is None:
        return "a process whose pid it has not written yet"
    return f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")


# Output folders whose lock this process holds (resolved paths): open_output refuses to touch one it does not.
_HELD: set[str] = set()


class OutputLock:
    """The job lock of an output folder: an exclusive flock(2) on OUTPUT/.trtrun-embed.lock, taken without
    waiting (a second job fails at once with OutputLockedError naming the holder's pid and host, written in
    the file) and held by this process until release() or its exit: the OS drops a flock when the last
    descriptor of the open file goes, so a job killed by a signal or a crash leaves the folder unlocked.
    The descriptor is close-on-exec, so processes this one starts (Ray's) do not keep the lock alive.

    flock rather than fcntl's POSIX record locks: those belong to the process (a second job in the same
    process would get the lock too, and closing any descriptor of the file would drop it), a flock to the
    open file. By hand rather than through the filelock package: it opens the lock file with O_TRUNC before
    trying the lock, which would erase the holder's pid that the refusal names.
    """

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.token = uuid.uuid4().hex  # what this job's Ray write tasks check the lock file for
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        import fcntl

        _check_output_folder(self.out_dir)  # before a lock file is left in a folder that is not ours
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_holder(fd)
            if not info:  # it has the lock but has not written itself yet: a moment later it has
                time.sleep(0.05)
                info = _read_holder(fd)
            os.close(fd)
            raise OutputLockedError(f"{self.out_dir}: another trtrun embed ({_holder_text(info)}) is writing this "
                                    f"folder; wait for it to end (a rerun then goes on from where it stopped), or "
                                    f"use another output folder") from None
        except OSError as e:
            os.close(fd)
            raise TrtrunError(f"{self.path}: cannot lock the output folder ({e.strerror or e}); its file system "
                              f"may not support locks: use a local folder") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode("utf-8"), 0)
        self._fd = fd
        _HELD.add(str(self.out_dir.resolve()))
        return self

    def release(self) -> None:
        if self._fd is not None:
            _HELD.discard(str(self.out_dir.resolve()))
            os.close(self._fd)  # (closing the only descriptor releases the flock)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_lock_owner(out_dir, token: str, what: str) -> None:
    """Raise unless OUTPUT's job lock is held now, by the job whose OutputLock has `token` (in a Ray write
    task, before it writes `what`). A shared flock that can be taken means no job holds the lock: the
    driver that started this task has ended."""
    import fcntl

    path = Path(out_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise TrtrunError(f"{path}: the job lock is gone ({e.strerror or e}); {what} was not written") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held = True
        else:
            held = False
            fcntl.flock(fd, fcntl.LOCK_UN)
        info = _read_holder(fd)
    finally:
        os.close(fd)
    if not held:
        raise TrtrunError(f"{out_dir}: no job holds the folder's lock any more (the job that started this write "
                          f"has ended); {what} was not written")
    if info.get("token") != token:
        raise TrtrunError(f"{out_dir}: another job ({_holder_text(info)}) holds the folder's lock now; {what} was "
                          f"not written")


def open_output(out_dir: Path, manifest: dict) -> set[int]:
    """Create OUTPUT (and its manifest), or check an existing one was made from the same input and model;
    -> the indices of finished shards. Leftover temporary files of a killed run are removed (safe only
    under the folder's job lock: a running job's temporary files are its shards being written)."""
    out_dir = Path(out_dir)
    if str(out_dir.resolve()) not in _HELD:
        raise TrtrunError(f"{out_dir}: open_output needs the folder's job lock (take OutputLock first)")
    mpath = out_dir / MANIFEST_NAME
    _check_output_folder(out_dir)
    if mpath.is_file():
        try:
            old = json.loads(mpath.read_text(encoding="utf-8"))
            old_id = old["identity"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TrtrunError(f"{mpath}: cannot read the job manifest ({e}); use a new output folder") from None
        a, b = _flatten(old_id), _flatten(manifest["identity"])
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if diff:
            shown = "; ".join(f"{k}: {_short(a.get(k))} there, {_short(b.get(k))} now" for k in diff[:4])
            raise TrtrunError(f"{out_dir} holds shards of another job ({shown}); refusing to mix them: use a new "
                              f"output folder, or delete that one to start over")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(manifest, indent=1, default=str).encode("utf-8")
        atomic_write(mpath, text, fsync=True)
    for p in out_dir.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    return {int(p.stem.split("-")[1]) for p in out_dir.glob("part-*.parquet") if p.stem.split("-")[1].isdigit()}


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 20 else s[:17] + "..."


@dataclass
class JobProgress:
    """Where a job stands (given to the progress callback)."""

    rows_total: int
    rows_resumed: int  # rows of shards finished by an earlier run
    rows_done: int = 0  # rows handled in this run (embedded or bad)
    tokens: int = 0  # tokens embedded in this run
    bad_rows: int = 0
    shards_done: int = 0  # in this run
    shards_todo: int = 0
    elapsed_s: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        left = self.rows_total - self.rows_resumed - self.rows_done
        r = self.rows_per_s
        return left / r if r > 0 else None


@dataclass
class JobSummary:
    output: str
    rows_total: int
    rows_embedded: int  # in this run
    rows_resumed: int  # in shards an earlier run finished
    bad_rows: int  # in this run
    tokens: int
    shards_written: int
    shards_skipped: int
    seconds: float
    where: str  # "in-process (...)" or "ray (...)"
    errors_dir: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return (self.rows_embedded + self.bad_rows) / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Job:
    """A planned job: what the in-process loop and the Ray driver both start from."""

    input: CorpusInput
    output: Path
    emb: Any  # the Embedder (in-process: it runs; Ray: it resolved the settings)
    shards: list
    done: set
    manifest: dict
    plan_bytes: bytes
    tokenizer_files: dict
    chunk_rows: int
    on_error: str
    lock_token: str | None = None  # the OutputLock's token (what Ray's write tasks check the lock for)

    @property
    def todo(self) -> list:
        return [s for s in self.shards if s.index not in self.done]

    @property
    def rows_total(self) -> int:
        return self.shards[-1].end if self.shards else 0

    def meta(self, backend: str) -> dict:
        return {"model": self.manifest["model"]["plan_sha256"][:16], "backend": backend}


def plan_job(input_path, output, emb, *, fmt: str | None = None, text_column: str = "text",
             id_column: str | None = None, shard_rows: int = DEFAULT_SHARD_ROWS,
             chunk_rows: int = DEFAULT_CHUNK_ROWS, on_error: str = "fail", lock: OutputLock | None = None) -> Job:
    """Read the input's shape, check or create OUTPUT's manifest, list the finished shards. Call it under
    OUTPUT's OutputLock (`lock`), held until the job has run."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    _pa()
    from .._version import __version__

    inp = CorpusInput(input_path, fmt, text_column, id_column)
    shards = inp.plan(shard_rows)
    if emb.plan_path is None or not Path(emb.plan_path).is_file():
        raise TrtrunError("the corpus job needs the Embedder's plan as a file (its SHA-256 names the model)")
    plan_bytes = Path(emb.plan_path).read_bytes()
    tok = tokenizer_files(emb.tokenizer_dir)
    manifest = {
        "version": MANIFEST_VERSION,
        "identity": {"input": inp.identity(shard_rows), "model": model_identity(emb, _sha256_bytes(plan_bytes), tok),
                     "shard_rows": shard_rows},
        "input_path": str(inp.path.resolve()), "plan_path": str(Path(emb.plan_path).resolve()),
        "tokenizer_dir": str(emb.tokenizer_dir) if emb.tokenizer_dir is not None else None,
        "shards": len(shards), "trtrun": __version__,
        "columns": {"id": str(inp.id_type), "embedding": f"fixed_size_list<float32>[{emb.dim}]",
                    "num_tokens": "int32", "truncated": "bool"},
    }
    manifest["model"] = manifest["identity"]["model"]
    done = open_output(Path(output), manifest)
    done &= {s.index for s in shards}
    return Job(inp, Path(output), emb, shards, done, manifest, plan_bytes, tok, chunk_rows, on_error,
               lock.token if lock is not None else None)


def run_local(job: Job, progress: Callable[[JobProgress], None] | None = None,
              on_bad_row: Callable[[int, Any, str], None] | None = None) -> JobSummary:
    """Embed the job's unfinished shards in this process. Reading the next shard and writing the last one
    overlap with embedding (one thread each); the Embedder runs its engine batches on its pool of contexts."""
    t0 = time.perf_counter()
    todo = job.todo
    prog = JobProgress(job.rows_total, sum(s.rows for s in job.shards if s.index in job.done),
                       shards_todo=len(todo))
    embedded = 0
    meta = job.meta(job.emb.backend)

    def on_chunk(rows: int, tokens: int) -> None:
        prog.rows_done += rows
        prog.tokens += tokens
        prog.elapsed_s = time.perf_counter() - t0
        if progress is not None:
            progress(prog)

    reader = ThreadPoolExecutor(1, thread_name_prefix="trtrun-corpus-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="trtrun-corpus-write")
    pending = None
    try:
        nxt = reader.submit(job.input.read, todo[0]) if todo else None
        for i, shard in enumerate(todo):
            rows = nxt.result()
            nxt = reader.submit(job.input.read, todo[i + 1]) if i + 1 < len(todo) else None
            try:
                res = embed_shard(job.emb, rows, chunk_rows=job.chunk_rows, on_error=job.on_error,
                                  on_chunk=on_chunk)
            except BadRowError as e:
                raise stopped_by(e, job, len(job.done) + prog.shards_done) from None
            for r, id_, why in res.bad:
                if on_bad_row is not None:
                    on_bad_row(r, id_, why)
            prog.bad_rows += len(res.bad)
            embedded += len(res.ids)
            table = shard_table(res.ids, res.vectors, res.num_tokens, res.truncated, job.input.id_type,
                                job.emb.dim, meta)
            if pending is not None:
                pending.result()
            pending = writer.submit(write_shard, job.output, shard, table, res.bad)
            prog.shards_done += 1
        if pending is not None:
            pending.result()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    prog.elapsed_s = time.perf_counter() - t0
    if progress is not None:
        progress(prog)
    return JobSummary(str(job.output), job.rows_total, embedded, prog.rows_resumed, prog.bad_rows, prog.tokens,
                      len(todo), len(job.done), prog.elapsed_s,
                      f"in-process ({job.emb.backend}, {job.emb.contexts} context(s))",
                      str(job.output / ERRORS_DIR) if prog.bad_rows else None)
