"""Fuse attention: from each Softmax, recover Q/K/V, scale and mask by semantics, write trtrun Attention.

Structure walked (any exporter's spelling of each step):

    scores = MatMul(Q4 [B,H,S,D], KT4 [B,H,D,S])
    logits = scores, then any chain of: Mul/Div by a scalar constant (the scale), Add/Sub of a
             mask tensor, Where(cond, ., fill)          (mask tensors may depend on attention_mask
                                                        values and on shapes, on nothing else)
    P      = Softmax(logits, axis=-1);  O4 = MatMul(P, V4 [B,H,S,D])
    y      = O4 moved back to [B,S,H*D] by Transpose/Reshape

Q4, KT4 and V4 are traced back through layout ops (Transpose, Reshape, Split, Slice, Squeeze,
Unsqueeze, Gather with a constant index) and scalar Mul/Div (a scale applied to q or k) to the
outputs of Linear ops. Which columns of those outputs are the query/key/value of head h, dim d is
then read off the probe values (each target column matched to the source column it equals), so a
fused [q|k|v] projection, three separate ones, or a head-interleaved layout all work.

Mask semantics are read off the probes too: where the logits fall far below scale * scores the key
is masked; that set must equal "attention_mask[b, j] == 0" and/or "j > i" (causal) exactly, for
every probe, else the graph's mask (or bias) is something the IR cannot express and the build stops.

Finally the merged [B,S,3*H*D] qkv input is made: the source itself when it already has that
layout, else a new Linear whose weight concatenates the selected columns of the q, k and v Linears
(which must read the same input). The rebuilt attention is evaluated in float64 from the probe
values and must reproduce the graph's own output.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from ..plan.plan import after_padding
from . import _graph as G
from .probe import agree
from .rotary import NotRotary, apply_rotary, interleave_perm, match_rotary, value_deps

# Expand: grouped-query attention's repeat of each K/V head over its group of query heads (the columns are
# read by value, so a repeat is seen as such)
_LAYOUT = {"Transpose", "Reshape", "Split", "Slice", "Squeeze", "Unsqueeze", "Gather", "Identity",
           "Flatten", "Cast", "Expand"}
# how far below the unmasked logit a masked one lies, at least: HF uses finfo.min or -1e4 (older
# models); real logits differ from scale*scores by rounding only (~1e-6 relative).
_MASKED_BELOW = -1e3


class _NoMatch(Exception):
    pass


def fuse_attention(graph, facts) -> int:
    count = 0
    ctx = {"deps": value_deps(graph), "order": {id(n): i for i, n in enumerate(graph.nodes)}}
    for sm in [n for n in graph.nodes if n.op == "Softmax"]:
        ctx["softmax"] = repr(sm.name)
        _refuse_disentangled(sm)  # first: its scores would otherwise fail on whichever of their forms is met first
        try:
            m = _match(graph, sm, facts, ctx)
        except _NoMatch:
            refused = _heads_refused(graph, sm)
            if refused:
                raise BuildError(refused) from None
            continue  # left for check_supported to report
        _replace(graph, sm, facts, m)
        count += 1
    G.finish(graph)
    return count


# ---------------------------------------------------------------------- matching
def _heads_refused(graph, sm) -> str | None:
    """unflatten_heads' refusal if this Softmax reads the head-folded attention region it could not lift: a node
    of that region among the Softmax's sources up to the IR ops (the projections) that feed the attention."""
    why, region = graph.__dict__.get("_trtrun_heads_refused", (None, frozenset()))
    if why is None:
        return None
    seen, stack = set(), list(sm.inputs)
    while stack and len(seen) < 4096:
        t = stack.pop()
        p = G.producer(t)
        if p is None or id(p) in seen or G.is_trtrun(p):
            continue
        if p.name in region:
            return why
        seen.add(id(p))
        stack += [i for i in p.inputs if not i.is_empty()]
    return None


def _match(graph, sm, facts, ctx) -> dict:
    logits = sm.inputs[0]
    r = facts.rank(logits)
    if r == 3 and int(sm.attrs.get("axis", -1)) in (-1, 2) and _heads_in_batch(facts, logits):
        refused = _heads_refused(graph, sm)
        if refused:
            raise BuildError(refused)
        raise BuildError(f"Softmax node {sm.name!r}: attention with the heads folded into the batch ([B*H, S, S] "
                         f"scores, as BLOOM and XGLM compute it); the builder reads attention on [B, H, S, S]")
    if r != 4 or int(sm.attrs.get("axis", -1)) not in (-1, 3):
        raise _NoMatch
    P = _past_nan_guard(sm.outputs[0])
    pv = _only_consumer(P)
    if pv is None or pv.op != "MatMul" or pv.inputs[0] is not P:
        raise _NoMatch
    V4, O4 = pv.inputs[1], pv.outputs[0]

    # score chain: logits back to the QK MatMul
    chain_scale, qk, sides, softcap = _walk_scores(logits)
    sides = [part for side in sides for part in _mask_and_bias(graph, facts, side)]
    Q4, KT4 = qk.inputs[0], qk.inputs[1]
    bias_sides, counted = [], set()
    for side in sides:
        vi = facts.value_inputs(graph, side)
        bad = vi - {"attention_mask"}
        if bad:
            raise BuildError(f"Softmax node {sm.name!r}: the attention logits are combined with "
                             f"{side.name!r}, which depends on the values of {sorted(bad)}; only a "
                             f"mask built from attention_mask (and shapes) is supported")
        if not vi and _is_score_bias(facts, side):
            bias_sides.append(side)
        elif vi and _is_score_bias(facts, side) and all(float(np.abs(v).max()) < -_MASKED_BELOW
                                                        for v in facts.get(side)):
            # moderate values (no mask fill of either sign) that move with the mask: a bias over positions
            # counted along it (BLOOM)
            counted.add(side.name)
            bias_sides.append(side)
    if len(bias_sides) > 1:
        raise BuildError(f"Softmax node {sm.name!r}: {len(bias_sides)} score biases are added to the attention "
                         f"logits; the IR has one (a relative-position bias)")
    q_src, q_scale, q_rot, q_norm = _trace_source(graph, facts, Q4, ctx)
    k_src, k_scale, k_rot, k_norm = _trace_source(graph, facts, KT4, ctx)
    v_src, v_scale, v_rot, v_norm = _trace_source(graph, facts, V4, ctx)
    if v_scale != 1.0 or v_rot is not None or v_norm is not None:
        raise _NoMatch
    rot, q_ratio = _same_rotary(sm, q_rot, k_rot)
    q_scale *= q_ratio
    qk_norm = _same_norm(sm, q_norm, k_norm)
    qs = facts.get(Q4)
    if any(a.ndim != 4 for a in qs):
        raise _NoMatch
    _, H, _, D = qs[0].shape
    HD = H * D
    # [B, H, S, D]; one K or V head broadcast over the query heads by the MatMul itself (multi-query attention as
    # transformers 4's Falcon computes it) is that head read by every query head
    kts = [_heads_broadcast(np.transpose(a, (0, 1, 3, 2)), H) for a in facts.get(KT4)]
    vs = [_heads_broadcast(a, H) for a in facts.get(V4)]
    if any(a.shape[-1] != D or a.shape[1] != H for a in kts + vs):
        raise _NoMatch
    if rot is not None:  # the columns are read off the values before the rotation
        qs = [apply_rotary(a, rot, 2, inverse=True) for a in qs]
        kts = [apply_rotary(a, rot, 2, inverse=True) for a in kts]
        if rot["interleaved"]:
            # GPT-J's pairs (2i, 2i + 1): the IR's half-split rotary of the query and key columns taken in
            # interleave_perm order is the same rotation with the same dims permuted on both sides, and the
            # scores, dot products over all dims, do not change
            if qk_norm is not None:
                raise BuildError(f"Softmax node {sm.name!r}: an interleaved rotary after a per-head q/k norm is "
                                 f"not supported")
            perm = interleave_perm(D, rot["dim"])
            qs, kts = [a[..., perm] for a in qs], [a[..., perm] for a in kts]
        rot = {**rot, "interleaved": False}  # what the IR then applies
    # columns: target [b, s, h*D + d] taken from source [b, s, col]; with a per-head norm, read before it; with
    # a whole-projection norm, read off its output, whose columns are the projection's
    whole = qk_norm is not None and q_norm["whole"]
    if qk_norm is not None and not whole:
        q_t, k_t = _head_values(facts, q_norm, H, sm, "query"), _head_values(facts, k_norm, H, sm, "key")
        if qk_norm["after_rotary"]:  # the norm reads rotated values: the projection's are those unrotated
            q_t = [apply_rotary(a, rot, 1, inverse=True) for a in q_t]
            k_t = [apply_rotary(a, rot, 1, inverse=True) for a in k_t]
    else:
        q_t = [np.transpose(a, (0, 2, 1, 3)) / q_scale for a in qs]
        k_t = [np.transpose(a, (0, 2, 1, 3)) / k_scale for a in kts]
    q_cols = _column_map(facts, q_norm["y"] if whole else q_src, q_t, sm, "query")
    k_cols = _column_map(facts, k_norm["y"] if whole else k_src, k_t, sm, "key", shared=True)
    v_cols = _column_map(facts, v_src, [np.transpose(a, (0, 2, 1, 3)) for a in vs], sm, "value", shared=True)
    Hkv, k_cols, v_cols = _kv_heads(sm, k_cols, v_cols, H, D)
    if whole:  # the norms sum over every column of their projection: the IR's Q and K must be all of them
        for what, cols, n in (("query", q_cols, q_norm), ("key", k_cols, k_norm)):
            if sorted(cols.tolist()) != list(range(n["gamma"].size)):
                raise BuildError(f"Softmax node {sm.name!r}: the {what}'s RMSNorm {n['node'].name!r} spans "
                                 f"{n['gamma'].size} columns, not exactly the {len(cols)} the attention reads")
        qk_norm = {**qk_norm, "q": q_norm["gamma"][q_cols], "k": k_norm["gamma"][k_cols]}
    scale = chain_scale * q_scale * k_scale
    rel = _relative_bias(graph, facts, sm, bias_sides[0], H, ctx) if bias_sides else None
    if rel is not None and bias_sides[0].name in counted:
        if not rel.get("alibi"):
            raise BuildError(f"Softmax node {sm.name!r}: the score bias {bias_sides[0].name!r} depends on "
                             f"attention_mask and is not ALiBi over positions counted along the mask")
        rel["mask_positions"] = True

    # output: O4 [B,H,S,D] forward through layout ops to [B,S,H*D]
    y = _walk_output(O4, facts, HD)
    if y is None:
        raise _NoMatch

    window = _window(graph, sm, [t for t in sides if t not in bias_sides], ctx)
    causal, use_mask = _mask_semantics(graph, sm, facts, qk, logits, chain_scale, softcap,
                                       rel.get("graph_values", rel["values"]) if rel else None, window)
    return dict(H=H, D=D, Hkv=Hkv, rot=rot, rel=rel, scale=scale, causal=causal, use_mask=use_mask, y=y, window=window,
                srcs=(q_src, k_src, v_src), cols=(q_cols, k_cols, v_cols), qk_norm=qk_norm, softcap=softcap)


def _heads_broadcast(a, H):
    """[B, 1, S, D] -> [B, H, S, D] (a MatMul broadcasts a single head over H); other shapes as they are."""
    return np.repeat(a, H, axis=1) if a.ndim == 4 and a.shape[1] == 1 and H > 1 else a


def _heads_in_batch(facts, t) -> bool:
    """t is [B*H, S, S] in every probe, for one H > 1 (attention scores with the heads in the batch)."""
    hs = set()
    for v, f in zip(facts.get(t), facts.feeds):
        B, S = f["input_ids"].shape
        if v.shape[1:] != (S, S) or v.shape[0] % B:
            return False
        hs.add(v.shape[0] // B)
    return len(hs) == 1 and hs.pop() > 1


def _past_nan_guard(P):
    """Where(IsNaN(P), 0, P) after the softmax P, else P. torch.onnx writes this guard after
    scaled_dot_product_attention with a boolean mask (-inf where masked), for the rows in which every key is
    masked (0/0) and makes them 0. The IR masks with the dtype's finite minimum, so those rows come out
    uniform instead (as they do in the graph where its mask is finite too). Rows with a visible key are the
    same either way, and an empty row's output never reaches a visible one: its token is a masked key for
    every query. docs/builder.md says so."""
    cs = G.consumers(P)
    if len(cs) != 2:
        return P
    isnan = next((c for c in cs if c.op == "IsNaN"), None)
    where = next((c for c in cs if c.op == "Where"), None)
    if isnan is None or where is None or len(where.inputs) != 3 or where.inputs[2] is not P:
        return P
    cond, zero = where.inputs[0], G.const_value(where.inputs[1])
    if cond is not isnan.outputs[0] or len(cond.outputs) != 1 or zero is None or zero.size != 1 or zero.item() != 0:
        return P
    return where.outputs[0]


def _empty_rows(feed, shape, m) -> np.ndarray:
    """[B, S, 1]: query rows in which every key is masked, under the matched semantics."""
    B, S = shape[0], shape[1]
    hidden = _hypothesis(feed, (B, 1, S, S), m["causal"], m["use_mask"], m["window"])
    return hidden.all(-1)[:, 0, :, None]


def _right_padded(feed) -> np.ndarray:
    """[B]: rows whose attention_mask is ones then zeros (what Plan.check_feeds lets a mask_positions plan run)."""
    return ~after_padding(np.asarray(feed["attention_mask"]) != 0).any(1)


def _mask_and_bias(graph, facts, side) -> list:
    """[side], or the two terms of a side that is a score bias plus a mask (T5 adds the padding mask into its
    relative-position bias once and hands the sum to every layer): each is then read on its own."""
    p = G.producer(side)
    if p is not None and p.op == "Where" and len(p.inputs) == 3:
        # Where(mask, bias, fill) (T5 in transformers 5): the bias, and the Where itself as the mask side
        terms = [t for t in p.inputs[1:] if G.const_value(t) is None]
        if len(terms) == 1 and not facts.value_inputs(graph, terms[0]) and _is_score_bias(facts, terms[0]) \
                and facts.value_inputs(graph, p.inputs[0]):
            return [terms[0], side]
        return [side]
    if p is None or p.op != "Add" or len(p.inputs) != 2 or any(G.const_value(i) is not None for i in p.inputs):
        return [side]
    deps = [facts.value_inputs(graph, i) for i in p.inputs]
    if sorted(map(bool, deps)) != [False, True]:
        return [side]
    bias = p.inputs[deps.index(set())]
    if not _is_score_bias(facts, bias):
        return [side]
    return list(p.inputs)


def _is_score_bias(facts, side) -> bool:
    """A tensor added to the logits that depends on shapes only and holds moderate values (a position bias),
    not a mask's 0 / very negative fill."""
    vals = facts.get(side)
    if any(v.dtype == np.bool_ for v in vals):  # a Where's condition (GPT-Neo's local window from a buffer)
        return False
    return all(np.isfinite(v).all() and float(v.min()) > _MASKED_BELOW for v in vals) and \
        any(float(np.abs(v).max()) > 0 for v in vals)


# the sequence length the bias subgraph is evaluated at to read its buckets: past MPNet's and T5's
# max_distance (128) several times, so the log-spaced buckets and their saturation are all seen
_BIAS_PROBE_LEN = 1024


def _alone_at_length(graph, name, L):
    """Tensor `name` computed by the graph alone at sequence length L (batch 1, attention_mask all ones, other
    inputs zeros), or None where it depends on hidden states (a trtrun op is left in its subgraph)."""
    from .probe import run_graph

    g2 = graph.copy()
    g2.outputs = [g2.tensors()[name]]
    g2.cleanup()
    if any(G.is_trtrun(n) for n in g2.nodes):
        return None
    feeds = [{i.name: (np.ones if i.name == "attention_mask" else np.zeros)((1, L), np.dtype(i.dtype or np.int64))
              for i in g2.inputs}]
    return np.asarray(next(run_graph(g2, feeds, names=[name]))[name])


def _relative_bias(graph, facts, sm, side, H, ctx):
    """A score bias read as T5-style relative-position buckets over a [buckets, H] table -> dict(table,
    buckets, max_distance, bidirectional, values [per probe: [H, S, S] float64]); BuildError otherwise."""
    from ..reference import relative_bucket

    def fail(why):
        raise BuildError(f"Softmax node {sm.name!r}: a score bias {side.name!r} is added to the attention logits "
                         f"and {why}; the IR's score bias is a relative-position bucket table (MPNet, T5)")

    tables, seen, stack = [], set(), [side]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        p = G.producer(t)
        if p is None:
            continue
        if p.op == "Gather":
            v = G.const_value(p.inputs[0])
            if v is not None and v.ndim == 2 and v.dtype.kind == "f" and v.shape[1] == H:
                tables.append(p.inputs[0])
                continue
        stack.extend(i for i in p.inputs if not i.is_empty())
    tables = list({id(t): t for t in tables}.values())
    if not tables:
        return _alibi(graph, facts, sm, side, H, ctx, fail)
    if len(tables) != 1:
        fail(f"is computed from {len(tables)} [buckets, {H}] tables, not one")
    table_t = tables[0]
    table = np.asarray(G.const_value(table_t), np.float64)
    cache = ctx.setdefault("bias", {})
    if side.name not in cache:  # the layers share one bias tensor: its buckets are read once
        L = _BIAS_PROBE_LEN
        long = _alone_at_length(graph, side.name, L)
        if long is None:
            fail("depends on hidden states")
        long = long.astype(np.float64)
        if long.ndim != 4 or long.shape[1:] != (H, L, L):
            fail(f"has shape {list(long.shape)} at sequence length {L}, not [1, {H}, {L}, {L}]")
        long = long[0]
        rel = np.arange(-(L - 1), L)
        i = np.maximum(0, -rel)
        vecs = long[:, i, i + rel].T  # [2L-1, H]: the bias of each relative position
        d2 = (vecs ** 2).sum(1)[:, None] + (table ** 2).sum(1)[None] - 2 * vecs @ table.T
        seen_b = np.argmin(d2, 1)
        if not np.allclose(table[seen_b], vecs, rtol=1e-5, atol=1e-6):
            fail("its values are not rows of that table")
        found = None
        for bidir in (True, False):
            for maxd in range(1, 4 * L):
                b = relative_bucket(rel, table.shape[0], maxd, bidir)
                if b.min() >= 0 and b.max() < table.shape[0] and np.array_equal(table[b], table[seen_b]):
                    found = (maxd, bidir)
                    break
            if found:
                break
        if found is None:
            fail("its buckets are not T5's relative-position buckets")
        if found[0] >= L:  # the log-spaced buckets past L tokens are unseen: several max distances fit them
            fail(f"its max distance (about {found[0]}) is beyond the {L} tokens the builder reads its buckets at")
        cache[side.name] = found
    maxd, bidir = cache[side.name]
    from ..reference import relative_buckets

    values = []
    for v in facts.get(side):
        S = v.shape[-1]
        values.append(table[relative_buckets(S, table.shape[0], maxd, bidir)].transpose(2, 0, 1))
    if not agree([np.broadcast_to(b[None], v.shape) for b, v in zip(values, facts.get(side))], facts.get(side)):
        fail("recomputing it from the buckets does not reproduce its values")
    return {"table": table_t, "max_distance": int(maxd), "bidirectional": bool(bidir), "values": values}


def _alibi_bias(S: int, slopes, symmetric: bool):
    """The IR's ALiBi bias [H, S, S]: slope_h * (j - i), or -slope_h * |j - i| (symmetric)."""
    rel = (np.arange(S)[None, :] - np.arange(S)[:, None]).astype(np.float64)
    rel = -np.abs(rel) if symmetric else rel
    return np.asarray(slopes, np.float64)[:, None, None] * rel[None]


def _alibi(graph, facts, sm, side, H, ctx, fail):
    """A score bias computed from shapes only, linear in the distance between key and query with one slope per
    head (ALiBi): slope_h * (j - i) as MPT/BLOOM add it (any per-query constant added as well, such as MPT's
    slope * (j - (S-1)), cancels in the softmax), or -slope_h * |j - i| (bidirectional encoders). Read at the
    bias probe length (1024 tokens) so the linear form is seen far beyond the probes; -> dict(slopes,
    symmetric, values (IR bias per probe), graph_values (the graph's bias per probe))."""
    cache = ctx.setdefault("alibi", {})
    if side.name not in cache:
        L = _BIAS_PROBE_LEN
        long = _alone_at_length(graph, side.name, L)
        if long is None:
            fail("depends on hidden states")
        long = long.astype(np.float64)
        if 1 <= long.ndim < 4:  # added to [B, H, S, S] scores, [H, 1, S] (MPT) broadcasts as [1, H, 1, S]
            long = long.reshape((1,) * (4 - long.ndim) + long.shape)
        if long.ndim != 4 or long.shape[0] != 1 or long.shape[1] not in (1, H) or long.shape[2] not in (1, L) \
                or long.shape[3] != L:
            fail(f"has shape {list(long.shape)} at sequence length {L}, not [1, {H}, {L} or 1, {L}]")
        long = np.broadcast_to(long[0], (H, L, L))
        d = long - np.diagonal(long, axis1=1, axis2=2)[:, :, None]  # per-query constants removed
        found = None
        for symmetric in (False, True):
            slopes = -d[:, 1, 0] if not symmetric else -d[:, 0, 1]  # the bias one key to the left / right
            if np.all(slopes == 0):
                continue
            if agree([_alibi_bias(L, slopes, symmetric)], [d], rtol=1e-5):
                found = (slopes.astype(np.float32), symmetric)
                break
        if found is None:
            fail("it is neither a relative-position bucket table nor linear in the key-query distance (ALiBi)")
        cache[side.name] = found
    slopes, symmetric = cache[side.name]
    values, graph_values = [], []
    for v, f in zip(facts.get(side), facts.feeds):
        B, S = np.asarray(f["input_ids"]).shape
        values.append(_alibi_bias(S, slopes, symmetric))
        graph_values.append(np.broadcast_to(np.asarray(v, np.float64), (B, H, S, S)))
    return {"alibi": True, "slopes": slopes, "symmetric": symmetric, "values": values, "graph_values": graph_values}


def _same_rotary(sm, q_rot, k_rot):
    """(the one rotary both Q and K carry, or None; the query's extra factor). A rotation is linear, so a scalar
    on the query alone (ESM scales it by 1/sqrt(D) before rotating, and the fit reads that as the rotary's own
    scale) leaves the key's rotary for both and the ratio for the score scale. Anything else is no attention
    the IR can express."""
    if q_rot is None and k_rot is None:
        return None, 1.0
    if q_rot is None or k_rot is None:
        raise BuildError(f"Softmax node {sm.name!r}: a rotary position embedding on the "
                         f"{'query' if k_rot is None else 'key'} only; the IR rotates both or neither")
    same = q_rot["dim"] == k_rot["dim"] and q_rot["scale"] > 0 and k_rot["scale"] > 0 and \
        np.allclose(q_rot["inv_freq"], k_rot["inv_freq"], rtol=0, atol=1e-6) and \
        q_rot["interleaved"] == k_rot["interleaved"]
    if not same:
        raise BuildError(f"Softmax node {sm.name!r}: the query and key are rotated differently (rotary dims "
                         f"{q_rot['dim']} and {k_rot['dim']}); the IR applies one rotary to both")
    ratio = q_rot["scale"] / k_rot["scale"]
    return k_rot, (1.0 if abs(ratio - 1.0) <= 1e-6 else float(ratio))


def _same_norm(sm, q_norm, k_norm):
    """The query/key norm on both as dict(q, k: gammas, eps, kind "rms" or "layer", q_bias, k_bias: LayerNorm
    biases or None), or None on neither."""
    if q_norm is None and k_norm is None:
        return None
    if q_norm is None or k_norm is None:
        raise BuildError(f"Softmax node {sm.name!r}: a per-head RMSNorm on the {'query' if k_norm is None else 'key'}"
                         f" only; the IR's Attention normalizes both or neither")
    if q_norm["whole"] != k_norm["whole"] or q_norm["kind"] != k_norm["kind"] \
            or ("heads" in q_norm) != ("heads" in k_norm) \
            or (not q_norm["whole"] and "heads" not in q_norm and q_norm["gamma"].size != k_norm["gamma"].size) \
            or q_norm.get("after_rotary", False) != k_norm.get("after_rotary", False) \
            or abs(q_norm["eps"] - k_norm["eps"]) > 1e-6 * max(q_norm["eps"], 1e-30):
        raise BuildError(f"Softmax node {sm.name!r}: the query's and key's norms differ in kind, size, epsilon or "
                         f"place ({q_norm['kind']} {q_norm['eps']:g}, {k_norm['kind']} {k_norm['eps']:g}); the IR "
                         f"has one kind, epsilon and place (before or after the rotary) for both")
    return {"q": q_norm["gamma"], "k": k_norm["gamma"], "eps": q_norm["eps"], "kind": q_norm["kind"],
            "q_bias": q_norm["beta"], "k_bias": k_norm["beta"], "after_rotary": q_norm.get("after_rotary", False)}


def _kv_heads(sm, k_cols, v_cols, H, D):
    """(Hkv, K columns [Hkv*D], V columns [Hkv*D]): grouped-query attention's query heads h read K/V head
    h // (H / Hkv). Distinct columns per head is Hkv = H; a head repeated otherwise is refused."""
    groups = []
    for what, cols in (("key", k_cols), ("value", v_cols)):
        blocks = [tuple(cols[h * D:(h + 1) * D].tolist()) for h in range(H)]
        uniq = list(dict.fromkeys(blocks))
        if len(uniq) == H:
            groups.append((H, cols))
            continue
        Hkv = len(uniq)
        rep = H // Hkv if H % Hkv == 0 else 0
        if not rep or any(blocks[h] != uniq[h // rep] for h in range(H)) or \
                len(set(c for b in uniq for c in b)) != Hkv * D:
            raise BuildError(f"Softmax node {sm.name!r}: the {what} heads are shared among the {H} query heads "
                             f"in a way other than grouped-query attention (consecutive groups of H / Hkv)")
        groups.append((Hkv, np.array([c for b in uniq for c in b])))
    if groups[0][0] != groups[1][0]:
        raise BuildError(f"Softmax node {sm.name!r}: {groups[0][0]} key heads but {groups[1][0]} value heads")
    return groups[0][0], groups[0][1], groups[1][1]


def _refuse_disentangled(sm) -> None:
    """DeBERTa's attention (v1, v2, v3) adds content-to-position and position-to-content scores, gathered per
    relative position from products of the hidden states with relative position embeddings (GatherElements
    near the scores): say so in one line rather than name an op of its position arithmetic."""
    seen, stack = set(), [(sm.inputs[0], 0)]
    while stack:
        t, depth = stack.pop()
        p = G.producer(t)
        if p is None or id(p) in seen or depth > 12:
            continue
        seen.add(id(p))
        if p.op == "GatherElements":
            raise BuildError(f"Softmax node {sm.name!r}: disentangled attention (DeBERTa, v1 to v3: content-to-position "
                             f"and position-to-content scores gathered by relative position, node {p.name!r}) is "
                             f"not in the IR, whose Attention adds only a padding/causal mask, rotary positions or "
                             f"a relative-position bias table")
        if p.op != "MatMul":
            stack.extend((i, depth + 1) for i in p.inputs if not i.is_empty())


def _only_consumer(t):
    cs = G.consumers(t)
    return cs[0] if len(cs) == 1 else None


def _is_qk_matmul(n) -> bool:
    return n is not None and n.op == "MatMul" and all(G.const_value(i) is None for i in n.inputs)


def _reaches_qk(t, depth=0) -> bool:
    """Does walking back over the score-chain ops from t reach a MatMul of two activations?"""
    p = G.producer(t)
    if p is None or depth > 16:
        return False
    if _is_qk_matmul(p):
        return True
    if p.op in ("Mul", "Div", "Add", "Sub", "Cast", "Identity", "Tanh") or _is_floor_clamp(p):
        return any(_reaches_qk(i, depth + 1) for i in p.inputs if G.const_value(i) is None)
    if p.op == "Where":
        return any(_reaches_qk(i, depth + 1) for i in p.inputs[1:] if G.const_value(i) is None)
    return False


def _walk_scores(logits):
    """(scale, qk MatMul, mask-side tensors, softcap or None) of the chain between the QK MatMul and the Softmax:
    logits = softcap * tanh(scale * qk / softcap) + sides (without a soft cap: scale * qk + sides)."""
    scale, sides, t, softcap = 1.0, [], logits, None
    for _ in range(16):
        p = G.producer(t)
        if p is None:
            raise _NoMatch
        if _is_qk_matmul(p):
            return (scale if softcap is None else scale * softcap), p, sides, softcap
        if p.op in ("Cast", "Identity"):
            t = p.inputs[0]
            continue
        if _is_floor_clamp(p):  # max(scores, finfo.min) (XGLM): only -inf changes, to the float minimum
            t = next(i for i in p.inputs if G.const_value(i) is None)
            continue
        if p.op == "Tanh" and _reaches_qk(p.inputs[0]):
            # soft-capped scores (Gemma 2: cap * tanh(scores / cap)); the scale met so far is the cap
            if softcap is not None or scale <= 0:
                raise BuildError(f"Tanh node {p.name!r}: the attention scores pass a tanh times {scale:.6g}"
                                 f"{' a second time' if softcap is not None else ''}; the IR's soft cap is one "
                                 f"cap * tanh(scores / cap) with cap > 0")
            softcap, scale, t = scale, 1.0, p.inputs[0]
            continue
        if softcap is not None and p.op in ("Add", "Sub", "Where"):
            raise BuildError(f"{G.node_desc(p)}: a mask or bias is applied to the attention scores inside their "
                             f"soft cap (tanh); the IR adds them to the capped scores")
        if p.op in ("Mul", "Div"):
            scale, t = _fold_scalar_scale(p, scale)
            continue
        if p.op in ("Add", "Sub"):
            a, b = p.inputs[0], p.inputs[1]
            on = [i for i in (a, b) if _reaches_qk(i)]
            if len(on) != 1 or (p.op == "Sub" and on[0] is not a):
                raise _NoMatch
            side = b if on[0] is a else a
            if G.const_value(side) is None:
                sides.append(side)
            t = on[0]
            continue
        if p.op == "Where":
            cond, a, b = p.inputs
            on = [i for i in (a, b) if _reaches_qk(i)]
            if len(on) != 1:
                raise _NoMatch
            sides.append(cond)
            other = b if on[0] is a else a
            if G.const_value(other) is None:
                sides.append(other)
            t = on[0]
            continue
        raise _NoMatch
    raise _NoMatch


def _is_floor_clamp(p) -> bool:
    """Max(scores, c) with c a scalar at most -1e30: XGLM clamps masked scores at the float minimum. It changes
    nothing but -inf (to a finite minimum), and the softmax gives such keys no weight either way; a row with every
    key masked becomes uniform, as the IR defines that row."""
    if p.op != "Max" or len(p.inputs) != 2:
        return False
    consts = [G.scalar_const(i) for i in p.inputs]
    return sum(c is not None for c in consts) == 1 and next(c for c in consts if c is not None) <= -1e30


def _fold_scalar_scale(p, scale, scalar=None):
    """A Mul/Div node by a scalar constant (or what `scalar` reads as one) -> (scale with it folded in, the other
    input)."""
    a, b = p.inputs[0], p.inputs[1]
    read = (lambda x: G.scalar_const(x) if G.scalar_const(x) is not None else (scalar(x) if scalar else None))
    cb = read(b)
    if cb is not None and (p.op == "Mul" or cb != 0.0):
        return (scale * cb if p.op == "Mul" else scale / cb), a
    ca = read(a) if p.op == "Mul" else None
    if ca is not None:
        return scale * ca, b
    raise _NoMatch


def _trace_source(graph, facts, t, ctx):
    """Walk back from Q4/KT4/V4 through layout ops, scalar scales, (once) a rotary position embedding and
    (once, before or after the rotary) an RMSNorm over each head's values to a Linear output -> (that output, the
    scale applied after the norm, the rotary or None, the norm or None: dict(x, gamma, eps, node, after_rotary when
    the norm follows the rotary))."""
    scale = 1.0
    rot = norm = None
    for _ in range(32):
        p = G.producer(t)
        if p is None:
            raise _NoMatch
        if G.is_trtrun(p, "Linear"):
            return t, scale, rot, norm
        if G.is_trtrun(p, "RMSNorm") or G.is_trtrun(p, "LayerNorm"):
            # Qwen3's (and Gemma-3's) q_norm/k_norm: an RMSNorm over each head's D values of the query and key,
            # after the projection and before the rotary; OLMo-2's: an RMSNorm over the whole projection output
            # (all heads at once); Persimmon's: a LayerNorm over each head's D values (one gain and bias for all
            # heads). A LayerNorm over the whole projection, or a norm after the rotary, is no form the IR expresses.
            x = G.slot(p, "x")
            layer = G.is_trtrun(p, "LayerNorm")
            gamma = G.const_value(G.slot(p, "gamma"))
            beta = G.const_value(G.slot(p, "beta")) if layer else None
            ok = norm is None and G.slot(p, "residual") is None and \
                facts.rank(x) in ((4,) if layer else (3, 4)) and gamma is not None and \
                gamma.size == facts.get(x)[0].shape[-1] and (not layer or (beta is not None and beta.size == gamma.size))
            # rank 3: the whole projection [B, S, N], or the heads laid along the rows, [B, S*h, D] (onnxruntime-
            # genai's Qwen3 files reshape to [0, -1, head_size] around their SimplifiedLayerNormalization)
            S0 = np.asarray(facts.feeds[0]["input_ids"]).shape[1]
            rows = facts.get(x)[0].shape[1] if facts.rank(x) == 3 else 0
            whole = ok and facts.rank(x) == 3 and rows == S0
            if ok and whole:
                xp = G.producer(x)
                ok = xp is not None and G.is_trtrun(xp, "Linear")  # its columns are the projection's own
            if not ok:
                raise BuildError(f"Softmax node {ctx['softmax']}: the query or key is normalized ({p.op} node "
                                 f"{p.name!r}) before the attention scores in a form the IR's Attention lacks: "
                                 f"it takes Q, K and V from the QKV projection with at most an RMSNorm over "
                                 f"each head's values (Qwen3's q_norm/k_norm) or over a projection's whole "
                                 f"output (OLMo-2's), or a LayerNorm over each head's values (Persimmon's), "
                                 f"before the rotary (per head, after it too)")
            norm = {"x": x, "gamma": np.asarray(gamma, np.float32).reshape(-1), "eps": float(p.attrs["epsilon"]),
                    "node": p, "whole": whole, "y": G.slot(p, "y"), "kind": "layer" if layer else "rms",
                    "beta": None if beta is None else np.asarray(beta, np.float32).reshape(-1)}
            t = x
            continue
        per_head = _per_head_norms(p, facts) if p.op == "Concat" and norm is None else None
        if per_head is not None:  # StableLM-2's q/k LayerNorm: one LayerNorm a head, each with its own gain
            norm = per_head
            t = per_head["x"]
            continue
        if p.op in ("Add", "Sub", "Concat") and rot is None:
            try:
                t, rot = match_rotary(graph, facts, t, ctx["deps"], ctx["order"])
            except NotRotary:
                raise _NoMatch from None
            if norm is not None:  # met walking back: the rotary comes first in the graph (HunYuan's order)
                if norm["whole"]:
                    raise BuildError(f"Softmax node {ctx['softmax']}: the query or key is normalized over the whole "
                                     f"projection after the rotary position embedding (node "
                                     f"{norm['node'].name!r}); the IR normalizes after the rotary per head only")
                norm["after_rotary"] = True
            continue
        if p.op in _LAYOUT:
            if p.op == "Gather" and G.const_value(p.inputs[1]) is None:
                raise _NoMatch
            t = p.inputs[0]
            continue
        if p.op in ("Mul", "Div"):
            if norm is not None:  # a scale before a norm is normalized away (but for epsilon): not the IR's
                raise _NoMatch
            scale, t = _fold_scalar_scale(p, scale, lambda x: _size_scalar(graph, facts, x, ctx))
            continue
        raise _NoMatch
    raise _NoMatch


def _size_scalar(graph, facts, t, ctx) -> float | None:
    """The value of t if it is one number computed from fixed sizes alone, else None. torch.onnx's decomposition
    of scaled_dot_product_attention (transformers 4's Nemotron) scales Q and K by sqrt(1 / sqrt(head_dim)) with
    head_dim read off a Shape: the same in every probe, depending on no input's values, and the same again at
    the bias probe length (so not a function of the batch or sequence sizes)."""
    cache = ctx.setdefault("size_scalars", {})
    if t.name in cache:
        return cache[t.name]
    value = None
    vals = facts.get(t) if facts.has(t.name) else []
    if vals and all(np.size(v) == 1 and np.asarray(v).dtype.kind == "f" for v in vals) and \
            len({float(np.asarray(v).reshape(())) for v in vals}) == 1 and not facts.value_inputs(graph, t):
        far = _alone_at_length(graph, t.name, _BIAS_PROBE_LEN)
        v = float(np.asarray(vals[0]).reshape(()))
        if far is not None and far.size == 1 and float(far.reshape(())) == v:
            value = v
    cache[t.name] = value
    return value


def _per_head_norms(concat, facts):
    """A per-head query/key norm written as one LayerNorm a head (StableLM-2's qk_layernorm): Concat along the head
    axis of trtrun LayerNorms, in order, of the one-head pieces of one Split along that axis, one epsilon. -> the
    norm dict of _trace_source with the gains and biases of every head in head order ([heads * D]), or None."""
    ins = list(concat.inputs)
    if len(ins) < 2 or any(G.producer(i) is None or not G.is_trtrun(G.producer(i), "LayerNorm") for i in ins):
        return None
    lns = [G.producer(i) for i in ins]
    xs = [G.slot(n, "x") for n in lns]
    split = G.producer(xs[0])
    if split is None or split.op != "Split" or list(split.outputs) != xs or facts.rank(xs[0]) != 4:
        return None
    axis = int(concat.attrs.get("axis", 0)) % 4
    if int(split.attrs.get("axis", 0)) % 4 != axis or axis not in (1, 2) or \
            any(facts.get(x)[0].shape[axis] != 1 for x in xs):
        return None
    gammas = [G.const_value(G.slot(n, "gamma")) for n in lns]
    betas = [G.const_value(G.slot(n, "beta")) for n in lns]
    D = facts.get(xs[0])[0].shape[-1]
    eps = {float(n.attrs["epsilon"]) for n in lns}
    if any(g is None or b is None or g.size != D or b.size != D for g, b in zip(gammas, betas)) or len(eps) != 1 or \
            any(G.slot(n, "residual") is not None for n in lns):
        return None
    return {"x": split.inputs[0], "gamma": np.concatenate([np.asarray(g, np.float32).reshape(-1) for g in gammas]),
            "beta": np.concatenate([np.asarray(b, np.float32).reshape(-1) for b in betas]), "eps": eps.pop(),
            "node": lns[0], "whole": False, "y": concat.outputs[0], "kind": "layer", "heads": len(lns)}


def _head_values(facts, norm, H, sm, what):
    """The [B, S, H, D] values a per-head norm reads (its input [B, S, h, D], [B, h, S, D] or [B, S*h, D]; grouped-query K's
    h heads repeated over their groups), for reading the columns off the projection before the norm."""
    out = []
    for a, f in zip(facts.get(norm["x"]), facts.feeds):
        S = np.asarray(f["input_ids"]).shape[1]
        if a.ndim == 3 and a.shape[1] % S == 0:  # [B, S*h, D]: each row's h heads in turn
            a = a.reshape(a.shape[0], S, a.shape[1] // S, a.shape[2])
        if a.shape[1] != S and a.shape[2] == S:
            a = np.transpose(a, (0, 2, 1, 3))
        heads = a.shape[2]
        if a.shape[1] != S or heads == 0 or H % heads:
            raise BuildError(f"Softmax node {sm.name!r}: the {what}'s per-head norm {norm['node'].name!r} reads "
                             f"shape {list(a.shape)}, not [batch, {S}, heads dividing {H}, head_size]")
        out.append(np.repeat(a, H // heads, axis=2))
    return out


def _column_map(facts, src, targets, sm, what, shared: bool = False) -> np.ndarray:
    """For target [B,S,H,D] arrays, the src column that each (h, d) equals, as an int array [H*D].

    shared: heads may repeat source columns (grouped-query K/V, sorted out by _kv_heads)."""
    srcs = facts.get(src)
    if any(s.ndim != 3 for s in srcs) or any(t.shape[:2] != s.shape[:2] for t, s in zip(targets, srcs)):
        raise _NoMatch
    tv = np.concatenate([t.reshape(t.shape[0] * t.shape[1], -1) for t in targets], 0).astype(np.float32)
    sv = np.concatenate([s.reshape(s.shape[0] * s.shape[1], -1) for s in srcs], 0).astype(np.float32)
    # nearest source column for every target column (squared distance via dot products)
    d2 = (tv ** 2).sum(0)[:, None] + (sv ** 2).sum(0)[None, :] - 2.0 * tv.T @ sv
    cols = np.argmin(d2, axis=1)
    if not agree([sv[:, cols]], [tv]):
        raise BuildError(f"Softmax node {sm.name!r}: the {what} tensor is not a rearrangement of the "
                         f"columns of {src.name!r}")
    if len(set(cols.tolist())) != len(cols) and not shared:
        raise BuildError(f"Softmax node {sm.name!r}: the {what} columns of {src.name!r} are ambiguous")
    return cols


def _walk_output(O4, facts, HD):
    t = O4
    for _ in range(8):
        vals = facts.get(t)
        if all(v.ndim == 3 and v.shape[-1] == HD for v in vals):
            return t
        c = _only_consumer(t)
        if c is None or c.op not in ("Transpose", "Reshape", "Cast", "Identity"):
            return None
        t = c.outputs[0]
    return None


def _window_mask(S: int, window: int) -> np.ndarray:
    """[S, S]: key j outside query i's sliding window (|i - j| > window)."""
    d = np.arange(S)[None, :] - np.arange(S)[:, None]
    return np.abs(d) > window


# The longest sliding window the builder reads: a window W is seen only on a mask of more than W + 1 tokens,
# and the mask subgraph holds [L, L] tensors (float and int64) at that length: at 8195 tokens ~0.5 GB each.
# Real windows: ModernBERT 64, Gemma-3 1023, Phi-3 2047, Mistral and Gemma-2 4095.
WINDOW_MAX = 8192


def _window(graph, sm, mask_sides, ctx):
    """A sliding attention window read off the additive mask tensors at long lengths (all keys valid): the probes
    (5 and 7 tokens) see no window of 128 (ModernBERT's local layers). -> the window W (a key j is masked for
    query i when |i - j| > W; with causal also when j > i) or None.

    First read at _BIAS_PROBE_LEN tokens, which shows any window under 1023. A longer one masks nothing there:
    the mask subgraph's integer constants of 1022 or more (the window as the model's config gives it:
    transformers writes `abs(q - kv) <= W` or `kv > q - (W + 1)` with the number as a constant) are each tried
    as a window, by reading the mask again at that length + 3 tokens (so W - 1 .. W + 1 are all seen); what
    is read there is the window, the constant only says where to look. A candidate past WINDOW_MAX is a
    BuildError (it cannot be read; guessing "no window" would attend to keys the model masks). A masked set
    that is neither nothing, causal, a window nor both is a BuildError. A boolean side is a Where's condition
    (GPT-Neo's causal or local window, sliced from a buffer): masked where it excludes the diagonal's value, since
    every query sees itself."""
    masks = [t for t in mask_sides if t.dtype is not None and np.dtype(t.dtype).kind in "fb"]
    if not masks:
        return None
    cache = ctx.setdefault("window", {})
    key = tuple(t.name for t in masks)
    if key not in cache:
        g2 = graph.copy()
        g2.outputs = [g2.tensors()[n] for n in key]
        g2.cleanup()
        if any(G.is_trtrun(n) for n in g2.nodes):
            cache[key] = None  # a mask computed from hidden states: the probes' reading stands
            return None
        window = _read_window(g2, sm, key, _BIAS_PROBE_LEN)
        if window is _UNREADABLE:
            window = None
        elif window is None:
            for c in _window_candidates(g2, _BIAS_PROBE_LEN - 2):
                if c > WINDOW_MAX:
                    raise BuildError(f"Softmax node {sm.name!r}: its mask subgraph holds the constant {c}, which may "
                                     f"be a sliding window of about {c} tokens; the builder reads windows of at most "
                                     f"{WINDOW_MAX} tokens off the mask")
                found = _read_window(g2, sm, key, c + 3)
                if found is not _UNREADABLE and found is not None:
                    window = found
                    break
        cache[key] = window
    return cache[key]


_UNREADABLE = object()


def _read_window(g2, sm, key, L):
    """The window of the mask subgraph g2 (outputs `key`) run at L tokens: W, None (nothing beyond padding and
    causal within L tokens), or _UNREADABLE (it cannot run at that length, or is not [.., L, L])."""
    from .probe import run_graph

    feeds = [{i.name: (np.ones if i.name == "attention_mask" else np.zeros)((1, L), np.dtype(i.dtype or np.int64))
              for i in g2.inputs}]
    try:
        vals = next(run_graph(g2, feeds, names=list(key)))
    except BuildError:
        return _UNREADABLE  # a mask subgraph that cannot run at that length (a shorter causal buffer)
    masked = np.zeros((L, L), bool)
    for n in key:
        v = np.asarray(vals[n])
        if v.ndim != 4 or v.shape[-1] != L:
            return _UNREADABLE
        if v.dtype == np.bool_:
            diag = np.diagonal(np.broadcast_to(v, v.shape[:2] + (L, L)), axis1=2, axis2=3)
            if not (diag.all() or not diag.any()):
                return _UNREADABLE
            v_masked = ~v if diag.all() else v
        else:
            v_masked = v < _MASKED_BELOW
        masked |= np.broadcast_to(v_masked.any(axis=(0, 1)), (L, L))
    del vals
    d = np.arange(L)[None, :] - np.arange(L)[:, None]  # j - i
    causal = bool(masked[d > 0].all())
    kept = ~masked & (d <= 0 if causal else True)
    W = int(np.abs(d[kept]).max()) if kept.any() else 0
    if W >= L - 1:
        return None  # nothing beyond padding and causal
    if np.array_equal(masked, _window_mask(L, W) | ((d > 0) if causal else False)):
        return W
    raise BuildError(f"Softmax node {sm.name!r}: at {L} tokens the attention mask is neither padding, causal, "
                     f"nor a sliding window (|i - j| > W)")


def _window_candidates(g2, least: int) -> list[int]:
    """The distinct integer-valued scalar constants of at least `least` (and below 2^31: int64 max as a Slice's
    end is no window) in the mask subgraph g2, ascending."""
    found = set()
    for t in g2.tensors().values():
        if t.__class__.__name__ != "Constant" or int(np.prod(t.shape or ())) != 1:
            continue
        v = G.const_value(t)
        if v.dtype.kind not in "iuf":
            continue
        x = float(v.reshape(-1)[0])
        if np.isfinite(x) and x == int(x) and least <= x < 2 ** 31:
            found.add(int(x))
    return sorted(found)


def _mask_semantics(graph, sm, facts, qk, logits, chain_scale, softcap, bias=None, window=None):
    """(causal, uses attention_mask) from where the probe logits are pushed far below the scores (plus the
    score bias, if any)."""
    masked_sets = []
    for k, (raw, lg) in enumerate(zip(facts.get(qk.outputs[0]), facts.get(logits))):
        base = raw.astype(np.float64) * chain_scale
        if softcap is not None:
            base = softcap * np.tanh(base / softcap)
        if bias is not None:
            base = base + (bias[k] if bias[k].ndim == 4 else bias[k][None])
        lg = lg.astype(np.float64)
        lgb = np.broadcast_to(lg, np.broadcast_shapes(lg.shape, base.shape))
        diff = lgb - base
        masked = diff < _MASKED_BELOW
        kept = ~masked
        scale = max(float(np.abs(base).max()), 1e-6)
        if kept.any() and float(np.abs(diff[kept]).max()) > 1e-4 * scale:
            raise BuildError(f"Softmax node {sm.name!r}: something is added to the attention scores "
                             f"that is not a mask (a bias of up to {float(np.abs(diff[kept]).max()):.3g}); "
                             f"the IR has no attention bias")
        masked_sets.append(masked)
    has_mask_input = any(i.name == "attention_mask" for i in graph.inputs)
    for causal in (False, True):
        for use_mask in ((False, True) if has_mask_input else (False,)):
            if all(np.array_equal(m, _hypothesis(f, m.shape, causal, use_mask, window))
                   for f, m in zip(facts.feeds, masked_sets)):
                return causal, use_mask
    raise BuildError(f"Softmax node {sm.name!r}: the attention mask is neither padding from "
                     f"attention_mask, causal, nor both (probed with padded and causal patterns)")


def _hypothesis(feed, shape, causal, use_mask, window=None):
    B, _, S, _ = shape
    m = np.zeros((B, 1, S, S), bool)
    if window is not None:
        m |= _window_mask(S, window)[None, None]
    if use_mask:
        m |= (np.asarray(feed["attention_mask"]) == 0)[:, None, None, :]
    if causal:
        m |= np.triu(np.ones((S, S), bool), 1)[None, None]
    return np.broadcast_to(m, shape)


# ---------------------------------------------------------------------- rewriting
def _replace(graph, sm, facts, m):
    H, D, Hkv, rot = m["H"], m["D"], m["Hkv"], m["rot"]
    qkv = _qkv_tensor(graph, facts, sm, m["srcs"], m["cols"], H * D, Hkv * D)
    mask = next((i for i in graph.inputs if i.name == "attention_mask"), None) if m["use_mask"] else None
    y = m["y"]
    # check the rebuilt op on the probe values before touching the graph
    rel = m["rel"]
    ours = [reference_attention(q, f.get("attention_mask") if m["use_mask"] else None, H, D,
                                m["scale"], m["causal"], Hkv=Hkv, rot=rot, bias=rel["values"][k] if rel else None,
                                window=m["window"], qk_norm=m["qk_norm"], softcap=m["softcap"])
            for k, (q, f) in enumerate(zip(facts.get(qkv), facts.feeds))]
    # rows with no visible key are not compared: the graph makes them 0 (sdpa's NaN guard), uniform (a finite
    # mask, as the IR) or anything its fills add up to (GPT-Neo adds finfo.min twice); their token is a masked
    # key for every query, so they reach no visible output
    ours = [np.where(_empty_rows(f, o.shape, m), g, o) for o, g, f in zip(ours, facts.get(y), facts.feeds)]
    if rel is not None and rel.get("mask_positions"):
        # the IR's ALiBi distance is j - i; the graph's counts positions along the mask, the same in the rows
        # whose mask is ones then zeros, which is all Plan.check_feeds lets such a plan run (the probes have
        # others too: those rows are not compared)
        ours = [np.where(_right_padded(f)[:, None, None], o, g) for o, g, f in zip(ours, facts.get(y), facts.feeds)]
    if not agree(ours, facts.get(y)):
        raise BuildError(f"Softmax node {sm.name!r}: the attention rebuilt from it (heads {H} x {D}, "
                         f"{Hkv} K/V heads, scale {m['scale']:.6g}, causal {m['causal']}"
                         f"{', rotary dims %d' % rot['dim'] if rot else ''}"
                         f"{', q/k norm (%s)' % m['qk_norm']['kind'] if m['qk_norm'] is not None else ''}"
                         f"{', soft cap %.6g' % m['softcap'] if m['softcap'] is not None else ''}) does not reproduce "
                         f"the graph's "
                         f"output {y.name!r}")
    name = _attn_name(sm)
    attrs = {"num_heads": int(H), "head_size": int(D), "scale": float(m["scale"]), "causal": bool(m["causal"])}
    weights = {}
    if Hkv != H:
        attrs["num_kv_heads"] = int(Hkv)
    if m["window"] is not None:
        attrs["window"] = int(m["window"])
    if m["softcap"] is not None:
        attrs["softcap"] = float(m["softcap"])
    if rot is not None:
        attrs["rotary_dim"] = int(rot["dim"])
        if rot["scale"] != 1.0:
            attrs["rotary_scale"] = float(rot["scale"])
        weights["inv_freq"] = _shared_constant(graph, "rotary.inv_freq", np.asarray(rot["inv_freq"], np.float32))
    if m["qk_norm"] is not None:
        n = m["qk_norm"]
        attrs["qk_norm_epsilon"] = float(n["eps"])
        weights["q_norm"] = G.new_constant(graph, name + ".q_norm", n["q"])
        weights["k_norm"] = G.new_constant(graph, name + ".k_norm", n["k"])
        if n["after_rotary"]:
            attrs["qk_norm_after_rotary"] = True
        if n["kind"] == "layer":
            attrs["qk_norm_kind"] = "layer"
            weights["q_norm_bias"] = G.new_constant(graph, name + ".q_norm_bias", n["q_bias"])
            weights["k_norm_bias"] = G.new_constant(graph, name + ".k_norm_bias", n["k_bias"])
    if rel is not None and rel.get("alibi"):
        attrs["alibi_symmetric"] = bool(rel["symmetric"])
        if rel.get("mask_positions"):
            attrs["mask_positions"] = True
        weights["alibi_slopes"] = _shared_constant(graph, "alibi_slopes", np.asarray(rel["slopes"], np.float32))
    elif rel is not None:
        attrs["relative_max_distance"] = rel["max_distance"]
        attrs["relative_bidirectional"] = rel["bidirectional"]
        weights["relative_bias"] = _shared_constant(graph, "relative_attention_bias",
                                                    np.asarray(G.const_value(rel["table"]), np.float32))
    G.add_trtrun_node(graph, "Attention", name, inputs={"qkv": qkv, "attention_mask": mask}, weights=weights,
                      outputs=[y], attrs=attrs)


def _shared_constant(graph, name, values):
    """One graph constant per distinct value (the layers' rotary frequencies are one table in the plan)."""
    cache = graph.__dict__.setdefault("_trtrun_shared", {})
    key = (name, values.dtype.str, values.shape, values.tobytes())
    if key not in cache:
        cache[key] = G.new_constant(graph, name, values)
    return cache[key]


def _attn_name(sm) -> str:
    n = sm.name.strip("/")
    if n.endswith("/Softmax"):
        n = n[: -len("/Softmax")]
    return n.replace("/", ".") or "attention"


def _qkv_tensor(graph, facts, sm, srcs, cols, HD, KD):
    q_src, k_src, v_src = srcs
    q_cols, k_cols, v_cols = cols
    if q_src is k_src is v_src:
        width = facts.get(q_src)[0].shape[-1]
        full = np.concatenate([q_cols, k_cols, v_cols])
        if width == HD + 2 * KD and np.array_equal(full, np.arange(HD + 2 * KD)):
            return q_src
    # build one Linear from the selected columns of the q, k and v Linears
    lins = [G.producer(s) for s in srcs]
    xs = [G.slot(n, "x") for n in lins]
    if not all(x is xs[0] for x in xs):
        raise BuildError(f"Softmax node {sm.name!r}: query, key and value come from projections of "
                         f"different inputs (the IR's attention projects one input: cross-attention, and "
                         f"MobileBERT's keys and queries from a bottleneck beside values from the layer input, "
                         f"are not in it)")
    if any(n.attrs.get("activation", "none") != "none" for n in lins):
        raise _NoMatch
    Ws, bs = [], []
    for n, c in zip(lins, cols):
        W = G.const_value(G.slot(n, "weight")).astype(np.float32)
        b_t = G.slot(n, "bias")
        b = G.const_value(b_t).astype(np.float32) if b_t is not None else np.zeros(W.shape[1], np.float32)
        Ws.append(W[:, c])
        bs.append(b[c])
    W = np.concatenate(Ws, 1)
    b = np.concatenate(bs)
    name = _attn_name(sm) + ".qkv"
    out = G.new_variable(graph, name, np.float32)
    weights = {"weight": G.new_constant(graph, name + ".weight", W)}
    if any(G.slot(n, "bias") is not None for n in lins):  # bias-free projections (Llama) stay bias-free
        weights["bias"] = G.new_constant(graph, name + ".bias", b)
    G.add_trtrun_node(graph, "Linear", name, inputs={"x": xs[0]}, weights=weights,
                      outputs=[out], attrs={"activation": "none"})
    # its probe values: the selected source columns (exactly what the new Linear computes)
    facts.put(out.name, [np.concatenate([q[..., cols[0]], k[..., cols[1]], v[..., cols[2]]], -1)
                         for q, k, v in zip(facts.get(q_src), facts.get(k_src), facts.get(v_src))])
    return out


def reference_attention(qkv, mask, H, D, scale, causal, Hkv=None, rot=None, bias=None, window=None, qk_norm=None,
                        softcap=None):
    """The IR's Attention formula in float64 (docs/plan-format.md), for checking matches. qk_norm: _same_norm's
    dict, the query/key norm before the rotary (after it with its after_rotary)."""
    qkv = np.asarray(qkv, np.float64)
    B, S, _ = qkv.shape
    Hkv = Hkv or H
    HD, KD = H * D, Hkv * D
    q = qkv[..., :HD].reshape(B, S, H, D).transpose(0, 2, 1, 3)
    k = qkv[..., HD:HD + KD].reshape(B, S, Hkv, D).transpose(0, 2, 1, 3)
    v = qkv[..., HD + KD:].reshape(B, S, Hkv, D).transpose(0, 2, 1, 3)
    after = qk_norm is not None and qk_norm.get("after_rotary", False)
    if rot is not None and after:
        q, k = apply_rotary(q, rot, 2), apply_rotary(k, rot, 2)
    if qk_norm is not None:
        gq, gk, eps = qk_norm["q"], qk_norm["k"], qk_norm["eps"]
        if qk_norm["kind"] == "layer":  # per head: (x - mean) / sqrt(var + eps) * gamma + beta
            def ln(x, g, b):  # gains and biases [D], or [heads * D]: one of each a head (StableLM-2)
                c = x - x.mean(-1, keepdims=True)
                g, b = (np.asarray(v, np.float64).reshape(-1, D)[None, :, None, :] for v in (g, b))
                return c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * g + b
            q, k = ln(q, gq, qk_norm["q_bias"]), ln(k, gk, qk_norm["k_bias"])
        elif np.asarray(gq).size == D:  # per head
            q = q / np.sqrt((q * q).mean(-1, keepdims=True) + eps) * np.asarray(gq, np.float64)
            k = k / np.sqrt((k * k).mean(-1, keepdims=True) + eps) * np.asarray(gk, np.float64)
        else:  # over every head of the token at once; gammas in head order [H*D], [Hkv*D]
            q = q / np.sqrt((q * q).mean((1, 3), keepdims=True) + eps) * np.asarray(gq, np.float64).reshape(1, H, 1, D)
            k = k / np.sqrt((k * k).mean((1, 3), keepdims=True) + eps) * np.asarray(gk, np.float64).reshape(1, Hkv, 1, D)
    if rot is not None and not after:
        q, k = apply_rotary(q, rot, 2), apply_rotary(k, rot, 2)
    k, v = np.repeat(k, H // Hkv, axis=1), np.repeat(v, H // Hkv, axis=1)
    s = scale * q @ k.transpose(0, 1, 3, 2)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    masked = np.zeros((B, 1, S, S), bool)
    if mask is not None:
        masked |= (np.asarray(mask) == 0)[:, None, None, :]
    if causal:
        masked |= np.triu(np.ones((S, S), bool), 1)[None, None]
    if window is not None:
        masked |= _window_mask(S, window)[None, None]
    s = np.where(masked, np.finfo(np.float32).min, s)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(B, S, HD)
