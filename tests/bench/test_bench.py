"""trtrun bench on the CPU: statistics, the timing loop (with a fake device clock), config and argument
errors, results.jsonl and resume (a sweep killed midway, a torn last line), and the report and plots, on
the numpy reference backend with a tiny BERT (hidden 64, 1 layer) and on hand-made GPU-like records.

Everything runs in about 20-40 s on two cores: one export and two builds, shared through a module-scoped
cache folder; timed loops of a few iterations.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from trtrun.bench.config import BenchConfig, BenchConfigError, read_config_file
from trtrun.bench.results import ResultStore
from trtrun.bench.runners import Timing, _measure
from trtrun.bench.stats import iterations_for, percentile, summarize, throughput
from trtrun.cli.main import main

REPO = Path(__file__).resolve().parents[2]
TOKENS = REPO / "bench" / "tokens" / "wiki-bert-base-uncased.npz"
TINY = ["--hidden-size", "64", "--layers", "1", "--heads", "2", "--intermediate-size", "128",
        "--max-position", "64"]
FAST = ["--backend", "reference", "--iters", "3", "--warmup", "0", "--min-iters", "2", "--max-time", "0.05",
        "--input-sets", "2", "--tokens", str(TOKENS), "-q"]


# ------------------------------------------------------------------------------------------ statistics
def test_percentiles_known_values():
    x = np.arange(1, 101, dtype=float)  # 1..100: rank r = q/100 * 99, linear between neighbours
    assert percentile(x, 50) == pytest.approx(50.5)
    assert percentile(x, 90) == pytest.approx(90.1)
    assert percentile(x, 99) == pytest.approx(99.01)
    assert percentile(x, 0) == 1.0 and percentile(x, 100) == 100.0
    rng = np.random.default_rng(0)
    y = rng.lognormal(size=257)  # any order, skewed like latencies: same as numpy's default method
    for q in (50, 90, 99):
        assert percentile(rng.permutation(y), q) == pytest.approx(np.percentile(y, q), rel=1e-12)


def test_summarize_hand_made_samples():
    s = summarize([4.0, 1.0, 3.0, 2.0, 10.0])  # sorted 1 2 3 4 10
    assert s["min"] == 1.0 and s["max"] == 10.0 and s["n"] == 5
    assert s["mean"] == pytest.approx(4.0)
    assert s["p50"] == pytest.approx(3.0)
    assert s["p90"] == pytest.approx(4 + 0.6 * 6)  # rank 3.6: between 4 and 10
    assert s["p99"] == pytest.approx(4 + 0.96 * 6)
    assert s["std"] == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1))
    one = summarize([2.5])
    assert one["p50"] == one["p99"] == one["min"] == 2.5 and one["std"] == 0.0
    with pytest.raises(ValueError, match="no timing samples"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_throughput_and_iteration_budget():
    t = throughput(8, 128, 2.0)  # 8 sequences in 2 ms
    assert t["seq_per_s"] == pytest.approx(4000) and t["tokens_per_s"] == pytest.approx(512000)
    assert throughput(8, 128, 0.0)["seq_per_s"] is None
    assert iterations_for(0.001, iters=200, min_iters=10, max_time=1.0) == 200
    assert iterations_for(0.05, iters=200, min_iters=10, max_time=1.0) == 20
    assert iterations_for(1.0, iters=200, min_iters=10, max_time=1.0) == 10  # the floor wins
    assert iterations_for(1.0, iters=200, min_iters=10, max_time=None) == 200


def test_measure_device_loop_with_fake_events():
    """The device loop times each iteration between its own events: a fake GPU clock advanced by the
    enqueued work (set i costs i+1 ms) must come back exactly."""
    clock = SimpleNamespace(t=0.0)

    class Event:
        def __init__(self, enable_timing=True):
            self.t = None

        def record(self, stream=None):
            self.t = clock.t

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return end.t - self.t

    fake_torch = SimpleNamespace(cuda=SimpleNamespace(Event=Event))
    calls = {"dev": 0, "host": 0}

    def dev_enqueue(i):
        calls["dev"] += 1
        clock.t += i + 1.0

    def host_call(i):
        calls["host"] += 1

    res = _measure(host_call=host_call, n_sets=4, timing=Timing(warmup=5, iters=40, min_iters=4, max_time=10.0),
                   dev_enqueue=dev_enqueue, dev_sync=lambda: None, stream=None, torch=fake_torch)
    g = res["gpu_ms"]
    assert g["n"] == 40 and g["min"] == 1.0 and g["max"] == 4.0
    assert g["mean"] == pytest.approx(2.5) and g["p50"] == pytest.approx(2.5)  # 10 of each of 1, 2, 3, 4
    assert res["e2e_ms"]["n"] == 40 and res["warmup"] == 5
    assert calls["dev"] == 1 + 5 + 40  # first call, warm-up, timed
    assert calls["host"] == 2 + 40  # e2e warm-up, timed


def test_measure_host_loop_respects_budget():
    import time

    res = _measure(host_call=lambda i: time.sleep(0.004), n_sets=3,
                   timing=Timing(warmup=2, iters=500, min_iters=3, max_time=0.05))
    assert 3 <= res["e2e_ms"]["n"] <= 25  # about 0.05 s / 4 ms, never below min_iters
    assert res["gpu_ms"] is res["e2e_ms"]  # host-only engines: compute time is the call's time
    assert res["e2e_ms"]["min"] >= 3.9


# ------------------------------------------------------------------------------------------ config
def test_config_errors():
    ok = dict(models=["bert-base"], out="x")
    BenchConfig(**ok).validate()
    for kw, msg in [
        (dict(batch=[]), "grid is empty"),
        (dict(seq=[]), "grid is empty"),
        (dict(batch=[0, 1]), "positive integers"),
        (dict(batch=[1, 1]), "duplicate"),
        (dict(baselines=["torch-fp64"]), "unknown baseline 'torch-fp64'"),
        (dict(precisions=["int8"]), "unknown"),
        (dict(precisions=[]), "empty"),
        (dict(iters=5, min_iters=10), "above --iters"),
        (dict(cuda_graphs="maybe"), "cuda-graphs"),
        (dict(gemm_search="fastest"), "gemm-search: 'fastest' is not one of heuristic, focused, exhaustive"),
        (dict(resume=True, overwrite=True), "contradict"),
        (dict(models=[]), "no MODEL"),
    ]:
        with pytest.raises(BenchConfigError, match=msg):
            BenchConfig(**{**ok, **kw}).validate()


def test_config_files(tmp_path):
    kw = read_config_file(REPO / "bench" / "paper.toml")
    cfg = BenchConfig(out=tmp_path, **kw).validate()
    from trtrun.bench.models import resolve_model
    from trtrun.bench.sweep import plan_points

    pts = plan_points(cfg, [resolve_model(m, cfg) for m in cfg.models])
    assert len(pts) >= 360  # the paper's "more than 360 configurations"
    engines = {p.engine for p in pts}
    assert engines == {"trtrun-fp32", "trtrun-fp16", "trtrun-hybrid", "trtrun-fp8", "torch-fp32", "torch-fp16",
                       "torch-compile", "cpu"}
    assert all(Path(f).is_file() for f in cfg.tokens.values())
    bad = tmp_path / "bad.toml"
    bad.write_text('models = ["gpt2"]\nbatchs = [1]\n')
    with pytest.raises(BenchConfigError, match="unknown key"):
        read_config_file(bad)
    bad.write_text("models = [\n")
    with pytest.raises(BenchConfigError, match="cannot parse"):
        read_config_file(bad)
    # gemm_search / gemm_cache: the cache path is relative to the file
    good = tmp_path / "sub" / "g.toml"
    good.parent.mkdir()
    good.write_text('models = ["gpt2"]\ngemm_search = "exhaustive"\ngemm_cache = "cache/gemm.json"\n')
    kw = read_config_file(good)
    assert kw["gemm_search"] == "exhaustive" and kw["gemm_cache"] == (good.parent / "cache" / "gemm.json").resolve()
    good.write_text('models = ["gpt2"]\ngemm_cache = 3\n')
    with pytest.raises(BenchConfigError, match="gemm_cache` has the wrong type"):
        read_config_file(good)


def test_allow_large_reaches_the_export_and_the_torch_baseline(tmp_path, monkeypatch):
    """--allow-large (or `allow_large = true` in a config file) is carried by a named architecture's ModelSpec to
    both places that build its random weights: the ONNX export and the PyTorch model of the torch baselines
    (both stubbed: only the flag they get matters). Without it, both get allow_large=False."""
    import trtrun.export
    from trtrun.bench.models import ensure_onnx, load_torch_model, resolve_model

    f = tmp_path / "big.toml"
    f.write_text('models = ["gpt2"]\nallow_large = true\n[model_size]\nhidden_size = 8192\n')
    kw = read_config_file(f)
    assert kw["allow_large"] is True
    f.write_text('models = ["gpt2"]\nallow_large = "yes"\n')
    with pytest.raises(BenchConfigError, match="allow_large` has the wrong type"):
        read_config_file(f)
    seen = []

    def export_stub(source, out, **k):
        seen.append(("export", k["allow_large"]))
        raise RuntimeError("stub")

    def load_stub(torch, transformers, source, overrides, seed, allow_large=False):
        seen.append(("torch", allow_large))
        raise RuntimeError("stub")

    monkeypatch.setattr(trtrun.export, "export_model", export_stub)
    monkeypatch.setattr(trtrun.export, "_load_model", load_stub)
    monkeypatch.setattr(trtrun.export, "_import_torch", lambda: (None, None))
    for allow in (True, False):
        cfg = BenchConfig(out=tmp_path / str(allow), **{**kw, "allow_large": allow}).validate()
        spec = resolve_model("gpt2", cfg)
        for step in (lambda: ensure_onnx(spec, cfg), lambda: load_torch_model(spec)):
            with pytest.raises(RuntimeError, match="stub"):
                step()
    assert seen == [("export", True), ("torch", True), ("export", False), ("torch", False)], seen


# ------------------------------------------------------------------------------------------ results store
def test_store_torn_line_and_resume_rules(tmp_path):
    st = ResultStore(tmp_path, resume=False)
    sid = st.add_session({"card": None, "backend": "reference"})
    rec = dict(session=sid, model="m", engine="cpu", precision="fp32", batch=1, seq=8, cuda_graphs="n/a", status="ok")
    st.add_point(rec)
    st.add_point({**rec, "seq": 16, "status": "error"})
    with open(st.path, "a") as f:
        f.write('{"type": "point", "model": "m", "eng')  # killed mid-write
    with pytest.raises(BenchConfigError, match="--resume"):
        ResultStore(tmp_path, resume=False)
    st2 = ResultStore(tmp_path, resume=True)
    assert st2.torn == 1 and st.path.read_bytes().endswith(b"\n")
    assert st2.done_keys() == {("m", "cpu", 1, 8, "n/a"), ("m", "cpu", 1, 16, "n/a")}
    assert st2.done_keys(retry_failed=True) == {("m", "cpu", 1, 8, "n/a")}
    with open(st.path, "a") as f:
        f.write("garbage\n")
    with pytest.raises(BenchConfigError, match="not a JSON line"):
        ResultStore(tmp_path, resume=True)
    ResultStore(tmp_path, resume=False, overwrite=True)
    assert not st.path.exists()


# ------------------------------------------------------------------------------------------ sweeps (reference)
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One small sweep on the reference backend: tiny BERT, every precision, torch fp32 (CPU) and the CPU
    baseline (onnxruntime), batch 1,2 x seq 8,16."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("bench")
    cache, out = root / "cache", root / "out"
    rc = main(["bench", "bert-base", *TINY, *FAST, "--batch", "1,2", "--seq", "8,16",
               "--baselines", "torch-fp32,torch-fp16,torch-compile,cpu", "--cpu-grid", "full", "--compile-grid", "full",
               "--cache-dir", str(cache), "--out", str(out)])
    assert rc == 0
    return SimpleNamespace(root=root, cache=cache, out=out)


def _points(out: Path) -> list[dict]:
    return [json.loads(l) for l in open(out / "results.jsonl") if '"type": "point"' in l]


def test_sweep_writes_results_report_and_plots(swept):
    pts = _points(swept.out)
    ok = [p for p in pts if p["status"] == "ok"]
    assert len(pts) == 4 * (3 + 4) and len(ok) == 4 * 5  # torch-fp16/compile: unavailable on the CPU
    for p in ok:
        for k in ("min", "mean", "p50", "p90", "p99", "n"):
            assert p["e2e_ms"][k] is not None
        assert p["e2e_ms"]["min"] <= p["e2e_ms"]["p50"] <= p["e2e_ms"]["p99"]
        assert p["seq_per_s"] > 0 and p["tokens_per_s"] == pytest.approx(p["seq_per_s"] * p["seq"])
        assert "wiki" in p.get("inputs", "")
    unavailable = {p["engine"] for p in pts if p["status"] == "unavailable"}
    assert unavailable == {"torch-fp16", "torch-compile"}
    csv_text = (swept.out / "results.csv").read_text()
    for field in ("# session 1:", "date:", "command: trtrun bench bert-base", "onnxruntime:", "torch:",
                  "gpu_p50_ms", "e2e_p99_ms", "tokens_per_s"):
        assert field in csv_text
    summary = (swept.out / "summary.md").read_text()
    for statement in ("Speedup over the CPU baseline at batch 1", "Speedup over the CPU baseline at the best point",
                      "Hybrid's overhead over fp16", "Memory reduction against PyTorch fp32 eager",
                      "Where trtrun is slower than a baseline", "Points not measured", "torch.compile"):
        assert statement in summary, statement
    # the cross-engine check: torch fp32 (same seed and config) computes what trtrun fp32 computes
    checks = [json.loads(l) for l in open(swept.out / "results.jsonl") if '"type": "check"' in l]
    fp32 = [c for c in checks if {c["a"], c["b"]} == {"torch-fp32", "trtrun-fp32"}]
    assert fp32 and fp32[0]["cosine"] > 0.99999
    plots = sorted(p.name for p in (swept.out / "plots").glob("*.png"))
    assert any(n.endswith("-latency.png") for n in plots)
    assert any(n.endswith("-speedup.png") for n in plots)
    assert any(n.endswith("-hybrid-overhead.png") for n in plots)
    assert all((swept.out / "plots" / n).stat().st_size > 5000 for n in plots)


def test_reference_backend_times_are_not_called_gpu_time(swept):
    """Without a GPU every time is the host clock's: summary.md and the terminal table say so and never call
    them GPU time (the GPU-like records of test_summary_statements_on_gpu_like_records still do)."""
    from trtrun.bench.report import short_table

    summary = (swept.out / "summary.md").read_text()
    assert "GPU time" not in summary
    assert "- host-clock time: no GPU ran here" in summary and "p50 latency (ms; host-clock time, CPU" in summary
    assert "on host-clock time)" in summary  # the CPU speedup at batch 1, next to end to end
    table = short_table(ResultStore(swept.out, resume=True))
    assert "p50 ms (host-clock time; cpu end to end)" in table and "GPU" not in table


def test_resume_after_kill(swept, tmp_path, monkeypatch):
    """Kill a sweep midway (Ctrl-C at the 4th point), tear the last line, resume: finished points are not
    measured again, the rest are, and every point ends up recorded exactly once."""
    from trtrun.bench import runners

    out = tmp_path / "out"
    args = ["bench", "bert-base", *TINY, *FAST, "--batch", "1,2", "--seq", "8,16", "--precision", "fp32,hybrid",
            "--baselines", "cpu", "--cpu-grid", "full", "--cache-dir", str(swept.cache), "--out", str(out)]
    seen = []
    real_ref = runners.TrtrunRunner.measure
    real_cpu = runners.OrtCpuRunner.measure

    def counting(real, stop_at=None):
        def measure(self, batch, seq, sets, timing):
            seen.append((type(self).__name__, batch, seq))
            if stop_at is not None and len(seen) == stop_at:
                raise KeyboardInterrupt
            return real(self, batch, seq, sets, timing)
        return measure

    monkeypatch.setattr(runners.TrtrunRunner, "measure", counting(real_ref, stop_at=4))
    monkeypatch.setattr(runners.OrtCpuRunner, "measure", counting(real_cpu, stop_at=4))
    assert main(args) == 130
    first = _points(out)
    assert len(first) == 3 and (out / "summary.md").exists()  # the report is written even when interrupted
    with open(out / "results.jsonl", "a") as f:
        f.write('{"type": "point", "model": "bert-base-a2-i128-h64-l1-p64", "engine": "trtrun-fp32", "bat')
    assert main(args) == 1  # results there, no --resume: refused
    seen.clear()
    monkeypatch.setattr(runners.TrtrunRunner, "measure", counting(real_ref))
    monkeypatch.setattr(runners.OrtCpuRunner, "measure", counting(real_cpu))
    assert main(args + ["--resume"]) == 0
    assert len(seen) == 12 - 3
    pts = _points(out)
    keys = [(p["engine"], p["batch"], p["seq"]) for p in pts]
    assert len(keys) == len(set(keys)) == 12 and all(p["status"] == "ok" for p in pts)
    sessions = [json.loads(l) for l in open(out / "results.jsonl") if '"type": "session"' in l]
    assert [s["session"] for s in sessions] == [1, 2]  # the refused run added no session
    seen.clear()
    assert main(args + ["--resume"]) == 0 and seen == []  # nothing left to do


def test_report_only_and_deadline(swept, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(swept.out, out)
    (out / "summary.md").unlink()
    shutil.rmtree(out / "plots")
    assert main(["bench", "--report-only", "--out", str(out), "-q"]) == 0
    assert (out / "summary.md").exists() and list((out / "plots").glob("*.png"))
    # a deadline too short for any point: nothing measured, the sweep says what is left
    out2 = tmp_path / "deadline"
    assert main(["bench", "bert-base", *TINY, *FAST, "--batch", "1", "--seq", "8", "--baselines", "none",
                 "--cache-dir", str(tmp_path / "fresh-cache"), "--deadline", "1", "--out", str(out2)]) == 0
    assert _points(out2) == []


def test_gemm_options_with_the_reference_backend(tmp_path, capsys):
    """--gemm-search/--gemm-cache concern the GPU runtime: with --backend reference the sweep says it ignores
    them, runs, and writes no cache file."""
    cache = tmp_path / "gemm.json"
    args = [a for a in FAST if a != "-q"]
    assert main(["bench", "bert-base", *TINY, *args, "--batch", "1", "--seq", "8", "--baselines", "none",
                 "--gemm-search", "exhaustive", "--gemm-cache", str(cache), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "--gemm-search and --gemm-cache apply to --backend gpu only" in err
    assert _points(tmp_path / "o") and not cache.exists()


# ------------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("extra, code, message", [
    (["--batch", ""], 2, "--batch must be one or more positive integers"),
    (["--seq", "0,32"], 2, "--seq must be one or more positive integers"),
    (["--baselines", "torch-fp32,onnx-gpu"], 2, "unknown ['onnx-gpu']"),
    (["--precision", "int8"], 2, "unknown ['int8']"),
    (["--seq", "32,128"], 1, "above bert-base"),  # the tiny model has 64 positions
])
def test_bad_arguments(tmp_path, capsys, extra, code, message):
    rc = main(["bench", "bert-base", *TINY, *FAST, "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert rc == code, err
    assert message in err and "Traceback" not in err


def test_bad_model_and_plan_profile(swept, tmp_path, capsys):
    plans = sorted(swept.cache.glob("*/hybrid-*.plan"))
    assert plans
    plan = str(plans[0])  # profile batch 1..2, seq 1..16
    cases = [
        (["bench", plan, "--batch", "1,4", "--seq", "8"], "--batch 4 is outside the plan's profile"),
        (["bench", plan, "--batch", "1", "--seq", "32"], "--seq 32 is outside the plan's profile"),
        (["bench", plan, "--precision", "fp16", "--batch", "1", "--seq", "8"], "is a hybrid plan"),
        (["bench", "gpt2", "--backend", "gpu", "--baselines", "none"], "--backend gpu"),
    ]
    for args, message in cases:
        rc = main(args + ["--out", str(tmp_path / "o"), "-q"])
        err = capsys.readouterr().err
        assert rc == 1 and message in err and "Traceback" not in err, (args, err)
    # a MODEL that is neither a file nor a named architecture is a bad command line (docs/cli.md): exit 2
    for args in (["bench", str(tmp_path / "nope.onnx")], ["bench", "bert-large"]):
        rc = main(args + ["--out", str(tmp_path / "o"), "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and "does not exist, and is not a named architecture" in err, (args, err)


def test_plan_input_without_torch_source(swept, tmp_path):
    """A plan of unknown origin: trtrun and the CPU baseline (its source ONNX is still there) are measured,
    the torch baselines are recorded as unavailable with the reason."""
    plan = str(sorted(swept.cache.glob("*/fp32-*.plan"))[0])
    out = tmp_path / "o"
    assert main(["bench", plan, *FAST, "--batch", "1", "--seq", "8", "--baselines", "torch-fp32,cpu", "--cpu-grid", "full",
                 "--out", str(out)]) == 0
    pts = {p["engine"]: p for p in _points(out)}
    assert pts["trtrun-fp32"]["status"] == "ok" and pts["cpu"]["status"] == "ok"
    assert pts["torch-fp32"]["status"] == "unavailable" and "--torch-model" in pts["torch-fp32"]["note"]
    assert "baseline unavailable" in (out / "summary.md").read_text()


# ------------------------------------------------------------------------------------------ report (GPU-like)
def _gpu_store(tmp_path) -> ResultStore:
    """Hand-made records as a GPU sweep writes them, with numbers whose statements are known."""
    st = ResultStore(tmp_path, resume=False)
    sid = st.add_session({"card": "NVIDIA H100 80GB HBM3", "gpu_uuid": "GPU-8707fc88-0000", "backend": "gpu",
                          "driver": "580.0",
                          "config": {"baselines": ["torch-fp32", "torch-compile", "cpu"], "compile_grid": "subset",
                                     "compile_batch": [1, 8, 32], "compile_seq": [32, 128, 512]}})
    MiB = 2**20

    def pt(engine, b, s, gpu, e2e=None, mem=None, graphs="on"):
        st.add_point({"session": sid, "model": "bert-base", "engine": engine, "precision": "x", "batch": b,
                      "seq": s, "cuda_graphs": graphs, "status": "ok", "gpu_timer": "CUDA events",
                      "gpu_ms": None if gpu is None else {"p50": gpu, "mean": gpu},
                      "e2e_ms": {"p50": e2e if e2e is not None else gpu * 1.5},
                      "peak_mem_bytes": None if mem is None else mem * MiB, "mem_source": "runtime: x" if mem else None})

    for b, s, f16, hyb, f32, tf32, tc, cpu, tmem in [(1, 128, 1.0, 1.05, 3.0, 4.0, 0.8, 30.0, 1000),
                                                      (32, 128, 2.0, 2.2, 6.0, 20.0, 2.5, 300.0, 2000)]:
        pt("trtrun-fp16", b, s, f16, mem=300)
        pt("trtrun-hybrid", b, s, hyb, e2e=hyb + 0.45 if b == 1 else 3.0, mem=400)
        pt("trtrun-fp32", b, s, f32, mem=700)
        pt("torch-fp32", b, s, tf32, mem=tmem, graphs="off")
        pt("torch-compile", b, s, tc, mem=tmem // 2)
        pt("cpu", b, s, None, e2e=cpu, graphs="n/a")
    st.add_point({"session": sid, "model": "bert-base", "engine": "torch-fp16", "precision": "fp16", "batch": 1,
                  "seq": 128, "cuda_graphs": "off", "status": "error", "note": "OutOfMemoryError: boom"})
    return st


def test_gpu_info_reads_the_card_and_its_uuid(monkeypatch):
    from trtrun.bench import meta

    def fake_run(cmd, timeout=10):
        if cmd[0] == "nvidia-smi" and any(c.startswith("--query-gpu=") for c in cmd):
            assert "uuid" in next(c for c in cmd if c.startswith("--query-gpu="))
            return "NVIDIA H200, 580.159.04, 143771 MiB, GPU-79ea1bf6-1111-2222-3333-444455556666"
        if cmd == ["nvidia-smi"]:
            return "| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   CUDA Version: 13.0 |"
        return None

    monkeypatch.setattr(meta, "_run", fake_run)
    info = meta.gpu_info()
    assert info["card"] == "NVIDIA H200" and info["driver"] == "580.159.04" and info["gpu_memory"] == "143771 MiB"
    assert info["gpu_uuid"] == "GPU-79ea1bf6-1111-2222-3333-444455556666"
    assert info["cuda"].startswith("driver supports 13.0")
    # an nvidia-smi that refuses the uuid field fails the whole query: asked again without it, the rest as before
    asked = []

    def no_uuid(cmd, timeout=10):
        q = next((c for c in cmd if c.startswith("--query-gpu=")), None)
        asked.append(q)
        if q is None or "uuid" in q:
            return None
        return "NVIDIA H200, 580.159.04, 143771 MiB"

    monkeypatch.setattr(meta, "_run", no_uuid)
    info = meta.gpu_info()
    assert info["card"] == "NVIDIA H200" and info["driver"] == "580.159.04" and "gpu_uuid" not in info
    assert asked[:2] == ["--query-gpu=name,driver_version,memory.total,uuid",
                         "--query-gpu=name,driver_version,memory.total"]


def test_summary_statements_on_gpu_like_records(tmp_path):
    from trtrun.bench.report import write_report

    st = _gpu_store(tmp_path)
    paths = write_report(st)
    text = (tmp_path / "summary.md").read_text()
    # CPU: b1 30 / 1.5 = 20x end to end (30 / 1.05 on GPU time); best: b32 300 / 3 = 100x
    assert "seq 128: 20.0x end to end (28.6x on GPU time)" in text
    assert "100.0x end to end at batch 32, seq 128" in text
    # hybrid over fp16: +5% and +10%
    assert "median +7.5%" in text and "range +5.0% .. +10.0%" in text
    # memory: hybrid 400 MiB vs torch fp32 2000 MiB at the largest shape
    assert "(trtrun-hybrid): 80.0% less at batch 32, seq 128 (400 MiB vs 2000 MiB)" in text
    # slower: hybrid 1.05 vs compile 0.8 at b1; fp32 3.0/6.0 vs compile; fp16 1.0 vs compile 0.8
    assert "| trtrun-hybrid | on | 1 | 128 | 1.050 | torch-compile | 0.800 | 1.31 | GPU time |" in text
    assert "| trtrun-fp32 | on | 32 | 128 | 6.000 | torch-compile | 2.500 | 2.40 | GPU time |" in text
    assert "trtrun-hybrid | on | 32" not in text  # 2.2 < 2.5: faster there
    assert "bert-base: speed targets" in text and "| NO |" in text  # 1.05 ms > 0.35 ms
    assert "torch-fp16: error at 1 point(s): OutOfMemoryError: boom" in text
    assert "- gpu_uuid: GPU-8707fc88-0000" in text  # which card of that model: hosts differ by a few percent
    from trtrun.bench.results import header_block

    assert "#   gpu_uuid: GPU-8707fc88-0000" in header_block(st.sessions)  # the head of results.csv
    names = {p.name for p in paths}
    assert {"bert-base-latency.png", "bert-base-speedup.png", "bert-base-memory.png",
            "bert-base-hybrid-overhead.png"} <= names


def test_failed_setup_is_recorded_once(swept, tmp_path, monkeypatch):
    """An engine that cannot be set up (here the CPU baseline) fails its points with the reason; it is
    tried once, the other engines are measured, and the summary lists the failure."""
    from trtrun.bench import runners

    tries = []

    def broken(self, *a, **k):
        tries.append(1)
        raise RuntimeError("no memory for the session")

    monkeypatch.setattr(runners.OrtCpuRunner, "__init__", broken)
    out = tmp_path / "o"
    assert main(["bench", "bert-base", *TINY, *FAST, "--batch", "1,2", "--seq", "8,16", "--precision", "fp32",
                 "--baselines", "cpu", "--cpu-grid", "full", "--cache-dir", str(swept.cache), "--out", str(out)]) == 0
    pts = _points(out)
    cpu = [p for p in pts if p["engine"] == "cpu"]
    assert len(tries) == 1 and len(cpu) == 4
    assert all(p["status"] == "error" and "no memory for the session" in p["note"] for p in cpu)
    assert all(p["status"] == "ok" for p in pts if p["engine"] == "trtrun-fp32")
    assert "cpu: error at 4 point(s)" in (out / "summary.md").read_text()


def test_no_model_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no MODEL given" in err and "internal error" not in err


@pytest.mark.parametrize("arch, extra, encoder", [
    ("llama", ["--kv-heads", "1"], False),  # RMSNorm, rotary, SwiGLU, grouped-query attention, causal
    ("modernbert", [], True),  # global and local attention, rotary, GeGLU, no biases, bidirectional
])
def test_named_architectures_beyond_bert_and_gpt2(tmp_path, arch, extra, encoder):
    """Every architecture `trtrun export` names is a bench MODEL: exported at the size given, built, timed beside
    the torch baseline rebuilt from the same seed and config, and the cross-engine check says both compute the
    same function (fp32 against fp32: rounding only, as for BERT above)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from trtrun.plan import load_plan

    out = tmp_path / "out"
    rc = main(["bench", arch, *TINY, *extra, *FAST, "--batch", "1,2", "--seq", "8,16",
               "--precision", "fp32,hybrid", "--baselines", "torch-fp32", "--cache-dir", str(tmp_path / "cache"),
               "--out", str(out)])
    assert rc == 0
    pts = _points(out)
    assert {p["engine"] for p in pts if p["status"] == "ok"} == {"trtrun-fp32", "trtrun-hybrid", "torch-fp32"}
    assert len(pts) == 4 * 3
    checks = [json.loads(l) for l in open(out / "results.jsonl") if '"type": "check"' in l]
    fp32 = [c for c in checks if {c["a"], c["b"]} == {"torch-fp32", "trtrun-fp32"}]
    assert fp32 and min(c["cosine"] for c in fp32) > 0.99999
    plan = load_plan(next((tmp_path / "cache").glob(f"{arch}-*/fp32-*.plan")))
    assert plan.model["arch"] == ("encoder" if encoder else "decoder")


def test_named_architecture_positions_come_from_its_config(tmp_path):
    """A sequence past a named architecture's positions is refused before anything is built, for the
    architectures whose limit only their config knows (MPNet's 514 rows hold 512 tokens)."""
    from trtrun.bench.config import BenchConfig, BenchConfigError
    from trtrun.bench.models import resolve_model

    cfg = BenchConfig(models=["mpnet"], out=tmp_path, backend="reference", seq=[512]).validate()
    assert resolve_model("mpnet", cfg).max_positions == 512
    with pytest.raises(BenchConfigError, match="above mpnet's 512 positions"):
        resolve_model("mpnet", BenchConfig(models=["mpnet"], out=tmp_path, backend="reference", seq=[513]).validate())
    spec = resolve_model("llama", BenchConfig(models=["llama"], out=tmp_path, backend="reference", seq=[64]).validate())
    assert spec.max_positions == 8192 and spec.arch == "decoder"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "bench").glob("*.toml")))
def test_every_shipped_config_plans_its_grid(tmp_path, name):
    """Each sweep config in bench/ reads, validates, resolves its models (named architectures without building
    anything) and plans its points; its token files are there and fit each model's vocabulary."""
    from trtrun.bench.models import resolve_model
    from trtrun.bench.sweep import plan_points
    from trtrun.export import named_config
    from trtrun.types import EXPORT_ARCHS

    cfg = BenchConfig(out=tmp_path, **read_config_file(REPO / "bench" / name)).validate()
    pts = plan_points(cfg, [resolve_model(m, cfg) for m in cfg.models])
    assert {p.spec.source for p in pts} == set(cfg.models) and len(pts) >= len(cfg.batch) * len(cfg.seq)
    for model, f in cfg.tokens.items():
        ids = np.load(f)["ids"]
        if model in EXPORT_ARCHS:
            assert int(ids.max()) < named_config(model, cfg.overrides).vocab_size, (name, model)
