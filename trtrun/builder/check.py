"""After fusion only IR ops may be left: anything else stops the build, naming the op and node."""

from __future__ import annotations

from ..errors import BuildError, UnsupportedOpError
from . import _graph as G

# Ops that appear inside the patterns the fusions recognize. Left over, they mean a pattern was
# not understood (reported as such); any other op is simply not supported.
PATTERN_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Tanh", "Gelu", "ReduceMean", "MatMul", "Gemm",
    "Softmax", "Reshape", "Transpose", "Split", "Slice", "Squeeze", "Unsqueeze", "Gather", "Concat",
    "Shape", "Where", "Cast", "Expand", "LayerNormalization", "Range", "ConstantOfShape", "Equal",
    "And", "Or", "Not", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Flatten", "GatherND",
    "Max", "Min", "Identity", "Dropout", "Constant", "Reciprocal", "Neg", "Trilu", "Size",
}


def check_supported(graph) -> None:
    leftover = [n for n in graph.nodes if not G.is_trtrun(n)]
    if leftover:
        foreign = [n for n in leftover if n.op not in PATTERN_OPS]
        if foreign:
            n = foreign[0]
            raise UnsupportedOpError(n.op, n.name, "not part of any pattern the builder can lower "
                                                   "(IR ops: Embedding, LayerNorm, Linear, Attention)")
        # every leftover is an op our patterns use: report the first one on the value path
        n = _first_on_value_path(graph, leftover)
        raise UnsupportedOpError(n.op, n.name, "not part of a recognized LayerNorm, Linear, GELU, "
                                               "attention or embedding pattern")
    for t in graph.outputs:
        p = G.producer(t)
        if p is None:
            raise BuildError(f"graph output {t.name!r} is not computed by any op")


def _first_on_value_path(graph, nodes):
    """Prefer a node that computes on hidden states (not shape bookkeeping) to name in the error."""
    shape_ops = {"Shape", "Size", "Range", "ConstantOfShape", "Concat", "Unsqueeze", "Squeeze",
                 "Gather", "Cast", "Equal", "Where", "Expand", "Constant"}
    for n in nodes:
        if n.op not in shape_ops:
            return n
    return nodes[0]
