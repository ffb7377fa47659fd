"""Small onnx-graphsurgeon helpers shared by the builder passes.

trtrun's fused ops live in the graph as nodes of domain "trtrun" whose inputs are the activation
inputs first (an absent optional one is an empty Variable), then the weights as gs.Constant, in the
role order of OP_SLOTS below. That keeps a half-fused graph a valid gs graph the passes can walk.
"""

from __future__ import annotations

import numpy as np

from ..errors import BuildError

DOMAIN = "trtrun"

# op type -> (activation input slots, weight roles, output slots); inputs = slots + roles, in order.
OP_SLOTS = {
    "Embedding": (("input_ids", "token_type_ids"), ("word", "position", "token_type", "gamma", "beta"),
                  ("y",)),
    "Linear": (("x", "residual"), ("weight", "bias"), ("y",)),
    "Attention": (("qkv", "attention_mask"), ("inv_freq", "relative_bias", "alibi_slopes", "q_norm", "k_norm", "q_norm_bias", "k_norm_bias"), ("y",)),
    "LayerNorm": (("x", "residual"), ("gamma", "beta"), ("y", "sum")),
    "RMSNorm": (("x", "residual"), ("gamma",), ("y", "sum")),
    "Pool": (("x", "attention_mask", "input_ids"), (), ("y",)),
    "Normalize": (("x",), (), ("y",)),
}
NORMS = ("LayerNorm", "RMSNorm")


def gs():
    import onnx_graphsurgeon
    return onnx_graphsurgeon


def is_trtrun(node, op: str | None = None) -> bool:
    return node.domain == DOMAIN and (op is None or node.op == op)


def producer(t):
    """The node that writes tensor t, or None (graph input, constant, empty)."""
    return t.inputs[0] if len(t.inputs) else None


def consumers(t) -> list:
    """The nodes that read t, each once (gs lists a node once per input slot: Mul(t, t) twice)."""
    return list({id(n): n for n in t.outputs}.values())


def const_value(t):
    """numpy value of a gs.Constant, else None."""
    if t.__class__.__name__ == "Constant":
        return np.asarray(t.values)
    return None


def scalar_const(t):
    """A Constant holding exactly one number -> float, else None."""
    v = const_value(t)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(()))


def empty():
    return gs().Variable.empty()


def new_constant(graph, name: str, values: np.ndarray):
    return gs().Constant(unique_name(graph, name), np.ascontiguousarray(values))


def new_variable(graph, name: str, dtype=np.float32):
    return gs().Variable(unique_name(graph, name), dtype=dtype)


def unique_name(graph, base: str) -> str:
    """`base`, or `base_2`, `base_3`... whichever no tensor or node of the graph uses yet.

    The set of names is gathered once per pass (finish() forgets it); names handed out are added.
    """
    names = graph.__dict__.get("_trtrun_names")
    if names is None:
        names = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        graph._trtrun_names = names
    name, i = base, 1
    while name in names:
        i += 1
        name = f"{base}_{i}"
    names.add(name)
    return name


def rename_node(graph, node, new_name: str) -> str:
    """Rename a node, freeing its old name for a replacement; returns the old name."""
    old = node.name
    node.name = new_name
    names = graph.__dict__.get("_trtrun_names")
    if names is not None:
        names.discard(old)
        names.add(new_name)
    return old


def add_trtrun_node(graph, op: str, name: str, inputs: dict, weights: dict, outputs: list,
                    attrs: dict | None = None):
    """Create a trtrun node: activation inputs by slot name, weights (gs.Constant) by role.

    Each tensor in `outputs` is detached from whatever wrote it before, so the old pattern's
    nodes become dead and cleanup() removes them.
    """
    slots, roles, _ = OP_SLOTS[op]
    ins = [inputs.get(s) or empty() for s in slots] + [weights.get(r) or empty() for r in roles]
    for t in outputs:
        if t is not None and not t.is_empty():
            for p in list(t.inputs):
                p.outputs = [empty() if o is t else o for o in p.outputs]
    outs = [t if t is not None else empty() for t in outputs]
    node = gs().Node(op=op, name=unique_name(graph, name), attrs=dict(attrs or {}), inputs=ins,
                     outputs=outs, domain=DOMAIN)
    graph.nodes.append(node)
    return node


def slot(node, name: str):
    """Input or output tensor of a trtrun node by slot/role name (None if absent)."""
    slots, roles, outs = OP_SLOTS[node.op]
    if name in outs:
        i = outs.index(name)
        t = node.outputs[i] if i < len(node.outputs) else None
    else:
        order = list(slots) + list(roles)
        i = order.index(name)
        t = node.inputs[i] if i < len(node.inputs) else None
    if t is None or t.is_empty():
        return None
    return t


def replace_uses(graph, old, new) -> None:
    """Make every reader of `old` read `new` (graph outputs included: then `new` takes old's place)."""
    for n in list(old.outputs):
        n.inputs = [new if x is old else x for x in n.inputs]
    if old in graph.outputs:
        # The graph output keeps its name: re-point new's producer at the old tensor instead.
        p = producer(new)
        if p is None:
            # a graph input passed through (or a constant): the output becomes that tensor itself, under
            # its own name, since no op can write the input's value under another (select_outputs.
            # drop_passthrough then leaves it out of the plan, whose outputs are what ops write)
            if new.__class__.__name__ == "Constant":
                raise BuildError(f"graph output {old.name!r} is the constant {new.name!r}: a plan output must be "
                                 f"computed from the inputs")
            graph.__dict__.setdefault("_trtrun_passthrough", {})[old.name] = new.name
            outs = []
            for o in graph.outputs:
                o = new if o is old else o
                if all(o is not k for k in outs):
                    outs.append(o)
            graph.outputs = outs
            return
        for n in list(new.outputs):
            n.inputs = [old if x is new else x for x in n.inputs]
        for q in list(old.inputs):
            q.outputs = [empty() if o is old else o for o in q.outputs]
        p.outputs = [old if o is new else o for o in p.outputs]


def finish(graph):
    """Every pass ends here: drop dead nodes and tensors, restore topological order."""
    graph.cleanup().toposort()
    graph.__dict__.pop("_trtrun_names", None)
    return graph


def node_desc(node) -> str:
    return f"{node.op} node {node.name!r}"
