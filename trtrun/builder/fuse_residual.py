"""Fold the residual Add into the norm that reads it: LN(Add(a, b)) -> LayerNorm(x=a, residual=b) (RMSNorm alike).

If the sum is also read elsewhere (the pre-LN residual stream of GPT-2), the LayerNorm writes it as
its second output. `x` is the operand a Linear wrote (the branch), `residual` the other (the stream),
which the hybrid precision rules rely on to keep the stream in fp32.

Then an Add of a norm's output (read by nothing else) and the stream that no later norm reads: Add(r, LN(x))
-> LayerNorm(x, residual=r, residual_after) (OLMo-2 normalizes each block's output and adds it to the stream,
which the next block's projections read directly).
"""

from __future__ import annotations

from . import _graph as G


def fuse_residual(graph, facts) -> int:
    count = 0
    for ln in [n for n in graph.nodes if G.is_trtrun(n) and n.op in G.NORMS]:
        if G.slot(ln, "residual") is not None:
            continue
        s = G.slot(ln, "x")
        add = G.producer(s)
        if add is None or add.op != "Add":
            continue
        a, b = add.inputs
        if G.const_value(a) is not None or G.const_value(b) is not None:
            continue
        if not all(va.shape == vb.shape == vs.shape for va, vb, vs in
                   zip(facts.get(a), facts.get(b), facts.get(s))):
            continue  # a broadcasting Add is not a residual
        pa, pb = G.producer(a), G.producer(b)
        if pb is not None and G.is_trtrun(pb, "Linear") and not (pa is not None and G.is_trtrun(pa, "Linear")):
            a, b = b, a
        others = [c for c in G.consumers(s) if c is not ln]
        outputs = [G.slot(ln, "y")]
        if others or s in graph.outputs:
            outputs.append(s)
        name = G.rename_node(graph, ln, ln.name + ".unfused")
        roles = G.OP_SLOTS[ln.op][1]
        G.add_trtrun_node(graph, ln.op, name, inputs={"x": a, "residual": b},
                          weights={r: G.slot(ln, r) for r in roles},
                          outputs=outputs, attrs=dict(ln.attrs))
        # the old LayerNorm lost its output; it and the Add (unless still read) are now dead
        ln.inputs.clear()
        count += 1
    G.finish(graph)
    count += _residual_after(graph, facts)
    return count


def _residual_after(graph, facts) -> int:
    count = 0
    for ln in [n for n in graph.nodes if G.is_trtrun(n) and n.op in G.NORMS]:
        if G.slot(ln, "residual") is not None or G.slot(ln, "sum") is not None:
            continue
        y = G.slot(ln, "y")
        cs = G.consumers(y)
        if len(cs) != 1 or cs[0].op != "Add" or y in graph.outputs:
            continue
        add = cs[0]
        r = next((i for i in add.inputs if i is not y), None)
        if r is None or G.const_value(r) is not None or \
                not all(vr.shape == vy.shape for vr, vy in zip(facts.get(r), facts.get(y))):
            continue  # Add(y, y), a constant or a broadcast: not a residual
        name = G.rename_node(graph, ln, ln.name + ".unfused")
        roles = G.OP_SLOTS[ln.op][1]
        G.add_trtrun_node(graph, ln.op, name, inputs={"x": G.slot(ln, "x"), "residual": r},
                          weights={k: G.slot(ln, k) for k in roles}, outputs=[add.outputs[0]],
                          attrs={**ln.attrs, "residual_after": True})
        ln.inputs.clear()
        count += 1
    if count:
        G.finish(graph)
    return count
