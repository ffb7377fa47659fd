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
    "ReduceSum", "ReduceL2", "Clip", "Sigmoid", "Cos", "Sin", "RMSNormalization",
}
IR_OPS = "IR ops: Embedding, LayerNorm, RMSNorm, Linear, Attention, Pool"


def check_supported(graph) -> None:
    leftover = [n for n in graph.nodes if not G.is_trtrun(n)]
    if leftover:
        foreign = [n for n in leftover if n.op not in PATTERN_OPS]
        if foreign:
            n = foreign[0]
            _uncomputable_output(graph, n)
            raise UnsupportedOpError(n.op, n.name, f"not part of any pattern the builder can lower ({IR_OPS})")
        # every leftover is an op our patterns use: report the first one on the value path
        n = _first_on_value_path(graph, leftover)
        _uncomputable_output(graph, n)
        raise UnsupportedOpError(n.op, n.name, "not part of a recognized LayerNorm, RMSNorm, Linear, GELU/SiLU, "
                                               "gated MLP, attention (rotary, grouped-query) or embedding pattern")
    for t in graph.outputs:
        p = G.producer(t)
        if p is None and all(t is not i for i in graph.inputs):  # an input passed through is an output
            raise BuildError(f"graph output {t.name!r} is not computed by any op")


def _uncomputable_output(graph, node) -> None:
    """If `node` only feeds graph outputs and other outputs are computed, name the output it stops."""
    ok = [t.name for t in graph.outputs if G.producer(t) is None or G.is_trtrun(G.producer(t))]
    if not ok:
        return
    # the outputs `node` reaches
    seen, stack, reached = set(), [node], []
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for t in n.outputs:
            if t in graph.outputs:
                reached.append(t.name)
            stack.extend(t.outputs)
    bad = [r for r in dict.fromkeys(reached) if r not in ok]
    if bad and set(reached) <= set(bad):
        raise UnsupportedOpError(node.op, node.name, f"graph output {bad[0]!r} cannot be computed by the plan's ops "
                                                     f"({IR_OPS}): this node is not part of a recognized pattern; "
                                                     f"leave the output out with --outputs {','.join(ok)}")


def _first_on_value_path(graph, nodes):
    """Prefer a node that computes on hidden states (not shape bookkeeping) to name in the error."""
    shape_ops = {"Shape", "Size", "Range", "ConstantOfShape", "Concat", "Unsqueeze", "Squeeze",
                 "Gather", "Cast", "Equal", "Where", "Expand", "Constant"}
    for n in nodes:
        if n.op not in shape_ops:
            return n
    return nodes[0]
