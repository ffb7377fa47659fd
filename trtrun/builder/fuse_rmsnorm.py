"""Fuse RMSNorm: ONNX `RMSNormalization`, or its decomposition, into trtrun RMSNorm (no residual yet).

Recognized decomposition (Llama/Qwen2/Mistral's RMSNorm as torch.onnx writes it, TorchScript and dynamo;
operand order of the commutative ops is free):

    ms  = ReduceMean(Pow(x, 2) | Mul(x, x), axes=[-1])
    r   = Sqrt(Add(ms, eps)) | Sqrt(ms)    (the latter epsilon 0: what torch.onnx's dynamo exporter writes for
                                          Helium's 1e-8, the file as onnxruntime runs it)
    n   = Div(x, r) | Mul(x, Reciprocal(r)) | Mul(x, Div(1, r))
    y   = Mul(n, gamma)                   (gamma optional; Gemma's 1 + w is folded into a constant already)

Each match is confirmed against the probe values before it is replaced.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError
from . import _graph as G
from .fuse_layernorm import _eps_sqrt, _last_axis, _only, _other, _scaled, _vector
from .probe import agree


def fuse_rmsnorm(graph, facts) -> int:
    count = 0
    for node in list(graph.nodes):
        if node.op == "RMSNormalization":
            m = _match_onnx(node, facts)
        elif node.op == "ReduceMean":
            m = _match_decomposed(node, facts)
        else:
            continue
        if m is None:
            continue
        x, y, gamma, eps, first = m
        ours = [reference_rmsnorm(a, gamma, eps) for a in facts.get(x)]
        if not agree(ours, facts.get(y)):
            raise BuildError(f"{G.node_desc(first)}: looks like an RMSNorm over the last axis but its values do "
                             f"not match one (epsilon {eps:g})")
        name = _name(first)
        G.add_trtrun_node(graph, "RMSNorm", name, inputs={"x": x},
                          weights={"gamma": G.new_constant(graph, name + ".gamma", gamma)},
                          outputs=[y], attrs={"epsilon": float(eps)})
        count += 1
    G.finish(graph)
    return count


def reference_rmsnorm(x, gamma, eps):
    """The IR's RMSNorm formula in float64 (docs/plan-format.md), for checking matches."""
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gamma


def _name(node) -> str:
    n = node.name.strip("/")
    for suffix in ("/RMSNormalization", "/ReduceMean"):
        if n.endswith(suffix):
            n = n[: -len(suffix)]
    return n.replace("/", ".") or "rmsnorm"


def _match_onnx(node, facts):
    x, y = node.inputs[0], node.outputs[0]
    if any(o.outputs for o in node.outputs[1:]):
        return None
    r = facts.rank(x)
    if int(node.attrs.get("axis", -1)) not in (-1, r - 1):
        return None
    N = facts.get(x)[0].shape[-1]
    gamma = _vector(node.inputs[1], N) if len(node.inputs) > 1 else None
    if gamma is None:
        return None
    return x, y, gamma, float(node.attrs.get("epsilon", 1e-5)), node


def _match_decomposed(rm, facts):
    if not _last_axis(rm, facts):
        return None
    sq = G.producer(rm.inputs[0])
    if sq is None or len(sq.outputs[0].outputs) != 1:
        return None
    if sq.op == "Pow" and G.scalar_const(sq.inputs[1]) == 2.0:
        x = sq.inputs[0]
    elif sq.op == "Mul" and sq.inputs[0] is sq.inputs[1]:
        x = sq.inputs[0]
    else:
        return None
    m = _eps_sqrt(rm.outputs[0])
    if m is None:
        sqrt = _only(rm.outputs[0], "Sqrt")
        if sqrt is None:
            return None
        m = (0.0, sqrt.outputs[0])
    eps, r = m
    cs = G.consumers(r)
    if len(cs) != 1:
        return None
    c = cs[0]
    if c.op == "Div" and c.inputs[0] is x and c.inputs[1] is r:
        n = c.outputs[0]
    elif (c.op == "Reciprocal" and c.inputs[0] is r) or \
            (c.op == "Div" and c.inputs[1] is r and G.scalar_const(c.inputs[0]) == 1.0):
        mul = _only(c.outputs[0], "Mul")
        if mul is None or _other(mul, c.outputs[0]) is not x:
            return None
        n = mul.outputs[0]
    else:
        return None
    N = facts.get(x)[0].shape[-1]
    gamma, y = _scaled(n, N)
    return x, y, gamma, eps, rm
