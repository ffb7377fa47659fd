"""Fuse gated MLPs: Mul(act(Linear_gate(x)), Linear_up(x)) -> one gated Linear (SwiGLU, GeGLU).

Llama, Qwen2, Mistral (silu) and Gemma (tanh GELU) compute `down(act(gate(x)) * up(x))`. After fuse_linear
the gate and up projections are two Linears reading the same x, the gate's with an activation; their
product becomes one Linear whose weight is [K, 2N] = [gate | up] and whose epilogue computes
`act(h[:, :N]) * h[:, N:]` (attribute `gated`), so the GPU runs one GEMM and writes N columns instead of
2N twice. The fused op is checked against the product's probe values before the rewrite.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G
from .fuse_linear import ACTIVATIONS
from .probe import agree


def fuse_gated(graph, facts) -> int:
    count = 0
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
        y = mul.outputs[0]
        rows = 8  # as fuse_linear: the first rows of each probe catch a wrong weight or activation
        N = Wg.shape[1]
        ours = []
        for a in facts.get(x):
            h = np.asarray(a, np.float32).reshape(-1, W.shape[0])[:rows] @ W
            h = h.astype(np.float64) + (0 if b is None else b)
            ours.append(ACTIVATIONS[act](h[:, :N]) * h[:, N:])
        if not agree(ours, [np.asarray(v).reshape(-1, N)[:rows] for v in facts.get(y)]):
            raise BuildError(f"{G.node_desc(mul)}: looks like a gated MLP ({act}(gate) * up) but its values do not "
                             f"match one")
        name = gate.name + ".gated"
        weights = {"weight": G.new_constant(graph, name + ".weight", W)}
        if b is not None:
            weights["bias"] = G.new_constant(graph, name + ".bias", b.astype(np.float32))
        G.add_trtrun_node(graph, "Linear", name, inputs={"x": x}, weights=weights, outputs=[y],
                          attrs={"activation": act, "gated": True})
        count += 1
    G.finish(graph)
    return count


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
