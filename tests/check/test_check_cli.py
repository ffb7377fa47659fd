"""`trtrun check` end to end on tiny exported models (reference backend, CPU): reports written, an fp16
NaN planted in the ONNX weights found at the right op, budgets and exit codes, decoders' next-token check.

Models: a 2-layer BERT (hidden 32) and GPT-2 (hidden 32) with their real vocabulary sizes, so the data
folder's tokenizers fit; real text comes from the data folder (skipped where it is missing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trtrun.cli.main import main

pytest.importorskip("torch")
pytest.importorskip("transformers")

SIZE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64}
SHIFTED_LN = "model.encoder.layer.1.output.LayerNorm"


def _data_ok():
    from trtrun.data import data_dir

    d = data_dir()
    return (d / "minilm" / "vocab.txt").exists() and (d / "rt_polarity.tsv").exists() and (d / "wiki.txt").exists()


needs_data = pytest.mark.skipif(not _data_ok(), reason="the data folder (TRTRUN_DATA) is missing")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """tiny.onnx (BERT, vocab 30522), shifted.onnx (the same with +5000 on every channel of layer 1's FFN
    output bias: the sum over 32 channels, ~1.6e5, overflows an fp16 LayerNorm's mean -> NaN; each value
    ~5000 still fits fp16) and gpt.onnx (GPT-2, vocab 50257)."""
    import onnx
    from onnx import numpy_helper

    from trtrun.export import export_model

    d = tmp_path_factory.mktemp("check")
    tiny = export_model("bert-base", d / "tiny.onnx", overrides=dict(SIZE, vocab_size=30522), seed=3)
    m = onnx.load(str(tiny))
    for t in m.graph.initializer:
        if t.name == "model.encoder.layer.1.output.dense.bias":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + np.float32(5000), t.name))
            break
    else:  # pragma: no cover - the exporter renamed things
        pytest.fail("layer 1 output.dense.bias not found in the exported graph")
    onnx.save(m, str(d / "shifted.onnx"))
    gpt = export_model("gpt2", d / "gpt.onnx", overrides={k: v for k, v in SIZE.items() if k != "intermediate_size"},
                       seed=3)
    return {"tiny": Path(tiny), "shifted": d / "shifted.onnx", "gpt": Path(gpt), "dir": d}


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@needs_data
def test_planted_fp16_nan_found_and_hybrid_passes(models, capsys, tmp_path):
    out = tmp_path / "rep"
    code, so, se = run(capsys, "check", models["shifted"], "--data", "rt,wiki", "-n", 6, "--backend", "reference",
                       "-o", out, "--gate", "hybrid", "--min-cosine", "0.999", "--max-nan-rate", "0",
                       "--downstream", "off", "-q")
    assert code == 0, se
    assert "verdict: pass" in so
    rep = json.loads((out / "report.json").read_text())
    for f in ("report.md", "cosine_hist.png", "nan_by_length.png", "headroom.png"):
        assert (out / f).stat().st_size > 0
    fp16 = rep["results"]["fp16"]["real"]["rates"]
    assert fp16["nan_samples"] == fp16["samples"] == 6           # every sample: the shift is on every token
    assert rep["results"]["hybrid"]["real"]["rates"]["nonfinite_samples"] == 0
    assert rep["results"]["hybrid"]["real"]["cos"]["min"] >= 0.999
    h16 = rep["headroom"]["by_set"]["real"]["fp16"]
    assert h16["first_nonfinite"]["first_op"]["op"] == SHIFTED_LN
    assert h16["first_overflow"]["first_point"]["op"] == SHIFTED_LN
    assert h16["first_overflow"]["first_point"]["quantity"] == "row_sum"
    safe = rep["headroom"]["hybrid_safety"]["real"]
    assert any(a["op"] == SHIFTED_LN and a["hybrid_held"] == "float32" for a in safe["at_fp16_overflow_points"])
    assert safe["hybrid_fp16_over"] == 0
    # random ids of matched lengths: same masks, NaN on both (the shift does not depend on the text)
    assert rep["data"]["random"]["tokens"] == rep["data"]["real"]["tokens"]
    assert rep["random_vs_real"]["fp16"]["nan_sample"]["ratio"] == pytest.approx(1.0)
    md = (out / "report.md").read_text()
    assert "Why the hybrid plan is safe" in md and SHIFTED_LN in md and "**PASS**" in md
    # the heading is computed, not fixed: the same report with a hybrid overflow no longer claims safety
    from trtrun.check.report import markdown

    rep["headroom"]["hybrid_safety"]["real"]["hybrid_fp16_over"] = 2
    md_bad = markdown(rep)
    assert "Why the hybrid plan is safe" not in md_bad
    assert "NOT safe on these samples" in md_bad and "2 sample-points over 65504" in md_bad
    assert rep["per_sample"]["data"]["hybrid"]["real"][0][0] > 0


@needs_data
def test_budget_broken_exit_code(models, capsys, tmp_path):
    code, so, se = run(capsys, "check", models["shifted"], "--data", "rt", "-n", 4, "--backend", "reference",
                       "-o", tmp_path / "r", "--max-nan-rate", "0.5", "--no-random", "--downstream", "off",
                       "--no-plots", "-q")
    assert code == 3, se
    assert "trtrun: check failed: fp16 on real: 4 of 4 samples" in se and "--max-nan-rate 0.5" in se
    assert "hybrid" not in se.split("check failed")[1]          # hybrid kept the budget
    rep = json.loads((tmp_path / "r" / "report.json").read_text())   # written before the exit
    assert rep["verdict"] == "fail" and len(rep["failures"]) == 1
    assert "**FAIL**" in (tmp_path / "r" / "report.md").read_text()

    code, so, se = run(capsys, "check", models["tiny"], "--data", "rt", "-n", 3, "--backend", "reference",
                       "-o", tmp_path / "r2", "--min-cosine", "1.000001", "--gate", "hybrid", "--no-random",
                       "--downstream", "off", "--no-plots", "-q")
    assert code == 3 and "hybrid on real: 3 of 3 samples have cosine below --min-cosine 1.000001" in se


def test_random_data_and_bad_inputs(models, capsys, tmp_path):
    code, so, se = run(capsys, "check", models["tiny"], "--data", "random", "-n", 5, "--backend", "reference",
                       "-o", tmp_path / "r", "--precision", "hybrid", "--downstream", "off", "--no-plots", "-q")
    assert code == 0, se
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert list(rep["data"]) == ["random"] and rep["random_vs_real"] == {}
    assert rep["results"]["hybrid"]["random"]["rates"]["samples"] == 5
    assert "onnxruntime" in rep["fp32_reference"]
    from trtrun.check.summary import main as summary_main

    assert summary_main([str(tmp_path / "s.md"), f"tiny={tmp_path / 'r'}", f"gone={tmp_path / 'nothing'}"]) == 0
    s = (tmp_path / "s.md").read_text()
    assert "| tiny | random |" in s and "## fp16 against hybrid" in s and "gone" not in s



def test_bad_command_lines_refused_before_any_work(models, capsys, tmp_path, monkeypatch):
    """A missing MODEL, a --data that names nothing, contradicting --gate/--precision: exit code 2 (a bad
    command line, docs/cli.md), before anything is exported or built (`--data nope` used to build two plans
    first, then exit 1)."""
    import trtrun.builder

    built = []
    monkeypatch.setattr(trtrun.builder, "build", lambda *a, **k: built.append(a))
    for args, needle in (([tmp_path / "nope.onnx"], "nope.onnx"),
                         ([models["tiny"], "--precision", "fp16", "--gate", "hybrid"], "--gate hybrid"),
                         ([models["tiny"], "--data", "nosuchset"], "nosuchset"),
                         ([models["tiny"], "--data", "rt,sst2"], "sst2"),
                         ([models["tiny"], "--tokenizer", tmp_path / "no-tokenizer"], "no-tokenizer")):
        code, so, se = run(capsys, "check", *args, "-o", tmp_path / "x", "--backend", "reference")
        assert code == 2 and se.count("trtrun: error:") == 1 and needle in se and "Traceback" not in se, (args, se)
    assert built == [] and not (tmp_path / "x").exists()


def test_run_check_refuses_missing_data_before_building(models, tmp_path, monkeypatch):
    """The library checks its data before the export and the builds: a data set not in the data folder is a
    DataError saying how to fetch it (exit 1 on the command line: the environment, not the command line)."""
    import trtrun.builder
    from trtrun.check import CheckOptions, run_check
    from trtrun.data import DataError
    from trtrun.errors import InputError

    built = []
    monkeypatch.setattr(trtrun.builder, "build", lambda *a, **k: built.append(a))
    with pytest.raises(InputError, match="nosuchset"):
        run_check(CheckOptions(model=str(models["tiny"]), out_dir=tmp_path, data="nosuchset"))
    monkeypatch.setenv("TRTRUN_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="rt_polarity.tsv is missing; fetch it"):
        run_check(CheckOptions(model=str(models["tiny"]), out_dir=tmp_path, data="rt,wiki"))
    assert built == []


@needs_data
def test_decoder_next_token_check(models, capsys, tmp_path):
    code, so, se = run(capsys, "check", models["gpt"], "--data", "wiki", "-n", 4, "--backend", "reference",
                       "-o", tmp_path / "g", "--no-random", "--no-plots", "--max-length", 48, "-q")
    assert code == 0, se
    rep = json.loads((tmp_path / "g" / "report.json").read_text())
    lm = rep["downstream"]["language_model"]
    assert lm["positions"] == sum(n - 1 for n in [r[0] for r in rep["per_sample"]["data"]["hybrid"]["real"]])
    assert "original ONNX" in lm["note"]                        # fp32 wte from the ONNX initializer
    for p in ("fp16", "hybrid"):
        r = lm["results"][p]
        assert 0.0 <= r["top1_agreement"] <= 1.0 and r["nonfinite_positions"] == 0
    # hybrid moves logits less than fp16 does (fp32 LayerNorm/softmax)
    assert lm["results"]["hybrid"]["ll_diff_mean_abs"] <= lm["results"]["fp16"]["ll_diff_mean_abs"] * 1.5
    assert rep["model"]["arch"] == "decoder"


@needs_data
def test_downstream_classifier_on_tiny_model(models, capsys, tmp_path):
    code, so, se = run(capsys, "check", models["tiny"], "--data", "rt", "-n", 2, "--backend", "reference",
                       "-o", tmp_path / "d", "--no-random", "--no-plots", "--downstream", "on",
                       "--downstream-train", 120, "--downstream-test", 60, "-q")
    assert code == 0, se
    rep = json.loads((tmp_path / "d" / "report.json").read_text())
    c = rep["downstream"]["classification"]
    assert c["split"]["train"] == 120 and c["split"]["test"] == 60
    assert set(c["results"]) == {"fp32", "fp16", "hybrid"}
    for name, r in c["results"].items():
        lo, hi = r["wilson95"]
        assert lo <= r["accuracy"] <= hi and r["n"] == 60
    assert c["results"]["hybrid"]["flipped_to_wrong"] + c["results"]["hybrid"]["flipped_to_right"] <= 60


@needs_data
def test_downstream_scales_with_n_shows_progress_and_its_accuracies(models, capsys, tmp_path):
    """Without --downstream-train/--downstream-test the head's sizes follow -n (here max(256, 16 x 2) train and
    max(128, 4 x 2) test sentences, not all 8,530 sentences embedded four times); stderr says what it will
    embed and shows progress; the terminal summary carries the accuracies."""
    code, so, se = run(capsys, "check", models["tiny"], "--data", "rt", "-n", 2, "--backend", "reference",
                       "-o", tmp_path / "d", "--no-random", "--no-plots", "--downstream", "on")
    assert code == 0, se
    c = json.loads((tmp_path / "d" / "report.json").read_text())["downstream"]["classification"]
    assert c["split"]["train"] == 256 and c["split"]["test"] == 128 and c["split"]["of"] == 8530
    assert "downstream: Rotten Tomatoes head on 256 train and 128 test sentences (of 8530): 640 embeddings" in se
    assert "sizes scale with -n" in se
    for line in ("downstream fp32, train: 256/256 sentences", "downstream fp32, test: 128/128 sentences",
                 "downstream hybrid, test: 128/128 sentences"):
        assert line in se
    assert "head trained on 256 fp32 embeddings, accuracy on 128 test sentences" in so
    for name in ("fp32", "fp16", "hybrid"):
        r = c["results"][name]
        lo, hi = r["wilson95"]
        assert f"    {name:6s} {r['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]" in so
    assert f"{c['results']['hybrid']['flipped_to_wrong']} flipped to wrong" in so


def test_downstream_sizes():
    from trtrun.check.core import CheckOptions, downstream_sizes

    size = lambda **k: downstream_sizes(CheckOptions(model="m", out_dir=Path("."), **k))  # noqa: E731
    assert size(max_samples=8) == (256, 128)
    assert size(max_samples=256) == (4096, 1024)
    assert size(max_samples=2000) == (32000, 8000)     # beyond the split: all 6,824 / 1,706 are used
    assert size(max_samples=8, downstream_train=100, downstream_test=50) == (100, 50)


def test_backend_without_capture_reruns_headroom_on_a_subset(models, monkeypatch, tmp_path):
    """The GPU runtime exposes no intermediates: headroom then re-runs chosen samples on the reference
    backend, and the report says so. Simulated here with a runner that cannot capture."""
    from trtrun.check import core
    from trtrun.check.backends import ReferencePlan

    class NoCapture(ReferencePlan):
        can_capture = False

        def run(self, feeds, capture=False):
            assert not capture, "a runner without capture was asked to capture"
            return super().run(feeds)

    monkeypatch.setattr(core, "choose_backend", lambda b, plan=None: ("gpu", "simulated"))
    monkeypatch.setattr(core, "plan_runner", lambda plan, backend: NoCapture(plan))
    monkeypatch.setattr(core, "_device_name", lambda: "simulated GPU")
    rep = core.run_check(core.CheckOptions(model=str(models["tiny"]), out_dir=tmp_path, data="random",
                                           max_samples=9, headroom_samples=3, downstream="off"))
    h = rep["headroom"]
    assert "re-run on the numpy reference backend" in h["source"]
    assert h["samples"] == {"random": 3}
    assert h["by_set"]["random"]["hybrid"]["samples"] == 3
    assert rep["backend"]["name"] == "gpu" and rep["results"]["fp16"]["random"]["rates"]["samples"] == 9
    assert rep["backend"]["device"] == "simulated GPU" and rep["verdict"] == "pass"


def test_headroom_sample_choice():
    """Up to half by lowest worst-token cosine on the engine (NaN first), then the 4 longest, then seeded."""
    from trtrun.check.core import _pick_headroom
    from trtrun.check.inputs import SampleSet

    lengths = np.array([5, 9, 3, 12, 7, 11, 2, 8, 10, 4])
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    s = SampleSet("real", {"input_ids": np.ones_like(mask), "attention_mask": mask}, ["x"] * 10)
    worst = np.full(10, 0.99999)
    worst[2] = np.nan                                           # NaN/Inf output
    worst[6] = 0.2                                              # a collapsed token (silent fp16 overflow)
    worst[0] = 0.9
    got = _pick_headroom(s, 7, worst, seed=0)
    assert len(got) == 7 and len(set(got.tolist())) == 7
    assert {2, 6, 0} <= set(got.tolist())                       # the 7 // 2 = 3 lowest worst-token cosines
    assert {3, 5, 8, 1} <= set(got.tolist())                    # the 4 longest: 12, 11, 10, 9 tokens
    assert (got == _pick_headroom(s, 7, worst, seed=0)).all()   # seeded
    assert _pick_headroom(s, 50, worst, seed=0).tolist() == list(range(10))
    assert len(_pick_headroom(s, 5, None, seed=1)) == 5


def test_auto_falls_back_for_a_plan_the_gpu_cannot_run(models, tmp_path, monkeypatch):
    """With a usable GPU, --backend auto still runs the reference backend where the built plans hold what the GPU
    runtime lacks (here the tiny model's heads of 16: the attention kernels take 32, 64, 80, 96, 128, 256), and says
    why; the backend is chosen after the build, from the plans (before, it was chosen from the machine alone and the run
    failed at lowering)."""
    from trtrun import runtime
    from trtrun.check import core

    monkeypatch.setattr(runtime, "gpu_available", lambda device=0: (True, "simulated GPU"))
    lines = []
    rep = core.run_check(core.CheckOptions(model=str(models["tiny"]), out_dir=tmp_path, data="random", max_samples=4,
                                           headroom_samples=0, downstream="off"), log=lines.append)
    assert rep["backend"]["name"] == "reference"
    said = [x for x in lines if x.startswith("backend: ")]
    assert said and "head size 16" in said[0] and "this plan: op " in said[0], lines
