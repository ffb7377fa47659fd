"""Hostile plan files: crafted headers that carry a fresh SHA-256 (the checksum detects damage, it does not
authenticate), non-regular paths, and huge files that are no plan. Every one must give a PlanError naming
what is wrong, at once and with bounded memory; a plan that loads must run without IndexError & co.

Plans are tests/handmade_plans.py's `tiny_plan`, written back by its independent `write_raw`.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from handmade_plans import GPU_TINY, split_file, tiny_plan, write_raw  # noqa: E402  (tests/handmade_plans.py)
from trtrun.errors import InputError, PlanError
from trtrun.plan import load_plan
from trtrun.reference import ReferenceBackend

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def plan_file(tmp_path):
    p = tiny_plan("fp32", layers=1)
    return p, p.save(tmp_path / "m.plan")


def _rewrite(path, mutate):
    hdr, blob = split_file(path)
    mutate(hdr)
    write_raw(path, hdr, blob)
    return path


def _op(hdr, name):
    return next(op for op in hdr["ops"] if op["name"] == name)


def _feeds(B=1, S=3):
    return {"input_ids": np.array([[1, 2, 3]] * B, np.int64)[:, :S],
            "attention_mask": np.ones((B, S), np.int64),
            "token_type_ids": np.array([[0, 1, 1]] * B, np.int64)[:, :S]}


# ------------------------------------------------------------------------------------ the cases of issue 18
@pytest.mark.parametrize("bad", [["Linear"], {"Linear": 1}, 7, None])
def test_op_type_not_a_string(plan_file, bad):
    """A list or dict as an op type used to raise TypeError (unhashable) in the schema lookup."""
    _, path = plan_file
    _rewrite(path, lambda h: _op(h, "l0.fc1").update(type=bad))
    with pytest.raises(PlanError, match=r"header\.ops\[5\] \('l0.fc1'\)\.type: must be a string naming an op "
                                        r"type \(Embedding, Linear, Attention, LayerNorm, Pool, RMSNorm, Normalize\)"):
        load_plan(path)


def test_deeply_nested_header(plan_file):
    """A 100,000-deep JSON header used to raise RecursionError from json.loads; the depth is now measured
    before the parser recurses."""
    _, path = plan_file
    hdr, blob = split_file(path)
    raw = b'{"format": "trtrun-plan", "deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    write_raw(path, raw, blob)
    with pytest.raises(PlanError, match=r"header JSON: nested 100001 levels deep \(at most 64\)"):
        load_plan(path)
    # brackets inside strings do not count, escaped quotes do not end a string
    raw = b'{"format": "trtrun-plan", "s": "\\" [[[[' + b"[" * 1000 + b'", "x": [[1]]}'
    write_raw(path, raw, blob)
    with pytest.raises(PlanError, match=r"header\.version: is None"):
        load_plan(path)


def test_deep_nesting_unterminated(plan_file):
    """A malformed header that would recurse before the parser notices is refused by depth as well."""
    _, path = plan_file
    _, blob = split_file(path)
    write_raw(path, b'{"a": ' + b'[{"b": ' * 50_000, blob)
    with pytest.raises(PlanError, match=r"header JSON: nested \d+ levels deep"):
        load_plan(path)


def test_token_type_table_without_rows(plan_file):
    """A token-type table with 0 rows used to be accepted; the run then failed with IndexError."""
    plan, path = plan_file
    hdr, blob = split_file(path)
    hdr["weights"]["emb.token_type"].update(shape=[0, 16], nbytes=0)
    write_raw(path, hdr, blob)
    with pytest.raises(PlanError, match=r"\('emb'\)\.weights\.token_type: table 'emb.token_type' has 0 rows"):
        load_plan(path)


def test_word_table_without_rows(plan_file):
    _, path = plan_file
    hdr, blob = split_file(path)
    hdr["weights"]["emb.word"].update(shape=[0, 16], nbytes=0)
    hdr["model"]["vocab_size"] = 0
    write_raw(path, hdr, blob)
    with pytest.raises(PlanError, match=r"\('emb'\)\.weights\.word: table 'emb.word' has 0 rows"):
        load_plan(path)


def test_embedding_reads_the_mask_as_token_types(plan_file):
    """token_type_ids are checked against the token-type table at run time, the mask only for 0/1: an
    Embedding that looks token types up with attention_mask would index row 1 of a 1-row table."""
    _, path = plan_file
    hdr, blob = split_file(path)
    _op(hdr, "emb")["inputs"] = ["input_ids", "attention_mask"]
    hdr["weights"]["emb.token_type"].update(shape=[1, 16], nbytes=64)
    write_raw(path, hdr, blob)
    with pytest.raises(PlanError, match=r"\('emb'\)\.inputs\[1\]: must be 'token_type_ids' or absent"):
        load_plan(path)


def test_second_embedding_with_a_smaller_table(tmp_path):
    """Token ids are checked against every Embedding's word table, not only the first one's."""
    plan = tiny_plan("fp32", layers=1)
    hdr = {k: v for k, v in plan.header.items() if k != "weights"}
    import copy
    hdr = copy.deepcopy(hdr)
    w = dict(plan.weights)
    w["emb2.word"] = w["emb.word"][:2]
    hdr["ops"].insert(1, {"type": "Embedding", "name": "emb2", "inputs": ["input_ids"], "outputs": ["e2"],
                          "weights": {"word": "emb2.word", "position": "emb.position"}, "attrs": {},
                          "precision": "fp32"})
    hdr["tensors"]["e2"] = {"dtype": "float32", "shape": ["B", "S", 16]}
    hdr["outputs"].append({"name": "e2", "dtype": "float32", "shape": ["B", "S", 16]})
    hdr.pop("model")
    from trtrun.plan import Plan
    p = Plan.from_parts(hdr, w)
    path = p.save(tmp_path / "two.plan")
    back = load_plan(path)
    assert back.vocab_size == 2
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 2\)"):
        ReferenceBackend(back).run(_feeds())
    f = _feeds()
    f["input_ids"][:] = 1
    out = ReferenceBackend(back).run(f)
    np.testing.assert_allclose(out["e2"][0, 0], w["emb.word"][1] + w["emb.position"][0], rtol=1e-6)


def test_fifo_is_refused_at_once(tmp_path):
    """A FIFO used to block load_plan in open() until a writer came."""
    fifo = tmp_path / "pipe.plan"
    os.mkfifo(fifo)
    result = {}

    def load():
        try:
            load_plan(fifo)
        except Exception as e:  # noqa: BLE001 - the test inspects whatever came
            result["e"] = e

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the old code's open() so the thread can end, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail("load_plan blocked on a FIFO")
    assert isinstance(result.get("e"), PlanError), result
    assert str(result["e"]) == f"{fifo}: not a regular file (a FIFO); a plan is a regular file"


@pytest.mark.parametrize("path,kind", [("/dev/null", "a character device"), ("/dev/zero", "a character device")])
def test_device_is_refused(path, kind):
    if not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(PlanError, match=rf"^{path}: not a regular file \({kind}\)"):
        load_plan(path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(PlanError, match=r"is a directory, not a plan file"):
        load_plan(tmp_path)


# -------------------------------------------------------------------- big files: memory bounded, no full read
_PEAK = textwrap.dedent("""
    import sys, time
    from trtrun.plan import load_plan
    from trtrun.errors import PlanError
    def hwm():  # peak resident set (kB), from the kernel
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    before = hwm()
    t = time.perf_counter()
    try:
        load_plan(sys.argv[1])
        print("LOADED")
    except PlanError as e:
        print("PlanError:", str(e)[:300])
    print("DELTA_KB", hwm() - before, "SECONDS", round(time.perf_counter() - t, 3))
""")


def _peak_delta(path) -> tuple[str, int, float]:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    *_, last = lines
    _, kb, _, secs = last.split()
    return "\n".join(lines[:-1]), int(kb), float(secs)


def _sparse(path, size, head=b""):
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux) to read the peak RSS")
def test_big_file_that_is_no_plan(tmp_path):
    """A 1 GiB file that is no plan used to be read whole (1 GiB of memory) before its magic was checked.
    Now the preamble is read first: the peak RSS of the load stays within a few MiB (16 MiB allowed for
    allocator noise) and it returns at once."""
    p = _sparse(tmp_path / "zeros.plan", 1 << 30)
    msg, kb, secs = _peak_delta(p)
    assert "magic: not a trtrun plan" in msg and "text file" not in msg, msg  # zero bytes are no text
    assert kb < 16 * 1024, f"load_plan used {kb} kB more on a 1 GiB non-plan"
    # a valid magic with lying sizes: refused on the lengths before anything large is read
    head = struct.pack("<8sIIQQ", b"TRTRUNPL", 1, 0, 1000, 1 << 40)
    p = _sparse(tmp_path / "liar.plan", 1 << 30, head)
    msg, kb, secs = _peak_delta(p)
    assert "lengths: file is truncated" in msg, msg
    assert kb < 16 * 1024, f"load_plan used {kb} kB more on a 1 GiB file with lying sizes"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux) to read the peak RSS")
def test_big_file_with_consistent_sizes(tmp_path):
    """Sizes that agree with the file but a header that is no plan's: the checksum still has to read every
    byte, but it streams them (the blob is only kept once the header validated), so memory stays bounded."""
    size = 128 << 20
    H = 100
    W = size - 256 - 32
    head = struct.pack("<8sIIQQ", b"TRTRUNPL", 1, 0, H, W) + b"{" * H
    p = _sparse(tmp_path / "consistent.plan", size, head)
    msg, kb, secs = _peak_delta(p)
    assert "checksum: SHA-256 mismatch" in msg, msg
    assert kb < 16 * 1024, f"load_plan used {kb} kB more streaming a {size >> 20} MiB non-plan"


def test_header_length_limit(plan_file):
    _, path = plan_file
    hdr, blob = split_file(path)
    hdr["builder"]["padding"] = "x" * (4 << 20)
    write_raw(path, hdr, blob)
    with pytest.raises(PlanError, match=r"lengths: header length \d+ exceeds the limit of 4194304 bytes"):
        load_plan(path)


# ------------------------------------------------------------------------ structured edits: each one named
HOSTILE = {
    "op name is a list": (lambda h: _op(h, "l0.fc1").update(name=["x"]), r"header\.ops\[5\]\.name: must be a non-empty string"),
    "op is a list": (lambda h: h["ops"].__setitem__(0, ["Embedding"]), r"header\.ops\[0\]: must be a JSON object"),
    "unknown op key": (lambda h: _op(h, "l0.fc1").update(attr={"activation": "none"}),
                       r"\('l0.fc1'\): unknown key 'attr'"),
    "inputs not a list": (lambda h: _op(h, "l0.fc1").update(inputs="l0.h1"), r"\('l0.fc1'\)\.inputs: must be a list of tensor names"),
    "weights not a dict": (lambda h: _op(h, "l0.fc1").update(weights=["l0.fc1.weight"]), r"\('l0.fc1'\)\.weights: must be an object"),
    "weight name is a dict": (lambda h: _op(h, "l0.fc1")["weights"].update(weight={"a": 1}), r"\('l0.fc1'\)\.weights: must be an object role -> weight name"),
    "attrs not a dict": (lambda h: _op(h, "l0.fc1").update(attrs=[1]), r"\('l0.fc1'\)\.attrs: must be an object"),
    "activation is a list": (lambda h: _op(h, "l0.fc1")["attrs"].update(activation=["gelu_erf"]), r"attrs\.activation: \['gelu_erf'\] is not one of"),
    "unknown attr holds an object": (lambda h: _op(h, "l0.fc1")["attrs"].update(extra={"a": [1]}), r"\('l0.fc1'\)\.attrs\.extra: an unknown attribute must be a string, number, bool or null"),
    "heads huge": (lambda h: _op(h, "l0.attn")["attrs"].update(num_heads=2 ** 40), r"attrs\.num_heads: must be an integer in \[1, 2147483647\]"),
    "heads bool": (lambda h: _op(h, "l0.attn")["attrs"].update(num_heads=True), r"attrs\.num_heads: must be an integer"),
    "scale NaN": (lambda h: _op(h, "l0.attn")["attrs"].update(scale=float("nan")), r"attrs\.scale: must be a finite number"),
    "scale beyond float32": (lambda h: _op(h, "l0.attn")["attrs"].update(scale=1e300), r"attrs\.scale: must be a finite number"),
    "epsilon a string": (lambda h: _op(h, "l0.ln1")["attrs"].update(epsilon="1e-5"), r"\('l0.ln1'\)\.attrs\.epsilon: must be a finite positive number"),
    "position offset negative": (lambda h: _op(h, "emb")["attrs"].update(position_offset=-3), r"attrs\.position_offset: must be an integer in \[0, "),
    "mask from input_ids": (lambda h: _op(h, "l0.attn")["inputs"].__setitem__(1, "input_ids"), r"\('l0.attn'\)\.inputs\[1\]: must be 'attention_mask' or absent"),
    "ids from token types": (lambda h: _op(h, "emb")["inputs"].__setitem__(0, "token_type_ids"), r"\('emb'\)\.inputs\[0\]: must be 'input_ids'"),
    "tensor dim huge": (lambda h: h["tensors"]["l0.h1"].update(shape=["B", "S", 2 ** 64]), r"tensors\.l0\.h1\.shape: must be \[B, S, \.\.\.\]"),
    "tensor rank 1": (lambda h: h["tensors"]["l0.h1"].update(shape=["B"]), r"tensors\.l0\.h1\.shape: must be \[B, S, \.\.\.\]"),
    "tensor is a list": (lambda h: h["tensors"].update({"l0.h1": ["float32"]}), r"tensors\.l0\.h1: must be a JSON object \{dtype, shape\}, got list"),
    "tensor dtype a dict": (lambda h: h["tensors"]["l0.h1"].update(dtype={"x": 1}), r"tensors\.l0\.h1\.dtype: \{'x': 1\} is not one of"),
    "tensor extra key": (lambda h: h["tensors"]["l0.h1"].update(strides=[1]), r"tensors\.l0\.h1: unknown key 'strides'"),
    "weight rank 40": (lambda h: h["weights"]["emb.beta"].update(shape=[1] * 39 + [16]), r"weights\.emb\.beta\.shape: must be a list of at most 8"),
    "weight dim negative": (lambda h: h["weights"]["emb.beta"].update(shape=[-16]), r"weights\.emb\.beta\.shape: must be a list of at most 8"),
    "empty weight, huge dims": (lambda h: h["weights"].update(extra={"dtype": "float16", "shape": [0, 2 ** 62], "offset": 0, "nbytes": 0}),
                                r"weights\.extra\.shape: \[0, 4611686018427387904\] spans more than 2\^62 bytes"),
    "weight nbytes a float": (lambda h: h["weights"]["emb.beta"].update(nbytes=64.0), r"weights\.emb\.beta\.nbytes: must be a non-negative int"),
    "weight offset huge": (lambda h: h["weights"]["emb.beta"].update(offset=2 ** 70), r"weights\.emb\.beta\.offset: must be a non-negative multiple of 256"),
    "weight entry a string": (lambda h: h["weights"].update({"emb.beta": "x"}), r"weights\.emb\.beta: must be a JSON object \{dtype, shape, offset, nbytes\}, got str"),
    "profile huge": (lambda h: h["profile"].update(batch=[1, 2, 2 ** 63]), r"profile\.batch: max must be at most 2147483647 \(the runtime's int\), got \[1, 2, 9223372036854775808\]"),
    "profile bools": (lambda h: h["profile"].update(batch=[True, True, True]), r"profile\.batch: must be \[min, opt, max\] integers"),
    "profile a list": (lambda h: h.update(profile=[1, 2]), r"header\.profile: must be a JSON object"),
    "version true": (lambda h: h.update(version=True), r"header\.version: is True, expected 1"),
    "unknown top-level key": (lambda h: h.update(extras={}), r"header: unknown key 'extras'"),
    "model vocab a list": (lambda h: h["model"].update(vocab_size=[50]), r"header\.model\.vocab_size: must be an integer"),
    "model vocab disagrees": (lambda h: h["model"].update(vocab_size=51), r"header\.model\.vocab_size: is 51 but the word table 'emb.word' of op 'emb' has 50 rows"),
    "model arch unknown": (lambda h: h["model"].update(arch="vision"), r"header\.model\.arch: 'vision' is not one of encoder, decoder"),
    "source path a number": (lambda h: h["source"].update(path=3), r"header\.source\.path: must be a string"),
    "input entry a string": (lambda h: h["inputs"].__setitem__(0, "input_ids"), r"header\.inputs\[0\]: must be a JSON object \{name, dtype, shape\}, got str"),
    "input entry extra key": (lambda h: h["inputs"][0].update(alias="ids"), r"header\.inputs\[0\]: unknown key 'alias'"),
    "output is an int tensor": (lambda h: h["outputs"].append({"name": "input_ids", "dtype": "int64", "shape": ["B", "S"]}),
                                r"header\.outputs\[1\]: 'input_ids' must be a float tensor"),
    "name with escapes": (lambda h: h["tensors"].update({"\x1b[2J" + "n" * 500: {"dtype": "int64", "shape": 3}}),
                          r"header\.tensors\.'\\x1b\[2Jn+…\.shape: must be \[B, S"),
    # found by scripts/fuzz_plan.py: JSON's "\ud800" parses to a str no codec encodes; such an op name loaded, and the
    # Engine's binding failed on it with pybind11's RuntimeError ("Unable to cast Python instance of type str")
    "op name a lone surrogate": (lambda h: _op(h, "l0.fc1").update(name="fc\ud800"),
                                 r"header\.ops\[5\]\.name: holds a lone UTF-16 surrogate \(a \\ud800-\\udfff escape "
                                 r"without its pair\): not text"),
    "tensor key a lone surrogate": (lambda h: h["tensors"].update({"\udc00": {"dtype": "int64", "shape": ["B", "S"]}}),
                                    r"header\.tensors\.'\\udc00' \(the key\): holds a lone UTF-16 surrogate"),
    "source path a lone surrogate": (lambda h: h["source"].update(path="/m/\udfff.onnx"),
                                     r"header\.source\.path: holds a lone UTF-16 surrogate"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_header(plan_file, case):
    _, path = plan_file
    mutate, pattern = HOSTILE[case]
    _rewrite(path, mutate)
    with pytest.raises(PlanError, match=pattern) as e:
        load_plan(path)
    assert str(e.value).startswith(f"{path}: ")
    assert len(str(e.value)) < 600, "messages quote hostile values shortened"


def test_saved_plans_still_load(plan_file):
    """Plans written by the builder's path (Plan.save) load unchanged and run the same, in every precision."""
    for precision in ("fp32", "fp16", "hybrid"):
        for arch in ("encoder", "decoder"):
            plan = tiny_plan(precision, arch, layers=2)
            back = load_plan(plan.save(plan_file[1].parent / f"{precision}-{arch}.plan"))
            assert back.header == plan.header
            f = _feeds(2, 3)
            if arch == "decoder":
                f.pop("token_type_ids")
            a, b = ReferenceBackend(plan).run(f), ReferenceBackend(back).run(f)
            np.testing.assert_array_equal(a["last_hidden_state"], b["last_hidden_state"])


def test_lowering_names_the_host_tail():
    """A valid plan may end in ops the GPU runtime leaves to the host (Pool): lowering the whole plan names the op as
    a PlanError (it was a KeyError), the device part split off lowers, and a plan of runtime ops lowers as before."""
    import json

    from trtrun.plan import Plan
    from trtrun.runtime.lower import lower_plan

    base = tiny_plan("fp32", layers=1, **GPU_TINY)
    low = lower_plan(base)
    assert [o["name"] for o in base.ops] == [o["name"] for o in low["ops"]]
    hdr = json.loads(json.dumps({k: v for k, v in base.header.items() if k != "weights"}))
    hdr["ops"].append({"type": "Pool", "name": "pool", "inputs": ["last_hidden_state", "attention_mask"],
                       "outputs": ["pooled"], "weights": {}, "attrs": {"mode": "cls"}, "precision": "fp32"})
    N = GPU_TINY["hidden"]
    hdr["tensors"]["pooled"] = {"dtype": "float32", "shape": ["B", N]}
    hdr["outputs"].append({"name": "pooled", "dtype": "float32", "shape": ["B", N]})
    plan = Plan.from_parts(hdr, base.weights)
    with pytest.raises(PlanError, match=r"op 'pool' belongs to the plan's host tail"):
        lower_plan(plan)
    from trtrun.runtime.tail import split_host_tail

    device, tail = split_host_tail(plan)
    assert [op["name"] for op in tail] == ["pool"] and len(lower_plan(device)["ops"]) == len(base.ops)
    out = ReferenceBackend(plan).run(_feeds())
    np.testing.assert_array_equal(out["pooled"], out["last_hidden_state"][:, 0])


def test_json_depth_matches_the_parser():
    """The depth scan agrees with the nesting json.loads walks, on random JSON full of quotes, backslashes and
    brackets inside strings, also when the text is cut into small chunks (state carried across them)."""
    import json

    from trtrun.plan.io import json_depth

    rng = np.random.default_rng(5)

    def gen(k):
        r = rng.random()
        if k > 6 or r < 0.3:
            return ['a"\\[{', "\\\\", 'x]"', "\\", 1, None][rng.integers(6)]
        if r < 0.65:
            return [gen(k + 1) for _ in range(rng.integers(0, 4))]
        return {f'k{i}"[\\{{': gen(k + 1) for i in range(rng.integers(0, 4))}

    def depth(o):
        if isinstance(o, (list, dict)):
            return 1 + max([depth(v) for v in (o.values() if isinstance(o, dict) else o)], default=0)
        return 0

    for _ in range(300):
        o = gen(0)
        raw = json.dumps(o).encode()
        for chunk in (1, 3, 1 << 20):
            assert json_depth(raw, chunk) == depth(o), (raw, chunk)


# ----------------------------------------------------------------- the newer fields: fp8 Linears, Attention extras
def _parts(kind: str) -> tuple[dict, dict]:
    """(header, arrays) of a tiny hand-made plan (hidden 64, 2 heads of 32, 1 layer, sequences up to 40) to edit:
    "hybrid", "fp8" (every Linear fp8, per-channel weight scales, per-token activation scales) or "fp8-static"
    (per-tensor weight scales, static activation scales)."""
    import copy

    from trtrun.builder.quantize_fp8 import assign_precisions, linear_ops

    plan = tiny_plan("hybrid", hidden=64, heads=2, layers=1)
    hdr = copy.deepcopy({k: v for k, v in plan.header.items() if k not in ("weights", "format", "version")})
    w = dict(plan.weights)
    if kind == "hybrid":
        return hdr, w
    w32 = dict(tiny_plan("fp32", hidden=64, heads=2, layers=1).weights)  # the same seed: the same values in fp32
    choice = {op["name"]: "fp8" for op in linear_ops(hdr)}
    static = kind == "fp8-static"
    return assign_precisions(hdr, w, w32, choice, weight_scale="tensor" if static else "channel",
                             x_amax={n: 2.0 for n in choice} if static else None)


def _att(h):
    return next(op for op in h["ops"] if op["type"] == "Attention")


def _emb(h):
    return next(op for op in h["ops"] if op["type"] == "Embedding")


def _lin(h):
    return next(op for op in h["ops"] if op["type"] == "Linear")  # l0.qkv: K = 64, N = 192


def _set(w, name, i, value):
    a = np.array(w[name])
    a.reshape(-1)[i] = value
    w[name] = a


def _qk(h, w, D=32, eps=1e-6):
    _att(h)["weights"].update(q_norm="qn", k_norm="kn")
    _att(h)["attrs"]["qk_norm_epsilon"] = eps
    w["qn"], w["kn"] = np.linspace(0.5, 1.5, D).astype(np.float32), np.linspace(1.5, 0.5, D).astype(np.float32)


def _qk_layer(h, w, D=32):
    _qk(h, w, D)
    _att(h)["attrs"]["qk_norm_kind"] = "layer"
    _att(h)["weights"].update(q_norm_bias="qb", k_norm_bias="kb")
    w["qb"], w["kb"] = np.linspace(-0.5, 0.5, D).astype(np.float32), np.linspace(0.5, -0.5, D).astype(np.float32)


def _rotary(h, w, R=32, n=None):
    _att(h)["attrs"]["rotary_dim"] = R
    _att(h)["weights"]["inv_freq"] = "inv_freq"
    w["inv_freq"] = (1.0 / 10000 ** (np.arange(0, 2 * (n if n is not None else R // 2), 2) / R)).astype(np.float32)


def _relative(h, w, buckets=32, heads=2, max_distance=20, bidirectional=True):
    _att(h)["weights"]["relative_bias"] = "rel"
    _att(h)["attrs"].update(relative_max_distance=max_distance, relative_bidirectional=bidirectional)
    w["rel"] = np.random.default_rng(3).normal(0, 1, (buckets, heads)).astype(np.float32)


def _alibi(h, w, n=2):
    _att(h)["weights"]["alibi_slopes"] = "slopes"
    w["slopes"] = np.linspace(0.0625, 0.5, n).astype(np.float32)


def _norm(h):
    return next(op for op in h["ops"] if op["type"] in ("LayerNorm", "RMSNorm"))


def _no_residual_after(h, w):
    op = _norm(h)
    op["inputs"] = op["inputs"][:1]
    op["attrs"]["residual_after"] = True


def _edit_att(**attrs):
    return lambda h, w: _att(h)["attrs"].update(attrs)


def _both(*edits):
    def run(h, w):
        for e in edits:
            e(h, w)
    return run


# each case: the plan it edits, the edit, the PlanError expected on load (the field named). Cases marked * loaded
# before: NaN and infinite Attention parameters ran to NaN outputs without a word, and qk_norm_epsilon, missing
# from the Attention's known attributes, was refused as "an unknown attribute" (nothing reads it) when not finite.
EXTRAS = {
    # fp8 Linears
    "fp8 weight_scale NaN": ("fp8", lambda h, w: _set(w, _lin(h)["weights"]["weight_scale"], 5, np.nan),
                             r"weights\.l0\.qkv\.weight\.scale: op 'l0\.qkv''s weight_scale must be positive and "
                             r"finite, got nan at \[5\]"),
    "fp8 weight_scale inf": ("fp8", lambda h, w: _set(w, _lin(h)["weights"]["weight_scale"], 0, np.inf),
                             r"weight_scale must be positive and finite, got inf at \[0\]"),
    "fp8 weight_scale zero": ("fp8", lambda h, w: _set(w, _lin(h)["weights"]["weight_scale"], 191, 0.0),
                              r"weight_scale must be positive and finite, got 0\.0 at \[191\]"),
    "fp8 weight_scale negative": ("fp8-static", lambda h, w: _set(w, _lin(h)["weights"]["weight_scale"], 0, -0.5),
                                  r"weight_scale must be positive and finite, got -0\.5 at \[0\]"),
    "fp8 x_scale NaN": ("fp8-static", lambda h, w: _set(w, _lin(h)["weights"]["x_scale"], 0, np.nan),
                        r"x_scale must be positive and finite, got nan at \[0\]"),
    "fp8 weight_scale [5]": ("fp8", lambda h, w: w.update({_lin(h)["weights"]["weight_scale"]: np.ones(5, np.float32)}),
                             r"\('l0\.qkv'\)\.weights\.weight_scale: must be \[N=192\] \(per output channel\) or \[1\] "
                             r"\(per tensor\), got \[5\]"),
    "fp8 weight_scale [1, N]": ("fp8", lambda h, w: w.update({_lin(h)["weights"]["weight_scale"]:
                                                             np.ones((1, 192), np.float32)}),
                                r"weights\.weight_scale: must be \[N=192\] .* got \[1, 192\]"),
    "fp8 weight_scale empty": ("fp8", lambda h, w: w.update({_lin(h)["weights"]["weight_scale"]: np.ones(0, np.float32)}),
                               r"weights\.weight_scale: must be \[N=192\] .* got \[0\]"),
    "fp8 weight_scale float16": ("fp8", lambda h, w: w.update({_lin(h)["weights"]["weight_scale"]:
                                                              np.ones(192, np.float16)}),
                                 r"weights\.weight_scale: weight 'l0\.qkv\.weight\.scale' is float16, a scale is float32"),
    "fp8 x_scale [2]": ("fp8-static", lambda h, w: w.update({_lin(h)["weights"]["x_scale"]: np.ones(2, np.float32)}),
                        r"weights\.x_scale: a static activation scale is \[1\], got \[2\]"),
    "fp8 no weight_scale": ("fp8", lambda h, w: _lin(h)["weights"].pop("weight_scale"),
                            r"weights\.weight_scale: an fp8 Linear needs its weight_scale"),
    # found by scripts/fuzz_plan.py: an empty weight name in a scale role was looked up (KeyError)
    "fp8 weight_scale named ''": ("fp8", lambda h, w: _lin(h)["weights"].update(weight_scale=""),
                                  r"weights\.weight_scale: an fp8 Linear needs its weight_scale"),
    "fp8 weight on a hybrid Linear": ("fp8", lambda h, w: (_lin(h).update(precision="hybrid"),
                                                          _lin(h)["weights"].pop("weight_scale")),
                                      r"\('l0\.qkv'\)\.weights\.weight: weight 'l0\.qkv\.weight' is float8_e4m3fn, "
                                      r"expected a float dtype"),
    "fp8 weight as a bias": ("fp8", lambda h, w: w.update({_lin(h)["weights"]["bias"]: w[_lin(h)["weights"]["weight"]][0]}),
                             r"\('l0\.qkv'\)\.weights\.bias: weight 'l0\.qkv\.bias' is float8_e4m3fn"),
    "fp8 weight as a gamma": ("fp8", lambda h, w: w.update({"l0.ln1.gamma": w[_lin(h)["weights"]["weight"]][0]}),
                              r"\('l0\.ln1'\)\.weights\.gamma: weight 'l0\.ln1\.gamma' is float8_e4m3fn"),
    "fp16 weight on an fp8 Linear": ("fp8", lambda h, w: w.update({_lin(h)["weights"]["weight"]: np.ones((64, 192),
                                                                                                       np.float16)}),
                                     r"weights\.weight: an fp8 Linear's weight must be float8_e4m3fn, got float16"),
    "weight_scale on a hybrid Linear": ("hybrid", lambda h, w: (_lin(h)["weights"].update(weight_scale="s"),
                                                               w.update(s=np.ones(192, np.float32))),
                                        r"weights\.weight_scale: only an fp8 Linear has a 'weight_scale' \(this op is "
                                        r"hybrid\)"),
    "fp8 on an Attention": ("fp8", lambda h, w: _att(h).update(precision="fp8"),
                            r"\('l0\.attn'\)\.precision: fp8 is a Linear op's precision"),
    # per-head query/key norm
    "qk_norm_epsilon NaN*": ("hybrid", _both(_qk, _edit_att(qk_norm_epsilon=float("nan"))),
                             r"\('l0\.attn'\)\.attrs\.qk_norm_epsilon: must be a finite number \(float32\), got nan"),
    "qk_norm_epsilon inf*": ("hybrid", _both(_qk, _edit_att(qk_norm_epsilon=float("inf"))),
                             r"attrs\.qk_norm_epsilon: must be a finite number \(float32\), got inf"),
    "qk_norm_epsilon a list*": ("hybrid", _both(_qk, _edit_att(qk_norm_epsilon=[1e-6])),
                                r"attrs\.qk_norm_epsilon: must be a finite number \(float32\), got \[1e-06\]"),
    "qk_norm_epsilon a string": ("hybrid", _both(_qk, _edit_att(qk_norm_epsilon="1e-6")),
                                 r"attrs\.qk_norm_epsilon: must be a finite number \(float32\), got '1e-6'"),
    "qk_norm_epsilon negative": ("hybrid", _both(_qk, _edit_att(qk_norm_epsilon=-1e-6)),
                                 r"attrs\.qk_norm_epsilon: must be >= 0, got -1e-06"),
    "qk_norm_epsilon missing": ("hybrid", _both(_qk, lambda h, w: _att(h)["attrs"].pop("qk_norm_epsilon")),
                                r"attrs\.qk_norm_epsilon: missing"),
    "qk_norm_epsilon without norms": ("hybrid", _edit_att(qk_norm_epsilon=1e-6),
                                      r"\('l0\.attn'\)\.weights: qk_norm_epsilon needs 'q_norm' and 'k_norm' weights"),
    "q_norm without k_norm": ("hybrid", _both(_qk, lambda h, w: _att(h)["weights"].pop("k_norm")),
                              r"weights: a query/key norm needs both 'q_norm' and 'k_norm'"),
    "k_norm [31]": ("hybrid", _both(_qk, lambda h, w: w.update(kn=np.ones(31, np.float32))),
                    r"\('l0\.attn'\): k_norm 'kn' has shape \[31\], expected \[32\]"),
    "q_norm int32": ("hybrid", _both(_qk, lambda h, w: w.update(qn=np.ones(32, np.int32))),
                     r"weights\.q_norm: weight 'qn' is int32, expected a float dtype"),
    "q_norm NaN*": ("hybrid", _both(_qk, lambda h, w: _set(w, "qn", 7, np.nan)),
                    r"weights\.qn: op 'l0\.attn''s q_norm must be finite, got nan at \[7\]"),
    "k_norm -inf with rotary*": ("hybrid", _both(_qk, _rotary, lambda h, w: _set(w, "kn", 0, -np.inf)),
                                 r"weights\.kn: op 'l0\.attn''s k_norm must be finite, got -inf at \[0\]"),
    # per-head query/key LayerNorm (Persimmon's)
    "qk_norm_kind unknown": ("hybrid", _both(_qk, _edit_att(qk_norm_kind="group")),
                             r"\('l0\.attn'\)\.attrs\.qk_norm_kind: must be 'rms' or 'layer', got 'group'"),
    "qk_norm_kind layer without norms": ("hybrid", _edit_att(qk_norm_kind="layer"),
                                         r"attrs\.qk_norm_kind: 'layer' needs 'q_norm' and 'k_norm' weights"),
    "qk_norm_kind layer without biases": ("hybrid", _both(_qk, _edit_att(qk_norm_kind="layer")),
                                          r"weights: qk_norm_kind 'layer' needs a 'q_norm_bias' weight"),
    "q_norm_bias [31]": ("hybrid", _both(_qk_layer, lambda h, w: w.update(qb=np.ones(31, np.float32))),
                         r"q_norm_bias 'qb' has shape \[31\], expected \[32\]"),
    "norm biases without layer": ("hybrid", _both(_qk_layer, lambda h, w: _att(h)["attrs"].pop("qk_norm_kind")),
                                  r"weights\.q_norm_bias: a query/key norm bias needs qk_norm_kind 'layer'"),
    "q_norm_bias NaN*": ("hybrid", _both(_qk_layer, lambda h, w: _set(w, "qb", 3, np.nan)),
                         r"weights\.qb: op 'l0\.attn''s q_norm_bias must be finite, got nan at \[3\]"),
    # a token id the embeddings refuse (ESM's <mask> under token dropout)
    "refused_id -1": ("hybrid", lambda h, w: _emb(h)["attrs"].update(refused_id=-1),
                      r"\('emb'\)\.attrs\.refused_id: must be an integer in \[0, 2147483647\], got -1"),
    "refused_id 2.0": ("hybrid", lambda h, w: _emb(h)["attrs"].update(refused_id=2.0),
                       r"attrs\.refused_id: must be an integer in \[0, 2147483647\], got 2\.0"),
    "refused_id a list": ("hybrid", lambda h, w: _emb(h)["attrs"].update(refused_id=[2]),
                          r"attrs\.refused_id: must be an integer in \[0, 2147483647\], got \[2\]"),
    # rotary
    "rotary_dim odd": ("hybrid", _both(_rotary, _edit_att(rotary_dim=31)),
                       r"attrs\.rotary_dim: must be even and at most head_size 32, got 31"),
    "rotary_dim > head_size": ("hybrid", lambda h, w: _rotary(h, w, R=34),
                               r"attrs\.rotary_dim: must be even and at most head_size 32, got 34"),
    "inv_freq [15] for rotary_dim 32": ("hybrid", lambda h, w: _rotary(h, w, n=15),
                                        r"inv_freq 'inv_freq' has shape \[15\], expected \[16\]"),
    "inv_freq without rotary_dim": ("hybrid", _both(_rotary, lambda h, w: _att(h)["attrs"].pop("rotary_dim")),
                                    r"inv_freq 'inv_freq' has shape \[16\], expected \[0\]"),
    "inv_freq NaN*": ("hybrid", _both(_rotary, lambda h, w: _set(w, "inv_freq", 3, np.nan)),
                      r"weights\.inv_freq: op 'l0\.attn''s inv_freq must be finite, got nan at \[3\]"),
    "inv_freq whose angle overflows*": ("hybrid", _both(_rotary, lambda h, w: _set(w, "inv_freq", 1, 1e37)),
                                        r"weights\.inv_freq: op 'l0\.attn''s inv_freq holds 9\.99.*e\+36 at \[1\]: the "
                                        r"rotary angle position \* inv_freq overflows float32 within the profile's max "
                                        r"sequence 40"),
    # grouped-query heads
    "num_kv_heads 3 of 2": ("hybrid", _edit_att(num_kv_heads=3), r"attrs\.num_kv_heads: 3 does not divide num_heads 2"),
    "num_kv_heads 0": ("hybrid", _edit_att(num_kv_heads=0), r"attrs\.num_kv_heads: must be an integer in \[1, "),
    # sliding window
    "window -1": ("hybrid", _edit_att(window=-1), r"attrs\.window: must be an integer in \[0, 2147483647\], got -1"),
    "window -5": ("hybrid", _edit_att(window=-5), r"attrs\.window: must be an integer in \[0, 2147483647\], got -5"),
    "window 2^40": ("hybrid", _edit_att(window=2 ** 40), r"attrs\.window: must be an integer in \[0, 2147483647\]"),
    "window null": ("hybrid", _edit_att(window=None), r"attrs\.window: must be an integer .* got None"),
    "window 4.0": ("hybrid", _edit_att(window=4.0), r"attrs\.window: must be an integer .* got 4\.0"),
    # relative-position tables
    "relative_bias [32, 3] for 2 heads": ("hybrid", lambda h, w: _relative(h, w, heads=3),
                                          r"weights\.relative_bias: must be \[buckets >= 1, num_heads 2\], got \[32, 3\]"),
    "relative_bias 1-D": ("hybrid", _both(_relative, lambda h, w: w.update(rel=w["rel"].reshape(-1))),
                          r"weights\.relative_bias: must be \[buckets >= 1, num_heads 2\], got \[64\]"),
    "relative_bias 1 bucket, bidirectional": ("hybrid", lambda h, w: _relative(h, w, buckets=1),
                                              r"attrs\.relative_max_distance: 20 does not fit the 1-bucket table"),
    "relative_max_distance at the exact buckets": ("hybrid", lambda h, w: _relative(h, w, max_distance=8),
                                                   r"attrs\.relative_max_distance: 8 does not fit the 32-bucket table"),
    "relative_max_distance missing": ("hybrid", _both(_relative, lambda h, w: _att(h)["attrs"].pop("relative_max_distance")),
                                      r"attrs\.relative_max_distance: missing"),
    "relative_max_distance 2^31": ("hybrid", lambda h, w: _relative(h, w, max_distance=2 ** 31),
                                   r"attrs\.relative_max_distance: must be an integer in \[1, 2147483647\]"),
    "relative_bidirectional missing": ("hybrid", _both(_relative, lambda h, w: _att(h)["attrs"].pop("relative_bidirectional")),
                                       r"attrs\.relative_bidirectional: must be true or false, got None"),
    "relative_bias NaN*": ("hybrid", _both(_relative, lambda h, w: _set(w, "rel", 9, np.nan)),
                           r"weights\.rel: op 'l0\.attn''s relative_bias must be finite, got nan at \[9\]"),
    "relative_bias and alibi_slopes": ("hybrid", _both(_relative, _alibi),
                                       r"weights\.alibi_slopes: an Attention has one score bias"),
    # ALiBi
    "alibi_slopes [3] for 2 heads": ("hybrid", lambda h, w: _alibi(h, w, n=3),
                                     r"alibi_slopes 'slopes' has shape \[3\], expected \[2\]"),
    "alibi_slopes NaN*": ("hybrid", _both(_alibi, lambda h, w: _set(w, "slopes", 1, np.nan)),
                          r"weights\.slopes: op 'l0\.attn''s alibi_slopes must be finite, got nan at \[1\]"),
    "alibi_slopes inf*": ("hybrid", _both(_alibi, lambda h, w: _set(w, "slopes", 0, np.inf)),
                          r"alibi_slopes must be finite, got inf at \[0\]"),
    "alibi_slopes whose bias overflows*": ("hybrid", _both(_alibi, lambda h, w: _set(w, "slopes", 0, -3e37)),
                                           r"weights\.slopes: op 'l0\.attn''s alibi_slopes holds -3\.0.*e\+37 at \[0\]: the "
                                           r"ALiBi bias slope \* distance overflows float32"),
    "alibi_symmetric 1": ("hybrid", _both(_alibi, _edit_att(alibi_symmetric=1)),
                          r"attrs\.alibi_symmetric: must be true or false, got 1"),
    "alibi_symmetric without slopes": ("hybrid", _edit_att(alibi_symmetric=True),
                                       r"weights\.alibi_slopes: alibi_symmetric and mask_positions need an "
                                       r"'alibi_slopes' weight"),
    "whole q_norm with a per-head k_norm": ("hybrid", _both(_qk, lambda h, w: w.update(qn=np.ones(64, np.float32))),
                                             r"k_norm 'kn' has shape \[32\], expected \[64\]"),
    "residual_after 1": ("hybrid", lambda h, w: _norm(h)["attrs"].update(residual_after=1),
                         r"attrs\.residual_after: must be true or false, got 1"),
    "residual_after without a residual": ("hybrid", _no_residual_after,
                                          r"attrs\.residual_after: needs a residual input and no sum output"),
    "softcap 0": ("hybrid", _edit_att(softcap=0.0), r"attrs\.softcap: must be a finite positive number"),
    "attention mask_positions 1": ("hybrid", _both(_alibi, _edit_att(mask_positions=1)),
                                   r"attrs\.mask_positions: must be true or false, got 1"),
    "attention mask_positions without slopes": ("hybrid", _edit_att(mask_positions=True),
                                                r"weights\.alibi_slopes: alibi_symmetric and mask_positions need"),
}


@pytest.mark.parametrize("case", list(EXTRAS))
def test_hostile_newer_fields(tmp_path, case):
    """A crafted file with a bad fp8 or Attention field (fresh checksum) is a PlanError naming the op and field, on
    load, before anything runs or lowers it."""
    from handmade_plans import write_parts

    kind, edit, pattern = EXTRAS[case]
    h, w = _parts(kind)
    edit(h, w)
    path = write_parts(tmp_path / "x.plan", h, w)
    with pytest.raises(PlanError, match=pattern) as e:
        load_plan(path)
    assert str(e.value).startswith(f"{path}: ")
    assert len(str(e.value)) < 600


@pytest.mark.parametrize("attr, value", [("softcap", 30.0), ("qk_norm_kind", "layer"), ("refused_id", 2),
                                         ("residual_after", True)])
def test_meaning_changing_attribute_needs_version_3(tmp_path, attr, value):
    """A trtrun reading versions 1 and 2 takes an unknown scalar attribute for an annotation: given a plan with
    softcap, qk_norm_kind, refused_id or residual_after it would compute without it. Such a plan is version 3, which
    that trtrun refuses as newer; a file claiming 2 is refused by its version field (before any other field)."""
    from handmade_plans import write_parts

    from trtrun.plan.format import required_version

    h, w = _parts("hybrid")
    op = _emb(h) if attr == "refused_id" else _norm(h) if attr == "residual_after" else _att(h)
    op["attrs"][attr] = value
    assert required_version(h) == 3
    with pytest.raises(PlanError, match=r"header\.version: is 2, expected 3 \(the file's format version: softcap, "
                                        r"residual_after, qk_norm_kind, refused_id need it\)"):
        load_plan(write_parts(tmp_path / "v2.plan", h, w, version=2))
    op["attrs"][attr] = {"softcap": None, "qk_norm_kind": "rms", "refused_id": None, "residual_after": False}[attr]
    assert required_version(h) == 1  # the value that means "absent" needs nothing newer


def test_fp8_plan_written_as_version_1_is_refused(tmp_path):
    """An fp8 plan needs format version 2, so a trtrun that reads only version 1 says "newer": a file claiming 1 is
    refused by its version field."""
    from handmade_plans import write_parts

    h, w = _parts("fp8")
    with pytest.raises(PlanError, match=r"header\.version: is 1, expected 2 \(the file's format version: fp8 ops"):
        load_plan(write_parts(tmp_path / "v1.plan", h, w, version=1))


BOUNDED = {
    # values at the edges of what the schema allows: they load, and the reference runs them to finite outputs
    "subnormal fp8 weight_scale": ("fp8", lambda h, w: _set(w, _lin(h)["weights"]["weight_scale"], 4, 1e-40)),
    "subnormal fp8 x_scale": ("fp8-static", lambda h, w: _set(w, _lin(h)["weights"]["x_scale"], 0, 1e-40)),
    "largest fp8 x_scale": ("fp8-static", lambda h, w: _set(w, _lin(h)["weights"]["x_scale"], 0, 3.4e38)),
    "fp8 x_scale named '' (absent)": ("fp8", lambda h, w: _lin(h)["weights"].update(x_scale="")),
    "window 0": ("hybrid", _edit_att(window=0)),
    "window 2^31-1": ("hybrid", _edit_att(window=2 ** 31 - 1)),
    "relative_max_distance 2^31-1": ("hybrid", lambda h, w: _relative(h, w, max_distance=2 ** 31 - 1)),
    "relative_bias 2 buckets, bidirectional": ("hybrid", lambda h, w: _relative(h, w, buckets=2, max_distance=2)),
    "relative_bias 3 buckets, causal": ("hybrid", lambda h, w: _relative(h, w, buckets=3, max_distance=2,
                                                                         bidirectional=False)),
    "qk_norm_epsilon 0, q_norm float16": ("hybrid", _both(lambda h, w: _qk(h, w, eps=0.0),
                                                          lambda h, w: w.update(qn=w["qn"].astype(np.float16)))),
    "q/k norm with a partial rotary": ("hybrid", _both(_qk, lambda h, w: _rotary(h, w, R=8))),
    "inv_freq just within float32": ("hybrid", _both(_rotary, lambda h, w: _set(w, "inv_freq", 1, 8e36))),
    "alibi_slopes float16": ("hybrid", _both(_alibi, lambda h, w: w.update(slopes=w["slopes"].astype(np.float16)))),
}


@pytest.mark.parametrize("case", list(BOUNDED))
def test_edge_values_of_the_newer_fields_load_and_run(tmp_path, case):
    from handmade_plans import write_parts

    kind, edit = BOUNDED[case]
    h, w = _parts(kind)
    edit(h, w)
    plan = load_plan(write_parts(tmp_path / "x.plan", h, w))
    f = _feeds(2, 3)
    f["input_ids"][1] = [4, 5, 6]
    out = ReferenceBackend(plan).run(f)["last_hidden_state"]
    assert out.shape == (2, 3, 64) and np.isfinite(out).all()


def test_names_beyond_the_bmp_load(plan_file):
    """An escaped surrogate pair ("\\ud83d\\ude00", how json.dumps writes 😀) is text: such a name loads and runs."""
    _, path = plan_file
    _rewrite(path, lambda h: _op(h, "l0.fc1").update(name="fc😀"))
    assert b"\\ud83d\\ude00" in path.read_bytes()
    plan = load_plan(path)
    assert any(op["name"] == "fc😀" for op in plan.ops)
    ReferenceBackend(plan).run(_feeds())


def test_ops_after_the_pooling_are_checked_and_versioned():
    """The format-4 forms refuse what they do not mean, naming the field: a Normalize of token states, a Linear of two
    columns writing [B, S], a [B, N] tensor written by an Attention; a plan using one but saying version 3 is refused
    as the wrong version (an older trtrun refuses version 4 as newer, rather than computing without the op)."""
    import json

    from trtrun.plan import Plan

    base = tiny_plan("fp32", layers=1, **GPU_TINY)
    N = GPU_TINY["hidden"]

    def with_tail(ops, tensors, outputs, version=None):
        hdr = json.loads(json.dumps({k: v for k, v in base.header.items() if k != "weights"}))
        hdr["ops"] += ops
        hdr["tensors"].update(tensors)
        hdr["outputs"] = outputs
        if version is not None:
            hdr["version"] = version
        weights = dict(base.weights, **{"w2": np.ones((N, 2), np.float32), "w1": np.ones((N, 1), np.float32)})
        return Plan.from_parts(hdr, weights) if version is None else _validate_raw(hdr, weights)

    norm = {"type": "Normalize", "name": "norm", "inputs": ["last_hidden_state"], "outputs": ["y"], "weights": {},
            "attrs": {}, "precision": "fp32"}
    with pytest.raises(PlanError, match=r"\('norm'\): input 'last_hidden_state' must be one vector a sample "
                                        r"\[B, N\]"):
        with_tail([norm], {"y": {"dtype": "float32", "shape": ["B", "S", N]}},
                  [{"name": "y", "dtype": "float32", "shape": ["B", "S", N]}])
    two = {"type": "Linear", "name": "qa", "inputs": ["last_hidden_state", ""], "outputs": ["s"],
           "weights": {"weight": "w2"}, "attrs": {"activation": "none"}, "precision": "fp32"}
    with pytest.raises(PlanError, match=r"\('qa'\).*output 's'"):
        with_tail([two], {"s": {"dtype": "float32", "shape": ["B", "S"]}},
                  [{"name": "s", "dtype": "float32", "shape": ["B", "S"]}])
    one = dict(two, weights={"weight": "w1"})
    plan = with_tail([one], {"s": {"dtype": "float32", "shape": ["B", "S"]}},
                     [{"name": "s", "dtype": "float32", "shape": ["B", "S"]}])
    assert plan.header["version"] == 4
    out = ReferenceBackend(plan).run(_feeds())
    assert out["s"].shape == _feeds()["input_ids"].shape
    with pytest.raises(PlanError, match=r"version: is 3, expected 4 \(the file's format version: ops after the "
                                        r"pooling need it\)"):
        with_tail([one], {"s": {"dtype": "float32", "shape": ["B", "S"]}},
                  [{"name": "s", "dtype": "float32", "shape": ["B", "S"]}], version=3)


def _validate_raw(hdr, weights):
    """Validate a header as given (its version kept), with weights laid out as from_parts lays them out."""
    from trtrun.plan import Plan

    plan = Plan.from_parts({**hdr, "version": None}, weights)  # lays the weights out (and sets version 4)
    plan.header["version"] = hdr["version"]
    plan.validate()
    return plan
