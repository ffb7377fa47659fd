"""Choose the GELU form each fused Linear computes.

BERT-family models use the exact GELU, 0.5 x (1 + erf(x / sqrt 2)). cuBLASLt's GEMM epilogue computes
only the tanh form, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); keeping erf costs a separate pass
over the [tokens, 4*hidden] activation after every FFN GEMM (about 0.75 ms of 8 ms for BERT-base at
batch 32, sequence 512 on an H200; docs/performance.md). The two forms differ by at most 4.7e-4 in
absolute value (at |x| ~ 2; computed in tests/builder/test_gelu_form.py), smaller than one fp16 rounding step of
an activation near 2 (9.8e-4), so in fp16 and hybrid plans, whose Linear outputs are rounded to fp16
anyway, the tanh form costs no accuracy that the plan's precision keeps. TensorRT's BERT GELU plugin makes
the same choice. fp32 plans keep the exact form: there the difference would be the largest error left.

The choice is written into the plan (activation "gelu_tanh", attrs.source_activation "gelu_erf"), so the
reference backend computes what the GPU computes and `trtrun inspect` shows it; `gelu="exact"` keeps erf.
"""

from __future__ import annotations

GELU_CHOICES = ("auto", "exact", "tanh")


def choose_gelu_form(graph, precision: str, gelu: str = "auto") -> int:
    """Rewrite erf-GELU Linears to the tanh form where `gelu` says so; returns how many were rewritten.

    gelu: "auto" (tanh in fp16/hybrid plans, exact in fp32), "exact" (never rewrite), "tanh" (always).
    """
    if gelu not in GELU_CHOICES:
        raise ValueError(f"gelu must be one of {', '.join(GELU_CHOICES)}, got {gelu!r}")
    use_tanh = gelu == "tanh" or (gelu == "auto" and precision != "fp32")
    if not use_tanh:
        return 0
    n = 0
    for node in graph.nodes:
        if node.op == "Linear" and node.attrs.get("activation") == "gelu_erf":
            node.attrs["activation"] = "gelu_tanh"
            node.attrs["source_activation"] = "gelu_erf"
            n += 1
    return n
