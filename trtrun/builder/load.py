"""Pass 1: read the ONNX file and check that it is a model the builder can take at all."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError, UnsupportedOpError
from .prefill import prefill_only

MIN_OPSET = 13  # Softmax before opset 13 normalizes over flattened trailing axes, another op.
OLDEST_OPSET, UPGRADE_OPSET = 9, 14  # older files are converted (upgrade_opset) from as far back as OLDEST


def _looks_like(head: bytes) -> str:
    if head.startswith(b"TRTRUNPL"):
        return " (it is a trtrun plan, not an ONNX model)"
    if head[:4] == b"PK\x03\x04":
        return " (it looks like a zip archive, e.g. a PyTorch checkpoint)"
    try:
        head.decode("utf-8")
        return " (it looks like a text file)"
    except UnicodeDecodeError:
        return ""


def load_model(path, notes: list | None = None):
    """Read and check an ONNX model. ModelError names the file and what is wrong with it. A model of an opset
    older than MIN_OPSET is converted to UPGRADE_OPSET (upgrade_opset); `notes` gets a line saying so."""
    import onnx

    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such file")
    if p.is_dir():
        raise ModelError(f"{p}: is a directory, not an ONNX file")
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ModelError(f"{p}: cannot read: {e.strerror or e}") from None
    if not head:
        raise ModelError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, ...
        raise ModelError(f"{p}: not an ONNX model: cannot parse it ({type(e).__name__}: {e})"
                         f"{_looks_like(head)}") from None
    load_external_data(model, p)
    # A protobuf parser accepts many byte strings as an (odd) message; a real model has these.
    if model.ir_version <= 0 or not model.opset_import or not model.graph.node:
        raise ModelError(f"{p}: not an ONNX model (no IR version, opset or graph nodes)"
                         f"{_looks_like(head)}")
    try:
        try:
            # from the path: the C++ checker reads the file itself (no second serialization of
            # hundreds of MB of weights); full_check=False: shape inference runs in simplify
            opset = default_opset(model)
            if any(is_ort_onnx_op(n, opset) for n in model.graph.node):
                _check_with_ort_ops(model)
            else:
                onnx.checker.check_model(str(p))
        except onnx.checker.ValidationError as e:
            if "topologically sorted" not in str(e):
                raise
            # out-of-order nodes are harmless (onnxruntime sorts them too): sort and check again
            import onnx_graphsurgeon as gs
            sorted_model = gs.export_onnx(gs.import_onnx(model).toposort())
            for key in ("producer_name", "producer_version"):
                setattr(sorted_model, key, getattr(model, key))
            model = sorted_model
            onnx.checker.check_model(model)
    except Exception as e:
        msg = str(e).strip().splitlines()
        raise ModelError(f"{p}: malformed ONNX model: {msg[0] if msg else type(e).__name__}") from None
    model = upgrade_opset(model, p, notes)
    model = prefill_only(model, notes)  # a generation export's key/value cache, taken as empty
    check_inputs(model, p)
    check_ops(model)
    return model


# Ops onnxruntime registers in the ONNX domain that ONNX itself does not have (at the model's opset), with
# the opset from which ONNX has its own: its optimizer writes them there (SimplifiedLayerNormalization is
# RMSNorm; LayerNormalization below opset 17). lower_contrib lowers them with its com.microsoft ops.
_ORT_ONNX_DOMAIN = {"SimplifiedLayerNormalization": None, "LayerNormalization": 17}


def is_ort_onnx_op(node, opset) -> bool:
    """An onnxruntime op written in the ONNX domain (a NodeProto or a gs.Node)."""
    op = getattr(node, "op_type", None) or getattr(node, "op", None)
    if node.domain not in ("", "ai.onnx") or op not in _ORT_ONNX_DOMAIN:
        return False
    since = _ORT_ONNX_DOMAIN[op]
    return since is None or (opset or 0) < since


def _check_with_ort_ops(model) -> None:
    """onnx's checker rejects onnxruntime's ONNX-domain ops as unregistered: check with them moved to
    com.microsoft (which it does not check), then put them back (onnxruntime runs them where they are)."""
    import onnx

    opset = default_opset(model)
    moved = [(n, n.domain) for n in model.graph.node if is_ort_onnx_op(n, opset)]
    added = not any(o.domain == "com.microsoft" for o in model.opset_import)
    for n, _ in moved:
        n.domain = "com.microsoft"
    if added:
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    try:
        onnx.checker.check_model(model)
    finally:
        for n, domain in moved:
            n.domain = domain
        if added:
            del model.opset_import[-1]


def load_external_data(model, p) -> None:
    """Read weights kept in external data files, which must lie in the model's own folder (or below it).

    A location is a path the file names; one that leads elsewhere (absolute, `..`, a symlink out of the
    folder) would let a downloaded model make the builder read any file on the machine, so it is refused.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    folder = p.resolve().parent
    tensors = [t for t in model.graph.initializer if uses_external_data(t)]
    tensors += [a.t for n in model.graph.node for a in n.attribute
                if a.type == onnx.AttributeProto.TENSOR and uses_external_data(a.t)]
    for t in tensors:
        loc = ExternalDataInfo(t).location
        target = (folder / loc).resolve()
        if Path(loc).is_absolute() or not target.is_relative_to(folder):
            raise ModelError(f"{p}: tensor {t.name!r}: external data location {loc!r} lies outside the model's "
                             f"folder {folder}; keep external data files beside the model")
        if not target.is_file():
            raise ModelError(f"{p}: tensor {t.name!r}: external data file {loc!r} is missing (looked in {folder})")
    if tensors:
        try:
            onnx.load_external_data_for_model(model, str(folder))
        except Exception as e:
            raise ModelError(f"{p}: cannot read external data: {type(e).__name__}: {e}") from None


def upgrade_opset(model, p, notes: list | None = None):
    """The model at UPGRADE_OPSET if its opset is older than MIN_OPSET (older exporters and tools wrote 11 and
    12), by onnx's version converter; the model itself otherwise. ModelError for no default opset, one older
    than OLDEST_OPSET, or a model the converter cannot take."""
    opset = default_opset(model)
    if opset is None:
        raise ModelError(f"{p}: opset_import: the model imports no default ('' / ai.onnx) opset")
    if opset >= MIN_OPSET:
        return model
    redo = f"re-export with opset {MIN_OPSET} or newer"
    if opset < OLDEST_OPSET:
        raise ModelError(f"{p}: opset_import: opset {opset} is older than {OLDEST_OPSET}; {redo}")
    import onnx
    from onnx import version_converter

    try:
        up = version_converter.convert_version(model, UPGRADE_OPSET)
        onnx.checker.check_model(up)
    except Exception as e:  # the converter's C++ errors come as RuntimeError, ValueError, ...
        msg = str(e).strip().splitlines()
        raise ModelError(f"{p}: opset {opset} could not be converted to {UPGRADE_OPSET} by onnx's version converter "
                         f"({msg[0] if msg else type(e).__name__}); {redo}") from None
    for key in ("producer_name", "producer_version"):
        setattr(up, key, getattr(model, key))
    if notes is not None:
        notes.append(f"opset {opset} converted to {UPGRADE_OPSET} by onnx's version converter")
    return up


def default_opset(model) -> int | None:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return None


def check_inputs(model, p) -> None:
    """Integer [batch, sequence] inputs; their roles and fixed dims are input_roles.py's (build runs it)."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        if "past" in i.name.lower() and tt.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            # Optimum's text-generation-with-past (its default for decoders) and other exports for generation
            raise ModelError(f"{p}: graph input {i.name!r} is a key/value cache: trtrun runs whole sequences "
                             f"(embedding, scoring), not token-by-token generation; export without the cache "
                             f"(optimum-cli export onnx --task text-generation or feature-extraction; torch.onnx "
                             f"with use_cache=False; trtrun export)")
        if tt.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            raise ModelError(f"{p}: graph input {i.name!r} has element type "
                             f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; token ids and masks are "
                             f"int64 or int32")
        if tt.HasField("shape") and len(tt.shape.dim) != 2:
            raise ModelError(f"{p}: graph input {i.name!r} has rank {len(tt.shape.dim)}; expected "
                             f"[batch, sequence]")
    if len(model.graph.output) == 0:
        raise ModelError(f"{p}: the model has no outputs")


def check_ops(model) -> None:
    """Every node must be a standard ONNX op or one of onnxruntime's com.microsoft ops (the builder runs the
    graph in onnxruntime to probe it)."""
    import onnx

    opset = default_opset(model)
    for n in model.graph.node:
        if n.domain == "com.microsoft" or is_ort_onnx_op(n, opset):
            continue  # onnxruntime's fused ops: lower_contrib lowers them or names what it cannot
        if n.domain not in ("", "ai.onnx") or not onnx.defs.has(n.op_type):
            dom = n.domain or "ai.onnx"
            raise UnsupportedOpError(n.op_type, n.name or "(unnamed)",
                                     f"domain {dom!r}: not a standard ONNX op")
