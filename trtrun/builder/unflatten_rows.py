"""Unflatten rows: row-wise work on [B*S, H] views done on the [B, S, H] tensor itself.

    x [B,S,H] -> Reshape [B*S,H] -> LayerNorm / Gemm / MatMul / Relu / Add ... -> Reshape [B,S,...]
    ids [B,S] -> Reshape [B*S] -> Gather(table) [B*S,H] -> Reshape [B,S,H]

Some models flatten the token states before a block and restore them after it (OPT's decoder layer runs
its LayerNorm, both MLP Linears, the activation and the residual Add on [B*S, H]; XGLM looks its sinusoidal
positions up at indices flattened to [B*S] and views the rows as [B, S, H] again). Every op in such a
region works on the last axis only, so the region computes the same on [B, S, H]; the fusions, which work
on [B, S, ...] tensors, then see the usual forms. A region is rewritten only when all of it is of that
kind: from the flattening Reshape, ops whose other inputs are constants (a scalar or a vector over the
last axis) or tensors of the region itself, up to Reshapes whose outputs are [B, S, ...] again. Gemm
becomes MatMul + Add (alpha and beta folded into the constants); LayerNormalization takes axis -1. The
probe values of the region's tensors are reshaped along. A region reaching anything else (a graph output,
a Transpose, a Softmax, a constant of another shape) stays as it is.
"""

from __future__ import annotations

import numpy as np

from . import _graph as G

_UNARY = {"Relu", "Erf", "Tanh", "Sigmoid", "Sqrt", "Neg", "Exp", "Abs", "Cast", "Gelu", "Identity"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow"}


def unflatten_rows(graph, facts) -> int:
    count = 0
    for node in list(graph.nodes):
        if node.op != "Reshape" or not node.inputs or not node.outputs:
            continue
        x, y = node.inputs[0], node.outputs[0]
        if not (facts.has(x.name) and facts.has(y.name)):
            continue
        lookup = _flat_lookup(facts, x, y)
        if lookup is not None:
            _rewrite_lookup(graph, facts, x, *lookup)
            count += 1
            continue
        if not _flattens(facts, x, y):
            continue
        region = _region(graph, facts, y)
        if region is None:
            continue
        _rewrite(graph, facts, node, region)
        count += 1
    if count:
        G.finish(graph)
    return count


def _flattens(facts, x, y) -> bool:
    """x is [B, S, H] and y [B*S, H] in every probe (the same values: a Reshape only re-views)."""
    for a, b, f in zip(facts.get(x), facts.get(y), facts.feeds):
        B, S = f["input_ids"].shape
        if a.ndim != 3 or a.shape[:2] != (B, S) or b.shape != (B * S, a.shape[2]):
            return False
    return True


def _flat_lookup(facts, x, y):
    """(Gather, Reshape) where y is x ([B, S] or [1, S] indices) flattened, read only by a Gather of rows of a
    constant table, read only by a Reshape back to x's shape + [N] (XGLM's positions: its sinusoidal table
    looked up at flattened indices); else None."""
    cs = G.consumers(y)
    if len(cs) != 1 or cs[0].op != "Gather" or int(cs[0].attrs.get("axis", 0)) != 0 or cs[0].inputs[1] is not y:
        return None
    gather = cs[0]
    table = G.const_value(gather.inputs[0])
    rs = G.consumers(gather.outputs[0])
    if table is None or table.ndim != 2 or len(rs) != 1 or rs[0].op != "Reshape" or \
            rs[0].inputs[0] is not gather.outputs[0] or not facts.has(rs[0].outputs[0].name):
        return None
    for a, b, r, f in zip(facts.get(x), facts.get(y), facts.get(rs[0].outputs[0]), facts.feeds):
        B, S = f["input_ids"].shape
        if a.ndim != 2 or a.shape[0] not in (1, B) or a.shape[1] != S or b.shape != (a.size,) or \
                r.shape != a.shape + table.shape[1:]:
            return None
    return gather, rs[0]


def _rewrite_lookup(graph, facts, x, gather, reshape) -> None:
    """The Gather reads x itself: its rows come out in x's shape, as the Reshape after it made them."""
    out = gather.outputs[0]
    facts.put(out.name, facts.get(reshape.outputs[0]))
    out.shape = None
    gather.inputs = [gather.inputs[0], x]
    G.replace_uses(graph, reshape.outputs[0], out)


def _bs_again(facts, t) -> bool:
    for a, f in zip(facts.get(t), facts.feeds):
        if a.ndim < 3 or a.shape[:2] != f["input_ids"].shape:
            return False
    return True


def _row_const(t, width_ok) -> bool:
    """A constant broadcasting over the last axis only: a scalar or a vector."""
    v = G.const_value(t)
    return v is not None and (v.size == 1 or (v.ndim == 1 and width_ok(v.shape[0])))


def _region(graph, facts, y):
    """(nodes, tensors, exits) of the region growing from the flattened tensor y; None where it reaches
    something that is not row-wise."""
    tensors = {y.name: y}
    nodes: dict = {}
    exits: list = []
    todo = [y]
    outs = {t.name for t in graph.outputs}
    while todo:
        t = todo.pop()
        if t.name in outs:
            return None
        for c in G.consumers(t):
            if id(c) in nodes or any(c is e for e in exits):
                continue
            op = c.op
            if op == "Reshape" and c.inputs[0] is t:
                if not _bs_again(facts, c.outputs[0]):
                    return None
                exits.append(c)
                continue
            if op in _UNARY or op in _BINARY:
                pass  # a binary op's other operand may join the region later (a residual): checked at the end
            elif op == "LayerNormalization":
                if c.inputs[0] is not t or any(G.const_value(i) is None for i in c.inputs[1:]) or \
                        int(c.attrs.get("axis", -1)) not in (-1, 1) or \
                        any(G.consumers(o) for o in c.outputs[1:]):
                    return None
            elif op == "Gemm":
                if c.inputs[0] is not t or int(c.attrs.get("transA", 0)) or G.const_value(c.inputs[1]) is None or \
                        (len(c.inputs) > 2 and not _row_const(c.inputs[2], lambda n: True)):
                    return None
            elif op == "MatMul":
                w = G.const_value(c.inputs[1])
                if c.inputs[0] is not t or w is None or w.ndim != 2:
                    return None
            else:
                return None
            nodes[id(c)] = c
            for o in c.outputs[:1]:
                tensors[o.name] = o
                todo.append(o)
    # every non-constant input of the region's nodes is the region's own (a residual reads y itself)
    for c in nodes.values():
        ins = c.inputs[:1] if c.op in ("LayerNormalization", "Gemm", "MatMul") else c.inputs
        for i in ins:
            if i.name in tensors:
                continue
            width = facts.get(c.outputs[0])[0].shape[-1]
            if not _row_const(i, lambda n: n == width):
                return None
    return list(nodes.values()), list(tensors.values()), exits


def _rewrite(graph, facts, flatten, region) -> None:
    gs = G.gs()
    nodes, tensors, _ = region
    x, y = flatten.inputs[0], flatten.outputs[0]
    feeds_bs = [f["input_ids"].shape for f in facts.feeds]
    for t in tensors:
        if t is y:
            continue
        facts.put(t.name, [v.reshape(bs + v.shape[1:]) for v, bs in zip(facts.get(t), feeds_bs)])
        t.shape = None
    for c in nodes:
        if c.op == "LayerNormalization":
            c.attrs["axis"] = -1
        elif c.op == "Gemm":
            w = G.const_value(c.inputs[1]).astype(np.float64)
            if int(c.attrs.get("transB", 0)):
                w = w.T
            alpha, beta = float(c.attrs.get("alpha", 1.0)), float(c.attrs.get("beta", 1.0))
            dtype = G.const_value(c.inputs[1]).dtype
            out = c.outputs[0]
            W = G.new_constant(graph, G.unique_name(graph, c.name + ".weight"), (alpha * w).astype(dtype))
            if len(c.inputs) > 2:
                mm = G.new_variable(graph, G.unique_name(graph, out.name + ".mm"), dtype=out.dtype or np.float32)
                bias = G.const_value(c.inputs[2]).astype(np.float64) * beta
                b = G.new_constant(graph, G.unique_name(graph, c.name + ".bias"),
                                   bias.reshape(-1).astype(G.const_value(c.inputs[2]).dtype))
                graph.nodes.append(gs.Node("MatMul", G.unique_name(graph, c.name + ".MatMul"),
                                           inputs=[c.inputs[0], W], outputs=[mm]))
                graph.nodes.append(gs.Node("Add", G.unique_name(graph, c.name + ".Add"), inputs=[mm, b],
                                           outputs=[out]))
                a = [v.astype(np.float64) for v in facts.get(c.inputs[0] if c.inputs[0] is not y else x)]
                facts.put(mm.name, [(v @ (alpha * w)).astype(facts.get(out)[0].dtype) for v in a])
            else:
                graph.nodes.append(gs.Node("MatMul", G.unique_name(graph, c.name + ".MatMul"),
                                           inputs=[c.inputs[0], W], outputs=[out]))
            c.outputs = []
    G.replace_uses(graph, y, x)
