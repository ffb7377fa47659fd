"""trtrun._ort.session: an onnxruntime that refuses a file's IR version alone gets a relabelled copy."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtrun._ort import session


def _model():
    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def older_ort(monkeypatch):
    """onnxruntime as one that takes IR <= 7 would be, worded as onnxruntime words it; the IR versions it was given."""
    real, seen = ort.InferenceSession, []

    def fake(model, *a, **kw):
        ir = onnx.load_from_string(model).ir_version if isinstance(model, bytes) else \
            onnx.load(model, load_external_data=False).ir_version
        seen.append(ir)
        if ir > 7:
            raise RuntimeError(f"[ONNXRuntimeError] : 1 : FAIL : Unsupported model IR version: {ir}, max supported "
                               f"IR version: 7")
        return real(model, *a, **kw)

    monkeypatch.setattr(ort, "InferenceSession", fake)
    return seen


@pytest.mark.parametrize("form", ["path", "bytes", "proto"])
def test_refused_ir_version_alone_loads_relabelled(older_ort, tmp_path, form):
    m = _model()
    assert m.ir_version > 7
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    src = {"path": p, "bytes": m.SerializeToString(), "proto": m}[form]
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    y = session(src).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ np.arange(64, dtype=np.float32).reshape(8, 8), rtol=1e-6)
    assert older_ort == [m.ir_version, 7]
    assert onnx.load(p).ir_version == m.ir_version  # the file itself is untouched


def test_external_data_is_not_relabelled(older_ort, tmp_path):
    p = tmp_path / "ext.onnx"
    onnx.save(_model(), p, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    with pytest.raises(RuntimeError, match="Unsupported model IR version"):
        session(p)
    assert len(older_ort) == 1


def test_other_errors_are_onnxruntimes(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"not a model")
    with pytest.raises(Exception, match="(?i)protobuf|parse|load"):
        session(p)
