"""Lower the fused, precision-pinned graph into a plan: header dict + weights (docs/plan-format.md)."""

from __future__ import annotations

import datetime
import hashlib
import numbers
from pathlib import Path

import numpy as np

from ..errors import BuildError
from . import _graph as G

DEFAULT_BATCH = (1, 8, 32)
DEFAULT_SEQ = (1, 128, 512)
NO_POSITION_LIMIT = 2 ** 31 - 1  # header.model.max_position of a model without a position table


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_profile(profile, max_position: int) -> dict:
    """The build profile: the user's, checked, or the default capped by the model's positions."""
    if profile is None:
        hi = min(DEFAULT_SEQ[2], max_position)
        seq = (min(DEFAULT_SEQ[0], hi), min(DEFAULT_SEQ[1], hi), hi)
        return {"batch": list(DEFAULT_BATCH), "seq": list(seq)}
    if not isinstance(profile, dict) or set(profile) - {"batch", "seq"}:
        raise ValueError(f"profile must be a dict with keys 'batch' and 'seq', got {profile!r}")
    out = {}
    for axis, default in (("batch", DEFAULT_BATCH), ("seq", DEFAULT_SEQ)):
        v = profile.get(axis, default)
        # integers only: int() would read the string "128" as (1, 2, 8) and truncate 8.9 to 8
        if not (isinstance(v, (list, tuple)) and all(isinstance(x, numbers.Integral) and not isinstance(x, bool)
                                                     for x in v)):
            raise ValueError(f"profile {axis} must be (min, opt, max) integers, got {v!r}")
        v = [int(x) for x in v]
        if len(v) != 3 or not 1 <= v[0] <= v[1] <= v[2]:
            raise ValueError(f"profile {axis} must be (min, opt, max) with 1 <= min <= opt <= max, got {v}")
        out[axis] = v
    if out["seq"][2] > max_position:
        raise ValueError(f"profile seq max {out['seq'][2]} exceeds the model's {max_position} positions")
    return out


def _outputs(graph, input_names, rename, tensors) -> list[dict]:
    """header.outputs: what ops write, and graph inputs passed through (under each name the model gives them,
    with "input" naming the input: no op, no buffer)."""
    from .select_outputs import passthrough_names

    out = []
    for t in graph.outputs:
        if t.name not in input_names:
            out.append({"name": rename[t.name], **tensors[rename[t.name]]})
            continue
        for n in passthrough_names(graph, t):
            out.append({"name": n, **tensors[t.name], "input": t.name})
    return out


def _clean(name: str) -> str:
    return name.strip("/").replace("/", ".")


def lower(graph, facts, tensor_dtypes, weight_dtypes, *, precision, profile, source_path, opset,
          producer, passes, progress=None) -> tuple[dict, dict]:
    ops_nodes = [n for n in graph.nodes]
    input_names = [t.name for t in graph.inputs]
    output_names = {t.name for t in graph.outputs}

    # readable activation names: the op's name (+ ".sum"); inputs and outputs keep theirs
    rename: dict[str, str] = {n: n for n in input_names}
    for n in ops_nodes:
        outs = G.OP_SLOTS[n.op][2]
        for i, t in enumerate(n.outputs):
            if t.is_empty():
                continue
            if t.name in output_names:
                rename[t.name] = t.name
            else:
                rename[t.name] = _clean(n.name) if outs[i] == "y" else _clean(n.name) + "." + outs[i]
    if len(set(rename.values())) != len(rename):
        rename = {k: k for k in rename}  # fall back to the graph's own (unique) names

    tensors: dict[str, dict] = {}
    for name in input_names:
        tensors[name] = {"dtype": "int64", "shape": ["B", "S"]}
    for name, dt in tensor_dtypes.items():
        tensors[rename[name]] = {"dtype": dt, "shape": facts.sym_shape(name)}

    weights: dict[str, np.ndarray] = {}
    ops = []
    op_names: set[str] = set()
    weight_names: dict[int, str] = {}
    total = len(ops_nodes)
    for k, n in enumerate(ops_nodes):
        slots, roles, outs = G.OP_SLOTS[n.op]
        ins = [rename[G.slot(n, s).name] if G.slot(n, s) is not None else "" for s in slots]
        while len(ins) > 1 and ins[-1] == "":
            ins.pop()
        outputs = [rename[G.slot(n, s).name] if G.slot(n, s) is not None else "" for s in outs]
        while outputs and outputs[-1] == "":
            outputs.pop()
        wmap = {}
        for r in roles:
            w = G.slot(n, r)
            if w is None:
                continue
            if id(w) not in weight_names:  # one plan weight per graph constant, names unique
                wname, i = _clean(w.name), 1
                while wname in weights:
                    i += 1
                    wname = f"{_clean(w.name)}_{i}"
                weights[wname] = np.ascontiguousarray(G.const_value(w).astype(weight_dtypes[w.name]))
                weight_names[id(w)] = wname
            wmap[r] = weight_names[id(w)]
        attrs = {}
        for key, v in n.attrs.items():
            if isinstance(v, (bool, np.bool_)):
                attrs[key] = bool(v)
            elif isinstance(v, (int, np.integer)):
                attrs[key] = int(v)
            elif isinstance(v, (float, np.floating)):
                attrs[key] = float(v)
            else:
                attrs[key] = v
        op_name, i = _clean(n.name), 1
        while op_name in op_names:
            i += 1
            op_name = f"{_clean(n.name)}_{i}"
        op_names.add(op_name)
        ops.append({"type": n.op, "name": op_name, "inputs": ins, "outputs": outputs,
                    "weights": wmap, "attrs": attrs, "precision": precision})
        if progress:
            progress("lower", k + 1, total)

    # model dimensions
    emb = [n for n in ops_nodes if n.op == "Embedding"]
    attn = [n for n in ops_nodes if n.op == "Attention"]
    if len(emb) != 1:
        raise BuildError(f"expected one Embedding op after fusion, found {len(emb)}")
    word = G.const_value(G.slot(emb[0], "word"))
    pos = G.slot(emb[0], "position")
    # without a position table (rotary or relative positions) no table bounds the sequence length
    max_position = NO_POSITION_LIMIT if pos is None else \
        int(G.const_value(pos).shape[0]) - int(emb[0].attrs.get("position_offset", 0))
    model = {
        "arch": "decoder" if any(a.attrs["causal"] for a in attn) else "encoder",
        "hidden": int(word.shape[1]),
        "num_heads": int(attn[0].attrs["num_heads"]) if attn else 0,
        "num_layers": len(attn),
        "vocab_size": int(word.shape[0]),
        "max_position": max_position,
    }
    from .. import __version__
    header = {
        "precision": precision,
        "tf32": False,
        "profile": resolve_profile(profile, max_position),
        "source": {"path": str(Path(source_path)), "sha256": sha256_file(source_path),
                   "producer": producer, "opset": opset},
        "model": model,
        "inputs": [{"name": n, "dtype": "int64", "shape": ["B", "S"]} for n in input_names],
        "outputs": _outputs(graph, input_names, rename, tensors),
        "tensors": tensors,
        "ops": ops,
        "builder": {"trtrun": __version__,
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "passes": list(passes)},
    }
    return header, weights
