"""The in-memory plan: `Plan` (header dict + weights) with its accessors and the run-input checks, and `load_plan`.

`Plan.check_feeds` validates a run's inputs (names, integer dtype, rank, the shape profile, token-id range,
padding on the right where an Embedding has a padding_id) and returns contiguous int64 arrays; both backends
call it before running anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, PlanError, ShapeError
from .format import FORMAT_NAME, WEIGHT_DTYPES, align, json_default, required_version
from .io import read_plan_file, write_plan_file
from .summary import plan_dict, summary_text, weight_stats
from .validate import check_arrays, check_values, is_int, validate_header


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
            hdr = json.loads(json.dumps(header, default=json_default, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise PlanError(f"plan (in memory): header: not JSON-serializable: {e}") from None
        if not isinstance(hdr, dict):
            raise PlanError("plan (in memory): header: must be a JSON object (dict)")
        hdr["format"] = FORMAT_NAME
        hdr.setdefault("tf32", False)
        arrays: dict[str, np.ndarray] = {}
        entries: dict[str, dict] = {}
        cursor = 0
        for name, w in weights.items():
            a = np.asarray(w)
            if a.dtype.name not in WEIGHT_DTYPES:
                raise PlanError(
                    f"plan (in memory): weights.{name}: dtype {a.dtype.name} is not storable "
                    f"(plans hold {', '.join(WEIGHT_DTYPES)})")
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
            offset = align(cursor)
            entries[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": offset,
                             "nbytes": int(a.nbytes)}
            arrays[name] = a
            cursor = offset + a.nbytes
        hdr["weights"] = entries
        hdr["version"] = required_version(hdr)  # the lowest that holds it (format.required_version)
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
        return int(v) if is_int(v) else None

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
        validate_header(self.header, self._where(), blob_nbytes)
        if blob_nbytes is None:
            check_arrays(self.header, self.weights, self._where())

    # ------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan file atomically (a temporary file in the same folder, then rename)."""
        self.validate()
        path = Path(path)
        write_plan_file(path, self.header, self.weights, self.blob_nbytes, self._where())
        self.path = path
        return path

    # ------------------------------------------------------------------ inputs
    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate a run's inputs; return them as contiguous int64 arrays, in the plan's input order.

        input_ids is required; attention_mask defaults to all ones and token_type_ids to zeros when the
        plan takes them and they are not given (as Hugging Face models do). position_ids are taken, checked and
        dropped where the plan's source had them (header.source.position_ids). Raises InputError (unknown or
        missing names, non-integer dtype, ids out of range, a token after an Embedding's padding_id, a mask
        not 0/1 or, where an Embedding counts positions along it, not ones then zeros) or ShapeError (rank, inputs of
        different shapes, batch or sequence outside the profile).
        """
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of name -> array, got {type(feeds).__name__}")
        names = [i["name"] for i in self.inputs]
        positions = None
        if "position_ids" in feeds and self.header.get("source", {}).get("position_ids") == "arange":
            feeds = dict(feeds)
            positions = feeds.pop("position_ids")
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
        if positions is not None:
            self._check_positions(positions, shape, arrays.get("attention_mask"))

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
            refused = op.get("attrs", {}).get("refused_id") if op["type"] == "Embedding" else None
            if refused is not None:
                # the model rescales each sequence's embeddings by its count of this token (ESM's token dropout on
                # <mask>); the plan holds the factor of sequences without it
                bad = ids == refused
                if bad.any():
                    first_bad("input_ids", ids, bad, f"token id {refused} is refused by op {op['name']!r}: the model "
                                                     f"rescales its embeddings by each sequence's count of that "
                                                     f"token (ESM's token dropout on <mask>), and this plan holds "
                                                     f"the factor of sequences without it")
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
            counted = [op["name"] for op in self.ops
                       if op.get("attrs", {}).get("mask_positions")]
            if counted:
                # the model counts positions along the mask; the plan's s + offset (an Embedding's) or j - i
                # (an ALiBi Attention's) is the same only where each row's mask is ones then zeros
                bad = after_padding(m != 0)
                if bad.any():
                    first_bad("attention_mask", m, bad, f"a 1 after a 0 in its row: op {counted[0]!r} counts "
                                                        f"positions along the mask, so this plan takes padding "
                                                        f"on the right only")
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

    @staticmethod
    def _check_positions(positions, shape, mask) -> None:
        """position_ids a caller passed to a plan whose source took them (header.source.position_ids "arange"):
        the plan computes 0..S-1 on every row, so they must be those on every unmasked token (what padded
        tokens hold does not matter: their outputs are not read)."""
        try:
            pos = np.asarray(positions)
        except Exception as e:  # noqa: BLE001 - ragged lists and the like
            raise InputError(f"input 'position_ids' cannot be read as an array: {e}") from None
        if pos.dtype.kind not in "iu":
            raise InputError(f"input 'position_ids' has dtype {pos.dtype}; positions must be integers")
        if pos.shape != tuple(shape):
            raise ShapeError(f"input 'position_ids' has shape {tuple(pos.shape)} but input_ids has {tuple(shape)}")
        valid = np.ones(shape, bool) if mask is None else np.asarray(mask) != 0
        bad = valid & (pos != np.arange(shape[1])[None, :])
        if bad.any():
            b, s = (int(i) for i in np.argwhere(bad)[0])
            raise InputError(f"input 'position_ids' has {int(pos[b, s])} at position [{b}, {s}] where this plan "
                             f"computes {s}: the plan takes positions 0..S-1 on every row (the file's position_ids "
                             f"input became that arange at build time), so pad on the right and pass these "
                             f"positions, or none")

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

    def keep_outputs(self, names) -> "Plan":
        """This plan computing only the outputs `names` (in that order): the ops they need, the tensors and
        weights those ops read; the inputs stay. Dropping a pooled output that way leaves the token states the
        GPU runtime computes (it has no Pool op). The plan itself when nothing is dropped; ValueError for a name
        that is not an output."""
        outs = {o["name"]: o for o in self.outputs}
        names = list(dict.fromkeys(names))
        unknown = [n for n in names if n not in outs]
        if unknown or not names:
            raise ValueError(f"the plan has no output {unknown[0]!r} (it has {', '.join(outs)})" if unknown
                             else "keep_outputs needs at least one output name")
        if names == list(outs):
            return self
        need = {outs[n].get("input") or n for n in names}  # an input passed through is that input
        ops = []
        for op in reversed(self.ops):
            if any(t in need for t in op["outputs"]):
                ops.append(op)
                need.update(t for t in op["inputs"] if t)
        ops.reverse()
        if not ops:
            raise ValueError(f"outputs {', '.join(names)}: every one is an input passed through; nothing to compute")
        return self.subplan(ops, [outs[n] for n in names])

    def subplan(self, ops: list[dict], outputs: list[dict]) -> "Plan":
        """A plan of some of this plan's ops (in order) with the given output entries ({name, dtype, shape}, or
        {name, dtype, shape, input}): the same inputs, profile and source; the tensors and weights those ops read or
        write. PlanError if the result is not a valid plan."""
        import copy

        header = copy.deepcopy({k: v for k, v in self.header.items() if k not in ("weights", "ops")})
        header["ops"] = copy.deepcopy(ops)
        header["outputs"] = copy.deepcopy(outputs)
        used = {t for op in ops for t in (*op["inputs"], *op["outputs"]) if t}
        used |= {i["name"] for i in self.inputs} | {o["name"] for o in header["outputs"]}
        header["tensors"] = {t: v for t, v in header["tensors"].items() if t in used}
        read = {w for op in ops for w in op.get("weights", {}).values() if w}
        return Plan.from_parts(header, {w: a for w, a in self.weights.items() if w in read})

    # ------------------------------------------------------------------ inspection
    def weight_stats(self) -> dict:
        """{"count", "bytes", "by_dtype": {dtype: {"count", "bytes"}}} of the weights."""
        return weight_stats(self.header)

    def to_dict(self) -> dict:
        """A JSON-able description (what `trtrun inspect --json` prints); no weight values."""
        return plan_dict(self)

    def summary(self) -> str:
        """Human-readable description for `trtrun inspect`."""
        return summary_text(self)

    def __repr__(self) -> str:
        return (f"Plan({self._where()}, precision={self.header.get('precision')!r}, "
                f"ops={len(self.header.get('ops', []))}, weights={len(self.header.get('weights', {}))})")


def after_padding(valid: np.ndarray) -> np.ndarray:
    """[B, S] bool: the valid (true) entries that come after an invalid one in their row. A plan whose op counts
    positions along the mask (mask_positions) takes only rows without any: ones, then zeros."""
    return np.maximum.accumulate(~valid, axis=1) & valid


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and fully validate a plan file (trtrun.plan.io.read_plan_file). Raises PlanError naming the file and
    field on any problem."""
    p = Path(path)
    header, weights = read_plan_file(p)
    check_values(header, weights, str(p))  # values, which the header cannot vouch for: only once the blob is read
    return Plan(header, weights, path=p)
