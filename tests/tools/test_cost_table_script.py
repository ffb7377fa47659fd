"""scripts/gpu/cost_table.py on the reference backend (its GPU timings need the device): every Linear shape of the
model gets an entry in every precision and asked fp8 scale kind, the file is one the search reads, and the search then
prices with it (its record says so) rather than with the estimate."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROFILE = {"batch": (1, 2, 16), "seq": (1, 8, 512)}  # opt 2 x 8, as the table; the real texts fit


def _script():
    spec = importlib.util.spec_from_file_location("cost_table", ROOT / "scripts" / "gpu" / "cost_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cost_table_covers_every_shape_and_feeds_the_search(tmp_path, exported, real_text_batches):
    from trtrun.builder import build
    from trtrun.builder.cost_model import CostModel, gemm_shape
    from trtrun.builder.precision_search import linear_ops

    onnx = exported("bert")
    out = tmp_path / "cost.json"
    assert _script().main([str(onnx), "-o", str(out), "--backend", "reference", "--batch", "2", "--seq", "8",
                           "--iters", "1", "--rounds", "1", "--fp8-scales", "channel-dynamic",
                           "--fp8-scales", "tensor-static"]) == 0
    doc = json.loads(out.read_text())
    assert "not a GPU measurement" in doc["device"] and doc["point"] == [2, 8]
    hyb = build(onnx, precision="hybrid", profile=PROFILE)
    shapes = {gemm_shape(op, hyb.header["profile"], hyb.weights) for op in linear_ops(hyb.header)}
    assert shapes and all(m == 16 for m, _, _ in shapes)
    table = CostModel.load(out)
    for m, k, n in shapes:  # every shape in every precision and scale kind asked: a lookup that cannot miss
        for prec, kind in (("fp32", "channel-dynamic"), ("hybrid", "channel-dynamic"), ("fp8", "channel-dynamic"),
                           ("fp8", "tensor-static")):
            assert table.cost(m, k, n, prec, kind) > 0
    assert len(doc["entries"]) == 4 * len(shapes)

    cal, hold = real_text_batches("bert")
    plan = build(onnx, precision="auto", min_cosine=0.5, calib=[cal], holdout=[hold], cost_table=str(out),
                 profile=PROFILE)
    s = plan.header["builder"]["precision_search"]
    assert not s["cost_estimated"] and str(out) in s["cost_model"]


def test_cost_table_refuses_clearly_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cost.json"
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    for model, why in ((tmp_path / "none.onnx", "no such file"), (bad, "not an ONNX model")):
        assert _script().main([str(model), "-o", str(out), "--backend", "reference"]) == 2
        assert why in capsys.readouterr().err and not out.exists()
