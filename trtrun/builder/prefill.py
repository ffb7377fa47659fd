"""Read a file exported for token-by-token generation as the whole-sequence model it also is (the prefill).

Optimum's default export of a decoder (`--task text-generation-with-past`) and other generation exports take the
key/value cache as graph inputs (`past_key_values.{i}.key/value`, [batch, kv_heads, past, head_size]) and return the
updated cache (`present.*`): each layer appends its new keys and values to the cache's along the past axis
(`Concat(past, new, axis=-2)`), then attends over the result. With an empty cache the file computes exactly what the
same model exported without one computes, and that is what trtrun runs (embedding, scoring: whole sequences). So,
on the ONNX model before anything else reads it:

- each `Concat(past, new)` on a cache input is replaced by `new` (what it is with an empty past), and the cache
  outputs it wrote (`present.*`) are dropped from the graph's outputs;
- a cache input still read elsewhere (the past length, taken with Shape for the positions and the mask) becomes an
  empty tensor of its shape, [batch, ..., 0, ...], made from input_ids' batch size in the graph, so the graph stays
  one onnxruntime runs when the builder probes it;
- the attention mask is then [batch, sequence] (it is [batch, past + sequence]).

A cache input of another form (not float, or with a dimension other than the batch and the past left unknown) keeps
the refusal load.check_inputs gives, which says how to export without the cache.
"""

from __future__ import annotations

import numpy as np


def cache_inputs(model) -> list:
    """The graph inputs that hold a key/value cache: float inputs named like one (`past_key_values.*`, `past.*`)."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return [i for i in model.graph.input if i.name not in inits and "past" in i.name.lower()
            and i.type.tensor_type.elem_type in floats]


def _gqa_cache_dims(model) -> dict:
    """{cache input: (kv_heads, head_size)} for the caches onnxruntime's GroupQueryAttention reads (onnxruntime-genai's
    files, whose cache inputs leave the head size symbolic): the heads are the op's kv_num_heads; the head size is
    the query's width (read off a MatMul by a constant weight or a MatMulNBits, plus a bias, a Reshape to a constant
    last dimension or a Split of constant sizes) over the heads it holds (num_heads, and twice kv_num_heads when the
    key and value are packed into it), else the value's over kv_num_heads."""
    import onnx
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def const(name):
        if name in inits:
            return onnx.numpy_helper.to_array(inits[name])
        n = producer.get(name)
        if n is not None and n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            return onnx.numpy_helper.to_array(n.attribute[0].t)
        return None

    def width(t):
        for _ in range(4):
            n = producer.get(t)
            if n is None:
                return None
            if n.op_type == "Reshape" and len(n.input) > 1:  # to [.., .., width]
                shape = const(n.input[1])
                return int(shape[-1]) if shape is not None and shape.ndim == 1 and shape[-1] > 0 else None
            if n.op_type == "Split" and t in n.output:  # a part of a split along the last axis, of a constant size
                sizes = const(n.input[1]) if len(n.input) > 1 and n.input[1] else None
                if sizes is None:
                    sizes = next((helper.get_attribute_value(x) for x in n.attribute if x.name == "split"), None)
                axis = next((helper.get_attribute_value(x) for x in n.attribute if x.name == "axis"), 0)
                if sizes is None or axis not in (-1, 2):
                    return None
                return int(list(sizes)[list(n.output).index(t)])
            if n.op_type == "MatMul" and n.input[1] in inits:
                dims = list(inits[n.input[1]].dims)
                return int(dims[-1]) if len(dims) == 2 else None
            if n.op_type == "MatMulNBits":  # int4 weights (onnxruntime-genai's int4 files): N output features
                return next((int(helper.get_attribute_value(x)) for x in n.attribute if x.name == "N"), None)
            if n.op_type == "Add":
                t = n.input[0] if n.input[1] in inits else n.input[1] if n.input[0] in inits else None
                if t is None:
                    return None
                continue
            return None
        return None

    out = {}
    for n in g.node:
        if n.op_type != "GroupQueryAttention" or n.domain != "com.microsoft" or len(n.input) < 5:
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        H, Hkv = int(a.get("num_heads", 0)), int(a.get("kv_num_heads", 0))
        packed = len(n.input) < 2 or not n.input[1]
        w, heads = width(n.input[0]), H + 2 * Hkv if packed else H
        if not packed and not w and len(n.input) > 2 and n.input[2]:  # the value's width: kv_num_heads heads
            w, heads = width(n.input[2]), Hkv
        if not (H > 0 and Hkv > 0 and w and w % heads == 0):
            continue
        for t in n.input[3:5]:
            if t:
                out[t] = (Hkv, w // heads)
    return out


def prefill_only(model, notes: list | None = None):
    """The model with its key/value cache taken as empty (module docstring); the model itself when it has none, or
    when a cache input's shape is not one this can make empty (load.check_inputs then refuses it by name)."""
    import onnx
    from onnx import helper

    cache = cache_inputs(model)
    if not cache:
        return model
    ids = next((i for i in model.graph.input if i.name == "input_ids"), None)
    if ids is None:
        return model
    shapes = {}
    gqa_dims = _gqa_cache_dims(model)
    for i in cache:
        dims = list(i.type.tensor_type.shape.dim)
        past = [k for k, d in enumerate(dims) if "past" in d.dim_param.lower()]
        sizes = [d.dim_value for d in dims]
        if i.name in gqa_dims and len(dims) == 4:  # [batch, kv_heads, past, head_size], sizes from the op
            sizes[1:2] = [gqa_dims[i.name][0]]
            sizes[3:4] = [gqa_dims[i.name][1]]
        if len(past) != 1 or past[0] == 0 or any(v <= 0 for k, v in enumerate(sizes) if k != 0 and k not in past):
            return model
        shapes[i.name] = (sizes, past[0])

    g = model.graph
    names = set(shapes)
    # only what a cache is read by: the Concat appending to it (along its past axis), its Shape (the past length),
    # GroupQueryAttention; anything else would compute with zeros where the model meant values: refused as before
    for n in g.node:
        for k, x in enumerate(n.input):
            if x not in names:
                continue
            axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), None)
            rank = len(shapes[x][0])
            ok = (n.op_type == "Concat" and k == 0 and len(n.input) == 2 and axis is not None
                  and axis % rank == shapes[x][1]) or n.op_type == "Shape" or \
                 (n.op_type == "GroupQueryAttention" and k in (3, 4))
            if not ok:
                return model
    drop_out: set[str] = set()
    rename: dict[str, str] = {}
    keep = []
    for n in g.node:
        if n.op_type == "Concat" and len(n.input) == 2 and n.input[0] in names:
            rename[n.output[0]] = n.input[1]
            drop_out.add(n.output[0])
            continue
        keep.append(n)
    for n in keep:
        for k, x in enumerate(n.input):
            while x in rename:
                x = rename[x]
            n.input[k] = x
    for n in keep:  # GroupQueryAttention's updated cache (its outputs 1 and 2), where it read the cache
        if n.op_type == "GroupQueryAttention" and any(x in names for x in n.input[3:5]):
            drop_out.update(o for o in n.output[1:3] if o)
    still_read = {x for n in keep for x in n.input} & names
    empty = []
    if still_read:
        shape_of = helper.make_node("Shape", ["input_ids"], ["prefill.ids_shape"], name="prefill.ids_shape")
        batch = helper.make_node("Slice", ["prefill.ids_shape", "prefill.zero", "prefill.one"], ["prefill.batch"],
                                 name="prefill.batch")
        empty += [helper.make_node("Constant", [], ["prefill.zero"], name="prefill.zero",
                                   value=onnx.numpy_helper.from_array(np.array([0], np.int64))),
                  helper.make_node("Constant", [], ["prefill.one"], name="prefill.one",
                                   value=onnx.numpy_helper.from_array(np.array([1], np.int64))),
                  shape_of, batch]
        for name in sorted(still_read):
            sizes, past = shapes[name]
            rest = np.array([0 if k == past else v for k, v in enumerate(sizes)][1:], np.int64)
            elem = next(i for i in cache if i.name == name).type.tensor_type.elem_type
            zero = onnx.numpy_helper.from_array(np.zeros(1, onnx.helper.tensor_dtype_to_np_dtype(elem)))
            empty += [helper.make_node("Constant", [], [f"{name}.prefill_rest"], name=f"{name}.prefill_rest",
                                       value=onnx.numpy_helper.from_array(rest)),
                      helper.make_node("Concat", ["prefill.batch", f"{name}.prefill_rest"], [f"{name}.prefill_shape"],
                                       name=f"{name}.prefill_shape", axis=0),
                      helper.make_node("ConstantOfShape", [f"{name}.prefill_shape"], [name], name=f"{name}.prefill",
                                       value=zero)]
    del g.node[:]
    g.node.extend(empty + keep)
    outputs = [o for o in g.output if o.name not in drop_out]
    del g.output[:]
    g.output.extend(outputs)
    inputs = [i for i in g.input if i.name not in names]
    del g.input[:]
    g.input.extend(inputs)
    for i in g.input:  # [batch, past + sequence] with an empty past: [batch, sequence]
        if i.name == "attention_mask" and len(i.type.tensor_type.shape.dim) == 2:
            i.type.tensor_type.shape.dim[1].dim_param = ids.type.tensor_type.shape.dim[1].dim_param or "sequence"
    if notes is not None:
        notes.append(f"a key/value cache ({len(names)} inputs) taken as empty and its {len(drop_out)} updated outputs "
                     f"dropped: the plan computes whole sequences, as the model without a cache (the prefill)")
    return model
