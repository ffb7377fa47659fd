"""Unflatten heads: attention computed with the heads folded into the batch ([B*H, S, *]) done on [B, H, S, *].

    q/k/v [B,H,S,D] -> Reshape [B*H,S,D] -> MatMul, Transpose, Mul, Add, Softmax ... -> Reshape [B,H,S,*]

BLOOM and XGLM (and the fairseq-style code they come from) view the per-head tensors as [B*H, S, D] and run
the score MatMul, scaling, bias, softmax and the probabilities' MatMul as batched 3-D products; some of them
view the scores as [B, H, S, S] in between to add the mask. Every such op treats the leading axis as a batch,
so the same ops on the [B, H, ...] tensors compute the same values, and attention then has the [B, H, S, S]
form fuse_attention reads. The rewrite:
- entries: a Reshape of a [B, H, a, b] tensor to [B*H, a, b]; its readers read the 4-D tensor instead;
- the region: every op reached from an entry, each of a kind that treats axis 0 as a batch (MatMul, a
  Transpose that keeps axis 0 first, Softmax over a later axis, elementwise ops); a Transpose's perm and a
  Softmax's axis move by one;
- other operands: constants and tensors that broadcast over the leading axis (rank 2 or less, or a leading
  1) as they are; a [B*H, ...] tensor from outside the region (BLOOM's ALiBi bias) viewed as [B, H, ...];
- exits: a Reshape of a region tensor to [B, H, ...] is dropped, its readers read the 4-D tensor; a Shape of
  a region tensor still gives the [B*H, ...] sizes, computed from the 4-D tensor's Shape (which decouple_shapes
  then reads off input_ids).
All regions are rewritten, or none: where an op reached from an entry is of another kind (or writes a graph
output), the graph is left as it is, and if the entries meet in a MatMul (attention) fuse_attention's error
names that op. The probe values of the region's tensors are reshaped along.
"""

from __future__ import annotations

import numpy as np

from . import _graph as G

_UNARY = {"Cast", "Identity", "Tanh", "Exp", "Log", "Erf", "Neg", "Abs", "Sqrt", "Sigmoid", "Relu", "IsNaN", "Not",
          "Reciprocal", "Dropout"}
_NARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "LessOrEqual", "Greater",
         "GreaterOrEqual", "And", "Or"}
_SOFTMAX = {"Softmax", "LogSoftmax"}


def unflatten_heads(graph, facts) -> int:
    """Rewrite every [B*H, S, *] attention region on [B, H, S, *]; the number of entries rewritten (0: none
    found, and the graph is unchanged). Where an attention region (one with a product of two head-folded
    tensors) reaches an op that does not keep the heads' axis a batch, nothing is rewritten and the graph keeps
    a message naming that op, and the region's nodes, for fuse_attention to raise at a Softmax they feed."""
    entries = {}
    for n in graph.nodes:
        h = _entry_heads(facts, n)
        if h:
            entries[n.outputs[0].name] = (n, h)
    if not entries:
        return 0
    lifted, nodes, exits, shapes, foreign, refused = _regions(graph, facts, entries)
    if not any(n.op == "MatMul" and all(i.name in lifted for i in n.inputs) for n in nodes):
        return 0  # no product of two head-folded tensors: not attention
    if refused:  # fuse_attention says so where it cannot read the attention (after its more specific checks)
        n, why = refused[0]
        graph.__dict__["_trtrun_heads_refused"] = (
            f"{G.node_desc(n)}: attention computed with the heads folded into the batch ([B*H, S, *] tensors, as "
            f"BLOOM and XGLM compute it) reaches this op, which {why}; the builder reads such attention only "
            f"through ops that keep that axis a batch", frozenset([n.name, *(m.name for m in nodes)]))
        return 0
    _rewrite(graph, facts, entries, lifted, nodes, exits, shapes, foreign)
    G.finish(graph)
    return len(entries)


def _batch(facts):
    return [int(f["input_ids"].shape[0]) for f in facts.feeds]


def _heads_of(facts, t) -> int | None:
    """H if t is [B*H, ...] of rank 3 in every probe for one H > 1, else None."""
    if not facts.has(t.name):
        return None
    hs = set()
    for v, B in zip(facts.get(t), _batch(facts)):
        if v.ndim != 3 or v.shape[0] % B:
            return None
        hs.add(v.shape[0] // B)
    h = hs.pop() if len(hs) == 1 else 0
    return h if h > 1 else None


def _entry_heads(facts, n) -> int | None:
    """H if n is a Reshape of [B, H, a, b] to [B*H, a, b] in every probe."""
    if n.op != "Reshape" or not n.outputs or not facts.has(n.inputs[0].name) or not facts.has(n.outputs[0].name):
        return None
    hs = set()
    for x, y, B in zip(facts.get(n.inputs[0]), facts.get(n.outputs[0]), _batch(facts)):
        if x.ndim != 4 or x.shape[0] != B or y.shape != (B * x.shape[1],) + x.shape[2:]:
            return None
        hs.add(x.shape[1])
    h = hs.pop() if len(hs) == 1 else 0
    return h if h > 1 else None


def _is_exit(facts, n, H) -> bool:
    """n reshapes a [B*H, a, b] region tensor to [B, H, a, b] in every probe."""
    if n.op != "Reshape" or not facts.has(n.outputs[0].name):
        return False
    for x, y, B in zip(facts.get(n.inputs[0]), facts.get(n.outputs[0]), _batch(facts)):
        if y.shape != (B, H) + x.shape[1:]:
            return False
    return True


def _broadcasts(facts, t) -> bool:
    """t broadcasts over a leading [B*H] or [B, H] the same way: rank 2 or less, or a leading 1."""
    vals = [G.const_value(t)] if G.const_value(t) is not None else (facts.get(t) if facts.has(t.name) else None)
    return vals is not None and all(v.ndim <= 2 or (v.ndim == 3 and v.shape[0] == 1) for v in vals)


def _regions(graph, facts, entries):
    """(lifted {name: H}, region nodes, exit Reshapes, Shape readers, foreign operands {name: H}, refused
    [(node, why)]): the ops reached from the entries, each of the kinds above or refused (its outputs are then
    not followed)."""
    lifted = {name: h for name, (_, h) in entries.items()}
    nodes, exits, shapes, foreign, refused = [], [], [], {}, []
    outs = {t.name for t in graph.outputs}
    for n in graph.nodes:  # topological order: a node's region inputs are known when it is reached
        if n.outputs and n.outputs[0].name in entries:
            continue
        ins = [i for i in n.inputs if not i.is_empty()]
        hs = {lifted[i.name] for i in ins if i.name in lifted}
        if not hs:
            continue
        why = _why_not(facts, n, ins, lifted, hs, outs)
        if why:
            refused.append((n, why))
            continue
        H = hs.pop()
        if n.op == "Shape":
            shapes.append(n)
            continue
        if n.op == "Reshape":
            exits.append(n)
            continue
        nodes.append(n)
        for i in ins:
            if i.name not in lifted and G.const_value(i) is None and _heads_of(facts, i) == H:
                foreign[i.name] = H
        for o in n.outputs:
            if not o.is_empty():
                lifted[o.name] = H
    return lifted, nodes, exits, shapes, foreign, refused


def _why_not(facts, n, ins, lifted, hs, outs) -> str | None:
    """None if n can take [B, H, ...] tensors where it took [B*H, ...] ones, else why not."""
    if len(hs) != 1:
        return "mixes tensors of different head counts"
    H = next(iter(hs))
    if n.op == "Shape":
        return None
    if n.op == "Reshape":
        return None if n.inputs[0].name in lifted and _is_exit(facts, n, H) else "reshapes them otherwise"
    if n.op == "Transpose":
        if list(n.attrs.get("perm", [2, 1, 0]))[0] != 0:
            return "moves the batch axis"
    elif n.op in _SOFTMAX:
        if int(n.attrs.get("axis", -1)) not in (-1, 1, 2):
            return "normalizes over the batch axis"
    elif n.op == "MatMul" or n.op in _UNARY or n.op in _NARY:
        for i in ins:
            if i.name not in lifted and not (G.const_value(i) is None and _heads_of(facts, i) == H) and \
                    not _broadcasts(facts, i):
                return f"combines them with {i.name!r}, which is neither head-folded nor broadcast over heads"
    else:
        return "is not one the builder lifts to [B, H, S, *] (MatMul, Transpose, Softmax, elementwise ops)"
    for o in n.outputs:
        if not o.is_empty() and (o.name in outs or _heads_of(facts, o) != H):
            return "gives a graph output or a tensor of another layout"
    return None


def _split_heads(graph, facts, t, H: int):
    """t [B*H, ...] viewed as [B, H, ...]: Reshape(t, [-1, H] + Shape(t)[1:]); the new tensor."""
    gs = G.gs()
    name = t.name + ".heads"
    shape = gs.Variable(G.unique_name(graph, name + ".Shape"), dtype=np.int64)
    tail = gs.Variable(G.unique_name(graph, name + ".tail"), dtype=np.int64)
    dims = gs.Variable(G.unique_name(graph, name + ".dims"), dtype=np.int64)
    out = gs.Variable(G.unique_name(graph, name), dtype=t.dtype)
    graph.nodes += [
        gs.Node("Shape", G.unique_name(graph, name + ".Shape"), inputs=[t], outputs=[shape]),
        gs.Node("Slice", G.unique_name(graph, name + ".Slice"),
                inputs=[shape, G.new_constant(graph, name + ".start", np.array([1], np.int64)),
                        G.new_constant(graph, name + ".end", np.array([np.iinfo(np.int64).max], np.int64))],
                outputs=[tail]),
        gs.Node("Concat", G.unique_name(graph, name + ".Concat"), attrs={"axis": 0},
                inputs=[G.new_constant(graph, name + ".head", np.array([-1, H], np.int64)), tail], outputs=[dims]),
        gs.Node("Reshape", G.unique_name(graph, name + ".Reshape"), inputs=[t, dims], outputs=[out]),
    ]
    vals = facts.get(t)
    facts.put(shape.name, [np.array(v.shape, np.int64) for v in vals])
    facts.put(tail.name, [np.array(v.shape[1:], np.int64) for v in vals])
    facts.put(dims.name, [np.array((-1, H) + v.shape[1:], np.int64) for v in vals])
    facts.put(out.name, [v.reshape((-1, H) + v.shape[1:]) for v in vals])
    return out


def _folded_shape(graph, facts, node) -> None:
    """Make a Shape node of a lifted [B, H, ...] tensor give the [B*H, ...] shape it gave before, computed
    from the 4-D tensor's own Shape (which decouple_shapes then reads off input_ids like any other)."""
    gs = G.gs()
    x, out = node.inputs[0], node.outputs[0]
    name = out.name + ".heads"
    i64 = lambda k, v: G.new_constant(graph, f"{name}.{k}", np.array(v, np.int64))
    s4 = gs.Variable(G.unique_name(graph, name + ".Shape"), dtype=np.int64)
    parts = {k: gs.Variable(G.unique_name(graph, f"{name}.{k}"), dtype=np.int64) for k in ("b", "h", "bh", "tail")}
    full = gs.Variable(G.unique_name(graph, name + ".full"), dtype=np.int64)
    graph.nodes += [
        gs.Node("Shape", G.unique_name(graph, name + ".Shape"), inputs=[x], outputs=[s4]),
        gs.Node("Slice", G.unique_name(graph, name + ".b"), inputs=[s4, i64("0", [0]), i64("1", [1])],
                outputs=[parts["b"]]),
        gs.Node("Slice", G.unique_name(graph, name + ".h"), inputs=[s4, i64("1", [1]), i64("2", [2])],
                outputs=[parts["h"]]),
        gs.Node("Mul", G.unique_name(graph, name + ".bh"), inputs=[parts["b"], parts["h"]], outputs=[parts["bh"]]),
        gs.Node("Slice", G.unique_name(graph, name + ".tail"),
                inputs=[s4, i64("2", [2]), i64("end", [np.iinfo(np.int64).max])], outputs=[parts["tail"]]),
        gs.Node("Concat", G.unique_name(graph, name + ".Concat"), attrs={"axis": 0},
                inputs=[parts["bh"], parts["tail"]], outputs=[full]),
    ]
    shapes = [np.array(v.shape, np.int64) for v in facts.get(x)]
    facts.put(s4.name, shapes)
    facts.put(parts["b"].name, [s[:1] for s in shapes])
    facts.put(parts["h"].name, [s[1:2] for s in shapes])
    facts.put(parts["bh"].name, [s[:1] * s[1:2] for s in shapes])
    facts.put(parts["tail"].name, [s[2:] for s in shapes])
    facts.put(full.name, [np.concatenate([s[:1] * s[1:2], s[2:]]) for s in shapes])
    start, end = node.attrs.get("start"), node.attrs.get("end")
    if start is None and end is None:
        G.replace_uses(graph, out, full)
        return
    node.op, node.attrs = "Slice", {}
    node.inputs = [full, i64("start", [int(start or 0)]),
                   i64("stop", [np.iinfo(np.int64).max if end is None else int(end)])]


def _rewrite(graph, facts, entries, lifted, nodes, exits, shapes, foreign) -> None:
    B = _batch(facts)
    entry_src = {name: n.inputs[0] for name, (n, _) in entries.items()}
    tensors = graph.tensors()
    split = {name: _split_heads(graph, facts, tensors[name], H) for name, H in foreign.items()}
    for n in nodes:
        H = next(lifted[i.name] for i in n.inputs if i.name in lifted)
        n.inputs = [entry_src.get(i.name, split.get(i.name, i)) for i in n.inputs]
        if n.op == "Transpose":
            n.attrs["perm"] = [0, 1] + [p + 1 for p in list(n.attrs["perm"])[1:]]
        elif n.op in _SOFTMAX:
            a = int(n.attrs.get("axis", -1))
            n.attrs["axis"] = -1 if a == -1 else a + 1
        for o in n.outputs:
            if not o.is_empty():
                facts.put(o.name, [v.reshape((b, H) + v.shape[1:]) for v, b in zip(facts.get(o), B)])
                o.shape = None
    for n in exits:
        x = n.inputs[0]
        G.replace_uses(graph, n.outputs[0], entry_src.get(x.name, x))
    for n in shapes:
        x = n.inputs[0]
        if x.name not in entry_src:  # (an entry's Reshape stays for its Shape readers)
            _folded_shape(graph, facts, n)
