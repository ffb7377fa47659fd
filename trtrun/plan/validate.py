"""Validation of a plan's header: every field's type and range, each op's slots, weights, attributes and shapes.

The header is data from a file that anyone can craft (the SHA-256 detects damage, it does not authenticate):
every field is checked before anything reads it, so that a plan that validates can be run by the reference
backend and lowered for the runtime without IndexError & co. Every failure is a PlanError naming the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..errors import PlanError
from ..types import FP8, OP_PRECISIONS, PLAN_PRECISIONS
from .format import (
    ACTIVATIONS,
    ALIGN,
    ARCHS,
    DTYPES,
    FLOAT32_MAX,
    FLOAT_DTYPES,
    FORMAT_NAME,
    FP8_DTYPE,
    FP8_FORMAT_VERSION,
    HEADER_KEYS,
    INPUT_NAMES,
    INT32_MAX,
    INT_DTYPES,
    MAX_RANK,
    MAX_WEIGHT_DIM,
    MODEL_INTS,
    OP_ATTRS,
    OP_INPUT_NAMES,
    OP_KEYS,
    OP_SCHEMAS,
    OP_TYPES,
    POOL_ID_MODES,
    POOL_MODES_FORMAT_VERSION,
    POOL_MODES,
    SENTENCE_OPS,
    SOURCE_WEIGHTS,
    WEIGHT_DTYPES,
    np_dtype,
    required_version,
    V3_ATTRS,
)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def nm(name) -> str:
    """A name from the file as it may appear in a message: as is when short and printable, else its repr
    shortened (a crafted name can hold terminal escapes or megabytes)."""
    if isinstance(name, str) and len(name) <= 80 and name.isprintable():
        return name
    r = repr(name)
    return r if len(r) <= 80 else r[:60] + "…"


def short(v) -> str:
    """repr of a value from the file, at most ~80 characters."""
    r = repr(v)
    return r if len(r) <= 80 else r[:60] + "…"


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"



def type_name(v) -> str:
    return type(v).__name__


def surrogate_path(h: Any) -> str | None:
    """The path (header.ops[3].name, ...) of the first string, key or value, holding a lone UTF-16 surrogate, or None.

    JSON's \\ud800 escape parses to such a string: it is no Unicode text, so nothing can encode it (UTF-8 for the
    runtime's names, a terminal for `trtrun inspect`). Walked with an explicit stack (the depth is bounded anyway)."""
    stack = [("header", h)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(v, dict):
            for k, x in reversed(list(v.items())):
                p = f"{path}.{nm(k)}"
                try:
                    k.encode("utf-8")
                except UnicodeEncodeError:
                    return p + " (the key)"
                stack.append((p, x))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


def validate_header(h: Any, where: str, blob_nbytes: int | None) -> None:
    def err(field: str, msg: str):
        raise PlanError(f"{where}: {field}: {msg}")

    try:  # one C-level pass for the usual header; the walk only to name the field of a bad one
        json.dumps(h, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        bad = surrogate_path(h)
        if bad is not None:
            err(bad, "holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair): not text")
    except (TypeError, ValueError):
        pass  # not JSON data: the checks below name what is wrong

    def need_obj(v, field: str, what: str = ""):
        if not isinstance(v, dict):
            err(field, f"must be a JSON object{what}, got {type_name(v)}")

    def only_keys(d: dict, field: str, allowed):
        extra = [k for k in d if k not in allowed]
        if extra:
            more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
            err(field, f"unknown key {short(extra[0])}{more} (known: {', '.join(allowed)})")

    def need_int(v, field: str, lo: int, hi: int):
        if not (is_int(v) and lo <= v <= hi):
            err(field, f"must be an integer in [{lo}, {hi}], got {short(v)}")

    if not isinstance(h, dict):
        err("header", f"must be a JSON object, got {type_name(h)}")
    if h.get("format") != FORMAT_NAME:
        err("header.format", f"is {short(h.get('format'))}, expected {FORMAT_NAME!r}")
    need = required_version(h)
    if not (is_int(h.get("version")) and h["version"] == need):
        why = {FP8_FORMAT_VERSION: ": fp8 ops and weights need it)",
               3: ": " + ", ".join(a for a, _ in V3_ATTRS) + " need it)",
               4: ": ops after the pooling need it)",
               5: ": qk_norm_after_rotary needs it)",
               POOL_MODES_FORMAT_VERSION: ": Pool modes last, token and max_id need it)"}.get(need, ")")
        err("header.version", f"is {short(h.get('version'))}, expected {need} (the file's format version" + why)
    for key, typ in (("precision", str), ("profile", dict), ("inputs", list), ("outputs", list),
                     ("tensors", dict), ("weights", dict), ("ops", list)):
        if key not in h:
            err(f"header.{key}", "missing")
        if not isinstance(h[key], typ):
            err(f"header.{key}", f"must be a {'JSON object' if typ is dict else typ.__name__}, "
                                 f"got {type_name(h[key])}")
    only_keys(h, "header", HEADER_KEYS)
    for key in ("source", "model", "builder"):
        if key in h:
            need_obj(h[key], f"header.{key}")
    if h["precision"] not in PLAN_PRECISIONS:
        err("header.precision", f"{short(h['precision'])} is not one of {', '.join(PLAN_PRECISIONS)}")
    if not isinstance(h.get("tf32", False), bool):
        err("header.tf32", f"must be true or false, got {short(h['tf32'])}")

    # metadata: free to extend, but what is there has its type (tokenizer lookup, reports and bench read it)
    src = h.get("source", {})
    for key in ("path", "sha256", "producer"):
        if key in src and not (isinstance(src[key], str) or (key == "producer" and src[key] is None)):
            err(f"header.source.{key}", f"must be a string, got {short(src[key])}")
    if "opset" in src and src["opset"] is not None:
        need_int(src["opset"], "header.source.opset", 0, INT32_MAX)
    if "weights" in src and src["weights"] not in SOURCE_WEIGHTS:
        err("header.source.weights", f"{short(src['weights'])} is not one of {', '.join(SOURCE_WEIGHTS)}")
    if "position_ids" in src and src["position_ids"] != "arange":
        err("header.source.position_ids", f"{short(src['position_ids'])} is not \"arange\"")
    if "conversions" in src and not (isinstance(src["conversions"], list)
                                     and all(isinstance(c, str) for c in src["conversions"])):
        err("header.source.conversions", f"must be a list of strings, got {short(src['conversions'])}")
    model = h.get("model", {})
    if "arch" in model and model["arch"] not in ARCHS:
        err("header.model.arch", f"{short(model['arch'])} is not one of {', '.join(ARCHS)}")
    for key in MODEL_INTS:
        if key in model:
            need_int(model[key], f"header.model.{key}", 0, INT32_MAX)

    # profile
    prof = h["profile"]
    for axis in ("batch", "seq"):
        v = prof.get(axis)
        if not (isinstance(v, list) and len(v) == 3 and all(is_int(x) for x in v)):
            err(f"header.profile.{axis}", f"must be [min, opt, max] integers, got {short(v)}")
        if not 1 <= v[0] <= v[1] <= v[2]:
            err(f"header.profile.{axis}", f"needs 1 <= min <= opt <= max, got {short(v)}")
        if v[2] > INT32_MAX:
            err(f"header.profile.{axis}", f"max must be at most {INT32_MAX} (the runtime's int), got {short(v)}")
    extra = sorted(set(prof) - {"batch", "seq"})
    if extra:
        err("header.profile", f"unknown keys {short(extra)} (expected batch, seq)")

    # tensors: every activation is [B, S, inner dims...] (what the runtime allocates per batch and sequence),
    # except one vector a sample, [B, N]: a Pool op's output and what the row ops after it write (a classification
    # head's Linears and norms); the ops' own checks tie each [B, N] tensor back to a Pool
    tensors = h["tensors"]
    pooled = {o["outputs"][0] for o in h["ops"] if isinstance(o, dict) and o.get("type") in SENTENCE_OPS
              and isinstance(o.get("outputs"), list) and o["outputs"] and isinstance(o["outputs"][0], str)}
    for name, t in tensors.items():
        f = f"header.tensors.{nm(name)}"
        if not name:
            err("header.tensors", "a tensor name must be a non-empty string")
        need_obj(t, f, " {dtype, shape}")
        only_keys(t, f, ("dtype", "shape"))
        if t.get("dtype") not in DTYPES:
            err(f + ".dtype", f"{short(t.get('dtype'))} is not one of {', '.join(DTYPES)}")
        shp = t.get("shape")
        if name in pooled and isinstance(shp, list) and len(shp) == 2 and shp[0] == "B" and is_int(shp[1]) \
                and 1 <= shp[1] <= INT32_MAX:
            pass
        elif not (isinstance(shp, list) and 2 <= len(shp) <= MAX_RANK and shp[0] == "B" and shp[1] == "S"
                  and all(is_int(d) and 1 <= d <= INT32_MAX for d in shp[2:])):
            err(f + ".shape", f"must be [B, S, ...] with at most {MAX_RANK} dims, the others integers in "
                              f"[1, {INT32_MAX}]; got {short(shp)}")

    # graph inputs and outputs
    def check_io(kind: str):
        seen = set()
        for i, io in enumerate(h[kind]):
            f = f"header.{kind}[{i}]"
            need_obj(io, f, " {name, dtype, shape}")
            only_keys(io, f, ("name", "dtype", "shape") + (("input",) if kind == "outputs" else ()))
            name = io.get("name")
            if not isinstance(name, str):
                err(f + ".name", f"must be a tensor name (a string), got {short(name)}")
            if name in seen:
                err(f, f"{nm(name)!r} listed twice")
            seen.add(name)
            if "input" in io:  # an output that is a graph input passed through, under its own name (no buffer)
                src = io["input"]
                if not (isinstance(src, str) and src in in_names):
                    err(f + ".input", f"must name a graph input (the one this output passes through), got {short(src)}")
                if name != src and (name in tensors or name in in_names):
                    err(f, f"{nm(name)!r} passes the input {nm(src)!r} through, but is also a tensor of the plan")
                t = tensors[src]
            else:
                if name not in tensors:
                    err(f, f"tensor {nm(name)!r} is not in header.tensors")
                t = tensors[name]
            if io.get("dtype") != t["dtype"] or io.get("shape") != t["shape"]:
                err(f, f"{nm(name)!r} is {short(io.get('dtype'))} {short(io.get('shape'))} here but "
                       f"{t['dtype']}{fmt_shape(t['shape'])} in header.tensors")
        return seen

    in_names = check_io("inputs")
    out_names = check_io("outputs")
    passed = {io["name"] for io in h["outputs"] if "input" in io}
    if "input_ids" not in in_names:
        err("header.inputs", "must include input_ids")
    for i, io in enumerate(h["inputs"]):
        if io["name"] not in INPUT_NAMES:
            err(f"header.inputs[{i}]", f"{nm(io['name'])!r} is not a known input ({', '.join(INPUT_NAMES)})")
        if io["dtype"] not in INT_DTYPES or io["shape"] != ["B", "S"]:
            err(f"header.inputs[{i}]", f"{io['name']!r} must be int64 or int32 with shape [B, S], "
                                       f"got {io['dtype']}{fmt_shape(io['shape'])}")
    for i, io in enumerate(h["outputs"]):
        if io["dtype"] not in FLOAT_DTYPES and "input" not in io:
            err(f"header.outputs[{i}]", f"{nm(io['name'])!r} must be a float tensor (what an op writes), "
                                        f"got {io['dtype']}")
    if not out_names:
        err("header.outputs", "a plan needs at least one output")

    # weights
    weights = h["weights"]
    spans = []
    for name, e in weights.items():
        f = f"header.weights.{nm(name)}"
        if not name:
            err("header.weights", "a weight name must be a non-empty string")
        need_obj(e, f, " {dtype, shape, offset, nbytes}")
        only_keys(e, f, ("dtype", "shape", "offset", "nbytes"))
        if e.get("dtype") not in WEIGHT_DTYPES:
            err(f + ".dtype", f"{short(e.get('dtype'))} is not one of {', '.join(WEIGHT_DTYPES)}")
        shp = e.get("shape")
        if not (isinstance(shp, list) and len(shp) <= MAX_RANK
                and all(is_int(d) and 0 <= d <= MAX_WEIGHT_DIM for d in shp)):
            err(f + ".shape", f"must be a list of at most {MAX_RANK} integers in [0, 2^62], got {short(shp)}")
        off, nb = e.get("offset"), e.get("nbytes")
        if not is_int(off) or not 0 <= off <= MAX_WEIGHT_DIM or off % ALIGN:
            err(f + ".offset", f"must be a non-negative multiple of {ALIGN} (at most 2^62), got {short(off)}")
        if not is_int(nb) or not 0 <= nb <= MAX_WEIGHT_DIM:
            err(f + ".nbytes", f"must be a non-negative int (at most 2^62), got {short(nb)}")
        itemsize = np_dtype(e["dtype"]).itemsize
        expect = math.prod(shp) * itemsize  # Python ints: no int64 wrap-around
        if nb != expect:
            err(f + ".nbytes", f"is {nb} but {e['dtype']}{fmt_shape(shp)} takes {expect} bytes")
        if math.prod(max(d, 1) for d in shp) * itemsize > MAX_WEIGHT_DIM:  # numpy refuses such a shape even empty
            err(f + ".shape", f"{fmt_shape(shp)} spans more than 2^62 bytes (beside its zero dims)")
        if blob_nbytes is not None and off + nb > blob_nbytes:
            err(f, f"bytes [{off}, {off + nb}) lie outside the weights blob ({blob_nbytes} bytes)")
        if nb:
            spans.append((off, off + nb, name))
    spans.sort()
    end, owner = 0, None
    for b0, b1, bn in spans:  # sorted by start: a span overlaps an earlier one iff it starts before their end
        if b0 < end:
            err(f"header.weights.{nm(bn)}", f"bytes [{b0}, {b1}) overlap weight {nm(owner)!r}")
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
            err(f + ".name", f"must be a non-empty string, got {short(name)}")
        f = f"header.ops[{i}] ({nm(name)!r})"
        if name in op_names:
            err(f, f"op name {nm(name)!r} used twice")
        op_names.add(name)
        only_keys(op, f, OP_KEYS)
        typ = op.get("type")
        if not isinstance(typ, str):
            err(f + ".type", f"must be a string naming an op type ({', '.join(OP_TYPES)}), got {short(typ)}")
        if typ not in OP_SCHEMAS:
            err(f + ".type", f"unknown op type {nm(typ)!r} (known: {', '.join(OP_TYPES)})")
        sch = OP_SCHEMAS[typ]
        if op.get("precision") not in OP_PRECISIONS:
            err(f + ".precision", f"{short(op.get('precision'))} is not one of {', '.join(OP_PRECISIONS)}")
        if op["precision"] == FP8 and typ != "Linear":
            err(f + ".precision", f"fp8 is a Linear op's precision; a {typ} op computes as hybrid in fp8 plans")
        ins, outs = op.get("inputs"), op.get("outputs")
        wts, attrs = op.get("weights", {}), op.get("attrs", {})
        if not isinstance(ins, list) or not all(isinstance(x, str) for x in ins):
            err(f + ".inputs", f"must be a list of tensor names, got {short(ins)}")
        if not isinstance(outs, list) or not all(isinstance(x, str) for x in outs):
            err(f + ".outputs", f"must be a list of tensor names, got {short(outs)}")
        if not isinstance(wts, dict) or not all(isinstance(x, str) for x in wts.values()):
            err(f + ".weights", f"must be an object role -> weight name, got {short(wts)}")
        if not isinstance(attrs, dict):
            err(f + ".attrs", f"must be an object, got {short(attrs)}")
        for kind, slots, given in (("inputs", sch["inputs"], ins), ("outputs", sch["outputs"], outs)):
            if len(given) > len(slots):
                err(f"{f}.{kind}", f"{typ} takes at most {len(slots)} {kind} "
                                   f"({', '.join(s for s, _ in slots)}), got {len(given)}")
            for j, (slot, required) in enumerate(slots):
                t = given[j] if j < len(given) else ""
                if required and not t:
                    err(f"{f}.{kind}[{j}]", f"{typ} needs its {slot!r} {kind[:-1]}")
                if t and t not in tensors:
                    err(f"{f}.{kind}[{j}]", f"tensor {nm(t)!r} is not in header.tensors")
                allowed = OP_INPUT_NAMES.get((typ, j)) if kind == "inputs" else None
                if t and allowed and t not in allowed:
                    err(f"{f}.inputs[{j}]", f"must be {' or '.join(map(repr, allowed))}"
                                            f"{'' if required else ' or absent'} (the graph input whose "
                                            f"values a run checks for this use), got {nm(t)!r}")
        for j, t in enumerate(ins):
            if t and t not in produced:
                err(f"{f}.inputs[{j}]",
                    f"tensor {nm(t)!r} is used before any op produces it (ops are not topologically "
                    f"ordered, or it is neither produced nor a graph input)")
        for j, t in enumerate(outs):
            if t and t in produced:
                err(f"{f}.outputs[{j}]", f"tensor {nm(t)!r} is produced twice (or overwrites a graph input)")
            if t:
                produced.add(t)
        for role in wts:
            if role not in sch["weights"]:
                err(f"{f}.weights.{nm(role)}", f"{typ} has no weight role {nm(role)!r} "
                                                f"(roles: {', '.join(sch['weights']) or 'none'})")
        for role, required in sch["weights"].items():
            w = wts.get(role, "")
            if required and not w:
                err(f"{f}.weights.{role}", f"{typ} needs a {role!r} weight")
            if w and w not in weights:
                err(f"{f}.weights.{role}", f"weight {nm(w)!r} is not in header.weights")
        for key, v in attrs.items():
            if key not in OP_ATTRS[typ] and not (v is None or isinstance(v, (str, bool, int))
                                                 or is_number(v)):
                err(f"{f}.attrs.{nm(key)}", f"an unknown attribute must be a string, number, bool or null "
                                             f"(nothing reads it), got {short(v)}")
        _validate_op(op, f, tensors, weights, prof, err)
    for name in out_names - passed:
        if name not in produced:
            err("header.outputs", f"output {nm(name)!r} is not produced by any op nor a graph input")

    # the model summary names the table token ids index (a tokenizer is chosen by it)
    if "vocab_size" in model:
        for op in h["ops"]:
            if op["type"] == "Embedding":
                rows = weights[op["weights"]["word"]]["shape"][0]
                if rows != model["vocab_size"]:
                    err("header.model.vocab_size", f"is {model['vocab_size']} but the word table "
                                                   f"{nm(op['weights']['word'])!r} of op {nm(op['name'])!r} "
                                                   f"has {rows} rows")


def _validate_op(op, f, tensors, weights, prof, err) -> None:
    """Attributes and shape consistency of one op (inputs/weights already known to exist)."""
    typ, attrs = op["type"], op.get("attrs", {})
    ins = list(op["inputs"]) + [""] * 3
    outs = list(op["outputs"]) + [""] * 2
    wts = op.get("weights", {})
    T = lambda n: tensors[n]  # noqa: E731
    Wt = lambda role: weights[wts[role]] if wts.get(role) else None  # noqa: E731

    def need_dtype(slot, name, allowed):
        if name and T(name)["dtype"] not in allowed:
            err(f + f".{slot}", f"tensor {nm(name)!r} is {T(name)['dtype']}, {op['type']} needs {' or '.join(allowed)}")

    def need_shape(what, shape, expect):
        if list(shape) != list(expect):
            err(f, f"{what} has shape {fmt_shape(shape)}, expected {fmt_shape(expect)}")

    def number(key, required=True, positive=False, nonnegative=False):
        if key not in attrs:
            if required:
                err(f + f".attrs.{key}", "missing")
            return None
        v = attrs[key]
        # float32 in the kernels: a value beyond its range would become inf there
        if not is_number(v) or abs(v) > FLOAT32_MAX or (positive and v <= 0) or (nonnegative and v < 0):
            kind = "positive " if positive else "non-negative " if nonnegative else ""
            err(f + f".attrs.{key}", f"must be a finite {kind}number (float32), got {short(v)}")
        return v

    def integer(key, required=True, minimum=0):
        if key not in attrs:
            if required:
                err(f + f".attrs.{key}", "missing")
            return None
        v = attrs[key]
        if not is_int(v) or not minimum <= v <= INT32_MAX:
            err(f + f".attrs.{key}", f"must be an integer in [{minimum}, {INT32_MAX}], got {short(v)}")
        return v

    def table(role, n_cols=None):
        """A 2-D [rows >= 1, N] table (every row a run may look up exists)."""
        e = Wt(role)
        if len(e["shape"]) != 2:
            err(f + f".weights.{role}", f"{role} table {nm(wts[role])!r} must be 2-D [rows, hidden], "
                                        f"got {fmt_shape(e['shape'])}")
        if e["shape"][0] < 1:
            err(f + f".weights.{role}", f"table {nm(wts[role])!r} has 0 rows; a run looks up row 0 at least")
        if n_cols is not None:
            need_shape(f"{role} table {nm(wts[role])!r}", e["shape"], [e["shape"][0], n_cols])
        return e["shape"]

    fp8 = op["precision"] == FP8
    for role, w in wts.items():
        if fp8 and role == "weight":
            if weights[w]["dtype"] != FP8_DTYPE:
                err(f + ".weights.weight", f"an fp8 Linear's weight must be {FP8_DTYPE}, got {nm(weights[w]['dtype'])}")
        elif w and weights[w]["dtype"] not in FLOAT_DTYPES:
            err(f + f".weights.{role}", f"weight {nm(w)!r} is {weights[w]['dtype']}, expected a float dtype")
        if role in ("weight_scale", "x_scale"):
            if not fp8:
                err(f + f".weights.{role}", f"only an fp8 Linear has a {role!r} (this op is {op['precision']})")
            if w and weights[w]["dtype"] != "float32":  # "" is an absent weight (the fp8 checks below say so)
                err(f + f".weights.{role}", f"weight {nm(w)!r} is {weights[w]['dtype']}, a scale is float32")

    if typ == "Embedding":
        need_dtype("inputs[0]", ins[0], INT_DTYPES)
        need_dtype("inputs[1]", ins[1], INT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        y = T(outs[0])["shape"]
        N = table("word")[1]
        P = table("position", N)[0] if Wt("position") is not None else None
        need_shape(f"output {nm(outs[0])!r}", y, list(T(ins[0])["shape"]) + [N])
        if Wt("token_type") is not None:
            table("token_type", N)
        elif ins[1]:
            err(f + ".inputs[1]", "token_type_ids given but there is no token_type table")
        if bool(wts.get("gamma")) != bool(wts.get("beta")):
            err(f + ".weights", "gamma and beta come together (both or neither)")
        if wts.get("gamma"):
            need_shape(f"gamma {nm(wts['gamma'])!r}", Wt("gamma")["shape"], [N])
            need_shape(f"beta {nm(wts['beta'])!r}", Wt("beta")["shape"], [N])
            number("epsilon", positive=True)
        elif "epsilon" in attrs:
            number("epsilon", positive=True)
        off = integer("position_offset", required=False) or 0
        integer("padding_id", required=False)  # token id that may only occur as trailing padding (check_feeds)
        integer("refused_id", required=False)  # token id no input may hold (check_feeds): ESM's <mask>
        if not isinstance(attrs.get("mask_positions", False), bool):  # the mask must be ones then zeros
            err(f + ".attrs.mask_positions", f"must be true or false, got {short(attrs['mask_positions'])}")
        if P is not None and prof["seq"][2] + off > P:
            err("header.profile.seq", f"max sequence {prof['seq'][2]} (+ position offset {off}) exceeds the "
                                      f"{P} rows of the position table of op {nm(op['name'])!r}")
    elif typ == "Linear":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        x, y, w = T(ins[0])["shape"], T(outs[0])["shape"], Wt("weight")["shape"]
        if len(w) != 2:
            err(f + ".weights.weight", f"must be 2-D [K, N], got {fmt_shape(w)}")
        K, N = w
        if len(x) < 2 or x[-1] != K:
            err(f, f"input {nm(ins[0])!r} {fmt_shape(x)} does not match weight [K={K}, N={N}]")
        gated = attrs.get("gated", False)
        if not isinstance(gated, bool):
            err(f + ".attrs.gated", f"must be true or false, got {short(gated)}")
        if gated and N % 2:
            err(f + ".weights.weight", f"a gated Linear's weight [K, 2N] needs an even width, got {fmt_shape(w)}")
        # one column may write its values squeezed, [B, S] (a question-answering head's start/end scores)
        if not (N == 1 and not gated and len(x) == 3 and y == list(x[:-1])):
            need_shape(f"output {nm(outs[0])!r}", y, list(x[:-1]) + [N // 2 if gated else N])
        need_dtype("inputs[1]", ins[1], FLOAT_DTYPES)
        if ins[1]:
            need_shape(f"residual {nm(ins[1])!r}", T(ins[1])["shape"], y)
        if Wt("bias") is not None:
            need_shape(f"bias {nm(wts['bias'])!r}", Wt("bias")["shape"], [N])
        if fp8:
            if not wts.get("weight_scale"):
                err(f + ".weights.weight_scale", "an fp8 Linear needs its weight_scale ([N] or [1], float32)")
            if Wt("weight_scale")["shape"] not in ([N], [1]):
                err(f + ".weights.weight_scale", f"must be [N={N}] (per output channel) or [1] (per tensor), got "
                                                 f"{fmt_shape(Wt('weight_scale')['shape'])}")
            if Wt("x_scale") is not None and Wt("x_scale")["shape"] != [1]:
                err(f + ".weights.x_scale", f"a static activation scale is [1], got {fmt_shape(Wt('x_scale')['shape'])}")
        act = attrs.get("activation", "none")
        if act not in ACTIVATIONS:
            err(f + ".attrs.activation", f"{short(act)} is not one of {', '.join(ACTIVATIONS)}")
    elif typ == "Attention":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("inputs[1]", ins[1], INT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        H = integer("num_heads", minimum=1)
        D = integer("head_size", minimum=1)
        number("scale")
        if not isinstance(attrs.get("causal", False), bool):
            err(f + ".attrs.causal", f"must be true or false, got {short(attrs['causal'])}")
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
            need_shape(f"inv_freq {nm(wts['inv_freq'])!r}", Wt("inv_freq")["shape"], [R // 2])
            if not R:
                err(f + ".attrs.rotary_dim", "an 'inv_freq' weight needs rotary_dim > 0")
        number("rotary_scale", required=False)
        number("softcap", required=False, positive=True)  # scores = softcap * tanh(scores / softcap) (Gemma 2)
        if Wt("relative_bias") is not None:
            rb = Wt("relative_bias")["shape"]
            if len(rb) != 2 or rb[0] < 1 or rb[1] != H:
                err(f + ".weights.relative_bias", f"must be [buckets >= 1, num_heads {H}], got {fmt_shape(rb)}")
            md = integer("relative_max_distance", minimum=1)
            if not isinstance(attrs.get("relative_bidirectional"), bool):
                err(f + ".attrs.relative_bidirectional", f"must be true or false, got "
                                                          f"{short(attrs.get('relative_bidirectional'))}")
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
            need_shape(f"alibi_slopes {nm(wts['alibi_slopes'])!r}", Wt("alibi_slopes")["shape"], [H])
            if Wt("relative_bias") is not None:
                err(f + ".weights.alibi_slopes", "an Attention has one score bias: a relative_bias table or "
                                                 "ALiBi slopes, not both")
            for a in ("alibi_symmetric", "mask_positions"):  # mask_positions: the mask must be ones then zeros
                if not isinstance(attrs.get(a, False), bool):
                    err(f + ".attrs." + a, f"must be true or false, got {short(attrs[a])}")
        elif "alibi_symmetric" in attrs or "mask_positions" in attrs:
            err(f + ".weights.alibi_slopes", "alibi_symmetric and mask_positions need an 'alibi_slopes' weight")
        # query/key RMSNorm: both or neither, over each head's D values (Qwen3's q_norm/k_norm: gammas [D]) or
        # over the whole query and key (OLMo-2's: gammas [H*D] and [Hkv*D])
        if (Wt("q_norm") is None) != (Wt("k_norm") is None):
            err(f + ".weights", "a query/key norm needs both 'q_norm' and 'k_norm'")
        if Wt("q_norm") is not None and Wt("k_norm") is not None:
            whole = list(Wt("q_norm")["shape"]) != [D]
            need_shape(f"q_norm {nm(wts['q_norm'])!r}", Wt("q_norm")["shape"], [H * D] if whole else [D])
            need_shape(f"k_norm {nm(wts['k_norm'])!r}", Wt("k_norm")["shape"], [Hkv * D] if whole else [D])
            eps = number("qk_norm_epsilon")
            if is_number(eps) and eps < 0:
                err(f + ".attrs.qk_norm_epsilon", f"must be >= 0, got {eps}")
        elif "qk_norm_epsilon" in attrs:
            err(f + ".weights", "qk_norm_epsilon needs 'q_norm' and 'k_norm' weights")
        # the norm's kind: RMSNorm (the default) or a LayerNorm over each head's D values (Persimmon's), whose
        # biases [D] come with it and only with it
        kind = attrs.get("qk_norm_kind", "rms")
        if kind not in ("rms", "layer"):
            err(f + ".attrs.qk_norm_kind", f"must be 'rms' or 'layer', got {short(kind)}")
        elif kind == "layer":  # each head over its D values: gains and biases [D] for all heads, or one each
            if Wt("q_norm") is None or Wt("k_norm") is None:  # err raises: the shapes below exist
                err(f + ".attrs.qk_norm_kind", "'layer' needs 'q_norm' and 'k_norm' weights")
            for role, size in (("q_norm_bias", Wt("q_norm")["shape"]), ("k_norm_bias", Wt("k_norm")["shape"])):
                if Wt(role) is None:
                    err(f + ".weights", f"qk_norm_kind 'layer' needs a '{role}' weight")
                else:
                    need_shape(f"{role} {nm(wts[role])!r}", Wt(role)["shape"], list(size))
        if kind != "layer":
            for role in ("q_norm_bias", "k_norm_bias"):
                if Wt(role) is not None:
                    err(f + ".weights." + role, "a query/key norm bias needs qk_norm_kind 'layer'")
        # where the norm stands: before the rotary (the default) or after it (HunYuan's), per head only
        after = attrs.get("qk_norm_after_rotary", False)
        if not isinstance(after, bool):
            err(f + ".attrs.qk_norm_after_rotary", f"must be true or false, got {short(after)}")
        if after and (Wt("q_norm") is None or not R):
            err(f + ".attrs.qk_norm_after_rotary", "a norm after the rotary needs 'q_norm'/'k_norm' and a rotary "
                                                   "(rotary_dim > 0)")
        if after and list(Wt("q_norm")["shape"]) != [D] and kind == "rms":
            err(f + ".attrs.qk_norm_after_rotary", "a norm after the rotary is over each head's values: q_norm "
                                                   f"must be [head_size {D}]")
        q = T(ins[0])["shape"]
        if len(q) != 3:
            err(f, f"qkv {nm(ins[0])!r} must be [B, S, (H+2*Hkv)*D], got {fmt_shape(q)}")
        need_shape(f"qkv {nm(ins[0])!r}", q, [q[0], q[1], (H + 2 * Hkv) * D])
        need_shape(f"output {nm(outs[0])!r}", T(outs[0])["shape"], [q[0], q[1], H * D])
        if ins[1]:
            need_shape(f"attention_mask {nm(ins[1])!r}", T(ins[1])["shape"], q[:2])
    elif typ == "Pool":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("inputs[1]", ins[1], INT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        x = T(ins[0])["shape"]
        if len(x) != 3 or x[:2] != ["B", "S"]:
            err(f, f"input {nm(ins[0])!r} must be [B, S, N], got {fmt_shape(x)}")
        need_shape(f"output {nm(outs[0])!r}", T(outs[0])["shape"], ["B", x[2]])
        if ins[1]:
            need_shape(f"attention_mask {nm(ins[1])!r}", T(ins[1])["shape"], ["B", "S"])
        if attrs.get("mode") not in POOL_MODES:
            err(f + ".attrs.mode", f"{short(attrs.get('mode'))} is not one of {', '.join(POOL_MODES)}")
        by_ids = attrs["mode"] in POOL_ID_MODES
        need_dtype("inputs[2]", ins[2], INT_DTYPES)
        if by_ids != bool(ins[2]):
            err(f + ".inputs[2]", f"mode {attrs['mode']!r} {'reads' if by_ids else 'does not read'} input_ids")
        if ins[2]:
            need_shape(f"input_ids {nm(ins[2])!r}", T(ins[2])["shape"], ["B", "S"])
        tid = attrs.get("token_id")
        if (attrs["mode"] == "token") != (tid is not None):
            err(f + ".attrs.token_id", "a Pool of mode 'token' needs it, and only that mode takes it")
        if tid is not None and not (is_int(tid) and 0 <= tid <= INT32_MAX):
            err(f + ".attrs.token_id", f"must be a token id (an integer >= 0), got {short(tid)}")
        if not isinstance(attrs.get("normalize", False), bool):
            err(f + ".attrs.normalize", f"must be true or false, got {short(attrs['normalize'])}")
    elif typ == "Normalize":
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        x = T(ins[0])["shape"]
        if len(x) != 2 or x[0] != "B" or x[1] == "S":
            err(f, f"input {nm(ins[0])!r} must be one vector a sample [B, N], got {fmt_shape(x)}")
        need_shape(f"output {nm(outs[0])!r}", T(outs[0])["shape"], x)
        if "epsilon" in attrs:
            number("epsilon", positive=True)
    elif typ in ("LayerNorm", "RMSNorm"):
        need_dtype("inputs[0]", ins[0], FLOAT_DTYPES)
        need_dtype("inputs[1]", ins[1], FLOAT_DTYPES)
        need_dtype("outputs[0]", outs[0], FLOAT_DTYPES)
        need_dtype("outputs[1]", outs[1], FLOAT_DTYPES)
        x = T(ins[0])["shape"]
        N = x[-1]
        for what, n in (("residual", ins[1]), ("output", outs[0]), ("sum output", outs[1])):
            if n:
                need_shape(f"{what} {nm(n)!r}", T(n)["shape"], x)
        need_shape(f"gamma {nm(wts['gamma'])!r}", Wt("gamma")["shape"], [N])
        if typ == "LayerNorm":
            need_shape(f"beta {nm(wts['beta'])!r}", Wt("beta")["shape"], [N])
        # an RMSNorm's may be 0: a file whose exporter dropped a tiny one (the file computes without it)
        number("epsilon", positive=typ == "LayerNorm", nonnegative=typ == "RMSNorm")
        after = attrs.get("residual_after", False)  # y = residual + norm(x) (OLMo-2's post-norm blocks)
        if not isinstance(after, bool):
            err(f + ".attrs.residual_after", f"must be true or false, got {short(after)}")
        elif after and (not ins[1] or outs[1]):
            err(f + ".attrs.residual_after", "needs a residual input and no sum output (y is the sum)")



def check_arrays(header: dict, weights: dict, where: str) -> None:
    """An in-memory plan's arrays against their header entries (dtype, shape, none missing, none extra)."""
    entries = header["weights"]
    for name, e in entries.items():
        a = weights.get(name)
        if a is None:
            raise PlanError(f"{where}: weights.{name}: in the header but no array was given")
        if a.dtype.name != e["dtype"] or list(a.shape) != list(e["shape"]):
            raise PlanError(
                f"{where}: weights.{name}: array is {a.dtype.name}{fmt_shape(a.shape)} but the "
                f"header says {e['dtype']}{fmt_shape(e['shape'])}")
    extra = sorted(set(weights) - set(entries))
    if extra:
        raise PlanError(f"{where}: weights: arrays without a header entry: {', '.join(extra)}")
    check_values(header, weights, where)


def check_values(header: dict, weights: dict, where: str) -> None:
    """The values of the small per-op parameters that reach every output of their op, checked once the blob is read
    (the header cannot vouch for them):

    - fp8 scales are positive finite float32 numbers: a run divides by x_scale and multiplies by both (a zero or NaN
      scale would make every output of the layer NaN or zero without a word);
    - an Attention's inv_freq, alibi_slopes, relative_bias, q_norm and k_norm are finite (one NaN there reaches every
      position's angle, every score of a head or every normalised head), and the float32 products a run forms from
      the first two, position * inv_freq (the rotary angle) and slope * distance (the ALiBi bias), stay finite up to
      the profile's longest sequence (an infinite angle or bias is a NaN in the softmax).
    """
    seq_max = header["profile"]["seq"][2]
    reach = float(np.float32(seq_max - 1))  # the largest position / distance, as the float32 a run multiplies by

    def refuse(w, op, role, what, v, i):
        raise PlanError(f"{where}: weights.{nm(w)}: op {nm(op['name'])!r}'s {role} must be {what}, got {float(v)!r} "
                        f"at [{i}]")

    for op in header["ops"]:
        wts = op.get("weights", {})
        if op["precision"] == FP8:
            for role in ("weight_scale", "x_scale"):
                w = wts.get(role)
                if not w:
                    continue
                v = np.asarray(weights[w], np.float32)
                bad = ~(np.isfinite(v) & (v > 0) & (v <= FLOAT32_MAX))
                if bad.any():
                    i = int(np.argmax(bad.ravel()))
                    refuse(w, op, role, "positive and finite", v.ravel()[i], i)
        if op["type"] != "Attention":
            continue
        for role in ("inv_freq", "alibi_slopes", "relative_bias", "q_norm", "k_norm", "q_norm_bias", "k_norm_bias"):
            w = wts.get(role)
            if not w:
                continue
            v = np.asarray(weights[w], np.float32).ravel()  # float16 widens exactly
            bad = ~np.isfinite(v)
            if bad.any():
                i = int(np.argmax(bad))
                refuse(w, op, role, "finite", v[i], i)
            if role in ("inv_freq", "alibi_slopes") and v.size and float(np.abs(v).max()) * reach > FLOAT32_MAX:
                i = int(np.argmax(np.abs(v)))
                what = "rotary angle position * inv_freq" if role == "inv_freq" else "ALiBi bias slope * distance"
                raise PlanError(f"{where}: weights.{nm(w)}: op {nm(op['name'])!r}'s {role} holds {float(v[i])!r} at "
                                f"[{i}]: the {what} overflows float32 within the profile's max sequence {seq_max}")
