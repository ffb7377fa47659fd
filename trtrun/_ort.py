"""onnxruntime sessions on models an older onnxruntime would refuse by their IR version alone.

A file written by an onnx newer than the onnxruntime beside it carries an IR version (the file format's) that
onnxruntime refuses whatever the graph holds ("Unsupported model IR version: 14, max supported IR version: 13": an
H100 machine had onnxruntime 1.30 beside onnx writing IR 14). `session` then labels an in-memory copy with the
newest IR version onnxruntime takes and loads that; a graph that needs a newer IR's features still fails, on the
feature. Files with external data are not relabelled (their tensors' paths are relative to the file): the original
error stands.
"""

from __future__ import annotations

import re
from pathlib import Path

_IR_REFUSED = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def session(model, opts=None, providers=("CPUExecutionProvider",)):
    """onnxruntime.InferenceSession of `model` (a path, serialized bytes or a ModelProto), relabelled to the newest
    IR version onnxruntime takes when that is all it refuses. Other errors are onnxruntime's own."""
    import onnxruntime as ort

    src = model.SerializeToString() if hasattr(model, "SerializeToString") else \
        model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, opts, providers=list(providers))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        m = _IR_REFUSED.search(str(e))
        if m is None or int(m.group(2)) >= int(m.group(1)):
            raise
        proto = _relabel_copy(model, int(m.group(2)))
        if proto is None:
            raise
        return ort.InferenceSession(proto, opts, providers=list(providers))


def _relabel_copy(model, ir: int) -> bytes | None:
    import onnx

    if isinstance(model, (str, Path)):
        proto = onnx.load(str(model), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
            return None
    elif isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    proto.ir_version = ir
    return proto.SerializeToString()
