"""The `trtrun` command line: every bad input is one clear line on stderr, an exit code, no traceback.

Most tests call `trtrun.cli.main.main(argv)` in-process (fast); a few start a real process to check what
a user sees. Models are tiny (hidden 32, one layer) so the module costs seconds.
"""

import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trtrun.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def cli(capsys, *args):
    """Run `trtrun ARGS` in-process -> (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, expect_code=1, *needles):
    """One `trtrun: error:` message, the expected code, no traceback, and each needle in the message."""
    assert code == expect_code, err
    assert "Traceback" not in err, err
    assert err.count("trtrun: error: ") == 1, err  # status lines may come before it
    for n in needles:
        assert n.lower() in err.lower(), f"{n!r} not in {err!r}"


def _needs(module, attr=None):
    mod = pytest.importorskip(module, reason=f"{module} has not landed yet")
    if attr and not hasattr(mod, attr):
        pytest.skip(f"{module}.{attr} has not landed yet")
    return mod


# --------------------------------------------------------------------------------- fixtures: tiny models

TINY = ["--hidden-size", 32, "--layers", 1, "--heads", 2, "--intermediate-size", 64, "--max-position", 64]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT (BERT's real vocabulary size, so the MiniLM tokenizer fits) exported and built in fp32
    through the CLI itself, with profile batch 1..4, sequence 1..16."""
    _needs("torch")
    _needs("trtrun.builder", "build")
    _needs("trtrun.plan")
    d = tmp_path_factory.mktemp("cli")
    onnx_path, plan_path = d / "tiny.onnx", d / "tiny.fp32.plan"
    assert main(["export", "bert-base", "-o", str(onnx_path), *map(str, TINY), "--vocab-size", "30522", "-q"]) == 0
    assert main(["build", str(onnx_path), "--precision", "fp32", "--min", "1,1", "--opt", "2,8",
                 "--max", "4,16", "-o", str(plan_path), "-q"]) == 0
    return {"onnx": onnx_path, "plan": plan_path, "dir": d, "vocab": 30522}


def _damaged(tiny, tmp_path, how):
    raw = bytearray(tiny["plan"].read_bytes())
    p = tmp_path / f"{how}.plan"
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "flipped":
        raw[len(raw) // 2] ^= 0x10  # one bit in the weights blob: only the checksum can tell
    elif how == "future":
        raw[8:12] = struct.pack("<I", 99)  # format version 99
    elif how == "foreign":
        raw[0:8] = b"NOTAPLAN"
    p.write_bytes(bytes(raw))
    return p


# --------------------------------------------------------------------------------- no model needed

def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from trtrun.cli.main import main\n"
        "rc = main(['--help'])\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'onnx', 'onnx_graphsurgeon', 'numpy',"
        " 'trtrun.runtime', 'trtrun._C', 'trtrun.builder', 'trtrun.plan') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc, time.perf_counter() - t, file=sys.stderr)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "Usage: trtrun" in r.stdout
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("HEAVY")][0]
    assert line.startswith("HEAVY [] 0"), line  # nothing heavy imported, exit code 0
    # wall time of a whole `python -m trtrun --help`; ~0.15 s here. 3 s leaves room for a loaded 2-core CI
    # machine while still catching an eager torch/transformers import (1-2 s each on their own).
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "trtrun", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and "Commands:" in r.stdout
    assert time.perf_counter() - t < 3.0


def test_import_trtrun_is_lazy():
    code = ("import sys, trtrun; print([m for m in ('numpy', 'onnx', 'torch', 'onnxruntime', 'trtrun.runtime')"
            " if m in sys.modules]); print(trtrun.__version__); print(trtrun.TrtrunError.__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout.splitlines() == ["[]", __import__("trtrun").__version__, "TrtrunError"], r.stderr


def test_lazy_attributes_resolve():
    import trtrun
    import trtrun.data

    assert trtrun.load_texts is trtrun.data.load_texts
    with pytest.raises(AttributeError):
        trtrun.no_such_thing  # noqa: B018


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.startswith("trtrun, version ")


def test_info_works_without_gpu(capsys):
    code, out, err = cli(capsys, "info", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["packages"]["numpy"] and info["trtrun"]
    g = info["gpu_runtime"]
    if not g["usable"]:
        assert g["reason"], "info must say why the GPU runtime is not usable"
    code, out, err = cli(capsys, "info")
    assert code == 0 and "GPU runtime:" in out and "data folder:" in out


@pytest.mark.parametrize("args, needle", [
    ([], "Usage"),  # bare `trtrun` prints help
    (["nosuchcommand"], "No such command"),
    (["build"], "Missing argument"),
    (["run", "nofile.plan", "--text", "x"], "does not exist"),
    (["build", "nofile.onnx"], "does not exist"),
])
def test_usage_errors(capsys, args, needle):
    code, out, err = cli(capsys, *args)
    if not args:
        assert needle in out + err
        return
    assert_clean_error(code, err, 2, needle)


@pytest.mark.parametrize("extra, needle", [
    (["--max", "8"], "BATCH,SEQ"),
    (["--max", "0,8"], "positive"),
    (["--min", "4,8", "--max", "2,16"], "min <= opt <= max"),
    (["--hybrid", "--precision", "fp32"], "--hybrid contradicts"),
    (["--precision", "int8"], "int8"),
])
def test_build_bad_options(capsys, tmp_path, extra, needle):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    code, _, err = cli(capsys, "build", f, *extra)
    assert_clean_error(code, err, 2, needle)


def test_build_refuses_to_overwrite_its_source(capsys, tmp_path):
    """-o or --save-onnx naming the source model (or each other) is refused before any work: the
    user's ONNX stays byte for byte what it was."""
    f = tmp_path / "m.onnx"
    f.write_bytes(b"the user's model")
    for extra, needle in ((["-o", f], "source model itself"), (["-o", tmp_path / "." / "m.onnx"], "source model"),
                          (["--save-onnx", f], "source model itself"),
                          (["-o", tmp_path / "x.plan", "--save-onnx", tmp_path / "x.plan"], "same file")):
        code, _, err = cli(capsys, "build", f, *extra)
        assert_clean_error(code, err, 2, needle)
        assert f.read_bytes() == b"the user's model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_not_onnx(capsys, tmp_path):
    _needs("trtrun.builder", "build")
    f = tmp_path / "notes.onnx"
    f.write_text("this is not a protobuf, just text\n" * 10)
    out = tmp_path / "notes.plan"
    code, _, err = cli(capsys, "build", f, "-o", out)
    assert_clean_error(code, err, 1, "notes.onnx")
    assert not out.exists()


def test_export_bad_source(capsys, tmp_path):
    _needs("torch")
    code, _, err = cli(capsys, "export", tmp_path / "no-model-here", "-o", tmp_path / "x.onnx")
    assert_clean_error(code, err, 2, "no-model-here", "does not exist")  # a path that is not there: exit 2
    code, _, err = cli(capsys, "export", "bert-base", "--opset", "9", "-o", tmp_path / "x.onnx")
    assert_clean_error(code, err, 1, "opset")


def test_export_refuses_a_large_random_shape_unless_allowed(capsys, tmp_path, monkeypatch):
    """Mistral-7B's shape by its size options: one clean error naming the size and the options that shrink it or
    allow it, no file; --allow-large reaches the export with allow_large=True (the export itself stubbed: 7B
    would take the machine)."""
    _meta_only(monkeypatch)
    big = ["mistral", "--hidden-size", "4096", "--layers", "32", "--heads", "32", "--kv-heads", "8",
           "--intermediate-size", "14336", "-o", tmp_path / "x.onnx", "-q"]
    code, _, err = cli(capsys, "export", *big)
    assert_clean_error(code, err, 1, "7.11B parameters", "26.5 GiB", "trtrun export --hidden-size",
                       "(trtrun export --allow-large)")
    assert not (tmp_path / "x.onnx").exists()
    import trtrun.export

    seen = {}

    def fake(source, out, **kw):
        seen.update(kw)
        out.write_bytes(b"onnx")
        return out

    monkeypatch.setattr(trtrun.export, "export_model", fake)
    code, _, err = cli(capsys, "export", *big, "--allow-large")
    assert code == 0 and seen["allow_large"] is True, err
    assert cli(capsys, "export", "--help")[1].count("--allow-large") == 1


def _meta_only(monkeypatch) -> None:
    """Fail the test if a model with storage is built: the size check builds one on the meta device only (the
    shapes refused here would take tens of GB)."""
    _needs("torch")
    import torch
    import transformers

    real = transformers.AutoModel.from_config

    def meta_only(config, **kw):
        assert torch.get_default_device().type == "meta", "a model with storage was built"
        return real(config, **kw)

    monkeypatch.setattr(transformers.AutoModel, "from_config", meta_only)


@pytest.mark.parametrize("command, fast", [
    ("check", ["--data", "random", "-n", "1", "--precision", "fp16", "--backend", "reference", "--downstream", "off",
               "--no-random", "--no-plots"]),
    ("bench", ["--backend", "reference", "--baselines", "none", "--precision", "fp32", "--batch", "1", "--seq", "8",
               "--iters", "1", "--warmup", "0", "--min-iters", "1", "--no-plots"]),
])
@pytest.mark.parametrize("arch", ["bert-base", "gpt2"])
def test_check_and_bench_refuse_a_large_random_shape_in_their_own_options_unless_allowed(
        capsys, tmp_path, monkeypatch, command, fast, arch):
    """`trtrun check` and `trtrun bench` export a named architecture too, with the same size options as
    `trtrun export` (one option group): a shape over 4 GiB of fp32 weights (8192 wide, 4 layers: 1.6B parameters
    and 5.9 GiB for bert-base, 3.6B and 13.6 GiB for gpt2) is refused before any weight is allocated, in one clean error that names the command's
    own options (`trtrun check --allow-large`, not export's), and nothing is written; with --allow-large, now
    theirs too, allow_large=True reaches export_model (stubbed there: 6 to 14 GiB would take the machine). Before,
    neither took --allow-large, the refusal named `trtrun export`, and bench recorded it as a failed point, for
    every point, and exited 0."""
    _meta_only(monkeypatch)
    big = [arch, "--hidden-size", "8192", "--layers", "4", "--heads", "64", *fast, "-q"]
    out = ["--out" if command == "bench" else "-o", tmp_path / "out"]
    code, _, err = cli(capsys, command, *big, *out)
    assert_clean_error(code, err, 1, f"{arch}: ", "B parameters (hidden 8192, layers 4", "GiB of fp32 weights",
                       "over the 4 GiB", f"(trtrun {command} --hidden-size, --layers",
                       f"(trtrun {command} --allow-large)")
    assert "trtrun export" not in err and "allow_large=" not in err, err
    assert not list((tmp_path / "out").rglob("*.onnx")), list((tmp_path / "out").rglob("*"))
    # (bench: its session record only, no point measured or failed)
    assert all('"status"' not in p.read_text() for p in (tmp_path / "out").rglob("results.jsonl"))
    import trtrun.export
    from trtrun.errors import InputError

    seen = {}

    def stub(source, out_path, **kw):
        seen.update(kw, source=source)
        raise InputError("stubbed: not exported")

    monkeypatch.setattr(trtrun.export, "export_model", stub)
    out = [out[0], tmp_path / "allowed"]
    code, stdout, err = cli(capsys, command, *big, *out, "--allow-large")
    assert seen.get("allow_large") is True and seen["source"] == arch, (seen, err)
    assert seen["overrides"] == {"hidden_size": 8192, "num_hidden_layers": 4, "num_attention_heads": 64}, seen
    assert "stubbed: not exported" in err + stdout + "".join(  # (bench records it with the point)
        p.read_text() for p in (tmp_path / "allowed").rglob("results.jsonl"))
    assert len(re.findall(r"^ +--allow-large ", cli(capsys, command, "--help")[1], re.M)) == 1


@pytest.mark.parametrize("module, args, needles", [
    ("onnxscript", ["export", "gpt2", "--exporter", "dynamo"], ["onnxscript", "pip install 'trtrun[export]'"]),
    ("torch", ["export", "bert-base"], ["exporting needs torch", "pip install 'trtrun[export]'", "torch==2.13.0"]),
])
def test_missing_optional_package_says_what_to_install(capsys, tmp_path, monkeypatch, module, args, needles):
    """A feature whose optional package is missing names the package and the extra that installs it, in one
    line with exit code 1, before any work (was: `internal error: ModuleNotFoundError` after building the
    model). sys.modules[name] = None makes `import name` fail as if it were not installed."""
    monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "x.onnx"
    code, _, err = cli(capsys, *args, "-o", out)
    assert_clean_error(code, err, 1, *needles)
    assert "internal error" not in err and len(err.strip().splitlines()) <= 2 and not out.exists()


def test_missing_optional_package_anywhere_gets_the_install_line(capsys, tmp_path, monkeypatch):
    """The error handler's safety net: a ModuleNotFoundError of an optional package that no feature check
    caught still says what to install; any other missing module stays an internal error."""
    import trtrun.export

    def boom(name):
        def f(*a, **k):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return f

    monkeypatch.setattr(trtrun.export, "export_model", boom("sklearn.linear_model"))
    code, _, err = cli(capsys, "export", "gpt2", "-o", tmp_path / "x.onnx")
    assert_clean_error(code, err, 1, "scikit-learn is not installed: pip install 'trtrun[check]'")
    monkeypatch.setattr(trtrun.export, "export_model", boom("no_such_thing"))
    code, _, err = cli(capsys, "export", "gpt2", "-o", tmp_path / "x.onnx")
    assert_clean_error(code, err, 1, "internal error: ModuleNotFoundError")


def test_readme_and_ci_run_the_same_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = "python3 -m pytest -q"
    assert cmd in readme and cmd in ci
    assert readme.lstrip().splitlines()[0].startswith("#")
    head = "\n".join(readme.splitlines()[:15])
    assert "bash scripts/main.sh" in head and "bash .ci/run" in head


# --------------------------------------------------------------------------------- with a tiny model

def test_build_unsupported_op(capsys, tiny, tmp_path):
    import onnx
    from onnx import helper

    m = onnx.load(str(tiny["onnx"]))
    out_name = m.graph.output[0].name
    for node in m.graph.node:  # re-route the last op through an op no transformer needs
        node.output[:] = ["pre_hardmax" if o == out_name else o for o in node.output]
    m.graph.node.append(helper.make_node("Hardmax", ["pre_hardmax"], [out_name], name="odd_hardmax", axis=-1))
    bad = tmp_path / "hardmax.onnx"
    onnx.save(m, str(bad))
    plan = tmp_path / "hardmax.plan"
    code, _, err = cli(capsys, "build", bad, "-o", plan)
    assert_clean_error(code, err, 1, "Hardmax", "odd_hardmax")
    assert not plan.exists()


def test_build_max_beyond_positions_refused_before_the_passes(capsys, tiny, tmp_path, monkeypatch):
    """The tiny model has 64 positions: --max 2,1024 is refused from the graph alone, before any pass runs
    (the builder's own check comes only after all of them); --max 2,64 still reaches the builder."""
    import trtrun.builder

    calls = []
    monkeypatch.setattr(trtrun.builder, "build", lambda *a, **k: calls.append(k) or (_ for _ in ()).throw(
        RuntimeError("the builder ran")))
    out = tmp_path / "x.plan"
    code, _, err = cli(capsys, "build", tiny["onnx"], "--max", "2,1024", "-o", out)
    assert_clean_error(code, err, 1, "--max sequence 1024 exceeds the model's 64 positions")
    assert calls == [] and not out.exists()
    code, _, err = cli(capsys, "build", tiny["onnx"], "--max", "2,64", "-o", out)
    assert len(calls) == 1 and calls[0]["profile"]["seq"][2] == 64 and "the builder ran" in err


def test_inspect(capsys, tiny):
    code, out, err = cli(capsys, "inspect", tiny["plan"])
    assert code == 0, err
    assert "LayerNorm" in out or "Linear" in out
    code, out, err = cli(capsys, "inspect", tiny["plan"], "--json")
    assert code == 0, err
    h = json.loads(out)
    assert h["precision"] == "fp32" and h["profile"]["seq"][2] == 16 and h["weights"]["bytes"] > 0


@pytest.mark.parametrize("hidden,heads,line", [
    (64, 2, "  GPU runtime: takes every op"),
    # heads of 48 have no attention kernel: the op and the size named, as `--backend gpu` would refuse it
    (48, 1, "  GPU runtime: refused: op 'l0.attn': the GPU runtime does not run Attention ops with head size 48 (the "
            "attention kernels take 32, 64, 80, 96, 128, 256) yet (the reference backend does)"),
])
def test_inspect_says_whether_the_gpu_runtime_takes_a_plan(capsys, tmp_path, hidden, heads, line):
    """From the file alone (this machine has no GPU): the last line of the text, `gpu_runtime` in the JSON."""
    from handmade_plans import tiny_plan

    path = tiny_plan("hybrid", hidden=hidden, heads=heads).save(tmp_path / "p.plan")
    code, out, err = cli(capsys, "inspect", path)
    assert code == 0, err
    assert out.rstrip("\n").splitlines()[-1] == line
    code, out, err = cli(capsys, "inspect", path, "--json")
    g = json.loads(out)["gpu_runtime"]
    assert code == 0 and g["runs"] is (hidden // heads == 32) and g["host_ops"] == []
    assert (g["why"] is None) == g["runs"] and (g["runs"] or "head size 48" in g["why"])


def test_run_refuses_to_write_over_its_input_or_a_bad_suffix(capsys, tiny, tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([[101, 2000, 102]], dtype=np.int64))
    before = ids.read_bytes()
    code, out, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", ids, "-o", ids)
    assert code == 2 and "is the --ids input file" in err and "Traceback" not in err
    assert ids.read_bytes() == before  # the input is untouched
    code, out, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", ids, "-o", tmp_path / "y.txt")
    assert code == 2 and "must end in .npy, .npz or .json" in err
    assert not (tmp_path / "y.txt").exists()


def test_run_ids_to_npy_and_json(capsys, tiny, tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    ids = rng.integers(1000, 30000, size=(3, 9), dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    code, out, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", tmp_path / "ids.npy",
                         "--pooling", "none", "-o", tmp_path / "y.npy")
    assert code == 0, err
    assert "wrote" in err and "last_hidden_state [3, 9, 32] float32 (token states)" in err
    y = np.load(tmp_path / "y.npy")
    sess = ort.InferenceSession(str(tiny["onnx"]), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    ref = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
    assert y.shape == ref.shape == (3, 9, 32)
    # fp32 plan vs onnxruntime fp32: the same math in another order; relative error ~1e-6 (HELPERS: fp32 >= 0.99999)
    cos = (y * ref).sum(-1) / np.linalg.norm(y, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() >= 0.99999

    (tmp_path / "ids.json").write_text(json.dumps([[101, 2000, 3000, 102], [101, 102]]))
    code, out, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", tmp_path / "ids.json",
                         "--pooling", "none", "-o", tmp_path / "y.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "y.json").read_text())
    assert doc["backend"] == "reference" and doc["inputs"]["attention_mask"] == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert doc["outputs"]["last_hidden_state"]["shape"] == [2, 4, 32] and "embeddings" not in doc

    # the file is written where -o says, whatever the suffix's case (np.save alone appends ".npy" to ".NPY")
    for name in ("y2.NPY", "y2.NPZ"):
        code, out, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", tmp_path / "ids.npy",
                             "--pooling", "none", "-o", tmp_path / name)
        assert code == 0, err
        got = np.load(tmp_path / name)
        got = got if name.endswith("NPY") else got["last_hidden_state"]
        np.testing.assert_array_equal(got, y)
    assert not list(tmp_path.glob("y2.NP?.np?"))


def test_run_writes_one_vector_a_text_by_default(capsys, tiny, tmp_path):
    """An encoder's `-o emb.npy` holds one L2-normalized mean-pooled vector a text (the tiny model's folder has
    no sentence-transformers config: mean), over each text's own tokens, padding excluded; the status line
    says what was written. .npz and .json carry the vectors as "embeddings" beside the token states."""
    import onnxruntime as ort

    texts = ["a fine film", "dull", "the rock is destined to be the 21st century's new conan"]
    args = ["run", tiny["plan"], "--backend", "reference", "--max-length", "16"]
    for t in texts:
        args += ["--text", t]
    code, out, err = cli(capsys, *args, "-o", tmp_path / "emb.npy")
    assert code == 0, err
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    assert "wrote" in err and "embeddings [3, 32] float32: one vector a text, mean-pooled over its tokens, " \
        "L2-normalized" in err and "--pooling none writes the token states" in err

    # the reference: onnxruntime fp32 on the same padded batch, pooled here over the valid tokens in float64
    code, out, err = cli(capsys, *args, "--pooling", "none", "-o", tmp_path / "all.npz")
    assert code == 0, err
    code, out, err = cli(capsys, *args, "-o", tmp_path / "both.npz")
    assert code == 0, err
    both = np.load(tmp_path / "both.npz")
    mask = both["attention_mask"]
    assert sorted(both.files) == ["attention_mask", "embeddings", "last_hidden_state"]
    assert mask.shape[0] == 3 and mask.sum(1).min() < mask.shape[1]  # padded: the short texts have masked tokens
    ids = both["last_hidden_state"]  # the plan's token states, as --pooling none wrote them
    np.testing.assert_array_equal(ids, np.load(tmp_path / "all.npz")["last_hidden_state"])
    sess = ort.InferenceSession(str(tiny["onnx"]), providers=["CPUExecutionProvider"])
    from trtrun.data import encode, tokenizer_for
    from trtrun.plan import load_plan

    tok = tokenizer_for(load_plan(tiny["plan"]))
    feeds = encode(tok, texts, 16)
    ref = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0].astype(np.float64)
    m = feeds["attention_mask"][..., None].astype(np.float64)
    want = (ref * m).sum(1) / m.sum(1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    # fp32 plan vs onnxruntime fp32 (~1e-6 relative), pooled: cosine >= 0.99999 as for the token states; and a
    # pooling that took the padding in would differ from the short texts' vectors far more than that
    cos = (emb.astype(np.float64) * want).sum(1) / np.linalg.norm(emb, axis=1)
    assert cos.min() >= 0.99999 and abs(np.linalg.norm(emb, axis=1) - 1).max() < 1e-5
    np.testing.assert_array_equal(both["embeddings"], emb)

    code, out, err = cli(capsys, *args, "--pooling", "cls", "--no-normalize", "-o", tmp_path / "cls.json")
    assert code == 0, err
    doc = json.loads((tmp_path / "cls.json").read_text())
    np.testing.assert_allclose(np.array(doc["embeddings"]), ids[:, 0, :], rtol=1e-6)
    assert doc["pooling"] == {"mode": "cls", "normalized": False, "why": "--pooling cls"}

    # last (decoder embedders): each text's last valid token, read off the token states at the mask's last 1
    code, out, err = cli(capsys, *args, "--pooling", "last", "--no-normalize", "-o", tmp_path / "last.npy")
    assert code == 0, err
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1] != 0, axis=1)
    assert (last < mask.shape[1] - 1).any()  # a padded row: its last valid token is not the last column
    np.testing.assert_array_equal(np.load(tmp_path / "last.npy"), ids[np.arange(3), last])


def test_run_text_against_onnxruntime(capsys, tiny):
    # 6 texts > the profile's batch 4: the CLI splits them into two runs; fp32 plan, so cosine >= 0.99999
    texts = ["a fine film", "dull", "the rock is destined to be the 21st century's new conan", "ok", "yes", "no !"]
    args = ["run", tiny["plan"], "--backend", "reference", "--compare", tiny["onnx"], "--min-cosine", "0.99999"]
    for t in texts:
        args += ["--text", t]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert "in 2 runs" in out and "cosine vs onnxruntime fp32" in out and "NaN 0" in out


def _graph(path, inputs, nodes, out_shape, inits=()):
    """A small ONNX graph of int64 [B,S] inputs and one float output, written to path."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "unrelated", [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "S"])
                                                for n in inputs],
                          [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, out_shape)],
                          initializer=list(inits))
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("case, needle", [
    ("text", "not an ONNX model onnxruntime can load"),
    ("shape", "its output has shape [2, 4, 1], the plan's last_hidden_state [2, 4, 32]: not the model"),
    ("inputs", "it needs inputs the plan does not take (position_ids)"),
    ("fails", "onnxruntime cannot run it on these inputs"),
])
def test_run_compare_with_a_file_that_is_not_the_model(capsys, tiny, tmp_path, case, needle):
    """--compare with a non-ONNX file or an unrelated model: one line saying so, exit 1 (was onnxruntime's
    InvalidProtobuf as an internal error, or numpy's broadcast error)."""
    from onnx import helper, numpy_helper

    f = tmp_path / f"{case}.onnx"
    if case == "text":
        f.write_text("not a model\n")
    elif case == "shape":  # output [B, S, 1]: another model entirely
        _graph(f, ["input_ids", "attention_mask"], [
            helper.make_node("Cast", ["input_ids"], ["x"], to=1),
            helper.make_node("Unsqueeze", ["x", "axes"], ["last_hidden_state"])], ["B", "S", 1],
            [numpy_helper.from_array(np.array([-1], np.int64), "axes")])
    elif case == "inputs":
        _graph(f, ["input_ids", "position_ids"], [helper.make_node("Cast", ["position_ids"], ["last_hidden_state"],
                                                                    to=1)], ["B", "S"])
    else:  # a 10-row table: the ids are beyond it, onnxruntime refuses at run time
        _graph(f, ["input_ids"], [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])],
               ["B", "S", 32], [numpy_helper.from_array(np.ones((10, 32), np.float32), "table")])
    code, out, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", _ids_file(tmp_path, 2, 4),
                         "--compare", f, "-q")
    assert_clean_error(code, err, 1, f.name, needle)
    assert len(err.strip().splitlines()) == 1, err


def test_run_real_data_sample(capsys, tiny):
    code, out, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--data", "rt", "-n", "5",
                         "--max-length", "16")
    assert code == 0, err
    assert "5 sample(s)" in out


@pytest.mark.parametrize("how, needle", [
    ("truncated", "file is truncated"), ("flipped", "checksum"), ("future", "version 99"),
    ("foreign", "not a trtrun plan"),
])
@pytest.mark.parametrize("command", ["inspect", "run"])
def test_damaged_plan(capsys, tiny, tmp_path, how, needle, command):
    p = _damaged(tiny, tmp_path, how)
    args = [command, p] + (["--backend", "reference", "--ids", _ids_file(tmp_path, 2, 8)] if command == "run" else [])
    code, _, err = cli(capsys, *args)
    assert_clean_error(code, err, 1, p.name, needle)


def _ids_file(tmp_path, b, s, high=30000, value=None):
    ids = np.random.default_rng(0).integers(1000, high, size=(b, s), dtype=np.int64)
    if value is not None:
        ids[0, 1] = value
    f = tmp_path / f"ids_{b}x{s}_{value}.npy"
    np.save(f, ids)
    return f


def test_run_shape_outside_profile(capsys, tiny, tmp_path):
    code, _, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", _ids_file(tmp_path, 2, 17))
    assert_clean_error(code, err, 1, "sequence length 17 is outside the plan's profile")
    code, _, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", _ids_file(tmp_path, 5, 8))
    assert_clean_error(code, err, 1, "batch size 5 is outside the plan's profile")


@pytest.mark.parametrize("bad", [30522, 10**6, -1])
def test_run_token_id_out_of_vocab(capsys, tiny, tmp_path, bad):
    code, _, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--ids", _ids_file(tmp_path, 2, 8, value=bad))
    assert_clean_error(code, err, 1, f"has value {bad} at position [0, 1]", "token ids must lie in [0, 30522)")


def test_run_bad_inputs(capsys, tiny, tmp_path):
    code, _, err = cli(capsys, "run", tiny["plan"])
    assert_clean_error(code, err, 2, "exactly one input")
    code, _, err = cli(capsys, "run", tiny["plan"], "--text", "a", "--ids", _ids_file(tmp_path, 1, 4))
    assert_clean_error(code, err, 2, "exactly one input")
    code, _, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--text", "a", "-o", tmp_path / "y.csv")
    assert_clean_error(code, err, 2, ".npy, .npz or .json")
    code, _, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--data", "sst2")
    assert_clean_error(code, err, 2, "sst2")


def test_run_text_without_transformers_says_what_to_install(capsys, tiny, monkeypatch):
    from trtrun.data import data_dir

    if not (data_dir() / "minilm" / "vocab.txt").exists():
        pytest.skip("the data folder's MiniLM tokenizer is missing")
    monkeypatch.setitem(sys.modules, "transformers", None)
    code, _, err = cli(capsys, "run", tiny["plan"], "--backend", "reference", "--text", "a fine film",
                       "--tokenizer", data_dir() / "minilm")
    assert_clean_error(code, err, 1, "tokenizing text needs transformers", "pip install 'trtrun[text]'")


@pytest.mark.parametrize("args", [
    ["run", "{plan}", "--text-file", "{tmp}/missing.txt"],        # was 1
    ["run", "{plan}", "--ids", "{tmp}/missing.npy"],               # was 1
    ["run", "{plan}", "--text", "a", "--tokenizer", "{tmp}/no-tokenizer"],
    ["run", "{plan}", "--text", "a", "--compare", "{tmp}/missing.onnx"],
    ["inspect", "{tmp}/missing.plan"],                              # was 1
    ["export", "{tmp}/missing-folder"],                             # was 1
    ["bench", "{tmp}/missing.onnx", "--out", "{tmp}/o"],           # was 1
    ["bench", "gpt2", "--config", "{tmp}/missing.toml", "--out", "{tmp}/o"],
    ["check", "{tmp}/missing.onnx"],                                # was 1
])
def test_a_missing_file_on_the_command_line_is_exit_code_2_everywhere(capsys, tiny, tmp_path, args):
    """docs/cli.md's rule: a file or folder named on the command line that does not exist is a bad command line
    (2, click's convention for click.Path(exists=True)), in every command; nothing is read or written."""
    args = [a.format(plan=tiny["plan"], tmp=tmp_path) for a in args]
    code, _, err = cli(capsys, *args)
    assert_clean_error(code, err, 2, "missing" if "missing" in " ".join(args) else "no-tokenizer", "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_cli_name_lists_match_the_library():
    """options.py spells the data sets and named architectures without importing numpy-heavy modules."""
    from trtrun import data, export
    from trtrun.bench import models
    from trtrun.check import core
    from trtrun.cli import options

    assert set(options.TEXT_SETS) == set(data.TEXT_SETS)
    assert options.NAMED_ARCHS == export.NAMED_ARCHS == core.NAMED_ARCHS
    assert options.EXPORT_ARCHS == export.EXPORT_ARCHS == models.NAMED  # bench takes all that export names


def test_run_gpu_backend_without_gpu(capsys, tiny, tmp_path):
    try:
        from trtrun.runtime import gpu_available

        ok, _ = gpu_available()
    except ImportError:
        ok = False
    if ok:
        pytest.skip("a GPU is usable here")
    code, _, err = cli(capsys, "run", tiny["plan"], "--backend", "gpu", "--ids", _ids_file(tmp_path, 1, 4))
    assert_clean_error(code, err, 1, "not usable")


def test_real_process_no_traceback_and_debug(tiny, tmp_path):
    p = _damaged(tiny, tmp_path, "flipped")
    r = subprocess.run([sys.executable, "-m", "trtrun", "inspect", str(p)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("trtrun: error: ") and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "trtrun", "--debug", "inspect", str(p)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_build_tf32_save_onnx_and_default_output(capsys, tiny, tmp_path):
    import shutil

    import onnxruntime as ort

    src = tmp_path / "m.onnx"
    shutil.copy(tiny["onnx"], src)
    code, _, err = cli(capsys, "build", src, "--precision", "fp32", "--tf32", "--max", "2,16",
                       "--save-onnx", tmp_path / "rw.onnx")
    assert code == 0, err
    plan = tmp_path / "m.fp32.plan"  # default name: MODEL.<precision>.plan beside the ONNX
    code, out, err = cli(capsys, "inspect", plan, "--json")
    assert code == 0 and json.loads(out)["tf32"] is True
    sess = ort.InferenceSession(str(tmp_path / "rw.onnx"), providers=["CPUExecutionProvider"])
    assert {i.name for i in sess.get_inputs()} >= {"input_ids", "attention_mask"}
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporary file left


def test_build_ln_input(capsys, tiny, tmp_path):
    """--ln-input decides the dtype of the Linear outputs that BERT's post-norm LayerNorms read (hybrid);
    the default is fp16, --ln-input fp32 keeps them fp32, and both plans run on the reference backend."""
    from trtrun.plan import load_plan
    from trtrun.reference import ReferenceBackend

    dtypes = {}
    for flag in ("fp16", "fp32"):
        out = tmp_path / f"{flag}.plan"
        args = ["build", tiny["onnx"], "-o", out, "--max", "2,16", "-q"]
        if flag != "fp16":
            args += ["--ln-input", flag]
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        plan = load_plan(out)
        dtypes[flag] = {plan.tensors[op["inputs"][0]]["dtype"] for op in plan.ops if op["type"] == "LayerNorm"}
        rng = np.random.default_rng(3)
        ids = rng.integers(1000, 2000, (2, 9), dtype=np.int64)
        y = ReferenceBackend(plan).run({"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert np.isfinite(next(iter(y.values()))).all()
    assert dtypes == {"fp16": {"float16"}, "fp32": {"float32"}}
    code, _, err = cli(capsys, "build", tiny["onnx"], "--ln-input", "bf16")
    assert_clean_error(code, err, 2, "bf16")


def test_build_prenorm_input(capsys, exported, tmp_path):
    """--prenorm-input fp16 makes the Linear outputs GPT-2's pre-norm LayerNorms add into the residual stream fp16
    (the stream stays fp32); the default keeps them fp32; both plans run on the reference backend and agree closely.
    A bad value is a usage error, and a non-hybrid plan says the flag does nothing there."""
    from trtrun.plan import load_plan
    from trtrun.reference import ReferenceBackend

    src = exported("gpt2")
    ids = np.random.default_rng(5).integers(100, 2000, (2, 9), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    got = {}
    for flag in ("fp32", "fp16"):
        out = tmp_path / f"{flag}.plan"
        code, _, err = cli(capsys, "build", src, "-o", out, "--max", "2,16", "-q", "--prenorm-input", flag)
        assert code == 0, err
        plan = load_plan(out)
        producer = {t: op for op in plan.ops for t in op["outputs"]}
        x_of_norms = [op["inputs"][0] for op in plan.ops if op["type"] == "LayerNorm"
                      and producer.get(op["inputs"][0], {}).get("type") == "Linear"]
        assert x_of_norms and {plan.tensors[x]["dtype"] for x in x_of_norms} == {"float" + flag[2:]}
        sums = [op["outputs"][1] for op in plan.ops if op["type"] == "LayerNorm" and len(op["outputs"]) > 1]
        assert sums and {plan.tensors[t]["dtype"] for t in sums} == {"float32"}  # the residual stream
        got[flag] = next(iter(ReferenceBackend(plan).run(feeds).values()))
    a, b = got["fp32"].ravel(), got["fp16"].ravel()
    assert np.isfinite(b).all() and float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.9999
    code, _, err = cli(capsys, "build", src, "--prenorm-input", "bf16")
    assert_clean_error(code, err, 2, "bf16")
    code, _, err = cli(capsys, "build", src, "-o", tmp_path / "f32.plan", "--max", "2,16", "--precision", "fp32",
                       "--prenorm-input", "fp16")
    assert code == 0 and "--prenorm-input only affects hybrid plans" in err, err


def test_inspect_names_the_host_tail():
    """A classifier's or question-answering plan's rank-2 outputs run on the host after the device's part
    (trtrun.runtime.tail; which ops, tests/runtime): the line names them."""
    from trtrun.cli.inspect import gpu_text

    assert gpu_text({"runs": True, "why": None, "host_ops": ["pool", "pooler.dense", "classifier"]}) == (
        "  GPU runtime: takes it; the last 3 ops (pool, pooler.dense, classifier) run on the host after the device's "
        "part (the host tail)")
    one = gpu_text({"runs": True, "why": None, "host_ops": ["qa"]})
    assert one.startswith("  GPU runtime: takes it; the last 1 op (qa) run")
