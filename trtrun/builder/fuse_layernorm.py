"""Fuse LayerNorm: ONNX `LayerNormalization`, or its decomposition, into trtrun LayerNorm (no residual yet).

Recognized decomposition (torch's TorchScript exporter below opset 17 writes it; operand order of
the commutative ops is free):

    mean = ReduceMean(x, axes=[-1]);  d = Sub(x, mean)
    var  = ReduceMean(Pow(d, 2) | Mul(d, d), axes=[-1])
    std  = Sqrt(Add(var, eps))
    n    = Div(d, std) | Mul(d, Reciprocal(std)) | Mul(d, Div(1, std))
    y    = Add(Mul(n, gamma), beta)       (gamma and beta optional)

Each match is confirmed against the probe values before it is replaced.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G
from .probe import agree


def fuse_layernorm(graph, facts) -> int:
    count = 0
    for node in list(graph.nodes):
        if node.op == "LayerNormalization":
            m = _match_onnx(node, facts)
        elif node.op == "ReduceMean":
            m = _match_decomposed(node, facts)
        else:
            continue
        if m is None:
            continue
        x, y, gamma, beta, eps, first = m
        xs = facts.get(x)
        ours = [_layernorm(a, gamma, beta, eps) for a in xs]
        if not agree(ours, facts.get(y)):
            raise BuildError(f"{G.node_desc(first)}: looks like a LayerNorm over the last axis but its "
                             f"values do not match one (epsilon {eps:g})")
        G.add_trtrun_node(graph, "LayerNorm", _name(first), inputs={"x": x},
                          weights={"gamma": G.new_constant(graph, _name(first) + ".gamma", gamma),
                                   "beta": G.new_constant(graph, _name(first) + ".beta", beta)},
                          outputs=[y], attrs={"epsilon": float(eps)})
        count += 1
    G.finish(graph)
    return count


def _name(node) -> str:
    n = node.name.strip("/")
    for suffix in ("/LayerNormalization", "/ReduceMean"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    return n.replace("/", ".") or "layernorm"


def _layernorm(x, gamma, beta, eps):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _vector(t, n: int):
    """A Constant broadcastable to [n] (after squeezing leading 1s) -> float32 [n], else None."""
    v = G.const_value(t)
    if v is None or v.dtype.kind != "f":
        return None
    if v.size == 1:
        return np.full(n, float(v.reshape(())), np.float32)
    if v.size == n and v.shape[-1] == n:
        return v.reshape(n).astype(np.float32)
    return None


def _last_axis(node, facts) -> bool:
    """A ReduceMean over exactly the last axis, keeping dims."""
    if int(node.attrs.get("keepdims", 1)) != 1:
        return False
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        v = G.const_value(node.inputs[1])
        axes = None if v is None else [int(a) for a in v.reshape(-1)]
    if axes is None or len(axes) != 1:
        return False
    r = facts.rank(node.inputs[0])
    return axes[0] in (-1, r - 1)


def _only(t, op: str | tuple):
    """The single consumer of t if it has exactly one and it is `op`."""
    cs = G.consumers(t)
    ops = (op,) if isinstance(op, str) else op
    if len(cs) == 1 and cs[0].op in ops:
        return cs[0]
    return None


def _other(node, t):
    """The other input of a binary node, given one of them."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a is t else a if b is t else None


def _eps_sqrt(t):
    """Sqrt(Add(t, eps)) as t's only consumers, eps a non-negative scalar: (eps, the Sqrt's output), else None."""
    add = _only(t, "Add")
    if add is None:
        return None
    eps = G.scalar_const(_other(add, t))
    if eps is None or eps < 0:
        return None
    sqrt = _only(add.outputs[0], "Sqrt")
    return None if sqrt is None else (eps, sqrt.outputs[0])


def _scaled(y, n: int):
    """(gamma, output) of an optional Mul(y, gamma) after y, gamma a constant broadcastable to [n]; without
    one, (ones, y)."""
    mul = _only(y, "Mul")
    g = _vector(_other(mul, y), n) if mul is not None else None
    return (g, mul.outputs[0]) if g is not None else (np.ones(n, np.float32), y)


def _match_onnx(node, facts):
    x = node.inputs[0]
    y = node.outputs[0]
    if any(o.outputs for o in node.outputs[1:]):
        return None  # mean / inv-std outputs used elsewhere
    r = facts.rank(x)
    if int(node.attrs.get("axis", -1)) not in (-1, r - 1):
        return None
    N = facts.get(x)[0].shape[-1]
    gamma = _vector(node.inputs[1], N)
    beta = _vector(node.inputs[2], N) if len(node.inputs) > 2 and not node.inputs[2].is_empty() \
        else np.zeros(N, np.float32)
    if gamma is None or beta is None:
        return None
    eps = float(node.attrs.get("epsilon", 1e-5))
    return x, y, gamma, beta, eps, node


def _match_decomposed(rm1, facts):
    if not _last_axis(rm1, facts):
        return None
    x, mean = rm1.inputs[0], rm1.outputs[0]
    sub = _only(mean, "Sub")
    if sub is None or sub.inputs[0] is not x or sub.inputs[1] is not mean:
        return None
    d = sub.outputs[0]
    cs = G.consumers(d)
    if len(cs) != 2:
        return None
    square = norm = None
    for c in cs:
        if c.op == "Pow" and c.inputs[0] is d and G.scalar_const(c.inputs[1]) == 2.0:
            square = c
        elif c.op == "Mul" and c.inputs[0] is d and c.inputs[1] is d:
            square = c
        else:
            norm = c
    if square is None or norm is None:
        return None
    rm2 = _only(square.outputs[0], "ReduceMean")
    if rm2 is None or not _last_axis(rm2, facts):
        return None
    m = _eps_sqrt(rm2.outputs[0])
    if m is None:
        return None
    eps, std = m
    # n = d / std, or d * (1 / std)
    if norm.op == "Div" and norm.inputs[0] is d and norm.inputs[1] is std and len(std.outputs) == 1:
        pass
    elif norm.op == "Mul" and len(std.outputs) == 1:
        inv = _other(norm, d)
        p = G.producer(inv) if inv is not None else None
        ok = p is not None and p.inputs and (
            (p.op == "Reciprocal" and p.inputs[0] is std) or
            (p.op == "Div" and G.scalar_const(p.inputs[0]) == 1.0 and p.inputs[1] is std))
        if not ok or len(inv.outputs) != 1:
            return None
    else:
        return None
    N = facts.get(x)[0].shape[-1]
    y = norm.outputs[0]
    gamma, y = _scaled(y, N)
    beta = np.zeros(N, np.float32)
    add2 = _only(y, "Add")
    if add2 is not None:
        b = _vector(_other(add2, y), N)
        if b is not None:
            beta, y = b, add2.outputs[0]
    return x, y, gamma, beta, eps, rm1
