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
    if fold_static_shape_values(graph):
        graph.fold_constants(fold_shapes=True, error_ok=True)
        G.finish(graph)
    remove_noop_casts(graph)
    unflatten_softmax(graph)
    fold_constant_scales(graph)
    return G.finish(graph)


def _constant_bytes(graph) -> int:
    """The bytes of the graph's constants: the budget of a fold that adds new ones, so that a crafted file
    cannot make it grow without bound."""
    return sum(t.values.nbytes for t in graph.tensors().values() if t.__class__.__name__ == "Constant")


def fold_constant_scales(graph) -> int:
    """A scalar constant multiplying (or dividing) the output of a constant-table Gather or of a MatMul by a
    constant weight (+ a constant bias) goes into those constants: Gemma scales its embeddings by sqrt(hidden),
    Granite its embeddings and each residual branch by a multiplier. The scaled values are new constants (a
    tied table keeps its other readers); each product is computed in float64 and rounded once. The scaled
    output may have other readers only of its shape."""
    gs = G.gs()
    n_done = 0
    # the copies may add at most the weights' own size (a crafted file scaling one large table a thousand ways
    # is left with its Muls, which the build then names)
    budget = _constant_bytes(graph)
    cache = {}  # (constant name, factor) -> its scaled copy
    for node in list(graph.nodes):
        if node.op not in ("Mul", "Div") or len(node.inputs) != 2:
            continue
        ci = 1 if G.scalar_const(node.inputs[1]) is not None else 0 if node.op == "Mul" else None
        if ci is None or G.scalar_const(node.inputs[ci]) is None:
            continue
        c = G.scalar_const(node.inputs[ci])
        t = node.inputs[1 - ci]
        # readers of t's shape alone (transformers 4's Gemma 2 reads the embeddings' shape) see no change
        values_read = [n for n in G.consumers(t) if n.op not in ("Shape", "Size")]
        if (node.op == "Div" and c == 0.0) or not np.isfinite(c) or len(values_read) != 1 or t in graph.outputs:
            continue
        f = c if node.op == "Mul" else 1.0 / c
        p = G.producer(t)
        scaled = []  # (node, input index) whose constant is replaced by f times it
        if p is not None and p.op == "Gather" and int(p.attrs.get("axis", 0)) == 0 and \
                G.const_value(p.inputs[0]) is not None:
            scaled = [(p, 0)]
        elif p is not None and p.op == "Add":
            bi = 1 if G.const_value(p.inputs[1]) is not None else 0
            mm = G.producer(p.inputs[1 - bi])
            if G.const_value(p.inputs[bi]) is not None and mm is not None and mm.op == "MatMul" and \
                    G.const_value(mm.inputs[1]) is not None and len(G.consumers(mm.outputs[0])) == 1:
                scaled = [(p, bi), (mm, 1)]
        elif p is not None and p.op == "MatMul" and G.const_value(p.inputs[1]) is not None:
            scaled = [(p, 1)]
        if not scaled or any(G.const_value(n.inputs[i]).dtype.kind != "f" for n, i in scaled):
            continue
        new = [G.const_value(n.inputs[i]).nbytes for n, i in scaled if (n.inputs[i].name, f) not in cache]
        if sum(new) > budget:
            continue
        budget -= sum(new)
        for n, i in scaled:
            key = (n.inputs[i].name, f)
            if key not in cache:
                v = G.const_value(n.inputs[i])
                cache[key] = gs.Constant(G.unique_name(graph, n.inputs[i].name + ".scaled"),
                                         (v.astype(np.float64) * f).astype(v.dtype))
            n.inputs[i] = cache[key]
        G.replace_uses(graph, node.outputs[0], t)
        n_done += 1
    G.finish(graph)
    return n_done


def fold_embedding_projection(graph, facts) -> int:
    """Gather(table [V, E], ids) -> MatMul(P [E, N]) with no other reader: Gather(table @ P, ids). OPT-350m
    projects its 512-wide word embeddings to the 1024-wide hidden size before adding positions; with the product
    folded the sum is the usual one of gathered tables. The product is computed in float64 and rounded once; a
    table that would grow past the file's weights size in all is left as it is (a crafted file). After
    decouple_shapes, so that Shape readers of the gathered rows no longer count."""
    gs = G.gs()
    n_done = 0
    budget = _constant_bytes(graph)
    for node in list(graph.nodes):
        if node.op != "Gather" or int(node.attrs.get("axis", 0)) != 0 or len(node.inputs) != 2:
            continue
        table = G.const_value(node.inputs[0])
        t = node.outputs[0] if node.outputs else None
        if table is None or table.ndim != 2 or table.dtype.kind != "f" or t is None or t in graph.outputs:
            continue
        cs = G.consumers(t)
        if len(cs) != 1 or cs[0].op != "MatMul" or cs[0].inputs[0] is not t:
            continue
        w = G.const_value(cs[0].inputs[1])
        if w is None or w.ndim != 2 or w.shape[0] != table.shape[1] or w.dtype.kind != "f":
            continue
        size = table.shape[0] * w.shape[1] * table.dtype.itemsize
        if size > budget:
            continue
        budget -= size
        folded = gs.Constant(G.unique_name(graph, node.inputs[0].name + ".projected"),
                             (table.astype(np.float64) @ w.astype(np.float64)).astype(table.dtype))
        node.inputs[0] = folded
        facts.put(t.name, facts.get(cs[0].outputs[0]))
        G.replace_uses(graph, cs[0].outputs[0], t)
        n_done += 1
    G.finish(graph)
    return n_done


def unflatten_softmax(graph) -> int:
    """Reshape(Softmax(Flatten(x, axis=r-1)), Shape(x)) -> Softmax(x, axis=-1).

    A Softmax of an opset before 13 normalizes over the trailing axes flattened from its axis on; onnx's version
    converter writes it as this Flatten/Softmax/Reshape. Over the last axis alone that is the softmax of each
    row, the form the attention pass reads."""
    gs = G.gs()
    n_done = 0
    for sm in [n for n in graph.nodes if n.op == "Softmax"]:
        flat = G.producer(sm.inputs[0])
        cs = G.consumers(sm.outputs[0])
        if flat is None or flat.op != "Flatten" or len(cs) != 1 or cs[0].op != "Reshape":
            continue
        x, reshape = flat.inputs[0], cs[0]
        shape = G.producer(reshape.inputs[1])
        rank = len(x.shape) if x.shape is not None else None
        if (rank is None or int(flat.attrs.get("axis", 1)) not in (rank - 1, -1) or int(sm.attrs.get("axis", -1))
                not in (1, -1) or shape is None or shape.op != "Shape" or shape.inputs[0] is not x or shape.attrs):
            continue
        y = reshape.outputs[0]
        reshape.outputs.clear()
        graph.nodes.append(gs.Node("Softmax", G.unique_name(graph, sm.name or "softmax"), attrs={"axis": -1},
                                   inputs=[x], outputs=[y]))
        n_done += 1
    G.finish(graph)
    return n_done


def infer_shapes(model, max_const_elems: int = 1024) -> None:
    """ONNX shape inference (with data propagation), its value_info written into `model` in place.

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
    # what inference finds replaces the file's own value_info: a producer's placeholder dims there (onnxruntime's
    # quantizer writes "unk__N" for every dim it could not work out) would otherwise stand where inference sees
    # a static one, e.g. the head size an attention scale is computed from
    found = {v.name: v for v in inferred.graph.value_info}
    kept = [v for v in model.graph.value_info if v.name not in found]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept + list(found.values()))


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


_MAX_SHAPE_ELEMS = 64


def fold_static_shape_values(graph) -> int:
    """Shape arithmetic whose result depends on static dims only, whatever path it takes -> constants.

    onnx-graphsurgeon folds Shape -> Gather/Slice when the dims picked are static at that step; a path that
    first gathers dynamic dims too (onnxruntime's transpose optimizer permutes a Shape with a Gather, then the
    exporter's Slice takes the static head size: the attention scale 1/sqrt(D)) is not folded. Here each
    integer tensor computed from a Shape carries its elements as known ints or None (dynamic) through
    Gather, Slice, Concat, Squeeze, Unsqueeze, Identity and Cast; a tensor whose every element is known
    becomes a constant, and the folding that follows does the rest.
    """
    gs = G.gs()
    known: dict[int, list] = {}  # id(tensor) -> elements (int or None), 1-D or 0-d (one element, scalar=True)
    scalar: set[int] = set()

    def elems(t):
        c = G.const_value(t)
        if c is not None and c.dtype.kind in "iu" and c.ndim <= 1 and c.size <= _MAX_SHAPE_ELEMS:
            if c.ndim == 0:
                scalar.add(id(t))
            return [int(v) for v in c.reshape(-1)]
        return known.get(id(t))

    def ints(t):
        c = G.const_value(t)
        ok = c is not None and c.dtype.kind in "iu" and c.size <= _MAX_SHAPE_ELEMS
        return [int(v) for v in c.reshape(-1)] if ok else None

    replaced = 0
    for node in graph.nodes:  # topological order
        out = node.outputs[0] if len(node.outputs) == 1 else None
        if out is None:
            continue
        ins = [elems(i) for i in node.inputs]
        val = None
        if node.op == "Shape":
            shape = node.inputs[0].shape
            if shape is None:
                continue
            dims = [d if isinstance(d, int) and d >= 0 else None for d in shape]
            start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
            val = dims[start:None if end is None else int(end)]
        elif node.op == "Gather" and ins[0] is not None and int(node.attrs.get("axis", 0)) == 0 \
                and id(node.inputs[0]) not in scalar and ints(node.inputs[1]) is not None \
                and G.const_value(node.inputs[1]).ndim <= 1:
            idx, n = ints(node.inputs[1]), len(ins[0])
            if any(not -n <= i < n for i in idx):
                continue
            val = [ins[0][i] for i in idx]
            if G.const_value(node.inputs[1]).ndim == 0:
                scalar.add(id(out))
        elif node.op == "Slice" and ins[0] is not None and id(node.inputs[0]) not in scalar:
            args = [ints(i) for i in node.inputs[1:]]
            if any(a is None for a in args) or (len(args) > 2 and args[2] not in ([0], [-1])):
                continue
            step = args[3][0] if len(args) > 3 else 1
            if step <= 0:
                continue
            val = ins[0][slice(args[0][0], args[1][0], step)]
        elif node.op == "Concat" and all(v is not None for v in ins):
            val = [e for v in ins for e in v]
        elif node.op in ("Squeeze", "Unsqueeze", "Identity") and ins[0] is not None:
            val = ins[0]
            if node.op == "Squeeze" and len(val) == 1:
                scalar.add(id(out))
            elif node.op == "Identity" and id(node.inputs[0]) in scalar:
                scalar.add(id(out))
        elif node.op == "Cast" and ins[0] is not None:
            to = node.attrs.get("to")
            import onnx
            if to is None or onnx.helper.tensor_dtype_to_np_dtype(int(to)).kind not in "iu":
                continue  # a cast to float is folded by the constant folding once its input is a constant
            val = ins[0]
            if id(node.inputs[0]) in scalar:
                scalar.add(id(out))
        if val is None or len(val) > _MAX_SHAPE_ELEMS:  # shape vectors are short; a crafted Concat chain is not
            continue
        known[id(out)] = val
        if node.op != "Shape" and all(v is not None for v in val) and out not in graph.outputs:
            arr = np.array(val, np.int64)
            arr = arr.reshape(()) if id(out) in scalar else arr
            G.replace_uses(graph, out, gs.Constant(G.unique_name(graph, out.name + ".static"), arr))
            replaced += 1
    G.finish(graph)
    return replaced


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
    """Reshape/Expand/Squeeze/Unsqueeze/Flatten/Cast (or a Concat whose other inputs are empty) whose output
    equals its input in every probe.

    Exporters write e.g. input_ids.view(-1, S) on a [B, S] input, or a final Reshape back to the
    [B, S, N] the tensor already has. Two probes of different batch and sequence sizes make a
    coincidental match (a reshape that is the identity for one shape only) implausible.
    """
    n_removed = 0
    for node in list(graph.nodes):
        x = None
        if node.op == "Concat" and node.outputs:
            # a concatenation with empty tensors only besides one input: an exporter's empty key/value past
            rest = [t for t in node.inputs if not (facts.has(t.name) and all(a.size == 0 for a in facts.get(t)))]
            x = rest[0] if len(rest) == 1 else None
        elif node.op in _NOOP_IF_SAME_SHAPE or (
                node.op == "Transpose" and list(node.attrs.get("perm", [])) == sorted(node.attrs.get("perm", [0]))):
            x = node.inputs[0] if node.inputs and node.outputs else None
        if x is None:
            continue
        y = node.outputs[0]
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
        sym = facts.sym_shape_or_none(t)
        if sym is None:
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
