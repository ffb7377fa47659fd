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


class _FakeGPU:
    """A GPU timeline in microseconds for the GPU timer's logic: launches cost the host `host_us` each (1 us for the
    first `cheap` ones), a run costs the GPU `gpu_us`; work starts when both the host has enqueued it and the GPU
    is free. `sync_each` makes every launch wait for the GPU (a host that cannot run ahead)."""

    def __init__(self, host_us: float, gpu_us: float, sync_each: bool = False, cheap: int = 0):
        self.host_us, self.gpu_us, self.sync_each, self.cheap = host_us, gpu_us, sync_each, cheap
        self.host = self.free = 0.0
        self.launches = self.sleeps = 0
        self.cycles_per_us = 1700.0

    def work(self, us: float) -> float:
        self.free = max(self.host, self.free) + us
        return self.free

    def launch(self) -> None:
        self.host += 1.0 if self.launches < self.cheap else self.host_us
        self.launches += 1
        self.work(self.gpu_us)
        if self.sync_each:
            self.host = self.free

    def sleep(self, cycles) -> None:
        self.sleeps += 1
        self.work(cycles / self.cycles_per_us)

    def torch(self):
        import contextlib
        import types

        gpu = self

        class Event:
            def __init__(self, enable_timing=False):
                self.t = None

            def record(self, stream=None):
                self.t = gpu.work(0.0)

            def elapsed_time(self, other):
                return (other.t - self.t) / 1e3

        class Stream:
            def synchronize(self):
                gpu.host = max(gpu.host, gpu.free)

        class Tensor:
            def cuda(self):
                return self

        cuda = types.SimpleNamespace(Event=Event, Stream=Stream, is_available=lambda: True,
                                     get_device_name=lambda i=0: "fake GPU", stream=lambda s: contextlib.nullcontext(),
                                     _sleep=gpu.sleep)
        return types.SimpleNamespace(cuda=cuda, from_numpy=lambda a: Tensor(), empty=lambda *a, **k: Tensor(),
                                     float32="float32")

    def engine(self):
        gpu = self

        class Context:
            def run_device(self, feeds, out, stream=None):
                gpu.launch()

        class Engine:
            def __init__(self, plan):
                pass

            def create_context(self, **kw):
                return Context()

        return Engine


def _gpu_timer(monkeypatch, gpu: _FakeGPU):
    import sys
    import types

    import trtrun.runtime

    mod = _script()
    monkeypatch.setitem(sys.modules, "torch", gpu.torch())
    monkeypatch.setattr(trtrun.runtime, "gpu_available", lambda: (True, ""))
    monkeypatch.setattr(trtrun.runtime, "Engine", gpu.engine())
    # the host's clock is the simulated one: launches cost host time, as on a real host
    monkeypatch.setattr(mod, "time", types.SimpleNamespace(perf_counter=lambda: gpu.host / 1e6))
    plan = types.SimpleNamespace(header={"outputs": [{"name": "y", "shape": ["B", "S", 8]}]})
    return mod.Timer("gpu", iters=100).prepare(plan, 2, 8)


def test_gpu_timer_times_the_gpus_work_not_the_hosts_launches(monkeypatch):
    """A run the GPU does in 5 us but the host needs 70 us to launch (MiniLM's Linear plans on an H100): events
    around one launch read 75 us (the launch's gap inside them); held behind the spin kernel the timer reads the
    GPU's 5 us. A first hold too short (launches cheap while the cost was estimated) is seen and lengthened."""
    gpu = _FakeGPU(host_us=70.0, gpu_us=5.0)
    ev = gpu.torch().cuda.Event
    e0, e1 = ev(), ev()
    e0.record()
    gpu.launch()
    e1.record()
    assert abs(e0.elapsed_time(e1) * 1e3 - 75.0) < 1e-6
    run = _gpu_timer(monkeypatch, gpu)
    assert abs(run() - 5.0) < 1e-6 and gpu.sleeps == 2  # the calibration's spin and one hold
    gpu = _FakeGPU(host_us=70.0, gpu_us=5.0, cheap=30)  # warm-up and estimate: 30 launches of 1 us
    run = _gpu_timer(monkeypatch, gpu)
    assert abs(run() - 5.0) < 1e-6 and gpu.sleeps == 3  # the 1.2-ms hold refused, the next one long enough


def test_gpu_timer_refuses_when_the_host_cannot_run_ahead(monkeypatch):
    """A launch that waits for the GPU leaves gaps however long the hold: an error naming it, not a number."""
    import pytest

    from trtrun.errors import TrtrunError

    run = _gpu_timer(monkeypatch, _FakeGPU(host_us=70.0, gpu_us=5.0, sync_each=True))
    with pytest.raises(TrtrunError, match="could not keep the GPU busy"):
        run()


def test_the_two_plans_differ_by_one_linear_and_nothing_else(tmp_path):
    """The entry is (two Linears side by side) - (one): the builder must keep the two apart (no merge into one
    wider GEMM), each with its own output, and the rest (embedding, LayerNorm, the first Linear) unchanged."""
    import numpy as np

    from trtrun.builder import build
    from trtrun.builder.precision_search import linear_ops
    from trtrun.reference import ReferenceBackend

    mod = _script()
    prof = {"batch": (1, 2, 2), "seq": (1, 8, 8)}
    one = build(mod.linear_graph(tmp_path / "one.onnx", 32, 48, copies=1), precision="hybrid", profile=prof)
    two = build(mod.linear_graph(tmp_path / "two.onnx", 32, 48, copies=2), precision="hybrid", profile=prof)
    assert [op["type"] for op in one.header["ops"]].count("Linear") == 1
    lin = linear_ops(two.header)
    assert len(lin) == 2 and len(two.header["outputs"]) == 2
    assert [op for op in two.header["ops"] if op["type"] != "Linear"] == \
        [op for op in one.header["ops"] if op["type"] != "Linear"]
    ids = {"input_ids": np.random.default_rng(0).integers(0, mod.VOCAB, (2, 8), dtype=np.int64)}
    y1, y2 = ReferenceBackend(one).run(ids), ReferenceBackend(two).run(ids)
    np.testing.assert_array_equal(y1["y0"], y2["y0"])  # the first Linear is the same one
    assert not np.allclose(y2["y0"], y2["y1"])          # the second has weights of its own


def test_gpu_timing_that_gives_no_positive_difference_is_refused(tmp_path, exported, monkeypatch, capsys):
    """On the GPU, two Linears timed at or below one is an unusable measurement: an error, no file written."""
    mod = _script()
    monkeypatch.setattr(mod, "Timer", type("T", (), {
        "__init__": lambda self, backend, iters: None, "device": lambda self: "fake GPU",
        "prepare": lambda self, plan, B, S: len(plan.header["outputs"]),
        "time": lambda self, runners, rounds: {k: 10.0 - n for k, n in runners.items()}}))
    out = tmp_path / "cost.json"
    assert mod.main([str(exported("bert")), "-o", str(out), "--batch", "2", "--seq", "8"]) == 2
    assert "two Linears timed" in capsys.readouterr().err and not out.exists()
