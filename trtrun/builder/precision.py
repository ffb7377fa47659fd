"""Pin precision: choose every tensor's and weight's dtype by the rules of docs/plan-format.md."""

from __future__ import annotations

from ..types import PRECISIONS
from . import _graph as G

LN_INPUTS = ("fp16", "fp32")

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
            kind = "gemm" if (n.op, s) in _GEMM_USES else "residual" if n.op in G.NORMS and s == "residual" \
                else "other"
            uses.setdefault(t.name, set()).add(kind)
    return uses


def _bounded(graph) -> set[str]:
    """Outputs normalized by construction: LayerNorm/RMSNorm y (but where the residual is added after the norm),
    Embedding y when it includes the LayerNorm."""
    out = set()
    for n in graph.nodes:
        if (n.op in G.NORMS and not n.attrs.get("residual_after")) or \
                (n.op == "Embedding" and G.slot(n, "gamma") is not None):
            out.add(G.slot(n, "y").name)
    return out


def _norm_x_inputs(graph, fp16_residual, postnorm: bool, prenorm: bool) -> set[str]:
    """Linear outputs read only as the `x` of a LayerNorm/RMSNorm. postnorm: those of a norm with no `sum` output
    whose residual is absent or an fp16 tensor (post-norm, as in BERT): the sum x + residual is then formed in fp32
    inside the norm and kept nowhere else. prenorm: those a pre-norm norm adds into the fp32 residual stream (GPT-2,
    Llama, ModernBERT: a `sum` output or an fp32 residual); the stream and the sum stay fp32."""
    consumers: dict[str, list] = {}
    for n in graph.nodes:
        for s in G.OP_SLOTS[n.op][0]:
            t = G.slot(n, s)
            if t is not None:
                consumers.setdefault(t.name, []).append((n, s))
    out = set()
    for n in graph.nodes:
        if n.op != "Linear":
            continue
        y = G.slot(n, "y")
        c = consumers.get(y.name, [])
        if len(c) != 1 or c[0][1] != "x" or c[0][0].op not in G.NORMS:
            continue
        ln = c[0][0]
        r = G.slot(ln, "residual")
        post = G.slot(ln, "sum") is None and (r is None or r.name in fp16_residual)
        if (postnorm and post) or (prenorm and not post):
            out.add(y.name)
    return out


def pin_precision(graph, precision: str, ln_input: str = "fp16",
                  prenorm_input: str = "fp32") -> tuple[dict[str, str], dict[str, str]]:
    """(tensor name -> dtype, weight Constant name -> dtype) for every float activation and weight.

    ln_input (hybrid plans only): the dtype of a Linear output that a post-norm LayerNorm reads as `x`;
    prenorm_input: of one that a pre-norm LayerNorm/RMSNorm adds into the fp32 residual stream
    (docs/plan-format.md, "Tensor dtypes the builder chooses")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for name, v in (("ln_input", ln_input), ("prenorm_input", prenorm_input)):
        if v not in LN_INPUTS:
            raise ValueError(f"{name} must be one of {LN_INPUTS}, got {v!r}")
    outputs = {t.name for t in graph.outputs}
    uses = _uses(graph)
    bounded = _bounded(graph)
    fp16_residual = {t for t in bounded if uses.get(t) and uses[t] <= {"gemm", "residual"}}
    ln_x16 = (_norm_x_inputs(graph, fp16_residual, ln_input == "fp16", prenorm_input == "fp16")
              if precision == "hybrid" else set())
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
                elif t.name in fp16_residual:  # a bounded LN output read as a GEMM operand or a residual
                    dt = "float16"
                elif t.name in ln_x16:
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
            else:  # hybrid: GEMM weights and tables fp16; norm parameters and what attention computes in fp32
                # (rotary frequencies: angles up to thousands of radians; the score bias: added before softmax)
                dt = "float32" if r in ("gamma", "beta", "q_norm", "k_norm", "q_norm_bias", "k_norm_bias", "inv_freq",
                                        "relative_bias") else "float16"
            if r in ("inv_freq", "alibi_slopes"):  # angles / biases of position x the value: fp32 in every precision
                dt = "float32"
            weights[w.name] = dt
    return tensors, weights
