"""Fuse embeddings: Gather(word) + Gather(position) (+ Gather(token type)) (+ LayerNorm) -> Embedding.

The word Gather is the one whose indices equal input_ids in every probe. Its output is followed up
through Adds whose other operand is another Gather from a constant table (or a sum of such). Each
table's role is read off the probe values of its indices: equal to input_ids -> word, equal to
token_type_ids -> token type, all zeros (a model exported without token_type_ids) -> token type
with no input, equal to arange(S) + offset on every row -> position (with `position_offset`).
Positions counted past the padding id (RoBERTa, MPNet) or along attention_mask (OPT) are taken as
s + offset, which they equal under right padding; the plan then refuses other padding (Plan.check_feeds).
Anything else stops the build with a clear error. A model without a position table (rotary or relative
positions, which the Attention op applies) gets an Embedding without one. If the sum's only reader is a
LayerNorm without residual, it is folded in.

A row factor computed from the inputs alone, applied right after the word lookup or after the sum (and its
LayerNorm), is folded too (_row_factor): the attention-mask product (zeroed padding rows, which no unpadded token
reads) and ESM's token dropout, which rescales each row by 0.88 / (1 - the sequence's share of <mask> tokens) and
zeroes the <mask> rows. On sequences without <mask> that factor is the constant 0.88: it goes into the tables, and
the Embedding's `refused_id` makes Plan.check_feeds refuse an input holding <mask>.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G
from .probe import agree


def fuse_embedding(graph, facts) -> int:
    count = 0
    ids = next((i for i in graph.inputs if i.name == "input_ids"), None)
    tts = next((i for i in graph.inputs if i.name == "token_type_ids"), None)
    for node in list(graph.nodes):
        if node.op != "Gather" or G.const_value(node.inputs[0]) is None:
            continue
        table = G.const_value(node.inputs[0])
        if table.ndim != 2 or int(node.attrs.get("axis", 0)) != 0 or table.dtype.kind != "f":
            continue
        if ids is None or not _equals_feed(facts, node.inputs[1], "input_ids"):
            continue
        _fuse_one(graph, facts, node, ids, tts)
        count += 1
    G.finish(graph)
    return count


def _equals_feed(facts, t, name) -> bool:
    try:
        vals = facts.get(t)
    except BuildError:
        return False
    return all(name in f and v.shape == f[name].shape and np.array_equal(v, f[name])
               for v, f in zip(vals, facts.feeds))


def _is_table_gather(n) -> bool:
    if n is None or n.op != "Gather" or int(n.attrs.get("axis", 0)) != 0:
        return False
    t = G.const_value(n.inputs[0])
    return t is not None and t.ndim == 2 and t.dtype.kind == "f"


def _gather_leaves(t):
    """Table Gathers summed into t by a tree of Adds, or None if t is not such a sum."""
    p = G.producer(t)
    if _is_table_gather(p):
        return [p]
    if p is not None and p.op == "Add":
        out = []
        for i in p.inputs:
            sub = _gather_leaves(i)
            if sub is None:
                return None
            out += sub
        return out
    return None


def _fuse_one(graph, facts, word, ids, tts):
    leaves = [word]
    e = word.outputs[0]
    word_factor = _row_factor(graph, facts, e)  # before the position and token type tables are added
    if word_factor is not None:
        e = word_factor["y"]
    while True:
        cs = G.consumers(e)
        if len(cs) != 1 or cs[0].op != "Add":
            break
        add = cs[0]
        other = add.inputs[1] if add.inputs[0] is e else add.inputs[0]
        sub = _gather_leaves(other)
        if sub is None:
            break
        leaves += sub
        e = add.outputs[0]
    N = G.const_value(word.inputs[0]).shape[1]
    roles = {"word": word}
    tt_input = None
    offset = 0
    pos_idx = None
    mask_positions = False
    for g in leaves[1:]:
        table = G.const_value(g.inputs[0])
        idx = g.inputs[1]
        if table.shape[1] != N:
            raise BuildError(f"Gather node {g.name!r}: embedding table {table.shape} does not match the "
                             f"word table's width {N}")
        if tts is not None and _equals_feed(facts, idx, "token_type_ids") and "token_type" not in roles:
            roles["token_type"], tt_input = g, tts
            continue
        vals = facts.get(idx)
        if all(np.all(v == 0) for v in vals) and "token_type" not in roles:
            roles["token_type"] = g
            continue
        off = _position_offset(vals, facts)
        if off is not None and "position" not in roles:
            roles["position"], offset, pos_idx = g, off, vals
            continue
        pad = _padding_positions(vals, facts)
        if pad is not None and "position" not in roles:
            roles["position"], offset, pos_idx = g, pad + 1, vals
            graph.__dict__.setdefault("_trtrun_notes", []).append(
                f"positions counted past the padding id {pad} (RoBERTa/MPNet) taken as s + {pad + 1}: the same "
                f"wherever token id {pad} occurs only as trailing padding (what a tokenizer writes)")
            continue
        off = _mask_positions(vals, facts)
        if off is not None and "position" not in roles:
            roles["position"], offset, pos_idx = g, off, vals
            mask_positions = True
            graph.__dict__.setdefault("_trtrun_notes", []).append(
                f"positions counted along attention_mask (OPT) taken as s + {off}: the same wherever the mask is "
                f"ones then zeros (padding on the right)")
            continue
        raise BuildError(f"Gather node {g.name!r}: an embedding table indexed by something that is "
                         f"neither input_ids, token_type_ids nor the position s + constant (probe "
                         f"indices {vals[0].tolist()})")
    # no position table: positions enter in attention (rotary, relative-position bias) or nowhere
    y = e
    gamma = beta = None
    eps = None
    cs = G.consumers(e)
    if len(cs) == 1 and G.is_trtrun(cs[0], "LayerNorm") and G.slot(cs[0], "residual") is None \
            and G.slot(cs[0], "x") is e and G.slot(cs[0], "sum") is None:
        ln = cs[0]
        gamma = G.const_value(G.slot(ln, "gamma"))
        beta = G.const_value(G.slot(ln, "beta"))
        eps = float(ln.attrs["epsilon"])
        y = G.slot(ln, "y")
    sum_factor = _row_factor(graph, facts, y)  # on the sum (after its LayerNorm)
    if sum_factor is not None:
        y = sum_factor["y"]
    tables = {r: G.const_value(n.inputs[0]).astype(np.float32) for r, n in roles.items()}
    refused = None
    if word_factor is not None:
        tables["word"] = (tables["word"] * np.float32(word_factor["c"])).astype(np.float32)
        refused = word_factor["refused"]
    if sum_factor is not None and sum_factor["c"] != 1.0:
        c = np.float32(sum_factor["c"])
        if gamma is not None:
            gamma, beta = np.asarray(gamma, np.float32) * c, np.asarray(beta, np.float32) * c
        else:
            tables = {r: (t * c).astype(np.float32) for r, t in tables.items()}
    if sum_factor is not None and sum_factor["refused"] is not None:
        if refused is not None and refused != sum_factor["refused"]:
            raise BuildError(f"Gather node {word.name!r}: two token ids rescale the embeddings "
                             f"({refused}, {sum_factor['refused']}); the IR's Embedding refuses one")
        refused = sum_factor["refused"]
    ours = []
    for f in facts.feeds:
        S = f["input_ids"].shape[1]
        s = tables["word"][f["input_ids"]].astype(np.float64)
        if "position" in tables:  # the graph's own position indices (they differ from s + offset only at pads)
            s = s + tables["position"][pos_idx[len(ours)]]
        if "token_type" in tables:
            s = s + tables["token_type"][f["token_type_ids"] if tt_input is not None else 0]
        if gamma is not None:
            mu = s.mean(-1, keepdims=True)
            var = ((s - mu) ** 2).mean(-1, keepdims=True)
            s = (s - mu) / np.sqrt(var + eps) * gamma + beta
        ours.append(s)
    theirs = facts.get(y)
    if word_factor is not None or sum_factor is not None:
        # compared where the fold holds: unpadded tokens of sequences without the refused id
        keep = [_kept_rows(f, refused) for f in facts.feeds]
        ours, theirs = [o[k] for o, k in zip(ours, keep)], [t[k] for t, k in zip(theirs, keep)]
    if not agree(ours, theirs):
        raise BuildError(f"Gather node {word.name!r}: the embedding sum rebuilt from its tables does not "
                         f"reproduce {y.name!r}")
    name = "embeddings"
    weights = {r: G.new_constant(graph, f"{name}.{r}", tables[r]) for r in tables}
    attrs = {"position_offset": int(offset)}
    if "position" in roles:
        from .rotary import value_deps

        if "input_ids" in value_deps(graph).get(roles["position"].inputs[1].name, ()):
            # positions counted from the token ids (RoBERTa/MPNet: past the padding id, offset - 1): s + offset
            # only while that id is trailing padding, which Plan.check_feeds then requires of every run
            if offset < 1:
                raise BuildError(f"Gather node {roles['position'].name!r}: position indices computed from the "
                                 f"token ids, but not as positions past a padding id (offset {offset})")
            attrs["padding_id"] = int(offset - 1)
        if mask_positions:  # Plan.check_feeds requires every run's mask to be ones then zeros
            attrs["mask_positions"] = True
    if refused is not None:  # Plan.check_feeds refuses input_ids holding it
        attrs["refused_id"] = int(refused)
        graph.__dict__.setdefault("_trtrun_notes", []).append(
            f"the embeddings are rescaled by each sequence's count of token {refused} (ESM's token dropout): folded "
            f"as the constant factor of sequences without it ({word_factor['c'] if word_factor else sum_factor['c']:.6g});"
            f" input_ids holding token {refused} are refused")
    if gamma is not None:
        weights["gamma"] = G.new_constant(graph, f"{name}.gamma", gamma.astype(np.float32))
        weights["beta"] = G.new_constant(graph, f"{name}.beta", beta.astype(np.float32))
        attrs["epsilon"] = eps
    G.add_trtrun_node(graph, "Embedding", name, inputs={"input_ids": ids, "token_type_ids": tt_input},
                      weights=weights, outputs=[y], attrs=attrs)


def _padding_positions(vals, facts) -> int | None:
    """p if the indices are RoBERTa's positions, cumsum(ids != p) + p where ids != p and p where ids == p (the
    padding id p), on every probe; else None."""
    lows = {int(np.min(v)) for v in vals}
    for p in sorted({lo for lo in lows} | {lo - 1 for lo in lows}):
        if p < 0:
            continue
        ok = True
        for v, f in zip(vals, facts.feeds):
            ids = np.asarray(f["input_ids"])
            keep = ids != p
            want = np.where(keep, np.cumsum(keep, axis=1) + p, p)
            if v.shape != want.shape or not np.array_equal(v, want):
                ok = False
                break
        if ok:
            return p
    return None


def _mask_positions(vals, facts) -> int | None:
    """c if the indices count along the attention mask, cumsum(mask) - 1 + c where the mask is 1 (OPT: c = 2;
    its padded positions read c - 1, any value is taken there), on every probe; else None."""
    offs = set()
    for v, f in zip(vals, facts.feeds):
        m = f.get("attention_mask")
        if m is None or v.shape != m.shape:
            return None
        m = np.asarray(m) != 0
        if not m.any():
            continue
        first = np.argwhere(m)[0]
        c = int(v[tuple(first)]) - int(np.cumsum(m, axis=1)[tuple(first)]) + 1
        want = np.cumsum(m, axis=1) - 1 + c
        if c < 0 or not np.array_equal(v[m], want[m]):
            return None
        offs.add(c)
    return offs.pop() if len(offs) == 1 else None


def _position_offset(vals, facts) -> int | None:
    """c if the indices equal arange(S) + c on every row (broadcast over batch), else None."""
    offs = set()
    for v, f in zip(vals, facts.feeds):
        B, S = f["input_ids"].shape
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[-1] != S or v.shape[0] not in (1, B):
            return None
        c = int(v.reshape(-1)[0])
        if c < 0 or not np.array_equal(v, np.broadcast_to(np.arange(S) + c, v.shape)):
            return None
        offs.add(c)
    return offs.pop() if len(offs) == 1 else None


_ROW_OPS = ("Where", "Mul", "Div", "Cast")


def _kept_rows(feed, refused):
    """[B, S] bool: the tokens a folded row factor is exact for (unpadded, in a sequence without `refused`)."""
    ids = np.asarray(feed["input_ids"])
    keep = np.asarray(feed["attention_mask"]) != 0 if "attention_mask" in feed else np.ones(ids.shape, bool)
    if refused is not None:
        keep &= ~(ids == refused).any(axis=1, keepdims=True)
    return keep


def _row_factor(graph, facts, t):
    """Follow t [B, S, N] through Where/Mul/Div/Cast ops whose other operands come from the inputs alone, each
    value one per token or per sequence (no column varies): y = r * t with r [B, S] a row factor. Returns
    dict(y, c, refused) when r is one constant c on every unpadded token of every probe sequence without the
    `refused` token id (an Equal(input_ids, id) among those operands' sources, or None), else None (nothing
    to fold: t is left as it is). Padding rows take any factor: no unpadded token reads them."""
    from .rotary import value_deps

    deps = None
    y, steps, sides = t, 0, []
    while True:
        cs = G.consumers(y)
        if len(cs) != 1 or cs[0].op not in _ROW_OPS:
            break
        n = cs[0]
        if n.op == "Cast":
            if int(n.attrs.get("to", 0)) not in (1, 10, 11, 16):  # float, float16, double, bfloat16
                break
        else:
            others = [i for i in n.inputs if i is not y]
            if n.op == "Where":
                if len(n.inputs) != 3 or n.inputs[0] is y:
                    break
                branch = n.inputs[2] if n.inputs[1] is y else n.inputs[1]
                zero = G.const_value(branch)
                if zero is None or np.any(zero != 0):
                    break
            elif n.op == "Div" and n.inputs[0] is not y:
                break
            if deps is None:
                deps = value_deps(graph)
            if any(not deps.get(o.name, frozenset()) <= {"input_ids", "attention_mask"} for o in others):
                break
            if any(facts.rank(o) > 0 and facts.get(o)[0].shape[-1] != 1 for o in others if G.const_value(o) is None):
                break
            sides += others
        y = n.outputs[0]
        steps += 1
    if steps == 0:
        return None
    refused = _refused_ids(sides)
    if len(refused) > 1:
        return None
    refused = refused[0] if refused else None
    cs = []
    for a, b, f in zip(facts.get(t), facts.get(y), facts.feeds):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape or a.ndim != 3:
            return None
        den = (a * a).sum(-1)
        r = np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), 0.0)
        if not agree([r[..., None] * a], [b]):
            return None  # not a factor per row
        keep = _kept_rows(f, refused)
        cs += r[keep].tolist()
    if not cs or max(cs) - min(cs) > 1e-6 * max(abs(max(cs)), abs(min(cs)), 1e-30):
        return None
    return {"y": y, "c": float(np.mean(cs)), "refused": refused}


def _refused_ids(sides) -> list:
    """Token ids that Equal(input_ids, id) compares with, among the sources of these tensors."""
    found, seen, stack = set(), set(), list(sides)
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        p = G.producer(x)
        if p is None:
            continue
        if p.op == "Equal" and any(i.name == "input_ids" for i in p.inputs):
            v = next((G.const_value(i) for i in p.inputs if i.name != "input_ids"), None)
            if v is not None and np.asarray(v).size == 1:
                found.add(int(np.asarray(v).reshape(-1)[0]))
        stack += [i for i in p.inputs if not i.is_empty()]
    return sorted(found)
