"""Fold an Add of a Linear's output and another activation into the Linear: y = x @ W + b + residual.

GPT-NeoX's parallel residual computes `x + attn(ln1(x)) + mlp(ln2(x))`: after fuse_residual has folded the
stream's Add into the next LayerNorm, the sum of the two branches is left, an Add of two Linear outputs. The
Linear whose output only that Add reads takes the other operand as its `residual` input (an epilogue add of
the GEMM, as cuBLASLt's bias/residual epilogues do). Shapes must agree in every probe (a broadcasting Add is
no residual); the fused op is checked against the Add's probe values.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G
from .probe import agree


def fuse_linear_residual(graph, facts) -> int:
    count = 0
    for add in [n for n in graph.nodes if n.op == "Add" and not G.is_trtrun(n)]:
        a, b = add.inputs[0], add.inputs[1]
        if G.const_value(a) is not None or G.const_value(b) is not None:
            continue
        y = add.outputs[0]
        if not all(va.shape == vb.shape == vy.shape for va, vb, vy in zip(facts.get(a), facts.get(b), facts.get(y))):
            continue
        for t, other in ((a, b), (b, a)):
            lin = G.producer(t)
            if lin is None or not G.is_trtrun(lin, "Linear") or G.slot(lin, "residual") is not None:
                continue
            if len(G.consumers(t)) != 1 or t in graph.outputs or other is t:
                continue
            ours = [np.asarray(u, np.float64) + np.asarray(v, np.float64) for u, v in zip(facts.get(t), facts.get(other))]
            if not agree(ours, facts.get(y)):
                raise BuildError(f"{G.node_desc(add)}: an Add of {t.name!r} and {other.name!r} whose values are not "
                                 f"their sum")
            name = G.rename_node(graph, lin, lin.name + ".unfused")
            roles = G.OP_SLOTS["Linear"][1]
            G.add_trtrun_node(graph, "Linear", name, inputs={"x": G.slot(lin, "x"), "residual": other},
                              weights={r: G.slot(lin, r) for r in roles}, outputs=[y], attrs=dict(lin.attrs))
            lin.inputs.clear()
            count += 1
            break
    G.finish(graph)
    return count
