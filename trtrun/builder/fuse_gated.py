"""Fuse gated MLPs: Mul(act(Linear_gate(x)), Linear_up(x)) -> one gated Linear (SwiGLU, GeGLU).

Llama, Qwen2, Mistral (silu) and Gemma (tanh GELU) compute `down(act(gate(x)) * up(x))`. After fuse_linear
the gate and up projections are two Linears reading the same x, the gate's with an activation; their
product becomes one Linear whose weight is [K, 2N] = [gate | up] and whose epilogue computes
`act(h[:, :N]) * h[:, N:]` (attribute `gated`), so the GPU runs one GEMM and writes N columns instead of
2N twice. The fused op is checked against the product's probe values before the rewrite.

ModernBERT (and other GeGLU encoders) project once to 2N and split it: `act(h[..., :N]) * h[..., N:]` with
`h = Linear(x)` read only by two Slices (or a Split) into halves: the same gated Linear, its weight columns
reordered when the activation is on the second half.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G
from .fuse_linear import ACTIVATIONS
from .probe import agree


def fuse_gated(graph, facts) -> int:
    count = _fuse_split_gated(graph, facts)
    for mul in [n for n in graph.nodes if n.op == "Mul"]:
        m = _match(mul)
        if m is None:
            continue
        gate, up = m
        x = G.slot(gate, "x")
        act = gate.attrs.get("activation", "none")
        Wg, Wu = (G.const_value(G.slot(n, "weight")).astype(np.float32) for n in (gate, up))
        if Wg.shape != Wu.shape:
            continue
        bg, bu = (_bias(n, Wg.shape[1]) for n in (gate, up))
        W = np.concatenate([Wg, Wu], 1)
        b = None if bg is None and bu is None else np.concatenate([
            bg if bg is not None else np.zeros(Wg.shape[1], np.float32),
            bu if bu is not None else np.zeros(Wu.shape[1], np.float32)])
        _replace(graph, facts, mul, gate.name, x, W, b, act, f"a gated MLP ({act}(gate) * up)")
        count += 1
    G.finish(graph)
    return count


def _halves(facts, h, N2):
    """The two tensors that hold h[..., :N] and h[..., N:] (by probe values), h read only by Slice/Split."""
    cs = G.consumers(h)
    outs = [o for c in cs for o in c.outputs] if all(c.op in ("Slice", "Split") for c in cs) else []
    if len(outs) != 2:
        return None
    N = N2 // 2
    hv = facts.get(h)
    found = [None, None]
    for o in outs:
        for k, part in enumerate((slice(0, N), slice(N, N2))):
            if all(np.asarray(v).shape == np.asarray(a)[..., part].shape and np.array_equal(v, np.asarray(a)[..., part])
                   for v, a in zip(facts.get(o), hv)):
                found[k] = o
    return found if found[0] is not None and found[1] is not None and found[0] is not found[1] else None


def _fuse_split_gated(graph, facts) -> int:
    from .fuse_linear import _match_activation

    count = 0
    for lin in [n for n in graph.nodes if G.is_trtrun(n, "Linear")]:
        if lin.attrs.get("activation", "none") != "none" or lin.attrs.get("gated"):
            continue
        h = lin.outputs[0]
        W = G.const_value(G.slot(lin, "weight")).astype(np.float32)
        if W.shape[1] % 2 or h in graph.outputs:
            continue
        halves = _halves(facts, h, W.shape[1])
        if halves is None:
            continue
        (act0, y0), (act1, y1) = _match_activation(halves[0], facts), _match_activation(halves[1], facts)
        if (act0 == "none") == (act1 == "none"):
            continue
        first = act0 != "none"  # the activation on the first half: columns as they are
        act, ya, yb = (act0, y0, halves[1]) if first else (act1, y1, halves[0])
        cs = G.consumers(ya)
        if len(cs) != 1 or cs[0].op != "Mul" or set(map(id, cs[0].inputs)) != {id(ya), id(yb)} or \
                len(G.consumers(yb)) != 1:
            continue
        mul = cs[0]
        N = W.shape[1] // 2
        b = _bias(lin, W.shape[1])
        if not first:
            W = np.concatenate([W[:, N:], W[:, :N]], 1)
            b = None if b is None else np.concatenate([b[N:], b[:N]])
        _replace(graph, facts, mul, lin.name, G.slot(lin, "x"), W, b, act,
                 f"a gated MLP ({act}(half) * other half of one projection)")
        count += 1
    G.finish(graph)
    return count


def _replace(graph, facts, mul, base, x, W, b, act, what) -> None:
    """Check act(h[:, :N]) * h[:, N:] with h = x @ W + b against the probe values of `mul`'s output, then
    replace it by one gated Linear named after `base` (both forms of the pattern end here)."""
    rows = 8  # as fuse_linear: the first rows of each probe catch a wrong weight or activation
    y, N = mul.outputs[0], W.shape[1] // 2
    ours = []
    for a in facts.get(x):
        h = np.asarray(a, np.float32).reshape(-1, W.shape[0])[:rows] @ W
        h = h.astype(np.float64) + (0 if b is None else b)
        ours.append(ACTIVATIONS[act](h[:, :N]) * h[:, N:])
    if not agree(ours, [np.asarray(v).reshape(-1, N)[:rows] for v in facts.get(y)]):
        raise BuildError(f"{G.node_desc(mul)}: looks like {what} but its values do not match one")
    name = base + ".gated"
    weights = {"weight": G.new_constant(graph, name + ".weight", W)}
    if b is not None:
        weights["bias"] = G.new_constant(graph, name + ".bias", b.astype(np.float32))
    G.add_trtrun_node(graph, "Linear", name, inputs={"x": x}, weights=weights, outputs=[y],
                      attrs={"activation": act, "gated": True})


def _bias(node, n):
    t = G.slot(node, "bias")
    return None if t is None else G.const_value(t).astype(np.float32).reshape(n)


def _match(mul):
    """(gate Linear, up Linear) if `mul` multiplies an activated Linear by a plain one of the same input."""
    a, b = mul.inputs[0], mul.inputs[1]
    pa, pb = G.producer(a), G.producer(b)
    if pa is None or pb is None or not (G.is_trtrun(pa, "Linear") and G.is_trtrun(pb, "Linear")):
        return None
    if len(G.consumers(a)) != 1 or len(G.consumers(b)) != 1 or a is b:
        return None
    if G.slot(pa, "x") is not G.slot(pb, "x") or pa.attrs.get("gated") or pb.attrs.get("gated"):
        return None
    acts = (pa.attrs.get("activation", "none"), pb.attrs.get("activation", "none"))
    if acts[0] != "none" and acts[1] == "none":
        return pa, pb
    if acts[1] != "none" and acts[0] == "none":
        return pb, pa
    return None
