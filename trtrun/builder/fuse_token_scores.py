"""Fuse per-token scores: a Linear's few output columns split into [B, S] outputs -> one single-column Linear each.

Extractive question answering (`*ForQuestionAnswering`: deepset's SQuAD models and the like) ends in a Linear of
two columns over the token states whose columns become two graph outputs, start_logits and end_logits [B, S]:

    y [B, S, N] = Linear(x);  Split(y, axis=-1, N x 1) -> [B, S, 1] each -> Squeeze(axis -1) -> [B, S]

(or a Slice / Gather of one column along the last axis). Each [B, S] output becomes a Linear of that one column (its
weight column and bias), writing the output directly; the plan declares it [B, S] (format 4). Confirmed by value:
the probe values of each output must be the Linear's column. The GPU runtime runs these on the host after the
token states come back (docs/runtime.md, "The host tail"): a [B*S, K] x [K, 1] product each.
"""

from __future__ import annotations

import numpy as np

from . import _graph as G
from .probe import agree

_TAKE = ("Split", "Slice", "Gather", "Squeeze", "Reshape", "Identity")


def fuse_token_scores(graph, facts) -> int:
    count = 0
    outputs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        if not G.is_trtrun(node, "Linear") or G.slot(node, "residual") is not None:
            continue
        y = G.slot(node, "y")
        if y is None or id(y) in outputs or node.attrs.get("activation", "none") != "none" or \
                node.attrs.get("gated"):
            continue
        W = G.const_value(G.slot(node, "weight"))
        b = G.slot(node, "bias")
        bias = None if b is None else G.const_value(b)
        if W is None or W.ndim != 2 or not 1 < W.shape[1] <= 8:
            continue
        ends = _column_outputs(y, outputs, facts)
        if not ends:
            continue
        yv = facts.get(y)
        picks = []
        for t in ends:  # which column each output is, by value
            col = next((j for j in range(W.shape[1])
                        if agree([v[..., j] for v in yv], facts.get(t))), None)
            if col is None:
                picks = []
                break
            picks.append((t, col))
        if not picks:
            continue
        x = G.slot(node, "x")
        for t, j in picks:
            weights = {"weight": G.new_constant(graph, f"{node.name}.col{j}.weight", W[:, j:j + 1].copy())}
            if bias is not None:
                weights["bias"] = G.new_constant(graph, f"{node.name}.col{j}.bias",
                                                 np.asarray(bias, np.float32).reshape(-1)[j:j + 1].copy())
            p = G.producer(t)
            p.outputs.clear()  # the Squeeze (or Gather) no longer writes it: the single-column Linear does
            G.add_trtrun_node(graph, "Linear", f"{node.name}.col{j}", inputs={"x": x}, weights=weights, outputs=[t],
                              attrs={"activation": "none"})
            count += 1
    G.finish(graph)
    return count


def _column_outputs(y, outputs: set, facts) -> list:
    """The graph outputs of shape [B, S] that y [B, S, N] reaches through Split/Slice/Gather/Squeeze/Reshape only, each
    one column; [] if y is read in any other way."""
    ends, stack, seen = [], [y], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        cs = G.consumers(t)
        if id(t) in outputs:
            if facts.sym_shape_or_none(t) != ["B", "S"] or cs:
                return []
            ends.append(t)
            continue
        if not cs or t is not y and facts.rank(t) not in (2, 3):
            return []
        for c in cs:
            if c.op not in _TAKE:
                return []
            stack.extend(c.outputs)
    return ends
