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
range) and returns contiguous int64 arrays; both backends call it before running anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, PlanError, ShapeError

MAGIC = b"TRTRUNPL"
FORMAT_VERSION = 1
FORMAT_NAME = "trtrun-plan"
ALIGN = 256
PREAMBLE = struct.Struct("<8sIIQQ")  # magic, version, reserved, header length, blob length: 32 bytes
TRAILER_BYTES = 32  # SHA-256
MIN_FILE_BYTES = 64  # preamble + trailer: nothing shorter can be a plan

PRECISIONS = ("fp32", "fp16", "hybrid")
DTYPES = ("float32", "float16", "int64", "int32")
FLOAT_DTYPES = ("float32", "float16")
INT_DTYPES = ("int64", "int32")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
SYMBOLS = ("B", "S")
ACTIVATIONS = ("none", "gelu_erf", "gelu_tanh")

# Per op type: inputs (slot name, required), outputs (slot name, required), weight roles (role: required).
OP_SCHEMAS: dict[str, dict[str, Any]] = {
    "Embedding": {
        "inputs": (("input_ids", True), ("token_type_ids", False)),
        "outputs": (("y", True),),
        "weights": {"word": True, "position": True, "token_type": False, "gamma": False, "beta": False},
    },
    "Linear": {
        "inputs": (("x", True),),
        "outputs": (("y", True),),
        "weights": {"weight": True, "bias": False},
    },
    "Attention": {
        "inputs": (("qkv", True), ("attention_mask", False)),
        "outputs": (("y", True),),
        "weights": {},
    },
    "LayerNorm": {
        "inputs": (("x", True), ("residual", False)),
        "outputs": (("y", True), ("sum", False)),
        "weights": {"gamma": True, "beta": True},
    },
}
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

    @property
    def vocab_size(self) -> int | None:
        """Rows of the word-embedding table read by input_ids (token ids must be below it)."""
        for op in self.ops:
            if op["type"] == "Embedding":
                return int(self.header["weights"][op["weights"]["word"]]["shape"][0])
        v = self.model.get("vocab_size")
        return int(v) if _is_int(v) else None

    @property
    def type_vocab_size(self) -> int | None:
        """Rows of the token-type table (token_type_ids must be below it), None without one."""
        for op in self.ops:
            if op["type"] == "Embedding" and op["weights"].get("token_type"):
                return int(self.header["weights"][op["weights"]["token_type"]]["shape"][0])
        return None

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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        sha = hashlib.sha256()
        try:
            with open(tmp, "xb") as f:
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
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.path = path
        return path

    # ------------------------------------------------------------------ inputs
    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate a run's inputs; return them as contiguous int64 arrays, in the plan's input order.

        input_ids is required; attention_mask defaults to all ones and token_type_ids to zeros when the
        plan takes them and they are not given (as Hugging Face models do). Raises InputError (unknown or
        missing names, non-integer dtype, ids out of range, a mask not 0/1) or ShapeError (rank, inputs of
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
            if o["type"] == "Linear" and o["attrs"].get("activation", "none") != "none":
                extra = f"  [{o['attrs']['activation']}]"
            elif o["type"] == "Attention":
                a = o["attrs"]
                extra = f"  [heads {a.get('num_heads')} x {a.get('head_size')}" + \
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
def _validate_header(h: Any, where: str, blob_nbytes: int | None) -> None:
    def err(field: str, msg: str):
        raise PlanError(f"{where}: {field}: {msg}")

    if not isinstance(h, dict):
        err("header", f"must be a JSON object, got {type(h).__name__}")
    if h.get("format") != FORMAT_NAME:
        err("header.format", f"is {h.get('format')!r}, expected {FORMAT_NAME!r}")
    if h.get("version") != FORMAT_VERSION:
        err("header.version", f"is {h.get('version')!r}, expected {FORMAT_VERSION} (the file's format version)")
    for key, typ in (("precision", str), ("profile", dict), ("inputs", list), ("outputs", list),
                     ("tensors", dict), ("weights", dict), ("ops", list)):
        if key not in h:
            err(f"header.{key}", "missing")
        if not isinstance(h[key], typ):
            err(f"header.{key}", f"must be a {'JSON object' if typ is dict else typ.__name__}, "
                                 f"got {type(h[key]).__name__}")
    for key in ("source", "model", "builder"):
        if key in h and not isinstance(h[key], dict):
            err(f"header.{key}", f"must be a JSON object, got {type(h[key]).__name__}")
    if h["precision"] not in PRECISIONS:
        err("header.precision", f"{h['precision']!r} is not one of {', '.join(PRECISIONS)}")
    if not isinstance(h.get("tf32", False), bool):
        err("header.tf32", f"must be true or false, got {h['tf32']!r}")

    # profile
    prof = h["profile"]
    for axis in ("batch", "seq"):
        v = prof.get(axis)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_int(x) for x in v)):
            err(f"header.profile.{axis}", f"must be [min, opt, max] integers, got {v!r}")
        if not 1 <= v[0] <= v[1] <= v[2]:
            err(f"header.profile.{axis}", f"needs 1 <= min <= opt <= max, got {v}")
    extra = sorted(set(prof) - {"batch", "seq"})
    if extra:
        err("header.profile", f"unknown keys {extra} (expected batch, seq)")

    # tensors
    tensors = h["tensors"]
    for name, t in tensors.items():
        f = f"header.tensors.{name}"
        if not isinstance(t, dict):
            err(f, "must be an object {dtype, shape}")
        if t.get("dtype") not in DTYPES:
            err(f + ".dtype", f"{t.get('dtype')!r} is not one of {', '.join(DTYPES)}")
        shp = t.get("shape")
        if not isinstance(shp, list) or not all((_is_int(d) and d > 0) or d in SYMBOLS for d in shp):
            err(f + ".shape", f"must be a list of positive ints and the symbols B, S; got {shp!r}")

    # graph inputs and outputs
    def check_io(kind: str):
        seen = set()
        for i, io in enumerate(h[kind]):
            f = f"header.{kind}[{i}]"
            if not isinstance(io, dict) or not isinstance(io.get("name"), str):
                err(f, "must be an object {name, dtype, shape}")
            name = io["name"]
            if name in seen:
                err(f, f"{name!r} listed twice")
            seen.add(name)
            if name not in tensors:
                err(f, f"tensor {name!r} is not in header.tensors")
            t = tensors[name]
            if io.get("dtype") != t["dtype"] or io.get("shape") != t["shape"]:
                err(f, f"{name!r} is {io.get('dtype')}{io.get('shape')} here but "
                       f"{t['dtype']}{t['shape']} in header.tensors")
        return seen

    in_names = check_io("inputs")
    out_names = check_io("outputs")
    if "input_ids" not in in_names:
        err("header.inputs", "must include input_ids")
    for i, io in enumerate(h["inputs"]):
        if io["name"] not in INPUT_NAMES:
            err(f"header.inputs[{i}]", f"{io['name']!r} is not a known input ({', '.join(INPUT_NAMES)})")
        if io["dtype"] not in INT_DTYPES or io["shape"] != ["B", "S"]:
            err(f"header.inputs[{i}]", f"{io['name']!r} must be int64 or int32 with shape [B, S], "
                                       f"got {io['dtype']}{io['shape']}")
    if not out_names:
        err("header.outputs", "a plan needs at least one output")

    # weights
    weights = h["weights"]
    spans = []
    for name, e in weights.items():
        f = f"header.weights.{name}"
        if not isinstance(e, dict):
            err(f, "must be an object {dtype, shape, offset, nbytes}")
        if e.get("dtype") not in DTYPES:
            err(f + ".dtype", f"{e.get('dtype')!r} is not one of {', '.join(DTYPES)}")
        shp = e.get("shape")
        if not isinstance(shp, list) or not all(_is_int(d) and d >= 0 for d in shp):
            err(f + ".shape", f"must be a list of non-negative ints, got {shp!r}")
        off, nb = e.get("offset"), e.get("nbytes")
        if not _is_int(off) or off < 0 or off % ALIGN:
            err(f + ".offset", f"must be a non-negative multiple of {ALIGN}, got {off!r}")
        if not _is_int(nb) or nb < 0:
            err(f + ".nbytes", f"must be a non-negative int, got {nb!r}")
        expect = math.prod(shp) * np.dtype(e["dtype"]).itemsize  # Python ints: no int64 wrap-around
        if nb != expect:
            err(f + ".nbytes", f"is {nb} but {e['dtype']}{_fmt_shape(shp)} takes {expect} bytes")
        if blob_nbytes is not None and off + nb > blob_nbytes:
            err(f, f"bytes [{off}, {off + nb}) lie outside the weights blob ({blob_nbytes} bytes)")
        spans.append((off, off + nb, name))
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        if b0 < a1 and b1 > b0 and a1 > a0:
            err(f"header.weights.{bn}", f"bytes [{b0}, {b1}) overlap weight {an!r} [{a0}, {a1})")

    # ops
    produced = set(in_names)
    op_names = set()
    for i, op in enumerate(h["ops"]):
        f = f"header.ops[{i}]"
        if not isinstance(op, dict):
            err(f, "must be an object")
        name = op.get("name")
        if not isinstance(name, str) or not name:
            err(f + ".name", f"must be a non-empty string, got {name!r}")
        f = f"header.ops[{i}] ({name!r})"
        if name in op_names:
            err(f, f"op name {name!r} used twice")
        op_names.add(name)
        typ = op.get("type")
        if typ not in OP_SCHEMAS:
            err(f + ".type", f"unknown op type {typ!r} (known: {', '.join(OP_TYPES)})")
        sch = OP_SCHEMAS[typ]
        if op.get("precision") not in PRECISIONS:
            err(f + ".precision", f"{op.get('precision')!r} is not one of {', '.join(PRECISIONS)}")
        ins, outs = op.get("inputs"), op.get("outputs")
        wts, attrs = op.get("weights", {}), op.get("attrs", {})
        if not isinstance(ins, list) or not all(isinstance(x, str) for x in ins):
            err(f + ".inputs", "must be a list of tensor names")
        if not isinstance(outs, list) or not all(isinstance(x, str) for x in outs):
            err(f + ".outputs", "must be a list of tensor names")
        if not isinstance(wts, dict) or not all(isinstance(x, str) for x in wts.values()):
            err(f + ".weights", "must be an object role -> weight name")
        if not isinstance(attrs, dict):
            err(f + ".attrs", "must be an object")
        for kind, slots, given in (("inputs", sch["inputs"], ins), ("outputs", sch["outputs"], outs)):
            if len(given) > len(slots):
                err(f"{f}.{kind}", f"{typ} takes at most {len(slots)} {kind} "
                                   f"({', '.join(s for s, _ in slots)}), got {len(given)}")
            for j, (slot, required) in enumerate(slots):
                t = given[j] if j < len(given) else ""
                if required and not t:
                    err(f"{f}.{kind}[{j}]", f"{typ} needs its {slot!r} {kind[:-1]}")
                if t and t not in tensors:
                    err(f"{f}.{kind}[{j}]", f"tensor {t!r} is not in header.tensors")
        for j, t in enumerate(ins):
            if t and t not in produced:
                err(f"{f}.inputs[{j}]",
                    f"tensor {t!r} is used before any op produces it (ops are not topologically "
                    f"ordered, or it is neither produced nor a graph input)")
        for j, t in enumerate(outs):
            if t and t in produced:
                err(f"{f}.outputs[{j}]", f"tensor {t!r} is produced twice (or overwrites a graph input)")
            if t:
                produced.add(t)
        for role in wts:
            if role not in sch["weights"]:
                err(f"{f}.weights.{role}", f"{typ} has no weight role {role!r} "
                                           f"(roles: {', '.join(sch['weights']) or 'none'})")
        for role, required in sch["weights"].items():
            w = wts.get(role, "")
            if required and not w:
                err(f"{f}.weights.{role}", f"{typ} needs a {role!r} weight")
            if w and w not in weights:
                err(f"{f}.weights.{role}", f"weight {w!r} is not in header.weights")
        _validate_op(op, f, tensors, weights, prof, err)
    for name in out_names:
        if name not in produced:
            err("header.outputs", f"output {name!r} is not produced by any op nor a graph input")


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
            err(f + f".{slot}", f"tensor {name!r} is {T(name)['dtype']}, {op['type']} needs {' or '.join(allowed)}")

    def need_shape(what, shape, expect):
        if list(shape) != list(expect):
            err(f, f"{what} has shape {_fmt_shape(shape)}, expected {_fmt_shape(expect)}")

    def number(key, required=True, positive=False):
        if key not in attrs:
            if required:
                err(f + f".attrs.{key}", "missing")
            return None
        v = attrs[key]
        if not _is_number(v) or (positive and v <= 0):
            err(f + f".attrs.{key}", f"must be a finite {'positive ' if positive else ''}number, got {v!r}")
        return v

    def integer(key, required=True, minimum=None):
        if key not in attrs:
            if required:
                err(f + f".attrs.{key}", "missing")
            return None
        v = attrs[key]
        if not _is_int(v) or (minimum is not None and v < minimum):
            err(f + f".attrs.{key}", f"must be an integer{'' if minimum is None else f' >= {minimum}'}, got {v!r}")
        return v

    for role, w in wts.items():
        if w and weights[w]["dtype"] not in FLOAT_DTYPES:
            err(f + f".weights.{role}", f"weight {w!r} is {weights[w]['dtype']}, expected a float dtype")

    if typ == "Embedding":
        need_dtype("inputs[0]", ins[0], INT_DTYPES)
        need_dtype("inputs[1]", ins[1], INT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        y = T(outs[0])["shape"]
        word, pos = Wt("word"), Wt("position")
        if len(word["shape"]) != 2 or len(pos["shape"]) != 2:
            err(f + ".weights", "word and position tables must be 2-D [rows, hidden]")
        N = word["shape"][1]
        need_shape(f"output {outs[0]!r}", y, list(T(ins[0])["shape"]) + [N])
        need_shape(f"position table {wts['position']!r}", pos["shape"], [pos["shape"][0], N])
        if Wt("token_type") is not None:
            tt = Wt("token_type")
            if len(tt["shape"]) != 2:
                err(f + ".weights.token_type", "must be 2-D [types, hidden]")
            need_shape(f"token_type table {wts['token_type']!r}", tt["shape"], [tt["shape"][0], N])
        elif ins[1]:
            err(f + ".inputs[1]", "token_type_ids given but there is no token_type table")
        if bool(wts.get("gamma")) != bool(wts.get("beta")):
            err(f + ".weights", "gamma and beta come together (both or neither)")
        if wts.get("gamma"):
            need_shape(f"gamma {wts['gamma']!r}", Wt("gamma")["shape"], [N])
            need_shape(f"beta {wts['beta']!r}", Wt("beta")["shape"], [N])
            number("epsilon", positive=True)
        off = integer("position_offset", required=False, minimum=0) or 0
        P = pos["shape"][0]
        if prof["seq"][2] + off > P:
            err("header.profile.seq", f"max sequence {prof['seq'][2]} (+ position offset {off}) exceeds the "
                                      f"{P} rows of the position table of op {op['name']!r}")
    elif typ == "Linear":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        x, y, w = T(ins[0])["shape"], T(outs[0])["shape"], Wt("weight")["shape"]
        if len(w) != 2:
            err(f + ".weights.weight", f"must be 2-D [K, N], got {_fmt_shape(w)}")
        K, N = w
        if len(x) < 2 or x[-1] != K:
            err(f, f"input {ins[0]!r} {_fmt_shape(x)} does not match weight [K={K}, N={N}]")
        need_shape(f"output {outs[0]!r}", y, list(x[:-1]) + [N])
        if Wt("bias") is not None:
            need_shape(f"bias {wts['bias']!r}", Wt("bias")["shape"], [N])
        act = attrs.get("activation", "none")
        if act not in ACTIVATIONS:
            err(f + ".attrs.activation", f"{act!r} is not one of {', '.join(ACTIVATIONS)}")
    elif typ == "Attention":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("inputs[1]", ins[1], INT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        H = integer("num_heads", minimum=1)
        D = integer("head_size", minimum=1)
        number("scale")
        if not isinstance(attrs.get("causal", False), bool):
            err(f + ".attrs.causal", f"must be true or false, got {attrs['causal']!r}")
        q = T(ins[0])["shape"]
        if len(q) != 3:
            err(f, f"qkv {ins[0]!r} must be [B, S, 3*H*D], got {_fmt_shape(q)}")
        need_shape(f"qkv {ins[0]!r}", q, [q[0], q[1], 3 * H * D])
        need_shape(f"output {outs[0]!r}", T(outs[0])["shape"], [q[0], q[1], H * D])
        if ins[1]:
            need_shape(f"attention_mask {ins[1]!r}", T(ins[1])["shape"], q[:2])
    elif typ == "LayerNorm":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("inputs[1]", ins[1], FLOAT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        need_dtype("outputs[1]", outs[1], FLOAT_DTYPES)
        x = T(ins[0])["shape"]
        if not x:
            err(f, f"input {ins[0]!r} must have rank >= 1")
        N = x[-1]
        for what, n in (("residual", ins[1]), ("output", outs[0]), ("sum output", outs[1])):
            if n:
                need_shape(f"{what} {n!r}", T(n)["shape"], x)
        need_shape(f"gamma {wts['gamma']!r}", Wt("gamma")["shape"], [N])
        need_shape(f"beta {wts['beta']!r}", Wt("beta")["shape"], [N])
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
        head.decode("utf-8")
        return " (it looks like a text file)"
    except UnicodeDecodeError:
        return ""


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and fully validate a plan file. Raises PlanError naming the file and field on any problem."""
    p = Path(path)
    where = str(p)
    try:
        size = os.stat(p).st_size
    except FileNotFoundError:
        raise PlanError(f"{where}: no such file") from None
    except OSError as e:
        raise PlanError(f"{where}: cannot read: {e.strerror or e}") from None
    if p.is_dir():
        raise PlanError(f"{where}: is a directory, not a plan file")
    buf = _aligned_buffer(size)
    try:
        with open(p, "rb") as f:
            n = f.readinto(memoryview(buf))
    except OSError as e:
        raise PlanError(f"{where}: cannot read: {e.strerror or e}") from None
    if n != size:
        raise PlanError(f"{where}: file size: read {n} bytes of {size} (file changed while reading?)")
    mv = memoryview(buf)
    head = bytes(mv[:16])
    if size < MIN_FILE_BYTES:
        raise PlanError(f"{where}: file size: {size} bytes is too small to be a trtrun plan "
                        f"(at least {MIN_FILE_BYTES}){'; not a trtrun plan' + _looks_like(head) if head[:8] != MAGIC else ''}")
    magic, version, reserved, H, W = PREAMBLE.unpack(bytes(mv[:PREAMBLE.size]))
    if magic != MAGIC:
        raise PlanError(f"{where}: magic: not a trtrun plan (starts with {magic!r}, a plan starts with "
                        f"{MAGIC!r}){_looks_like(head)}")
    if version > FORMAT_VERSION:
        raise PlanError(f"{where}: version: plan format version {version} is newer than this trtrun supports "
                        f"({FORMAT_VERSION}): rebuild the plan or upgrade trtrun")
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
        raise PlanError(f"{where}: lengths: the file has {size} bytes but header length {H} and blob length "
                        f"{W} account for {expected} (trailing data or corrupted lengths)")
    digest = hashlib.sha256(mv[:size - TRAILER_BYTES]).digest()
    stored = bytes(mv[size - TRAILER_BYTES:])
    if digest != stored:
        raise PlanError(f"{where}: checksum: SHA-256 mismatch, the file is corrupted "
                        f"(computed {digest.hex()[:16]}…, stored {stored.hex()[:16]}…)")
    try:
        header = json.loads(bytes(mv[PREAMBLE.size:PREAMBLE.size + H]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PlanError(f"{where}: header JSON: cannot parse: {e}") from None
    if not isinstance(header, dict):
        raise PlanError(f"{where}: header: must be a JSON object, got {type(header).__name__}")
    plan = Plan(header, {}, path=p)
    plan.validate(blob_nbytes=W)
    buf.flags.writeable = False
    weights = {}
    for name, e in header["weights"].items():
        start = blob_start + e["offset"]
        dt = np.dtype(e["dtype"]).newbyteorder("<")
        arr = buf[start:start + e["nbytes"]].view(dt).reshape(e["shape"])
        weights[name] = arr
    plan.weights = weights
    return plan
