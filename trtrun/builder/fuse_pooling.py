"""Fuse pooled sentence vectors: a [B, N] tensor computed from token states [B, S, N] -> trtrun Pool.

Sentence-embedding exports (sentence-transformers' Pooling + Normalize modules, Optimum's
`--library sentence_transformers`) return, beside the token states, a [batch, hidden] vector computed in
the graph: the mean over the tokens attention_mask keeps (sum(x * m) / max(sum(m), 1e-9)), the first token's
state (CLS), the first or the last token the mask keeps, then optionally an L2 normalization (y / max(|y|,
1e-12)). Exporters spell these in many ways (ReduceSum or ReduceMean, Clip or Max, ReduceL2 or Pow/Sqrt, Expand, Casts), so this pass matches
by value, as the others confirm: for a graph output, or a tensor an IR op reads (the pooled state a
classification head's Linears take: BERT's pooler, RoBERTa's head), of probe shape [B, N] that is not yet an IR
op's output, the one [B, S, N] IR-op output it is computed from (walking back through non-IR nodes; the rest of
its inputs may be attention_mask and shapes only) is pooled in each supported way, and the one that
reproduces the output's probe values (probe.agree) is written as a `Pool` op. A pooled state that also reads the
token ids (CLIP's text tower: the state at the end-of-text token, found by an ArgMax over `input_ids == eot` or,
in older exports, over `input_ids` itself) becomes a Pool of mode `token` (with that id) or `max_id` when its
ArgMax has that form and its subgraph, run on the probes' states with token ids made to put the token at known
places (absent from one row, twice in another, ties of the largest id), picks what the mode picks: random probe
ids seldom hold the token, so the values alone could not tell it from `cls`. A graph output that L2-normalizes one
vector a sample an IR op wrote (sentence-transformers' Normalize after a Dense module) becomes a `Normalize` op the
same way. An output that matches none is left for check_supported, which names it; `--outputs` can leave it out.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G
from .probe import agree

MODES = ("mean", "cls", "first", "last")  # read off the probe values (the token-id modes: _pool_by_ids)


def reference_pool(x, mask, mode: str, normalize: bool, ids=None, token_id=None):
    """The IR's Pool formula in float64 (docs/plan-format.md), for checking matches."""
    x = np.asarray(x, np.float64)
    if mode == "mean":
        m = np.ones(x.shape[:2]) if mask is None else (np.asarray(mask) != 0).astype(np.float64)
        y = (x * m[..., None]).sum(1) / np.maximum(m.sum(1), 1e-9)[:, None]
    elif mode == "cls":
        y = x[:, 0]
    elif mode == "first":
        first = np.zeros(x.shape[0], np.int64) if mask is None else np.argmax(np.asarray(mask) != 0, axis=1)
        y = x[np.arange(x.shape[0]), first]
    elif mode == "last":
        keep = np.ones(x.shape[:2], bool) if mask is None else np.asarray(mask) != 0
        last = x.shape[1] - 1 - np.argmax(keep[:, ::-1], axis=1)
        y = x[np.arange(x.shape[0]), last] * keep.any(1)[:, None]
    elif mode in ("token", "max_id"):
        at = np.argmax(np.asarray(ids) == token_id, axis=1) if mode == "token" else np.argmax(ids, axis=1)
        y = x[np.arange(x.shape[0]), at]
    else:
        raise ValueError(f"pool mode must be one of {MODES + ('token', 'max_id')}, got {mode!r}")
    if normalize:
        y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return y


def fuse_pooling(graph, facts) -> int:
    count = 0
    mask = next((i for i in graph.inputs if i.name == "attention_mask"), None)
    ids = next((i for i in graph.inputs if i.name == "input_ids"), None)
    for t in _candidates(graph):
        if not _unfused_vector(t, facts):
            continue
        x = _source(graph, t, facts)
        if x is None:
            by_ids = _pool_by_ids(graph, t, facts, ids)
            if by_ids is not None:
                x, mode, token_id = by_ids
                G.add_trtrun_node(graph, "Pool", t.name.strip("/").replace("/", ".") + ".pool",
                                  inputs={"x": x, "attention_mask": None, "input_ids": ids}, weights={}, outputs=[t],
                                  attrs={"mode": mode, "normalize": False,
                                         **({"token_id": token_id} if mode == "token" else {})})
                count += 1
            continue
        found = None
        for mode in MODES:
            for normalize in (False, True):
                ours = [reference_pool(a, f.get("attention_mask"), mode, normalize)
                        for a, f in zip(facts.get(x), facts.feeds)]
                if agree(ours, facts.get(t)):
                    found = (mode, normalize)
                    break
            if found:
                break
        if found is None:
            continue
        mode, normalize = found
        use_mask = mode in ("mean", "first", "last") and mask is not None
        G.add_trtrun_node(graph, "Pool", t.name.strip("/").replace("/", ".") + ".pool",
                          inputs={"x": x, "attention_mask": mask if use_mask else None}, weights={}, outputs=[t],
                          attrs={"mode": mode, "normalize": bool(normalize)})
        count += 1
    G.finish(graph)
    count += _fuse_normalize(graph, facts)
    return count


def _fuse_normalize(graph, facts) -> int:
    """A graph output L2-normalizing one vector a sample that an IR op wrote (sentence-transformers' Normalize after
    a Dense: sentence-T5, GTR, LaBSE) -> trtrun Normalize, matched by value as the pooling is."""
    count = 0
    for t in list(graph.outputs):
        if not _unfused_vector(t, facts):
            continue
        x = _source(graph, t, facts, rank=2)
        if x is None:
            continue
        ours = [reference_pool(np.asarray(a)[:, None], None, "cls", True) for a in facts.get(x)]
        if not agree(ours, facts.get(t)):
            continue
        G.add_trtrun_node(graph, "Normalize", t.name.strip("/").replace("/", ".") + ".normalize", inputs={"x": x},
                          weights={}, outputs=[t], attrs={"epsilon": 1e-12})
        count += 1
    G.finish(graph)
    return count


def _unfused_vector(t, facts) -> bool:
    """t is one vector a sample ([B, N] on the probes) that a non-IR node writes."""
    p = G.producer(t)
    if p is None or G.is_trtrun(p):
        return False
    sym = facts.sym_shape_or_none(t)
    return sym is not None and len(sym) == 2 and sym[0] == "B"


def _outer_reads(node) -> list:
    """Tensors an If/Loop/Scan node's branches read from the enclosing graph (sentence-transformers' CLS pooling picks
    the first valid token inside an If)."""
    out = []
    for v in node.attrs.values():
        if v.__class__.__name__ != "Graph":
            continue
        inner = {id(t) for n in v.nodes for t in n.outputs} | {id(t) for t in v.inputs}
        out += [t for n in v.nodes for t in n.inputs if id(t) not in inner and not t.is_empty()
                and t.__class__.__name__ != "Constant"]
        for n in v.nodes:
            out += _outer_reads(n)
    return out


def _candidates(graph) -> list:
    """Graph outputs, then the tensors IR ops read that a non-IR node writes (a classification head's pooled
    state: BERT's pooler and RoBERTa's head read the first token's state, taken by a Gather)."""
    out, seen = [], set()
    for t in list(graph.outputs) + [i for n in graph.nodes if G.is_trtrun(n) for i in n.inputs]:
        if id(t) not in seen and not t.is_empty():
            seen.add(id(t))
            out.append(t)
    return out


def _pool_by_ids(graph, t, facts, ids):
    """(x, mode, token_id) when t is x's state at a token the token ids pick: one ArgMax over the sequence of
    `input_ids == c` (mode token, token_id c) or of `input_ids` (mode max_id), confirmed on made-up ids; else None."""
    if ids is None:
        return None
    x = _source(graph, t, facts, ids_too=True)
    if x is None:
        return None
    argmaxes = [n for n in _nodes_between(t, x) if n.op == "ArgMax"]
    if len(argmaxes) != 1 or int(argmaxes[0].attrs.get("select_last_index", 0)) != 0:
        return None
    am = argmaxes[0]
    if facts.rank(am.inputs[0]) != 2 or int(am.attrs.get("axis", 0)) not in (1, -1):
        return None
    u = _skip_casts(am.inputs[0])
    if u is ids:
        mode, token_id = "max_id", None
    else:
        p = G.producer(u)
        if p is None or p.op != "Equal":
            return None
        a, b = (_skip_casts(i) for i in p.inputs)
        c = G.scalar_const(b if a is ids else a if b is ids else None) if ids in (a, b) else None
        if c is None or float(c) != int(c) or int(c) < 0:
            return None
        mode, token_id = "token", int(c)
    return (x, mode, token_id) if _picks_as(graph, t, x, ids, facts, mode, token_id) else None


def _skip_casts(u):
    p = G.producer(u)
    while p is not None and p.op in ("Cast", "Identity"):
        u = p.inputs[0]
        p = G.producer(u)
    return u


def _nodes_between(t, x) -> list:
    """The nodes computing t, walking back until x (exclusive) and the graph inputs."""
    seen, stack, nodes = set(), [t], []
    while stack:
        u = stack.pop()
        p = G.producer(u)
        if u is x or p is None or id(p) in seen or G.is_trtrun(p):
            continue
        seen.add(id(p))
        nodes.append(p)
        stack.extend(i for i in p.inputs if not i.is_empty())
        stack.extend(_outer_reads(p))
    return nodes


def _made_up_ids(shape, mode: str, token_id, seed: int) -> np.ndarray:
    """Token ids [B, S] that tell the pooled position apart: for mode token, the id at one random place a row, twice in
    one row and absent from another; for max_id, one largest id a row, tied with a later one in one row."""
    rng = np.random.default_rng(seed)
    B, S = shape
    ids = rng.integers(0, 1000, (B, S)).astype(np.int64)
    if mode == "token":
        ids[ids == token_id] = token_id + 1
        for b in range(B):
            if b % 3 != 2:  # every third row goes without it (the pool then takes position 0)
                ids[b, rng.integers(0, S)] = token_id
        if B > 1 and S > 1:
            ids[1, S - 1] = token_id  # a second occurrence after the first one
    else:
        for b in range(B):
            ids[b, rng.integers(0, S)] = 5000
        if B > 1 and S > 1:
            ids[1, S - 1] = 5000  # a tie: the first one is the pooled one
    return ids


def _picks_as(graph, t, x, ids, facts, mode, token_id) -> bool:
    """Run t's subgraph (from x and the token ids) on each probe's x with made-up ids; True if it gives what the Pool
    mode gives."""
    from .probe import run_graph

    g2 = graph.copy()
    tensors = g2.tensors()
    x2, t2, ids2 = tensors[x.name], tensors[t.name], tensors[ids.name]
    x2.inputs.clear()  # x becomes an input of the subgraph
    x2.dtype = np.float32
    g2.inputs = [x2, ids2] + [i for i in g2.inputs if i.name not in (ids.name, x.name)]
    g2.outputs = [t2]
    g2.cleanup()
    if any(G.is_trtrun(n) for n in g2.nodes):
        return False
    feeds, ours = [], []
    for k, (xv, f) in enumerate(zip(facts.get(x), facts.feeds)):
        made = _made_up_ids(f["input_ids"].shape, mode, token_id, seed=k)
        feed = {i.name: (made if i is ids2 else np.asarray(xv, np.float32) if i is x2 else f[i.name])
                for i in g2.inputs if i.name in f or i is x2}
        feeds.append(feed)
        ours.append(reference_pool(xv, None, mode, False, made, token_id))
    try:
        theirs = [r[t.name] for r in run_graph(g2, feeds, names=[t.name])]
    except BuildError:  # the subgraph does more with the ids than pick a position (e.g. looks them up): no Pool
        return False
    return agree(ours, theirs)


def _source(graph, t, facts, rank: int = 3, ids_too: bool = False):
    """The single [B, S, N] IR-op output (rank 2: [B, N]) t is computed from, if its other inputs are attention_mask
    and shapes only (ids_too: and input_ids); else None."""
    inputs = {i.name for i in graph.inputs}
    seen, stack, sources = set(), [t], []
    while stack:
        u = stack.pop()
        if id(u) in seen:
            continue
        seen.add(id(u))
        p = G.producer(u)
        if p is None:
            if u.name in inputs and u.name != "attention_mask" and not (ids_too and u.name == "input_ids"):
                return None  # token ids' values do not pool
            continue
        if G.is_trtrun(p):
            sources.append(u)
            continue
        if p.op in ("Shape", "Size"):
            continue
        stack.extend(i for i in p.inputs if not i.is_empty())
        stack.extend(_outer_reads(p))
    if len(sources) != 1:
        return None
    try:
        sym = facts.sym_shape(sources[0])
    except Exception:
        return None
    if rank == 2:
        return sources[0] if len(sym) == 2 and sym[0] == "B" and sym[1] != "S" else None
    return sources[0] if len(sym) == 3 and sym[:2] == ["B", "S"] else None
