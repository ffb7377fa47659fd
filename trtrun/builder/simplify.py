"""Simplification passes: shape inference, constant folding, and removal of ops that do nothing."""

from __future__ import annotations

import numpy as np

from . import _graph as G

# ops that only move or re-view data; when input and output shapes (and dtypes) agree in every probe
# they are the identity
_NOOP_IF_SAME_SHAPE = ("Reshape", "Expand", "Squeeze", "Unsqueeze", "Flatten", "Cast")


def simplify(model):
    """ONNX model -> gs.Graph with shapes inferred, Identity/Dropout gone, constants folded.

    Constant folding (onnx-graphsurgeon's, evaluated with onnxruntime) also folds shape arithmetic
    wherever it only involves static dimensions (the hidden size, head counts); what stays is the
    arithmetic on the dynamic batch and sequence sizes, which the fusions make dead.
    """
    import onnx

    gs = G.gs()
    import onnxruntime
    from onnx_graphsurgeon.logger import G_LOGGER
    G_LOGGER.severity = G_LOGGER.ERROR
    onnxruntime.set_default_logger_severity(3)  # folding sessions' optimizer chatter
    infer_shapes(model)
    graph = gs.import_onnx(model)
    remove_identities(graph)
    graph.fold_constants(fold_shapes=True, error_ok=True)
    G.finish(graph)
    remove_noop_casts(graph)
    return G.finish(graph)


def infer_shapes(model, max_const_elems: int = 1024) -> None:
    """ONNX shape inference (with data propagation), its value_info added to `model` in place.

    Inference runs on a copy whose large initializers (the weights) are declared as typed graph
    inputs instead: shapes need only their types and dims, and serializing hundreds of MB of weights
    for the C++ inference would cost seconds. Small initializers (shape constants, scalars) stay, so
    data propagation still sees them. Inference is a help, not a requirement: on failure, nothing.
    """
    import onnx

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        n = 1
        for d in init.dims:
            n *= d
        if n <= max_const_elems:
            g.initializer.append(init)
        elif init.name not in declared:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:
        return
    known = {v.name for v in model.graph.value_info}
    for v in inferred.graph.value_info:
        if v.name not in known:
            model.graph.value_info.append(v)


def remove_identities(graph) -> int:
    """Identity, and Dropout at inference (its mask output unused), pass their input through."""
    n_removed = 0
    for node in list(graph.nodes):
        if node.op == "Identity" or (node.op == "Dropout" and
                                     (len(node.outputs) < 2 or not node.outputs[1].outputs)):
            if node.op == "Dropout" and len(node.inputs) > 2:
                train = G.const_value(node.inputs[2])
                if train is None or bool(train):
                    continue
            G.replace_uses(graph, node.outputs[0], node.inputs[0])
            n_removed += 1
    G.finish(graph)
    return n_removed


def remove_noop_casts(graph) -> int:
    """Cast to the dtype its input already has (exporters emit these, e.g. Cast(float) of a float)."""
    import onnx

    n_removed = 0
    for node in list(graph.nodes):
        if node.op != "Cast":
            continue
        x, y = node.inputs[0], node.outputs[0]
        to = node.attrs.get("to")
        src = getattr(x, "dtype", None)
        if src is None or to is None:
            continue
        try:
            same = np.dtype(src) == onnx.helper.tensor_dtype_to_np_dtype(int(to))
        except Exception:
            continue
        if same:
            G.replace_uses(graph, y, x)
            n_removed += 1
    G.finish(graph)
    return n_removed


def remove_noop_layout(graph, facts) -> int:
    """Reshape/Expand/Squeeze/Unsqueeze/Flatten/Cast whose output equals its input in every probe.

    Exporters write e.g. input_ids.view(-1, S) on a [B, S] input, or a final Reshape back to the
    [B, S, N] the tensor already has. Two probes of different batch and sequence sizes make a
    coincidental match (a reshape that is the identity for one shape only) implausible.
    """
    n_removed = 0
    for node in list(graph.nodes):
        if node.op not in _NOOP_IF_SAME_SHAPE and not (
                node.op == "Transpose" and list(node.attrs.get("perm", [])) == sorted(node.attrs.get("perm", [0]))):
            continue
        if not node.inputs or not node.outputs:
            continue
        x, y = node.inputs[0], node.outputs[0]
        if not (facts.has(x.name) and facts.has(y.name)):
            continue
        xs, ys = facts.get(x), facts.get(y)
        if all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(xs, ys)):
            G.replace_uses(graph, y, x)
            n_removed += 1
    G.finish(graph)
    return n_removed


def decouple_shapes(graph, facts) -> int:
    """Shape(t) of an activation -> the same numbers gathered from Shape(input_ids).

    Exporters read batch and sequence sizes off hidden states (Shape(layer_norm_out) -> Gather ...).
    Such a Shape node keeps its input's producer alive and gives it a reader besides the pattern
    being fused; reading the sizes off input_ids instead (the probes give every tensor's shape in
    terms of B and S) makes all shape arithmetic hang off the graph inputs, so it dies with the
    patterns that used it. Fixed dims become constants.
    """
    gs = G.gs()
    ids = next((i for i in graph.inputs if i.name == "input_ids"), None)
    if ids is None:
        return 0
    shape_ids = None
    count = 0
    for node in [n for n in graph.nodes if n.op == "Shape"]:
        t = node.inputs[0]
        if t in graph.inputs or not facts.has(t.name):
            continue
        try:
            sym = facts.sym_shape(t)
        except Exception:
            continue
        start = int(node.attrs.get("start", 0))
        end = node.attrs.get("end")
        dims = sym[start:None if end is None else int(end)]
        if shape_ids is None:
            shape_ids = gs.Variable(G.unique_name(graph, "input_ids.shape"), dtype=np.int64)
            graph.nodes.append(gs.Node("Shape", G.unique_name(graph, "input_ids.Shape"), inputs=[ids],
                                       outputs=[shape_ids]))
            facts.put(shape_ids.name, [np.array(f["input_ids"].shape, np.int64) for f in facts.feeds])
        consts = [d for d in dims if isinstance(d, int)]
        idx = []
        k = 0
        for d in dims:
            if d == "B":
                idx.append(0)
            elif d == "S":
                idx.append(1)
            else:
                idx.append(2 + k)
                k += 1
        src = shape_ids
        if consts:
            src = gs.Variable(G.unique_name(graph, node.name + ".dims"), dtype=np.int64)
            c = gs.Constant(G.unique_name(graph, node.name + ".fixed"), np.array(consts, np.int64))
            graph.nodes.append(gs.Node("Concat", G.unique_name(graph, node.name + ".concat"),
                                       attrs={"axis": 0}, inputs=[shape_ids, c], outputs=[src]))
            facts.put(src.name, [np.concatenate([v, np.array(consts, np.int64)])
                                 for v in facts.get(shape_ids)])
        out = node.outputs[0]
        new = gs.Variable(G.unique_name(graph, out.name + ".decoupled"), dtype=np.int64)
        graph.nodes.append(gs.Node("Gather", G.unique_name(graph, node.name + ".gather"), attrs={"axis": 0},
                                   inputs=[src, gs.Constant(G.unique_name(graph, node.name + ".idx"),
                                                            np.array(idx, np.int64))],
                                   outputs=[new]))
        facts.put(new.name, [v[np.array(idx, np.int64)] for v in facts.get(src)])
        G.replace_uses(graph, out, new)
        count += 1
    G.finish(graph)
    return count
