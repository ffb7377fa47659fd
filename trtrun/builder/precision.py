"""Pin precision: choose every tensor's and weight's dtype by the rules of docs/plan-format.md."""

from __future__ import annotations

from . import _graph as G

PRECISIONS = ("fp32", "fp16", "hybrid")

# (op, input slot) pairs that read a tensor only as a GEMM operand
_GEMM_USES = {("Linear", "x"), ("Attention", "qkv")}


def _uses(graph) -> dict[str, set]:
    uses: dict[str, set] = {}
    for n in graph.nodes:
        slots = G.OP_SLOTS[n.op][0]
        for s in slots:
            t = G.slot(n, s)
            if t is None:
                continue
            kind = "gemm" if (n.op, s) in _GEMM_USES else "residual" if (n.op, s) == ("LayerNorm", "residual") \
                else "other"
            uses.setdefault(t.name, set()).add(kind)
    return uses


def _bounded(graph) -> set[str]:
    """Outputs normalized by construction: LayerNorm y, Embedding y when it includes the LayerNorm."""
    out = set()
    for n in graph.nodes:
        if n.op == "LayerNorm" or (n.op == "Embedding" and G.slot(n, "gamma") is not None):
            out.add(G.slot(n, "y").name)
    return out


def pin_precision(graph, precision: str) -> tuple[dict[str, str], dict[str, str]]:
    """(tensor name -> dtype, weight Constant name -> dtype) for every float activation and weight."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    outputs = {t.name for t in graph.outputs}
    uses = _uses(graph)
    bounded = _bounded(graph)
    tensors: dict[str, str] = {}
    weights: dict[str, str] = {}
    for n in graph.nodes:
        for t in n.outputs:
            if t.is_empty():
                continue
            if precision == "fp32" or t.name in outputs:
                dt = "float32"
            elif precision == "fp16":
                dt = "float16"
            else:
                u = uses.get(t.name, set())
                if u and u <= {"gemm"}:
                    dt = "float16"
                elif u and t.name in bounded and u <= {"gemm", "residual"}:
                    dt = "float16"
                else:
                    dt = "float32"
            tensors[t.name] = dt
        roles = G.OP_SLOTS[n.op][1]
        for r in roles:
            w = G.slot(n, r)
            if w is None:
                continue
            if precision == "fp32":
                dt = "float32"
            elif precision == "fp16":
                dt = "float16"
            else:  # hybrid: GEMM weights and tables fp16, LayerNorm parameters fp32
                dt = "float32" if r in ("gamma", "beta") else "float16"
            weights[w.name] = dt
    return tensors, weights
