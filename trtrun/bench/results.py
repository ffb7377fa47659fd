"""Where a sweep's results live: DIR/results.jsonl (the record, appended point by point) and
DIR/results.csv (a flat table written from it, with a header block).

results.jsonl holds one JSON object a line:
    {"type": "session", "session": N, ...}   one per run of the tool: card, driver, CUDA, versions, date,
                                             command line, backend (results.csv's header block lists them)
    {"type": "point", "session": N, "model", "engine", "precision", "batch", "seq", "cuda_graphs",
     "status": "ok" | "error" | "unavailable", "gpu_ms", "e2e_ms", ...}
    {"type": "check", ...}                    cross-engine output checks (same weights, same function)
Each line is written whole and flushed (and fsync'ed) before the next point starts, so a sweep killed at
any moment loses at most the point it was measuring; a torn last line is cut off when the file is opened
again. A point's key is (model, engine, batch, seq, cuda_graphs), engine being trtrun-<precision> or the
baseline's name; --resume skips every key already there (status ok or unavailable, and error unless
--retry-failed).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .._io import atomic_write
from .config import BenchConfigError

RESULTS = "results.jsonl"
CSV = "results.csv"

CSV_COLUMNS = ["model", "engine", "precision", "cuda_graphs", "batch", "seq", "status",
               "gpu_min_ms", "gpu_mean_ms", "gpu_p50_ms", "gpu_p90_ms", "gpu_p99_ms", "gpu_n",
               "e2e_min_ms", "e2e_mean_ms", "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "e2e_n",
               "seq_per_s", "tokens_per_s", "e2e_seq_per_s", "peak_mem_mib", "mem_source", "timer",
               "device", "session", "note"]
SESSION_FIELDS = ["date", "card", "gpu_uuid", "driver", "cuda", "backend", "host_cpu", "host_cores", "python", "trtrun",
                  "torch", "torch_fp32_matmul", "transformers", "onnxruntime", "numpy", "git", "command"]


def point_key(rec: dict) -> tuple:
    return (rec["model"], rec["engine"], int(rec["batch"]), int(rec["seq"]), rec["cuda_graphs"])


class ResultStore:
    """results.jsonl in `out`: read what is there (resume), append sessions, points and checks."""

    def __init__(self, out, *, resume: bool, overwrite: bool = False):
        self.out = Path(out)
        self.path = self.out / RESULTS
        self.records: list[dict] = []
        self.torn = 0
        if self.out.exists() and not self.out.is_dir():
            raise BenchConfigError(f"--out {self.out} exists and is not a folder")
        if self.path.exists():
            if overwrite:
                self.path.unlink()
            elif not resume:
                raise BenchConfigError(f"{self.path} exists: pass --resume to continue that sweep (finished "
                                       f"points are skipped) or --overwrite to start again")
            else:
                self._load()
        self.out.mkdir(parents=True, exist_ok=True)

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        keep = len(data)
        if data and not data.endswith(b"\n"):  # killed while writing the last line
            keep = data.rfind(b"\n") + 1
            self.torn = 1
        for n, line in enumerate(data[:keep].splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise BenchConfigError(f"{self.path}:{n}: not a JSON line; the results file is damaged "
                                       f"(fix or remove that line, or start again with --overwrite)") from None
            if not isinstance(rec, dict) or rec.get("type") not in ("session", "point", "check"):
                raise BenchConfigError(f"{self.path}:{n}: not a trtrun bench record")
            self.records.append(rec)
        if keep != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    # ---------------------------------------------------------------- queries
    @property
    def sessions(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "session"]

    @property
    def points(self) -> list[dict]:
        """The latest record of every key (a retried point replaces its failed attempt)."""
        latest: dict = {}
        for r in self.records:
            if r["type"] == "point":
                latest[point_key(r)] = r
        return list(latest.values())

    @property
    def checks(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "check"]

    def done_keys(self, retry_failed: bool = False) -> set:
        return {point_key(r) for r in self.points if not (retry_failed and r.get("status") == "error")}

    # ---------------------------------------------------------------- writing
    def _append(self, rec: dict) -> None:
        line = json.dumps(rec, sort_keys=False, default=_json_default) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.records.append(json.loads(line))

    def add_session(self, meta: dict) -> int:
        sid = 1 + max((r.get("session", 0) for r in self.sessions), default=0)
        self._append({"type": "session", "session": sid, **meta})
        return sid

    def add_point(self, rec: dict) -> None:
        self._append({"type": "point", **rec})

    def add_check(self, rec: dict) -> None:
        self._append({"type": "check", **rec})

    def write_csv(self) -> Path:
        path = self.out / CSV

        def write(f):
            f.write(header_block(self.sessions))
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in sorted(self.points, key=_sort_key):
                w.writerow(csv_row(r))

        return atomic_write(path, write, text=True, newline="")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


ENGINE_ORDER = ["trtrun-fp32", "trtrun-fp16", "trtrun-hybrid", "torch-fp32", "torch-fp16", "torch-compile", "cpu"]


def _sort_key(r: dict):
    e = r["engine"]
    return (r["model"], ENGINE_ORDER.index(e) if e in ENGINE_ORDER else 99, e, r["cuda_graphs"], r["batch"], r["seq"])


def header_block(sessions: list[dict]) -> str:
    """'# ' lines: what every session of the sweep ran on, and how."""
    buf = io.StringIO()
    buf.write("# trtrun bench results (one row per point; times in ms; see docs/bench.md)\n")
    for s in sessions:
        buf.write(f"# session {s.get('session')}:\n")
        for k in SESSION_FIELDS:
            if s.get(k) not in (None, ""):
                buf.write(f"#   {k}: {s[k]}\n")
    return buf.getvalue()


def csv_row(r: dict) -> dict:
    row = {k: r.get(k) for k in ("model", "engine", "precision", "cuda_graphs", "batch", "seq", "status",
                                 "mem_source", "device", "session", "note")}
    row["timer"] = r.get("gpu_timer")
    for prefix, key in (("gpu", "gpu_ms"), ("e2e", "e2e_ms")):
        st = r.get(key) or {}
        for s in ("min", "mean", "p50", "p90", "p99"):
            v = st.get(s)
            row[f"{prefix}_{s}_ms"] = None if v is None else f"{v:.4f}"
        row[f"{prefix}_n"] = st.get("n")
    for k in ("seq_per_s", "tokens_per_s", "e2e_seq_per_s"):
        v = r.get(k)
        row[k] = None if v is None else f"{v:.1f}"
    m = r.get("peak_mem_bytes")
    row["peak_mem_mib"] = None if m is None else f"{m / 2**20:.1f}"
    return row
