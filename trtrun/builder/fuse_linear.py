"""Fuse Linear: MatMul or Gemm with a constant weight, its bias Add, and an activation after it.

    x [B,S,K] -> MatMul(x, W[K,N])                                  -> (+ bias[N]) -> (GELU) -> y
    x [B,S,K] -> Reshape [B*S,K] -> Gemm(., W, C, alpha, beta, transB) -> Reshape [B,S,N] -> ...
    x [B,K]   -> MatMul or Gemm -> ...      (one vector a sample: a pooled state in a classification head)

GELU and SiLU are recognized by their semantics, not one exporter's node order: starting at the Linear's
output t, take the largest set of elementwise nodes (Add/Sub/Mul/Div/Pow/Erf/Tanh/Sqrt/Sigmoid) that read
only t, scalar constants and each other, with exactly one tensor leaving the set. If the set holds
one Erf it must compute gelu_erf(t), one Tanh gelu_tanh(t), one Sigmoid silu(t) = t * sigmoid(t) or CLIP's
quick_gelu(t) = t * sigmoid(1.702 t) (checked on the probe values); opset 20's `Gelu` op and `Relu` are taken as they are, and a lone Tanh is tanh (BERT's
pooler, RoBERTa's classification head). A set without Erf/Tanh (e.g. q * 1/sqrt(d)) is not an activation and
is left alone for the attention pass.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import BuildError
from ..reference import QUICK_GELU_ALPHA
from . import _graph as G
from .probe import agree

_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sqrt", "Sigmoid"}
# the activations a set with one of these ops may compute, tried in order against the probe values
_KINDS = {"Erf": ("gelu_erf",), "Tanh": ("gelu_tanh",), "Sigmoid": ("silu", "quick_gelu")}


def _erf(z):
    try:
        from scipy.special import erf  # optional, fast
    except ImportError:  # pragma: no cover - depends on the environment
        return np.frompyfunc(math.erf, 1, 1)(z).astype(np.float64)
    return erf(z)


def gelu_erf(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def relu(x):
    return np.maximum(np.asarray(x, np.float64), 0.0)


def relu2(x):
    return np.square(relu(x))


def quick_gelu(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-QUICK_GELU_ALPHA * x))


ACTIVATIONS = {"gelu_erf": gelu_erf, "gelu_tanh": gelu_tanh, "silu": silu, "relu": relu, "relu2": relu2,
               "quick_gelu": quick_gelu,
               "tanh": lambda x: np.tanh(np.asarray(x, np.float64)), "none": lambda x: np.asarray(x, np.float64)}


def fuse_linear(graph, facts) -> int:
    count = 0
    for node in list(graph.nodes):
        if node.op not in ("MatMul", "Gemm"):
            continue
        m = _match(graph, node, facts)
        if m is None:
            continue
        x, W, b, pre, act, y, post = m
        # Check the whole Linear against the graph's own values, on the first rows of each probe
        # (enough to catch a wrong weight, bias or activation; the full GEMM costs seconds on
        # real models for nothing more).
        rows = 8
        # fp32 GEMM: its rounding (~sqrt(K) * 6e-8 relative) is far below agree()'s 1e-4
        xs = [np.asarray(a, np.float32).reshape(-1, W.shape[0])[:rows] for a in facts.get(x)]
        ours = [ACTIVATIONS[act]((a @ W).astype(np.float64) + (0 if b is None else b)) for a in xs]
        if not agree(ours, [np.asarray(v).reshape(-1, W.shape[1])[:rows] for v in facts.get(y)]):
            raise BuildError(f"{G.node_desc(node)}: looks like a Linear ({act}) but its values do not "
                             f"match x @ W + b")
        name = _name(node)
        weights = {"weight": G.new_constant(graph, name + ".weight", W)}
        if b is not None:
            weights["bias"] = G.new_constant(graph, name + ".bias", b.astype(np.float32))
        G.add_trtrun_node(graph, "Linear", name, inputs={"x": x}, weights=weights, outputs=[y],
                          attrs={"activation": act})
        if post is not None:  # the old [B*S, N] -> [B, S, ...] Reshape now reads the Linear's output
            back, y3 = post
            back.inputs[0] = y3
        count += 1
    G.finish(graph)
    return count


def _name(node) -> str:
    n = node.name.strip("/")
    for suffix in ("/MatMul", "/Gemm"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    return n.replace("/", ".") or "linear"


def _match(graph, node, facts):
    if node.op == "MatMul":
        a, w = node.inputs[0], node.inputs[1]
        W = G.const_value(w)
        if W is None or W.ndim != 2 or W.dtype.kind != "f":
            return None
        W = W.astype(np.float32, copy=False)
        b = None
    else:
        if int(node.attrs.get("transA", 0)):
            return None
        a, w = node.inputs[0], node.inputs[1]
        W = G.const_value(w)
        if W is None or W.ndim != 2 or W.dtype.kind != "f":
            return None
        W = W.astype(np.float32, copy=False)
        if int(node.attrs.get("transB", 0)):
            W = np.ascontiguousarray(W.T)
        alpha = float(node.attrs.get("alpha", 1.0))
        if alpha != 1.0:
            W = (W * np.float32(alpha)).astype(np.float32)
        b = None
        if len(node.inputs) > 2 and not node.inputs[2].is_empty():
            C = G.const_value(node.inputs[2])
            if C is None or C.size not in (1, W.shape[1]) or (C.size > 1 and C.shape[-1] != W.shape[1]):
                return None
            b = np.broadcast_to(C.astype(np.float64).reshape(-1), (W.shape[1],)) * \
                float(node.attrs.get("beta", 1.0))
    K, N = W.shape
    out = node.outputs[0]
    post = None
    # The input: [B, S, K], or [B*S, K] reshaped from a [B, S, ...] tensor (then the output,
    # [B*S, N], is reshaped back to [B, S, ...]).
    ra = facts.rank(a)
    x = a
    # one vector a sample (a pooled state: a classification head)
    if ra == 2 and facts.sym_shape_or_none(a) == ["B", K]:
        b, out = _bias(out, b, N)
        act, y = _match_activation(out, facts)
        return x, W, b, out, act, y, None
    if ra == 2:
        p = G.producer(a)
        if p is None or p.op != "Reshape" or not _is_bs(facts, p.inputs[0], K):
            return None
        x = p.inputs[0] if facts.rank(p.inputs[0]) == 3 else _reshape_bsk(graph, facts, p.inputs[0], K)
        b, out = _bias(out, b, N)  # a Gemm split into MatMul + Add (e.g. by a quantizer) on [B*S, K] rows
        back = _single(out, "Reshape")
        if back is None or not _is_bs(facts, back.outputs[0], N):
            return None
        if facts.rank(back.outputs[0]) == 3:
            out = back.outputs[0]
        else:  # e.g. straight to [B, S, H, D]: the Linear writes [B, S, N], the Reshape stays
            y3 = G.new_variable(graph, out.name + ".bsn")
            facts.put(y3.name, [v.reshape(xv.shape[:2] + (N,)) for v, xv in zip(facts.get(out), facts.get(x))])
            post = (back, y3)
            return x, W, b, y3, "none", y3, post
    elif ra != 3:
        return None
    if not all(v.shape[-1] == K for v in facts.get(x)):
        return None
    b, out = _bias(out, b, N)
    pre = out
    act, y = _match_activation(pre, facts)
    return x, W, b, pre, act, y, None


def _bias(out, b, N):
    """A constant bias Add reading `out` only -> (bias so far plus it, the Add's output); else (b, out)."""
    add = _single(out, "Add")
    if add is not None:
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        c = G.const_value(other)
        if c is not None and c.dtype.kind == "f" and c.size in (1, N) and (c.size == 1 or c.shape[-1] == N) \
                and c.ndim <= 3:
            cb = np.broadcast_to(c.astype(np.float64).reshape(-1), (N,))
            return (cb if b is None else b + cb), add.outputs[0]
    return b, out


def _is_bs(facts, t, width) -> bool:
    """t is [B, S, ...] (per the probes) with the trailing dims multiplying to `width`."""
    for v, f in zip(facts.get(t), facts.feeds):
        B, S = f["input_ids"].shape
        if v.ndim < 3 or v.shape[:2] != (B, S) or int(np.prod(v.shape[2:])) != width:
            return False
    return True


def _reshape_bsk(graph, facts, u, K):
    """A [B, S, K] view of the [B, S, ...] tensor u: a Reshape to [0, 0, K] (kept for the attention
    pass to walk through; left over, it is reported)."""
    gs = G.gs()
    x = G.new_variable(graph, u.name + ".bsk")
    shape = gs.Constant(G.unique_name(graph, u.name + ".bsk_shape"), np.array([0, 0, K], np.int64))
    graph.nodes.append(gs.Node("Reshape", G.unique_name(graph, u.name + ".reshape_bsk"), inputs=[u, shape],
                               outputs=[x]))
    facts.put(x.name, [v.reshape(v.shape[:2] + (K,)) for v in facts.get(u)])
    return x


def _single(t, op):
    cs = G.consumers(t)
    if len(cs) == 1 and cs[0].op == op:
        return cs[0]
    return None


def _match_activation(t, facts):
    """(activation, output tensor) of the activation applied to t; ("none", t) if there is none."""
    cs = G.consumers(t)
    if len(cs) == 1 and cs[0].op == "Gelu":
        approx = cs[0].attrs.get("approximate", "none")
        act = "gelu_tanh" if approx == "tanh" else "gelu_erf"
        return act, cs[0].outputs[0]
    if len(cs) == 1 and cs[0].op == "Relu":  # T5 v1.0, OPT: one op in every exporter's output
        r = cs[0].outputs[0]
        sq = G.consumers(r)
        if len(sq) == 1 and ((sq[0].op == "Mul" and list(sq[0].inputs) == [r, r]) or
                             (sq[0].op == "Pow" and sq[0].inputs[0] is r and G.scalar_const(sq[0].inputs[1]) == 2.0)):
            return "relu2", sq[0].outputs[0]  # squared ReLU (Nemotron): torch.square(relu(x))
        return "relu", r
    # grow the closed elementwise set
    members: list = []
    inside = {id(t)}
    changed = True
    while changed:
        changed = False
        frontier = [c for tt in [t] + [o for n in members for o in n.outputs] for c in G.consumers(tt)]
        for n in frontier:
            if n in members or n.op not in _ELEMENTWISE:
                continue
            ok = all(id(i) in inside or G.scalar_const(i) is not None for i in n.inputs)
            if ok:
                members.append(n)
                inside.update(id(o) for o in n.outputs)
                changed = True
    if len(members) == 1 and members[0].op == "Tanh" and len(G.consumers(t)) == 1:
        return "tanh", members[0].outputs[0]  # tanh alone (BERT's pooler), not GELU's tanh form
    kinds = [n.op for n in members if n.op in _KINDS]
    if len(kinds) != 1:
        return "none", t
    # exactly one tensor may leave the set, and t must be read only inside it
    if any(c not in members for c in G.consumers(t)):
        return "none", t
    leaving = [o for n in members for o in n.outputs
               if any(c not in members for c in G.consumers(o)) or not G.consumers(o)]
    if len(leaving) != 1:
        return "none", t
    y = leaving[0]
    # Tight check: both sides start from the same fp32 t, so only a few ulps separate them, while
    # gelu_erf and gelu_tanh differ by ~1e-4 at |t| ~ 1 (silu and quick_gelu by far more).
    xs, ys = facts.get(t), facts.get(y)
    for act in _KINDS[kinds[0]]:
        if all(np.all(np.abs(ref - yv) <= 1e-5 * (1 + np.abs(ref)))
               for ref, yv in ((ACTIVATIONS[act](xv), yv) for xv, yv in zip(xs, ys))):
            return act, y
    raise BuildError(f"the elementwise subgraph after {t.name!r} with an {kinds[0]} looks like an activation but "
                     f"does not compute {' or '.join(_KINDS[kinds[0]])}")
