"""The trtrun plan: an in-memory `Plan` (header dict + weights), its file format, and its validation.

docs/plan-format.md is the contract this module implements. In short, a plan file is

    offset 0   8 bytes   magic b"TRTRUNPL"
           8   u32 LE    format version (1)
          12   u32 LE    reserved, 0
          16   u64 LE    header length H (bytes of UTF-8 JSON)
          24   u64 LE    blob length W
          32   H bytes   header JSON
               zero pad to a multiple of 256
               W bytes   weights blob (each weight at its `offset`, offsets multiples of 256)
               32 bytes  SHA-256 of every byte before it

`load_plan` checks, in this order: size, magic, version, lengths against the file size, checksum,
JSON, schema. Every failure is a `PlanError` whose message starts with the file and names the field.
Loaded weights are read-only numpy views into one 256-byte-aligned buffer holding the whole file.

`Plan.check_feeds` validates a run's inputs (names, integer dtype, rank, the shape profile, token-id
range, padding on the right where an Embedding has a padding_id) and returns contiguous int64 arrays; both backends call it before running anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write
from .errors import InputError, PlanError, ShapeError
from .types import PRECISIONS

MAGIC = b"TRTRUNPL"
FORMAT_VERSION = 1
FORMAT_NAME = "trtrun-plan"
ALIGN = 256
PREAMBLE = struct.Struct("<8sIIQQ")  # magic, version, reserved, header length, blob length: 32 bytes
TRAILER_BYTES = 32  # SHA-256
MIN_FILE_BYTES = 64  # preamble + trailer: nothing shorter can be a plan

# Bounds the loader enforces before it trusts a number (docs/plan-format.md, "Hostile plan files")
# real headers take ~5 KiB a layer (MiniLM's 29 KiB); json.loads may build ~25x a header's size in objects
MAX_HEADER_BYTES = 4 << 20
MAX_JSON_DEPTH = 64  # real headers nest 4 deep; json.loads recurses once a level
MAX_RANK = 8
INT32_MAX = 2 ** 31 - 1  # the runtime's int: profile values, inner dimensions, heads, offsets
MAX_WEIGHT_DIM = 2 ** 62  # weight dims, offsets, byte counts: int64 on the runtime's side
FLOAT32_MAX = float(np.finfo(np.float32).max)  # attributes are float32 in the kernels
READ_CHUNK = 1 << 20  # bytes hashed a read while streaming a file whose header did not validate

DTYPES = ("float32", "float16", "int64", "int32")
FLOAT_DTYPES = ("float32", "float16")
INT_DTYPES = ("int64", "int32")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SYMBOLS = ("B", "S")
ACTIVATIONS = ("none", "gelu_erf", "gelu_tanh", "silu")

# Per op type: inputs (slot name, required), outputs (slot name, required), weight roles (role: required).
OP_SCHEMAS: dict[str, dict[str, Any]] = {
    "Embedding": {
        "inputs": (("input_ids", True), ("token_type_ids", False)),
        "outputs": (("y", True),),
        "weights": {"word": True, "position": False, "token_type": False, "gamma": False, "beta": False},
    },
    "Linear": {
        "inputs": (("x", True), ("residual", False)),
        "outputs": (("y", True),),
        "weights": {"weight": True, "bias": False},
    },
    "Attention": {
        "inputs": (("qkv", True), ("attention_mask", False)),
        "outputs": (("y", True),),
        "weights": {"inv_freq": False, "relative_bias": False, "alibi_slopes": False},
    },
    "LayerNorm": {
        "inputs": (("x", True), ("residual", False)),
        "outputs": (("y", True), ("sum", False)),
        "weights": {"gamma": True, "beta": True},
    },
    "Pool": {
        "inputs": (("x", True), ("attention_mask", False)),
        "outputs": (("y", True),),
        "weights": {},
    },
    "RMSNorm": {
        "inputs": (("x", True), ("residual", False)),
        "outputs": (("y", True), ("sum", False)),
        "weights": {"gamma": True},
    },
}
POOL_MODES = ("mean", "cls")
OP_TYPES = tuple(OP_SCHEMAS)


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def _json_default(o):
    # Builders naturally hand us numpy scalars and tuples; JSON gets plain Python values.
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _nm(name) -> str:
    """A name from the file as it may appear in a message: as is when short and printable, else its repr
    shortened (a crafted name can hold terminal escapes or megabytes)."""
    if isinstance(name, str) and len(name) <= 80 and name.isprintable():
        return name
    r = repr(name)
    return r if len(r) <= 80 else r[:60] + "…"


def _short(v) -> str:
    """repr of a value from the file, at most ~80 characters."""
    r = repr(v)
    return r if len(r) <= 80 else r[:60] + "…"


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


class Plan:
    """An engine plan: `header` (the JSON header, see docs/plan-format.md) and `weights` (name -> array).

    Build one with `Plan.from_parts(header, weights)` (it lays out the weights and validates) or read one
    with `load_plan(path)`. `path` is the file it came from (None for an in-memory plan).
    """

    def __init__(self, header: dict, weights: dict[str, np.ndarray], path: str | os.PathLike | None = None):
        self.header = header
        self.weights = weights
        self.path = Path(path) if path is not None else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_parts(cls, header: dict, weights: Mapping[str, np.ndarray]) -> "Plan":
        """A validated plan from a header (everything but `weights` entries) and weight arrays.

        Fills `format`, `version`, `tf32` (default False) and `weights` (dtype, shape, 256-aligned
        offset, nbytes, in the order of `weights`). Raises PlanError if the result is not a valid plan.
        """
        try:
            hdr = json.loads(json.dumps(header, default=_json_default, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise PlanError(f"plan (in memory): header: not JSON-serializable: {e}") from None
        if not isinstance(hdr, dict):
            raise PlanError("plan (in memory): header: must be a JSON object (dict)")
        hdr["format"] = FORMAT_NAME
        hdr["version"] = FORMAT_VERSION
        hdr.setdefault("tf32", False)
        arrays: dict[str, np.ndarray] = {}
        entries: dict[str, dict] = {}
        cursor = 0
        for name, w in weights.items():
            a = np.asarray(w)
            if a.dtype.name not in DTYPES:
                raise PlanError(
                    f"plan (in memory): weights.{name}: dtype {a.dtype.name} is not storable "
                    f"(plans hold {', '.join(DTYPES)})")
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            offset = _align(cursor)
            entries[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset,
                             "nbytes": int(a.nbytes)}
            arrays[name] = a
            cursor = offset + a.nbytes
        hdr["weights"] = entries
        plan = cls(hdr, arrays)
        plan.validate()
        return plan

    # ------------------------------------------------------------------ properties
    @property
    def precision(self) -> str:
        return self.header["precision"]

    @property
    def tf32(self) -> bool:
        return bool(self.header.get("tf32", False))

    @property
    def profile(self) -> dict:
        """{"batch": [min, opt, max], "seq": [min, opt, max]}"""
        return self.header["profile"]

    @property
    def inputs(self) -> list[dict]:
        return self.header["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.header["outputs"]

    @property
    def tensors(self) -> dict[str, dict]:
        return self.header["tensors"]

    @property
    def ops(self) -> list[dict]:
        return self.header["ops"]

    @property
    def model(self) -> dict:
        return self.header.get("model", {})

    @property
    def source(self) -> dict:
        return self.header.get("source", {})

    @property
    def blob_nbytes(self) -> int:
        """W: the weights blob's length (end of the last weight)."""
        return max((e["offset"] + e["nbytes"] for e in self.header["weights"].values()), default=0)

    def _where(self) -> str:
        return str(self.path) if self.path is not None else "plan (in memory)"

    def resolve_shape(self, shape, batch: int, seq: int) -> tuple[int, ...]:
        """A tensor shape with the symbols B and S replaced by numbers."""
        return tuple(batch if d == "B" else seq if d == "S" else int(d) for d in shape)

    def _table_rows(self, role: str) -> int | None:
        """Fewest rows among the Embedding ops' `role` tables (every one of them is indexed by the same
        input), None without such a table."""
        rows = [int(self.header["weights"][op["weights"][role]]["shape"][0])
                for op in self.ops if op["type"] == "Embedding" and op.get("weights", {}).get(role)]
        return min(rows) if rows else None

    @property
    def vocab_size(self) -> int | None:
        """Rows of the word-embedding table read by input_ids (token ids must be below it)."""
        v = self._table_rows("word")
        if v is not None:
            return v
        v = self.model.get("vocab_size")
        return int(v) if _is_int(v) else None

    @property
    def type_vocab_size(self) -> int | None:
        """Rows of the token-type table (token_type_ids must be below it), None without one."""
        return self._table_rows("token_type")

    # ------------------------------------------------------------------ validation
    def validate(self, blob_nbytes: int | None = None) -> None:
        """Check the header's schema (and, in memory, that the arrays match their entries).

        `blob_nbytes` is the file's W (weights must lie inside it); None means the in-memory plan,
        whose arrays are checked against their entries instead. Raises PlanError naming the field.
        """
        _validate_header(self.header, self._where(), blob_nbytes)
        if blob_nbytes is None:
            where = self._where()
            entries = self.header["weights"]
            for name, e in entries.items():
                a = self.weights.get(name)
                if a is None:
                    raise PlanError(f"{where}: weights.{name}: in the header but no array was given")
                if a.dtype.name != e["dtype"] or list(a.shape) != list(e["shape"]):
                    raise PlanError(
                        f"{where}: weights.{name}: array is {a.dtype.name}{_fmt_shape(a.shape)} but the "
                        f"header says {e['dtype']}{_fmt_shape(e['shape'])}")
            extra = sorted(set(self.weights) - set(entries))
            if extra:
                raise PlanError(f"{where}: weights: arrays without a header entry: {', '.join(extra)}")

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan file atomically (a temporary file in the same folder, then rename)."""
        self.validate()
        path = Path(path)
        hjson = json.dumps(self.header, separators=(",", ":"), allow_nan=False,
                           default=_json_default).encode("utf-8")
        blob_start = _align(PREAMBLE.size + len(hjson))
        entries = sorted(self.header["weights"].items(), key=lambda kv: kv[1]["offset"])
        W = self.blob_nbytes
        sha = hashlib.sha256()

        def write(f):
            def put(b):
                sha.update(b)
                f.write(b)
            put(PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(hjson), W))
            put(hjson)
            put(b"\0" * (blob_start - PREAMBLE.size - len(hjson)))
            pos = 0
            for name, e in entries:
                if e["offset"] > pos:
                    put(b"\0" * (e["offset"] - pos))
                a = np.ascontiguousarray(self.weights[name])
                if a.dtype.name != e["dtype"] or a.nbytes != e["nbytes"]:
                    raise PlanError(f"{self._where()}: weights.{name}: array {a.dtype.name}"
                                    f"{_fmt_shape(a.shape)} does not match its header entry")
                put(memoryview(a.astype(a.dtype.newbyteorder("<"), copy=False)).cast("B"))
                pos = e["offset"] + e["nbytes"]
            f.write(sha.digest())

        atomic_write(path, write, fsync=True)
        self.path = path
        return path

    # ------------------------------------------------------------------ inputs
    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate a run's inputs; return them as contiguous int64 arrays, in the plan's input order.

        input_ids is required; attention_mask defaults to all ones and token_type_ids to zeros when the
        plan takes them and they are not given (as Hugging Face models do). Raises InputError (unknown or
        missing names, non-integer dtype, ids out of range, a token after an Embedding's padding_id, a mask
        not 0/1) or ShapeError (rank, inputs of
        different shapes, batch or sequence outside the profile).
        """
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of name -> array, got {type(feeds).__name__}")
        names = [i["name"] for i in self.inputs]
        unknown = [k for k in feeds if k not in names]
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}: this plan takes {', '.join(names)}")
        if "input_ids" not in feeds:
            raise InputError(f"missing required input 'input_ids' (this plan takes {', '.join(names)})")
        arrays: dict[str, np.ndarray] = {}
        for name, value in feeds.items():
            try:
                a = np.asarray(value)
            except Exception as e:  # ragged lists and the like
                raise InputError(f"input {name!r} cannot be read as an array: {e}") from None
            if a.dtype.kind not in "iu":
                raise InputError(
                    f"input {name!r} has dtype {a.dtype}; token ids and masks must be integers "
                    f"(int64 or int32)")
            if a.ndim != 2:
                raise ShapeError(
                    f"input {name!r} has shape {tuple(a.shape)}; expected rank 2 [batch, sequence]")
            arrays[name] = a
        shape = arrays["input_ids"].shape
        for name, a in arrays.items():
            if a.shape != shape:
                raise ShapeError(
                    f"input {name!r} has shape {tuple(a.shape)} but input_ids has {tuple(shape)}; "
                    f"all inputs must have the same [batch, sequence] shape")
        self.check_shape(*shape)

        def first_bad(name, a, bad, what):
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            n = int(np.count_nonzero(bad))
            more = f" (and {n - 1} more)" if n > 1 else ""
            raise InputError(f"input {name!r} has value {int(a[idx])} at position {list(idx)}{more}: {what}")

        V = self.vocab_size
        ids = arrays["input_ids"]
        if V is not None:
            bad = (ids < 0) | (ids >= V)
            if bad.any():
                first_bad("input_ids", ids, bad, f"token ids must lie in [0, {V}) (the vocabulary size)")
        for op in self.ops:
            pad = op.get("attrs", {}).get("padding_id") if op["type"] == "Embedding" else None
            if pad is not None:
                # the model counts positions past its padding id; the plan's s + offset is the same only where
                # that id is trailing padding (no other token after it in a row)
                bad = np.maximum.accumulate(ids == pad, axis=1) & (ids != pad)
                if bad.any():
                    first_bad("input_ids", ids, bad, f"a token after padding id {pad} in its row: op {op['name']!r} "
                                                     f"counts positions past the padding, so this plan takes "
                                                     f"padding on the right only")
        if "attention_mask" in arrays:
            m = arrays["attention_mask"]
            bad = (m != 0) & (m != 1)
            if bad.any():
                first_bad("attention_mask", m, bad, "attention_mask must be 0 or 1")
        if "token_type_ids" in arrays:
            t = arrays["token_type_ids"]
            T = self.type_vocab_size or 1
            bad = (t < 0) | (t >= T)
            if bad.any():
                first_bad("token_type_ids", t, bad, f"token type ids must lie in [0, {T})")
        out: dict[str, np.ndarray] = {}
        for name in names:
            if name in arrays:
                out[name] = np.ascontiguousarray(arrays[name], dtype=np.int64)
            elif name == "attention_mask":
                out[name] = np.ones(shape, np.int64)
            else:  # token_type_ids
                out[name] = np.zeros(shape, np.int64)
        return out

    def check_shape(self, batch: int, seq: int, name: str = "input_ids") -> None:
        """Raise ShapeError unless [batch, seq] lies inside the profile (for callers holding device
        tensors, which check_feeds cannot read)."""
        for axis, n in (("batch", batch), ("seq", seq)):
            lo, opt, hi = self.profile[axis]
            if not lo <= n <= hi:
                what = "batch size" if axis == "batch" else "sequence length"
                raise ShapeError(
                    f"input {name!r} has shape {(int(batch), int(seq))}: {what} {n} is outside the plan's "
                    f"profile {axis} range [{lo}, {hi}] (opt {opt}); rebuild the plan with a wider profile")

    # ------------------------------------------------------------------ inspection
    def weight_stats(self) -> dict:
        by: dict[str, dict[str, int]] = {}
        total = 0
        for e in self.header["weights"].values():
            d = by.setdefault(e["dtype"], {"count": 0, "bytes": 0})
            d["count"] += 1
            d["bytes"] += e["nbytes"]
            total += e["nbytes"]
        return {"count": len(self.header["weights"]), "bytes": total, "by_dtype": by}

    def _tensor_desc(self, name: str) -> dict:
        t = self.tensors[name]
        return {"name": name, "dtype": t["dtype"], "shape": list(t["shape"])}

    def to_dict(self) -> dict:
        """A JSON-able description (what `trtrun inspect --json` prints); no weight values."""
        ops = []
        for op in self.ops:
            ops.append({
                "type": op["type"], "name": op["name"], "precision": op["precision"],
                "inputs": [self._tensor_desc(t) if t else None for t in op["inputs"]],
                "outputs": [self._tensor_desc(t) if t else None for t in op["outputs"]],
                "weights": {role: {"name": w, "dtype": self.header["weights"][w]["dtype"],
                                   "shape": list(self.header["weights"][w]["shape"])}
                            for role, w in op.get("weights", {}).items() if w},
                "attrs": op.get("attrs", {}),
            })
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op["precision"]] = counts.get(op["precision"], 0) + 1
        return {
            "path": str(self.path) if self.path else None,
            "format": FORMAT_NAME, "version": self.header.get("version", FORMAT_VERSION),
            "precision": self.precision, "tf32": self.tf32,
            "profile": self.profile, "model": self.model, "source": self.source,
            "inputs": self.inputs, "outputs": self.outputs,
            "ops": ops, "ops_by_precision": counts,
            "weights": self.weight_stats(),
            "builder": self.header.get("builder", {}),
        }

    def summary(self) -> str:
        """Human-readable description for `trtrun inspect`."""
        d = self.to_dict()
        lines = []
        title = f"trtrun plan {d['path']}" if d["path"] else "trtrun plan (in memory)"
        lines.append(title)
        lines.append(f"  format version {d['version']}, precision {d['precision']}, "
                     f"tf32 {'on' if d['tf32'] else 'off'}")
        src = d["source"] or {}
        if src:
            sha = src.get("sha256") or ""
            bits = [f"{src.get('path', '?')}"]
            if sha:
                bits.append(f"sha256 {sha[:16]}…")
            if src.get("producer"):
                bits.append(f"producer {src['producer']}")
            if src.get("opset") is not None:
                bits.append(f"opset {src['opset']}")
            lines.append("  source: " + ", ".join(bits))
            if src.get("weights"):
                lines.append(f"  source weights: {src['weights']}, converted at build time to the plan's precision")
            for c in src.get("conversions") or []:
                lines.append(f"  source conversion: {c}")
        m = d["model"] or {}
        if m:
            lines.append("  model: " + ", ".join(f"{k} {v}" for k, v in m.items()))
        p = d["profile"]
        lines.append(f"  profile: batch min {p['batch'][0]} / opt {p['batch'][1]} / max {p['batch'][2]}, "
                     f"seq min {p['seq'][0]} / opt {p['seq'][1]} / max {p['seq'][2]}")
        fmt = lambda t: f"{t['name']} {t['dtype']}{_fmt_shape(t['shape'])}"  # noqa: E731
        lines.append("  inputs:  " + ", ".join(fmt(t) for t in d["inputs"]))
        lines.append("  outputs: " + ", ".join(fmt(t) for t in d["outputs"]))
        counts = ", ".join(f"{n} {p}" for p, n in d["ops_by_precision"].items())
        lines.append(f"  ops: {len(d['ops'])} ({counts})")
        wtype = max([len(o["type"]) for o in d["ops"]] + [4])
        wname = max([len(o["name"]) for o in d["ops"]] + [4])
        lines.append(f"    {'#':>3}  {'type':<{wtype}}  {'name':<{wname}}  {'precision':<9}  inputs -> outputs")
        for i, o in enumerate(d["ops"]):
            ins = ", ".join(fmt(t) for t in o["inputs"] if t)
            outs = ", ".join(fmt(t) for t in o["outputs"] if t)
            extra = ""
            if o["type"] == "Linear" and (o["attrs"].get("activation", "none") != "none" or o["attrs"].get("gated")):
                extra = f"  [{o['attrs'].get('activation', 'none')}" + (", gated]" if o["attrs"].get("gated") else "]")
            elif o["type"] == "Pool":
                extra = f"  [{o['attrs'].get('mode')}" + (", L2-normalized]" if o["attrs"].get("normalize") else "]")
            elif o["type"] == "Attention":
                a = o["attrs"]
                extra = f"  [heads {a.get('num_heads')} x {a.get('head_size')}" + \
                        (f", {a['num_kv_heads']} K/V heads" if a.get("num_kv_heads", a.get("num_heads")) !=
                         a.get("num_heads") else "") + \
                        (f", rotary {a['rotary_dim']}" if a.get("rotary_dim") else "") + \
                        (", relative-position bias" if o["weights"].get("relative_bias") else "") + \
                        (", causal]" if a.get("causal") else "]")
            lines.append(f"    {i:>3}  {o['type']:<{wtype}}  {o['name']:<{wname}}  {o['precision']:<9}  "
                         f"{ins} -> {outs}{extra}")
        ws = d["weights"]
        per = ", ".join(f"{dt}: {_fmt_bytes(v['bytes'])} in {v['count']}" for dt, v in sorted(ws["by_dtype"].items()))
        lines.append(f"  weights: {ws['count']} tensors, {_fmt_bytes(ws['bytes'])} ({ws['bytes']} bytes)"
                     + (f"; {per}" if per else ""))
        b = d["builder"] or {}
        if b:
            lines.append("  builder: " + ", ".join(
                f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in b.items()))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Plan({self._where()}, precision={self.header.get('precision')!r}, "
                f"ops={len(self.header.get('ops', []))}, weights={len(self.header.get('weights', {}))})")


# ---------------------------------------------------------------------- schema validation
# The header is data from a file that anyone can craft (the SHA-256 detects damage, it does not
# authenticate): every field is checked for its type and range before anything reads it, so that a plan
# that validates can be run by the reference backend and lowered for the runtime without IndexError & co.

HEADER_KEYS = ("format", "version", "precision", "tf32", "profile", "source", "model", "inputs", "outputs",
               "tensors", "weights", "ops", "builder")
OP_KEYS = ("type", "name", "inputs", "outputs", "weights", "attrs", "precision")
MODEL_INTS = ("hidden", "num_heads", "num_layers", "vocab_size", "max_position")
ARCHS = ("encoder", "decoder")
# What the runtime reads from each op's attrs. Other attributes (e.g. the builder's `source_activation`)
# are annotations nothing reads: tolerated when they are plain JSON scalars.
OP_ATTRS = {
    "Embedding": ("epsilon", "position_offset", "padding_id"),
    "Linear": ("activation", "gated"),
    "Attention": ("num_heads", "head_size", "scale", "causal", "num_kv_heads", "rotary_dim", "rotary_scale",
                  "relative_max_distance", "relative_bidirectional", "alibi_symmetric", "window"),
    "LayerNorm": ("epsilon",),
    "Pool": ("mode", "normalize"),
    "RMSNorm": ("epsilon",),
}
# Graph inputs an op slot may read, where the slot indexes a table or masks (checked at run time by
# Plan.check_feeds against exactly these tables and values)
OP_INPUT_NAMES = {
    ("Embedding", 0): ("input_ids",),
    ("Embedding", 1): ("token_type_ids",),
    ("Attention", 1): ("attention_mask",),
    ("Pool", 1): ("attention_mask",),
}
# header.source.weights: the dtype the source file stored its weights in, where not float32
SOURCE_WEIGHTS = ("float16", "int8")


def _type_name(v) -> str:
    return type(v).__name__


def _validate_header(h: Any, where: str, blob_nbytes: int | None) -> None:
    def err(field: str, msg: str):
        raise PlanError(f"{where}: {field}: {msg}")

    def need_obj(v, field: str, what: str = ""):
        if not isinstance(v, dict):
            err(field, f"must be a JSON object{what}, got {_type_name(v)}")

    def only_keys(d: dict, field: str, allowed):
        extra = [k for k in d if k not in allowed]
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            err(field, f"unknown key {_short(extra[0])}{more} (known: {', '.join(allowed)})")

    def need_int(v, field: str, lo: int, hi: int):
        if not (_is_int(v) and lo <= v <= hi):
            err(field, f"must be an integer in [{lo}, {hi}], got {_short(v)}")

    if not isinstance(h, dict):
        err("header", f"must be a JSON object, got {_type_name(h)}")
    if h.get("format") != FORMAT_NAME:
        err("header.format", f"is {_short(h.get('format'))}, expected {FORMAT_NAME!r}")
    if not (_is_int(h.get("version")) and h["version"] == FORMAT_VERSION):
        err("header.version", f"is {_short(h.get('version'))}, expected {FORMAT_VERSION} (the file's format version)")
    for key, typ in (("precision", str), ("profile", dict), ("inputs", list), ("outputs", list),
                     ("tensors", dict), ("weights", dict), ("ops", list)):
        if key not in h:
            err(f"header.{key}", "missing")
        if not isinstance(h[key], typ):
            err(f"header.{key}", f"must be a {'JSON object' if typ is dict else typ.__name__}, "
                                 f"got {_type_name(h[key])}")
    only_keys(h, "header", HEADER_KEYS)
    for key in ("source", "model", "builder"):
        if key in h:
            need_obj(h[key], f"header.{key}")
    if h["precision"] not in PRECISIONS:
        err("header.precision", f"{_short(h['precision'])} is not one of {', '.join(PRECISIONS)}")
    if not isinstance(h.get("tf32", False), bool):
        err("header.tf32", f"must be true or false, got {_short(h['tf32'])}")

    # metadata: free to extend, but what is there has its type (tokenizer lookup, reports and bench read it)
    src = h.get("source", {})
    for key in ("path", "sha256", "producer"):
        if key in src and not (isinstance(src[key], str) or (key == "producer" and src[key] is None)):
            err(f"header.source.{key}", f"must be a string, got {_short(src[key])}")
    if "opset" in src and src["opset"] is not None:
        need_int(src["opset"], "header.source.opset", 0, INT32_MAX)
    if "weights" in src and src["weights"] not in SOURCE_WEIGHTS:
        err("header.source.weights", f"{_short(src['weights'])} is not one of {', '.join(SOURCE_WEIGHTS)}")
    if "conversions" in src and not (isinstance(src["conversions"], list)
                                     and all(isinstance(c, str) for c in src["conversions"])):
        err("header.source.conversions", f"must be a list of strings, got {_short(src['conversions'])}")
    model = h.get("model", {})
    if "arch" in model and model["arch"] not in ARCHS:
        err("header.model.arch", f"{_short(model['arch'])} is not one of {', '.join(ARCHS)}")
    for key in MODEL_INTS:
        if key in model:
            need_int(model[key], f"header.model.{key}", 0, INT32_MAX)

    # profile
    prof = h["profile"]
    for axis in ("batch", "seq"):
        v = prof.get(axis)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_int(x) for x in v)):
            err(f"header.profile.{axis}", f"must be [min, opt, max] integers, got {_short(v)}")
        if not 1 <= v[0] <= v[1] <= v[2]:
            err(f"header.profile.{axis}", f"needs 1 <= min <= opt <= max, got {_short(v)}")
        if v[2] > INT32_MAX:
            err(f"header.profile.{axis}", f"max must be at most {INT32_MAX} (the runtime's int), got {_short(v)}")
    extra = sorted(set(prof) - {"batch", "seq"})
    if extra:
        err("header.profile", f"unknown keys {_short(extra)} (expected batch, seq)")

    # tensors: every activation is [B, S, inner dims...] (what the runtime allocates per batch and sequence),
    # except a Pool op's output, [B, N]
    tensors = h["tensors"]
    pooled = {o["outputs"][0] for o in h["ops"] if isinstance(o, dict) and o.get("type") == "Pool"
              and isinstance(o.get("outputs"), list) and o["outputs"] and isinstance(o["outputs"][0], str)}
    for name, t in tensors.items():
        f = f"header.tensors.{_nm(name)}"
        if not name:
            err("header.tensors", "a tensor name must be a non-empty string")
        need_obj(t, f, " {dtype, shape}")
        only_keys(t, f, ("dtype", "shape"))
        if t.get("dtype") not in DTYPES:
            err(f + ".dtype", f"{_short(t.get('dtype'))} is not one of {', '.join(DTYPES)}")
        shp = t.get("shape")
        if name in pooled and isinstance(shp, list) and len(shp) == 2 and shp[0] == "B" and _is_int(shp[1]) \
                and 1 <= shp[1] <= INT32_MAX:
            pass
        elif not (isinstance(shp, list) and 2 <= len(shp) <= MAX_RANK and shp[0] == "B" and shp[1] == "S"
                  and all(_is_int(d) and 1 <= d <= INT32_MAX for d in shp[2:])):
            err(f + ".shape", f"must be [B, S, ...] with at most {MAX_RANK} dims, the others integers in "
                              f"[1, {INT32_MAX}]; got {_short(shp)}")

    # graph inputs and outputs
    def check_io(kind: str):
        seen = set()
        for i, io in enumerate(h[kind]):
            f = f"header.{kind}[{i}]"
            need_obj(io, f, " {name, dtype, shape}")
            only_keys(io, f, ("name", "dtype", "shape"))
            name = io.get("name")
            if not isinstance(name, str):
                err(f + ".name", f"must be a tensor name (a string), got {_short(name)}")
            if name in seen:
                err(f, f"{_nm(name)!r} listed twice")
            seen.add(name)
            if name not in tensors:
                err(f, f"tensor {_nm(name)!r} is not in header.tensors")
            t = tensors[name]
            if io.get("dtype") != t["dtype"] or io.get("shape") != t["shape"]:
                err(f, f"{_nm(name)!r} is {_short(io.get('dtype'))} {_short(io.get('shape'))} here but "
                       f"{t['dtype']}{_fmt_shape(t['shape'])} in header.tensors")
        return seen

    in_names = check_io("inputs")
    out_names = check_io("outputs")
    if "input_ids" not in in_names:
        err("header.inputs", "must include input_ids")
    for i, io in enumerate(h["inputs"]):
        if io["name"] not in INPUT_NAMES:
            err(f"header.inputs[{i}]", f"{_nm(io['name'])!r} is not a known input ({', '.join(INPUT_NAMES)})")
        if io["dtype"] not in INT_DTYPES or io["shape"] != ["B", "S"]:
            err(f"header.inputs[{i}]", f"{io['name']!r} must be int64 or int32 with shape [B, S], "
                                       f"got {io['dtype']}{_fmt_shape(io['shape'])}")
    for i, io in enumerate(h["outputs"]):
        if io["dtype"] not in FLOAT_DTYPES:
            err(f"header.outputs[{i}]", f"{_nm(io['name'])!r} must be a float tensor (what an op writes), "
                                        f"got {io['dtype']}")
    if not out_names:
        err("header.outputs", "a plan needs at least one output")

    # weights
    weights = h["weights"]
    spans = []
    for name, e in weights.items():
        f = f"header.weights.{_nm(name)}"
        if not name:
            err("header.weights", "a weight name must be a non-empty string")
        need_obj(e, f, " {dtype, shape, offset, nbytes}")
        only_keys(e, f, ("dtype", "shape", "offset", "nbytes"))
        if e.get("dtype") not in DTYPES:
            err(f + ".dtype", f"{_short(e.get('dtype'))} is not one of {', '.join(DTYPES)}")
        shp = e.get("shape")
        if not (isinstance(shp, list) and len(shp) <= MAX_RANK
                and all(_is_int(d) and 0 <= d <= MAX_WEIGHT_DIM for d in shp)):
            err(f + ".shape", f"must be a list of at most {MAX_RANK} integers in [0, 2^62], got {_short(shp)}")
        off, nb = e.get("offset"), e.get("nbytes")
        if not _is_int(off) or not 0 <= off <= MAX_WEIGHT_DIM or off % ALIGN:
            err(f + ".offset", f"must be a non-negative multiple of {ALIGN} (at most 2^62), got {_short(off)}")
        if not _is_int(nb) or not 0 <= nb <= MAX_WEIGHT_DIM:
            err(f + ".nbytes", f"must be a non-negative int (at most 2^62), got {_short(nb)}")
        itemsize = np.dtype(e["dtype"]).itemsize
        expect = math.prod(shp) * itemsize  # Python ints: no int64 wrap-around
        if nb != expect:
            err(f + ".nbytes", f"is {nb} but {e['dtype']}{_fmt_shape(shp)} takes {expect} bytes")
        if math.prod(max(d, 1) for d in shp) * itemsize > MAX_WEIGHT_DIM:  # numpy refuses such a shape even empty
            err(f + ".shape", f"{_fmt_shape(shp)} spans more than 2^62 bytes (beside its zero dims)")
        if blob_nbytes is not None and off + nb > blob_nbytes:
            err(f, f"bytes [{off}, {off + nb}) lie outside the weights blob ({blob_nbytes} bytes)")
        if nb:
            spans.append((off, off + nb, name))
    spans.sort()
    end, owner = 0, None
    for b0, b1, bn in spans:  # sorted by start: a span overlaps an earlier one iff it starts before their end
        if b0 < end:
            err(f"header.weights.{_nm(bn)}", f"bytes [{b0}, {b1}) overlap weight {_nm(owner)!r}")
        if b1 > end:
            end, owner = b1, bn

    # ops
    produced = set(in_names)
    op_names = set()
    for i, op in enumerate(h["ops"]):
        f = f"header.ops[{i}]"
        need_obj(op, f)
        name = op.get("name")
        if not isinstance(name, str) or not name:
            err(f + ".name", f"must be a non-empty string, got {_short(name)}")
        f = f"header.ops[{i}] ({_nm(name)!r})"
        if name in op_names:
            err(f, f"op name {_nm(name)!r} used twice")
        op_names.add(name)
        only_keys(op, f, OP_KEYS)
        typ = op.get("type")
        if not isinstance(typ, str):
            err(f + ".type", f"must be a string naming an op type ({', '.join(OP_TYPES)}), got {_short(typ)}")
        if typ not in OP_SCHEMAS:
            err(f + ".type", f"unknown op type {_nm(typ)!r} (known: {', '.join(OP_TYPES)})")
        sch = OP_SCHEMAS[typ]
        if op.get("precision") not in PRECISIONS:
            err(f + ".precision", f"{_short(op.get('precision'))} is not one of {', '.join(PRECISIONS)}")
        ins, outs = op.get("inputs"), op.get("outputs")
        wts, attrs = op.get("weights", {}), op.get("attrs", {})
        if not isinstance(ins, list) or not all(isinstance(x, str) for x in ins):
            err(f + ".inputs", f"must be a list of tensor names, got {_short(ins)}")
        if not isinstance(outs, list) or not all(isinstance(x, str) for x in outs):
            err(f + ".outputs", f"must be a list of tensor names, got {_short(outs)}")
        if not isinstance(wts, dict) or not all(isinstance(x, str) for x in wts.values()):
            err(f + ".weights", f"must be an object role -> weight name, got {_short(wts)}")
        if not isinstance(attrs, dict):
            err(f + ".attrs", f"must be an object, got {_short(attrs)}")
        for kind, slots, given in (("inputs", sch["inputs"], ins), ("outputs", sch["outputs"], outs)):
            if len(given) > len(slots):
                err(f"{f}.{kind}", f"{typ} takes at most {len(slots)} {kind} "
                                   f"({', '.join(s for s, _ in slots)}), got {len(given)}")
            for j, (slot, required) in enumerate(slots):
                t = given[j] if j < len(given) else ""
                if required and not t:
                    err(f"{f}.{kind}[{j}]", f"{typ} needs its {slot!r} {kind[:-1]}")
                if t and t not in tensors:
                    err(f"{f}.{kind}[{j}]", f"tensor {_nm(t)!r} is not in header.tensors")
                allowed = OP_INPUT_NAMES.get((typ, j)) if kind == "inputs" else None
                if t and allowed and t not in allowed:
                    err(f"{f}.inputs[{j}]", f"must be {' or '.join(map(repr, allowed))}"
                                            f"{'' if required else ' or absent'} (the graph input whose "
                                            f"values a run checks for this use), got {_nm(t)!r}")
        for j, t in enumerate(ins):
            if t and t not in produced:
                err(f"{f}.inputs[{j}]",
                    f"tensor {_nm(t)!r} is used before any op produces it (ops are not topologically "
                    f"ordered, or it is neither produced nor a graph input)")
        for j, t in enumerate(outs):
            if t and t in produced:
                err(f"{f}.outputs[{j}]", f"tensor {_nm(t)!r} is produced twice (or overwrites a graph input)")
            if t:
                produced.add(t)
        for role in wts:
            if role not in sch["weights"]:
                err(f"{f}.weights.{_nm(role)}", f"{typ} has no weight role {_nm(role)!r} "
                                                f"(roles: {', '.join(sch['weights']) or 'none'})")
        for role, required in sch["weights"].items():
            w = wts.get(role, "")
            if required and not w:
                err(f"{f}.weights.{role}", f"{typ} needs a {role!r} weight")
            if w and w not in weights:
                err(f"{f}.weights.{role}", f"weight {_nm(w)!r} is not in header.weights")
        for key, v in attrs.items():
            if key not in OP_ATTRS[typ] and not (v is None or isinstance(v, (str, bool, int))
                                                 or _is_number(v)):
                err(f"{f}.attrs.{_nm(key)}", f"an unknown attribute must be a string, number, bool or null "
                                             f"(nothing reads it), got {_short(v)}")
        _validate_op(op, f, tensors, weights, prof, err)
    for name in out_names:
        if name not in produced:
            err("header.outputs", f"output {_nm(name)!r} is not produced by any op nor a graph input")

    # the model summary names the table token ids index (a tokenizer is chosen by it)
    if "vocab_size" in model:
        for op in h["ops"]:
            if op["type"] == "Embedding":
                rows = weights[op["weights"]["word"]]["shape"][0]
                if rows != model["vocab_size"]:
                    err("header.model.vocab_size", f"is {model['vocab_size']} but the word table "
                                                   f"{_nm(op['weights']['word'])!r} of op {_nm(op['name'])!r} "
                                                   f"has {rows} rows")


def _validate_op(op, f, tensors, weights, prof, err) -> None:
    """Attributes and shape consistency of one op (inputs/weights already known to exist)."""
    typ, attrs = op["type"], op.get("attrs", {})
    ins = list(op["inputs"]) + [""] * 2
    outs = list(op["outputs"]) + [""] * 2
    wts = op.get("weights", {})
    T = lambda n: tensors[n]  # noqa: E731
    Wt = lambda role: weights[wts[role]] if wts.get(role) else None  # noqa: E731

    def need_dtype(slot, name, allowed):
        if name and T(name)["dtype"] not in allowed:
            err(f + f".{slot}", f"tensor {_nm(name)!r} is {T(name)['dtype']}, {op['type']} needs {' or '.join(allowed)}")

    def need_shape(what, shape, expect):
        if list(shape) != list(expect):
            err(f, f"{what} has shape {_fmt_shape(shape)}, expected {_fmt_shape(expect)}")

    def number(key, required=True, positive=False):
        if key not in attrs:
            if required:
                err(f + f".attrs.{key}", "missing")
            return None
        v = attrs[key]
        # float32 in the kernels: a value beyond its range would become inf there
        if not _is_number(v) or abs(v) > FLOAT32_MAX or (positive and v <= 0):
            err(f + f".attrs.{key}", f"must be a finite {'positive ' if positive else ''}number (float32), "
                                     f"got {_short(v)}")
        return v

    def integer(key, required=True, minimum=0):
        if key not in attrs:
            if required:
                err(f + f".attrs.{key}", "missing")
            return None
        v = attrs[key]
        if not _is_int(v) or not minimum <= v <= INT32_MAX:
            err(f + f".attrs.{key}", f"must be an integer in [{minimum}, {INT32_MAX}], got {_short(v)}")
        return v

    def table(role, n_cols=None):
        """A 2-D [rows >= 1, N] table (every row a run may look up exists)."""
        e = Wt(role)
        if len(e["shape"]) != 2:
            err(f + f".weights.{role}", f"{role} table {_nm(wts[role])!r} must be 2-D [rows, hidden], "
                                        f"got {_fmt_shape(e['shape'])}")
        if e["shape"][0] < 1:
            err(f + f".weights.{role}", f"table {_nm(wts[role])!r} has 0 rows; a run looks up row 0 at least")
        if n_cols is not None:
            need_shape(f"{role} table {_nm(wts[role])!r}", e["shape"], [e["shape"][0], n_cols])
        return e["shape"]

    for role, w in wts.items():
        if w and weights[w]["dtype"] not in FLOAT_DTYPES:
            err(f + f".weights.{role}", f"weight {_nm(w)!r} is {weights[w]['dtype']}, expected a float dtype")

    if typ == "Embedding":
        need_dtype("inputs[0]", ins[0], INT_DTYPES)
        need_dtype("inputs[1]", ins[1], INT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        y = T(outs[0])["shape"]
        N = table("word")[1]
        P = table("position", N)[0] if Wt("position") is not None else None
        need_shape(f"output {_nm(outs[0])!r}", y, list(T(ins[0])["shape"]) + [N])
        if Wt("token_type") is not None:
            table("token_type", N)
        elif ins[1]:
            err(f + ".inputs[1]", "token_type_ids given but there is no token_type table")
        if bool(wts.get("gamma")) != bool(wts.get("beta")):
            err(f + ".weights", "gamma and beta come together (both or neither)")
        if wts.get("gamma"):
            need_shape(f"gamma {_nm(wts['gamma'])!r}", Wt("gamma")["shape"], [N])
            need_shape(f"beta {_nm(wts['beta'])!r}", Wt("beta")["shape"], [N])
            number("epsilon", positive=True)
        elif "epsilon" in attrs:
            number("epsilon", positive=True)
        off = integer("position_offset", required=False) or 0
        integer("padding_id", required=False)  # token id that may only occur as trailing padding (check_feeds)
        if P is not None and prof["seq"][2] + off > P:
            err("header.profile.seq", f"max sequence {prof['seq'][2]} (+ position offset {off}) exceeds the "
                                      f"{P} rows of the position table of op {_nm(op['name'])!r}")
    elif typ == "Linear":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        x, y, w = T(ins[0])["shape"], T(outs[0])["shape"], Wt("weight")["shape"]
        if len(w) != 2:
            err(f + ".weights.weight", f"must be 2-D [K, N], got {_fmt_shape(w)}")
        K, N = w
        if len(x) < 2 or x[-1] != K:
            err(f, f"input {_nm(ins[0])!r} {_fmt_shape(x)} does not match weight [K={K}, N={N}]")
        gated = attrs.get("gated", False)
        if not isinstance(gated, bool):
            err(f + ".attrs.gated", f"must be true or false, got {_short(gated)}")
        if gated and N % 2:
            err(f + ".weights.weight", f"a gated Linear's weight [K, 2N] needs an even width, got {_fmt_shape(w)}")
        need_shape(f"output {_nm(outs[0])!r}", y, list(x[:-1]) + [N // 2 if gated else N])
        need_dtype("inputs[1]", ins[1], FLOAT_DTYPES)
        if ins[1]:
            need_shape(f"residual {_nm(ins[1])!r}", T(ins[1])["shape"], y)
        if Wt("bias") is not None:
            need_shape(f"bias {_nm(wts['bias'])!r}", Wt("bias")["shape"], [N])
        act = attrs.get("activation", "none")
        if act not in ACTIVATIONS:
            err(f + ".attrs.activation", f"{_short(act)} is not one of {', '.join(ACTIVATIONS)}")
    elif typ == "Attention":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("inputs[1]", ins[1], INT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        H = integer("num_heads", minimum=1)
        D = integer("head_size", minimum=1)
        number("scale")
        if not isinstance(attrs.get("causal", False), bool):
            err(f + ".attrs.causal", f"must be true or false, got {_short(attrs['causal'])}")
        Hkv = integer("num_kv_heads", required=False, minimum=1) or H
        integer("window", required=False)  # sliding window: keys with |i - j| > window are masked
        if H % Hkv:
            err(f + ".attrs.num_kv_heads", f"{Hkv} does not divide num_heads {H} (each K/V head serves a group "
                                           f"of query heads)")
        R = integer("rotary_dim", required=False) or 0
        if R % 2 or R > D:
            err(f + ".attrs.rotary_dim", f"must be even and at most head_size {D}, got {R}")
        if R and Wt("inv_freq") is None:
            err(f + ".weights.inv_freq", f"rotary_dim {R} needs an 'inv_freq' weight")
        if Wt("inv_freq") is not None:
            need_shape(f"inv_freq {_nm(wts['inv_freq'])!r}", Wt("inv_freq")["shape"], [R // 2])
            if not R:
                err(f + ".attrs.rotary_dim", "an 'inv_freq' weight needs rotary_dim > 0")
        number("rotary_scale", required=False)
        if Wt("relative_bias") is not None:
            rb = Wt("relative_bias")["shape"]
            if len(rb) != 2 or rb[0] < 1 or rb[1] != H:
                err(f + ".weights.relative_bias", f"must be [buckets >= 1, num_heads {H}], got {_fmt_shape(rb)}")
            md = integer("relative_max_distance", minimum=1)
            if not isinstance(attrs.get("relative_bidirectional"), bool):
                err(f + ".attrs.relative_bidirectional", f"must be true or false, got "
                                                          f"{_short(attrs.get('relative_bidirectional'))}")
            # T5's bucket function (reference.relative_bucket): exact buckets below max_exact, log-spaced from
            # there to max_distance; a max_distance at or below max_exact (or no buckets left per direction)
            # gives negative bucket indices that would silently wrap around the table
            nb = rb[0] // 2 if attrs["relative_bidirectional"] else rb[0]
            if nb < 1 or md <= max(nb // 2, 1):
                err(f + ".attrs.relative_max_distance",
                    f"{md} does not fit the {rb[0]}-bucket table: it needs at least 1 bucket per direction and a "
                    f"max distance above its {max(nb // 2, 1)} exact buckets (negative bucket indices otherwise)")
        elif "relative_max_distance" in attrs or "relative_bidirectional" in attrs:
            err(f + ".weights.relative_bias", "relative-position attributes need a 'relative_bias' table")
        if Wt("alibi_slopes") is not None:
            need_shape(f"alibi_slopes {_nm(wts['alibi_slopes'])!r}", Wt("alibi_slopes")["shape"], [H])
            if Wt("relative_bias") is not None:
                err(f + ".weights.alibi_slopes", "an Attention has one score bias: a relative_bias table or "
                                                 "ALiBi slopes, not both")
            if not isinstance(attrs.get("alibi_symmetric", False), bool):
                err(f + ".attrs.alibi_symmetric", f"must be true or false, got {_short(attrs['alibi_symmetric'])}")
        elif "alibi_symmetric" in attrs:
            err(f + ".weights.alibi_slopes", "alibi_symmetric needs an 'alibi_slopes' weight")
        q = T(ins[0])["shape"]
        if len(q) != 3:
            err(f, f"qkv {_nm(ins[0])!r} must be [B, S, (H+2*Hkv)*D], got {_fmt_shape(q)}")
        need_shape(f"qkv {_nm(ins[0])!r}", q, [q[0], q[1], (H + 2 * Hkv) * D])
        need_shape(f"output {_nm(outs[0])!r}", T(outs[0])["shape"], [q[0], q[1], H * D])
        if ins[1]:
            need_shape(f"attention_mask {_nm(ins[1])!r}", T(ins[1])["shape"], q[:2])
    elif typ == "Pool":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("inputs[1]", ins[1], INT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        x = T(ins[0])["shape"]
        if len(x) != 3 or x[:2] != ["B", "S"]:
            err(f, f"input {_nm(ins[0])!r} must be [B, S, N], got {_fmt_shape(x)}")
        need_shape(f"output {_nm(outs[0])!r}", T(outs[0])["shape"], ["B", x[2]])
        if ins[1]:
            need_shape(f"attention_mask {_nm(ins[1])!r}", T(ins[1])["shape"], ["B", "S"])
        if attrs.get("mode") not in POOL_MODES:
            err(f + ".attrs.mode", f"{_short(attrs.get('mode'))} is not one of {', '.join(POOL_MODES)}")
        if not isinstance(attrs.get("normalize", False), bool):
            err(f + ".attrs.normalize", f"must be true or false, got {_short(attrs['normalize'])}")
    elif typ in ("LayerNorm", "RMSNorm"):
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("inputs[1]", ins[1], FLOAT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        need_dtype("outputs[1]", outs[1], FLOAT_DTYPES)
        x = T(ins[0])["shape"]
        N = x[-1]
        for what, n in (("residual", ins[1]), ("output", outs[0]), ("sum output", outs[1])):
            if n:
                need_shape(f"{what} {_nm(n)!r}", T(n)["shape"], x)
        need_shape(f"gamma {_nm(wts['gamma'])!r}", Wt("gamma")["shape"], [N])
        if typ == "LayerNorm":
            need_shape(f"beta {_nm(wts['beta'])!r}", Wt("beta")["shape"], [N])
        number("epsilon", positive=True)


# ---------------------------------------------------------------------- loading
def _aligned_buffer(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + nbytes]


def _looks_like(head: bytes) -> str:
    if head.startswith(b"\x08") and len(head) > 1:
        return " (it looks like an ONNX model: build a plan from it with `trtrun build`)"
    if head[:4] == b"PK\x03\x04":
        return " (it looks like a zip archive, e.g. a PyTorch checkpoint)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return " (it looks like a text file)" if text and all(c.isprintable() or c in "\t\r\n" for c in text) else ""


def _json_depth(raw: bytes, chunk: int = 1 << 18) -> int:
    """The deepest nesting of [ and { outside strings, in linear time, without recursion, a chunk at a time
    (a few MiB of work arrays whatever the header's size).

    A quote ends a string unless an odd run of backslashes precedes it. Where the text is not JSON this
    count may be off, but only after the point where the parser would stop with an error, so what it says
    about the part the parser walks is exact.
    """
    deepest = depth = 0
    inside = False  # within a string at the end of the previous chunk
    run = 0  # backslashes ending the previous chunk
    for start in range(0, len(raw), chunk):
        a = np.frombuffer(raw, np.uint8, count=min(chunk, len(raw) - start), offset=start)
        n = a.size
        idx = np.arange(n, dtype=np.int32)
        backslash = a == 0x5C
        last_other = np.maximum.accumulate(np.where(backslash, np.int32(-1), idx))  # last non-backslash <= i
        before = np.empty(n, np.int64)  # backslashes directly before i (those ending the last chunk too)
        before[0] = run
        before[1:] = idx[:-1] - last_other[:-1]
        before[1:][last_other[:-1] < 0] += run
        quote = a == 0x22
        real = quote & (before % 2 == 0)
        opened = np.cumsum(real, dtype=np.int64) - real + inside
        step = np.zeros(n, np.int8)
        step[(a == 0x5B) | (a == 0x7B)] = 1
        step[(a == 0x5D) | (a == 0x7D)] = -1
        step[(opened % 2 == 1) | quote] = 0
        levels = np.cumsum(step, dtype=np.int64) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        inside = bool((int(real.sum()) + inside) % 2)
        run = run + n if last_other[-1] < 0 else int(n - 1 - last_other[-1])
    return deepest


def _open_regular(p: Path, where: str) -> tuple[int, int]:
    """(fd, size) of a regular file opened for reading; PlanError at once for anything else.

    A FIFO would block open() until a writer came, a device would be read forever: stat first, open
    without blocking (O_NONBLOCK), and fstat what was opened (the path may have changed in between).
    """
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise PlanError(f"{where}: no such file") from None
    except (OSError, ValueError) as e:
        raise PlanError(f"{where}: cannot read: {getattr(e, 'strerror', None) or e}") from None

    def refuse(mode):
        if stat.S_ISDIR(mode):
            raise PlanError(f"{where}: is a directory, not a plan file")
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a file")
        raise PlanError(f"{where}: not a regular file ({kind}); a plan is a regular file")

    if not stat.S_ISREG(st.st_mode):
        refuse(st.st_mode)
    flags = os.O_RDONLY
    for name in ("O_NONBLOCK", "O_NOCTTY", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(p, flags)
    except OSError as e:
        raise PlanError(f"{where}: cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            refuse(st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and fully validate a plan file. Raises PlanError naming the file and field on any problem.

    Nothing in the file is trusted: only a regular file is opened; the preamble's magic, version and
    lengths are checked against the file's size before anything else is read; the header (at most
    MAX_HEADER_BYTES, nested at most MAX_JSON_DEPTH deep) is parsed and validated before the weights blob
    is kept in memory. When the header does not validate, the rest of the file is only streamed through
    the checksum (a damaged file says so rather than naming the field the damage hit), so memory stays
    bounded by the header limit whatever the file's size.
    """
    p = Path(path)
    where = str(p)
    fd, size = _open_regular(p, where)
    with os.fdopen(fd, "rb", buffering=0) as f:
        def read_into(mv: memoryview) -> None:
            got = 0
            while got < len(mv):
                try:
                    n = f.readinto(mv[got:])
                except OSError as e:
                    raise PlanError(f"{where}: cannot read: {e.strerror or e}") from None
                if not n:
                    raise PlanError(f"{where}: file size: the file ended early (changed while reading?)")
                got += n

        head = bytearray(min(size, PREAMBLE.size))
        read_into(memoryview(head))
        head = bytes(head)
        if size < MIN_FILE_BYTES:
            raise PlanError(f"{where}: file size: {size} bytes is too small to be a trtrun plan "
                            f"(at least {MIN_FILE_BYTES})"
                            f"{'; not a trtrun plan' + _looks_like(head[:16]) if head[:8] != MAGIC else ''}")
        magic, version, reserved, H, W = PREAMBLE.unpack(head)
        if magic != MAGIC:
            raise PlanError(f"{where}: magic: not a trtrun plan (starts with {magic!r}, a plan starts with "
                            f"{MAGIC!r}){_looks_like(head[:16])}")
        if version > FORMAT_VERSION:
            raise PlanError(f"{where}: version: plan format version {version} is newer than this trtrun "
                            f"supports ({FORMAT_VERSION}): rebuild the plan or upgrade trtrun")
        if version < 1:
            raise PlanError(f"{where}: version: plan format version {version} is not valid "
                            f"(this trtrun reads version {FORMAT_VERSION})")
        if reserved != 0:
            raise PlanError(f"{where}: reserved: must be 0 in format version 1, got {reserved} (corrupted file?)")
        blob_start = _align(PREAMBLE.size + H)
        expected = blob_start + W + TRAILER_BYTES
        if expected != size:
            if expected > size:
                raise PlanError(f"{where}: lengths: file is truncated: header length {H} and blob length {W} "
                                f"need {expected} bytes but the file has {size}")
            raise PlanError(f"{where}: lengths: the file has {size} bytes but header length {H} and blob "
                            f"length {W} account for {expected} (trailing data or corrupted lengths)")
        if H > MAX_HEADER_BYTES:
            raise PlanError(f"{where}: lengths: header length {H} exceeds the limit of {MAX_HEADER_BYTES} bytes "
                            f"(real headers take kilobytes)")
        sha = hashlib.sha256(head)
        region = bytearray(blob_start - PREAMBLE.size)  # header JSON and its zero padding
        read_into(memoryview(region))
        sha.update(region)

        plan = None
        problem: PlanError | None = None
        try:
            raw = bytes(region[:H])
            depth = _json_depth(raw)
            if depth > MAX_JSON_DEPTH:
                raise PlanError(f"{where}: header JSON: nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
            try:
                header = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise PlanError(f"{where}: header JSON: cannot parse: {_short_error(e)}") from None
            if not isinstance(header, dict):
                raise PlanError(f"{where}: header: must be a JSON object, got {type(header).__name__}")
            plan = Plan(header, {}, path=p)
            plan.validate(blob_nbytes=W)
        except PlanError as e:
            problem = e

        if problem is None:
            blob = _aligned_buffer(W)
            read_into(memoryview(blob))
            sha.update(blob)
        else:  # only the checksum needs these bytes: stream them through it
            chunk = memoryview(bytearray(min(READ_CHUNK, W) or 1))
            left = W
            while left:
                part = chunk[:min(left, len(chunk))]
                read_into(part)
                sha.update(part)
                left -= len(part)
        stored = bytearray(TRAILER_BYTES)
        read_into(memoryview(stored))
    digest = sha.digest()
    if digest != bytes(stored):
        raise PlanError(f"{where}: checksum: SHA-256 mismatch, the file is corrupted "
                        f"(computed {digest.hex()[:16]}…, stored {bytes(stored).hex()[:16]}…)")
    if problem is not None:
        raise problem
    blob.flags.writeable = False
    weights = {}
    for name, e in plan.header["weights"].items():
        dt = np.dtype(e["dtype"]).newbyteorder("<")
        weights[name] = blob[e["offset"]:e["offset"] + e["nbytes"]].view(dt).reshape(e["shape"])
    plan.weights = weights
    return plan


def _short_error(e: Exception) -> str:
    s = str(e)
    return s if len(s) <= 200 else s[:200] + "…"
