"""Graph inputs by role, not by name, and inputs with fixed dims.

Exporters name inputs as their caller did (`ids`, `input_ids.1`, `attention_mask_0`, `segment`), so each
graph input's role is read off the graph (a plan's inputs are always input_ids / attention_mask /
token_type_ids, what the Embedder and the runtime feed):

- an input a `Gather` reads as indices into a constant 2-D table: the one indexing the largest table is the
  token ids (word embeddings), one indexing a table of at most TYPE_ROWS rows the token types, any other the
  position ids; onnxruntime's `EmbedLayerNormalization` says it by slot (ids, segment, mask, position);
- an input no table reads, whose values reach the graph: the attention mask (one at most). The attention
  pass confirms it by value (the masked keys must be this input's zeros), so a wrong guess fails the build;
- the standard names are taken at their word.

`position_ids` as a graph input is replaced by arange(S) on every row computed from input_ids' shape: the
positions transformers uses when given none. The plan's header.source.position_ids ("arange") records it, and
Plan.check_feeds takes position_ids from a caller who passes them (as such files' users do) where they are
those positions on every unmasked token, and refuses other positions (left padding) by row.

Fixed input dims (a file exported without dynamic axes, or fixed by onnxruntime's make_dynamic_shape_fixed)
are made symbolic so the probes can run; `fixed_dims` says what they were, and build() clamps the profile to
them, or names them with how to re-export when the graph only works at that size.
"""

from __future__ import annotations

from ..errors import ModelError

ROLES = ("input_ids", "attention_mask", "token_type_ids")
POSITION = "position_ids"
TYPE_ROWS = 16  # token-type tables have 1-2 rows (BERT), position and word tables hundreds or more
_LAYOUT = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Flatten"}
# onnxruntime fused ops: input slot -> role
_CONTRIB_SLOTS = {"EmbedLayerNormalization": {0: "input_ids", 1: "token_type_ids", 7: "attention_mask",
                                              8: POSITION},
                  "QEmbedLayerNormalization": {0: "input_ids", 1: "token_type_ids", 7: "attention_mask"},
                  "Attention": {3: "attention_mask"}, "MultiHeadAttention": {4: "attention_mask"}}


def _tables(model) -> dict:
    """name -> rows of every constant 2-D tensor (initializers, Constant nodes)."""
    out = {t.name: t.dims[0] for t in model.graph.initializer if len(t.dims) == 2}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and len(a.t.dims) == 2:
                    out[n.output[0]] = a.t.dims[0]
    return out


def _uses(model, name, tables):
    """(rows of tables the input indexes, roles contrib slots give it, whether anything reads it)."""
    readers = {}
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            readers.setdefault(i, []).append((n, k))
    rows, slots, stack, seen = [], set(), [name], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        for n, k in readers.get(t, []):
            if n.op_type == "Gather" and k == 1 and n.input[0] in tables:
                rows.append(tables[n.input[0]])
            elif n.domain == "com.microsoft" and k in _CONTRIB_SLOTS.get(n.op_type, {}):
                slots.add(_CONTRIB_SLOTS[n.op_type][k])
            elif n.op_type in _LAYOUT:
                stack.extend(n.output)
    return rows, slots, bool(readers.get(name))


def assign_input_roles(model, p) -> tuple[list[str], bool]:
    """Rename the model's graph inputs to their roles (in place); returns (notes for header.source, whether a
    position_ids input was replaced by the arange it must be). ModelError names an input whose role cannot be
    determined, or two inputs claiming one role."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    tables = _tables(model)
    role, why = {}, {}
    gathered = {}
    for i in inputs:
        rows, slots, read = _uses(model, i.name, tables)
        if i.name in ROLES or i.name == POSITION:
            role[i.name], why[i.name] = i.name, "its name"
        elif len(slots) == 1:
            role[i.name] = slots.pop()
            why[i.name] = f"its slot in onnxruntime's fused ops"
        elif rows:
            gathered[i.name] = max(rows)
        elif read:
            role[i.name], why[i.name] = "attention_mask", "no table reads it; the attention pass checks it is the mask"
        else:
            raise ModelError(f"{p}: graph input {i.name!r}: its role cannot be determined (nothing in the graph "
                             f"reads it); expected token ids, an attention mask, token types or position ids")
    if gathered:
        word = max(gathered, key=gathered.get)
        taken = "input_ids" in role.values()
        for name, rows in gathered.items():
            if name == word and not taken:
                role[name], why[name] = "input_ids", f"it indexes the largest table ({rows} rows, the word embeddings)"
            elif rows <= TYPE_ROWS:
                role[name], why[name] = "token_type_ids", f"it indexes a {rows}-row table (token types)"
            else:
                role[name], why[name] = POSITION, f"it indexes a {rows}-row table beside the word table (positions)"
    by_role = {}
    for name, r in role.items():
        if r in by_role:
            raise ModelError(f"{p}: graph inputs {by_role[r]!r} and {name!r} both look like {r}; their roles "
                             f"cannot be told apart (name them {', '.join(ROLES)})")
        by_role[r] = name
    if "input_ids" not in by_role:
        raise ModelError(f"{p}: no graph input indexes a word-embedding table, so none is the token ids "
                         f"(inputs: {', '.join(i.name for i in inputs) or 'none'})")
    notes = []
    rename = {name: r for name, r in role.items() if name != r}
    for name, r in rename.items():
        notes.append(f"graph input {name!r} is {r} ({why[name]})")
    _rename(model, rename)
    if POSITION in by_role:
        notes.append(_positions_as_arange(model, p))
    return notes, POSITION in by_role


def _rename(model, rename: dict) -> None:
    if not rename:
        return
    for i in model.graph.input:
        i.name = rename.get(i.name, i.name)
    for n in model.graph.node:
        for k, x in enumerate(n.input):
            if x in rename:
                n.input[k] = rename[x]
    for o in model.graph.output:
        o.name = rename.get(o.name, o.name)


def _positions_as_arange(model, p) -> str:
    import onnx
    from onnx import helper

    inp = next(i for i in model.graph.input if i.name == POSITION)
    tt = inp.type.tensor_type
    if tt.HasField("shape") and len(tt.shape.dim) != 2:
        raise ModelError(f"{p}: graph input 'position_ids' has rank {len(tt.shape.dim)}; a plan computes positions "
                         f"as [batch, sequence] arange(S)")
    elem = tt.elem_type
    k = "trtrun_position_ids"
    nodes = [helper.make_node("Shape", ["input_ids"], [k + "/shape"]),
             helper.make_node("Constant", [], [k + "/one"], value=helper.make_tensor("", onnx.TensorProto.INT64, [], [1])),
             helper.make_node("Constant", [], [k + "/zero"], value=helper.make_tensor("", onnx.TensorProto.INT64, [], [0])),
             helper.make_node("Constant", [], [k + "/axes"], value=helper.make_tensor("", onnx.TensorProto.INT64, [1], [0])),
             helper.make_node("Gather", [k + "/shape", k + "/one"], [k + "/s"], axis=0),
             helper.make_node("Range", [k + "/zero", k + "/s", k + "/one"], [k + "/range"]),
             helper.make_node("Unsqueeze", [k + "/range", k + "/axes"], [k + "/row"]),
             helper.make_node("Expand", [k + "/row", k + "/shape"], [k + "/bs"]),
             helper.make_node("Cast", [k + "/bs"], [POSITION], to=elem)]
    model.graph.input.remove(inp)
    old = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + old)
    return ("graph input 'position_ids' is taken as arange(S) on every row (the positions transformers uses when "
            "given none); the plan checks position_ids given to a run against them and takes no others")


def fixed_dims(model, p) -> dict:
    """Make fixed batch/sequence dims of the graph inputs symbolic (in place) -> {"batch": n, "seq": n} of those
    that were fixed. ModelError when inputs disagree on a fixed size."""
    inits = {i.name for i in model.graph.initializer}
    fixed = {}
    for i in model.graph.input:
        if i.name in inits or not i.type.tensor_type.HasField("shape"):
            continue
        for axis, d in zip(("batch", "seq"), i.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                if fixed.get(axis, d.dim_value) != d.dim_value:
                    raise ModelError(f"{p}: graph inputs have different fixed {axis} sizes "
                                     f"({fixed[axis]} and {d.dim_value})")
                fixed[axis] = d.dim_value
    if not fixed:
        return {}
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name in inits or not vi.type.tensor_type.HasField("shape"):
            continue
        for axis, d in zip(("batch", "seq"), vi.type.tensor_type.shape.dim):
            if axis in fixed and d.HasField("dim_value") and d.dim_value == fixed[axis]:
                d.dim_param = "batch" if axis == "batch" else "sequence"
    del model.graph.value_info[:]  # shapes recorded at the fixed size; shape inference redoes them
    return fixed


def reexport_hint(fixed: dict) -> str:
    what = " and ".join(f"{'batch' if a == 'batch' else 'sequence'} {n}" for a, n in fixed.items())
    return (f"the file was exported with fixed {what} and its graph does not run at other sizes (the builder probes "
            f"it at 2x5 and 3x7 tokens); re-export with dynamic axes: torch.onnx.export(..., dynamic_axes="
            f"{{'input_ids': {{0: 'batch', 1: 'sequence'}}, ...}}), or dynamo=True with dynamic_shapes")
