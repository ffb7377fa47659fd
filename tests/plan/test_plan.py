"""Plan files: layout, round trip, every loading check, schema validation, check_feeds, inspect output.

Plans here are built by hand (`tiny_plan`, tests/handmade_plans.py), not by the builder, so these tests stand
alone.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct

import numpy as np
import pytest

from trtrun.errors import InputError, PlanError, ShapeError
from trtrun.plan import Plan, load_plan

from handmade_plans import split_file, tiny_plan, write_raw  # noqa: E402,F401  (tests/, on sys.path by conftest)


@pytest.fixture
def plan_file(tmp_path):
    p = tiny_plan("hybrid", layers=2)
    return p, p.save(tmp_path / "m.plan")


# ---------------------------------------------------------------------------------------------
# Round trip and layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16", "hybrid"])
@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_round_trip(tmp_path, precision, arch):
    plan = tiny_plan(precision, arch, layers=2)
    path = plan.save(tmp_path / "x.plan")
    back = load_plan(path)
    assert back.header == plan.header
    assert set(back.weights) == set(plan.weights)
    for name, w in plan.weights.items():
        b = back.weights[name]
        assert b.dtype == w.dtype and b.shape == w.shape
        np.testing.assert_array_equal(b, w)
        assert not b.flags.writeable, "loaded weights must be read-only views"
        assert b.ctypes.data % 256 == 0, f"{name} is not 256-byte aligned"
    # all weights are views of one buffer
    def root(a):
        while a.base is not None and isinstance(a.base, np.ndarray):
            a = a.base
        return id(a)
    assert len({root(w) for w in back.weights.values()}) == 1
    with pytest.raises(ValueError):
        back.weights["emb.word"][0, 0] = 1.0


def test_file_layout(plan_file):
    plan, path = plan_file
    data = path.read_bytes()
    assert data[:8] == b"TRTRUNPL"
    version, reserved, H, W = struct.unpack_from("<IIQQ", data, 8)
    assert (version, reserved) == (1, 0)
    start = (32 + H + 255) // 256 * 256
    assert len(data) == start + W + 32
    assert data[32 + H:start] == b"\0" * (start - 32 - H)
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    hdr = json.loads(data[32:32 + H])
    assert hdr["format"] == "trtrun-plan" and hdr["version"] == 1
    for name, e in hdr["weights"].items():
        assert e["offset"] % 256 == 0
        raw = data[start + e["offset"]: start + e["offset"] + e["nbytes"]]
        np.testing.assert_array_equal(np.frombuffer(raw, e["dtype"]).reshape(e["shape"]), plan.weights[name])


def test_save_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "m.plan"
    path.write_bytes(b"old contents")
    tiny_plan().save(path)
    assert load_plan(path).precision == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan"], "temporary file left behind"


def test_save_failure_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.plan"
    path.write_bytes(b"precious")
    plan = tiny_plan()
    plan.weights["l0.fc2.weight"] = object()  # writing the blob fails midway through the file
    monkeypatch.setattr(Plan, "validate", lambda self, *a, **k: None)  # or validate() would catch it first
    with pytest.raises(PlanError, match=r"weights\.l0\.fc2\.weight: array object.* does not match"):
        plan.save(path)
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan"]


def test_from_parts_rejects_bad_weights():
    plan = tiny_plan()
    weights = dict(plan.weights)
    weights["emb.word"] = weights["emb.word"].astype(np.float64)
    hdr = {k: v for k, v in plan.header.items() if k != "weights"}
    with pytest.raises(PlanError, match=r"weights\.emb\.word: dtype float64"):
        Plan.from_parts(hdr, weights)
    weights = dict(plan.weights)
    del weights["l0.qkv.bias"]
    with pytest.raises(PlanError, match=r"weight 'l0.qkv.bias' is not in header.weights"):
        Plan.from_parts(hdr, weights)


def test_from_parts_accepts_numpy_scalars_and_tuples():
    plan = tiny_plan()
    hdr = copy.deepcopy({k: v for k, v in plan.header.items() if k != "weights"})
    hdr["profile"] = {"batch": (np.int64(1), 2, 8), "seq": (1, np.int32(16), 40)}
    hdr["ops"][1]["attrs"]["scale"] = np.float32(0.25)
    p2 = Plan.from_parts(hdr, plan.weights)
    assert p2.profile == {"batch": [1, 2, 8], "seq": [1, 16, 40]}


# ---------------------------------------------------------------------------------------------
# Loading checks, in the order of docs/plan-format.md
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(PlanError, match="no such file"):
        load_plan(tmp_path / "nope.plan")


@pytest.mark.parametrize("content", [b"", b"TRTRUNPL", b"hello\n"])
def test_too_small(tmp_path, content):
    p = tmp_path / "small.plan"
    p.write_bytes(content)
    with pytest.raises(PlanError, match=r"small\.plan: file size: \d+ bytes is too small to be a trtrun plan"):
        load_plan(p)


def test_foreign_onnx_file(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    p = tmp_path / "model.onnx"
    onnx.save(helper.make_model(g), p)
    with pytest.raises(PlanError) as e:
        load_plan(p)
    msg = str(e.value)
    assert str(p) in msg and "not a trtrun plan" in msg and "ONNX" in msg


def test_foreign_text_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("this is a text file and certainly not a plan, but it is long enough to pass the size check\n")
    with pytest.raises(PlanError, match=r"notes\.txt: magic: not a trtrun plan .*text file"):
        load_plan(p)


def test_future_version(plan_file):
    _, path = plan_file
    hdr, blob = split_file(path)
    from trtrun.plan import FORMAT_VERSION

    future = FORMAT_VERSION + 1
    write_raw(path, hdr, blob, version=future)
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert str(e.value) == (f"{path}: version: plan format version {future} is newer than this trtrun supports "
                            f"({FORMAT_VERSION}): rebuild the plan or upgrade trtrun")


def test_version_zero_and_reserved(plan_file):
    _, path = plan_file
    hdr, blob = split_file(path)
    write_raw(path, hdr, blob, version=0)
    with pytest.raises(PlanError, match="version 0 is not valid"):
        load_plan(path)
    write_raw(path, hdr, blob, reserved=7)
    with pytest.raises(PlanError, match="reserved: must be 0"):
        load_plan(path)


@pytest.mark.parametrize("where", ["mid-header", "mid-blob", "trailer", "one-byte"])
def test_truncated(plan_file, where):
    _, path = plan_file
    data = path.read_bytes()
    H = struct.unpack_from("<Q", data, 16)[0]
    cut = {"mid-header": 32 + H // 2, "mid-blob": len(data) - 32 - 100, "trailer": len(data) - 16,
           "one-byte": len(data) - 1}[where]
    path.write_bytes(data[:cut])
    with pytest.raises(PlanError) as e:
        load_plan(path)
    msg = str(e.value)
    assert str(path) in msg and "lengths: file is truncated" in msg and f"file has {cut}" in msg


def test_trailing_garbage(plan_file):
    _, path = plan_file
    path.write_bytes(path.read_bytes() + b"extra")
    with pytest.raises(PlanError, match="lengths: .*trailing data"):
        load_plan(path)


@pytest.mark.parametrize("where", ["header", "padding", "blob", "trailer"])
def test_flipped_byte(plan_file, where):
    _, path = plan_file
    data = bytearray(path.read_bytes())
    H = struct.unpack_from("<Q", data, 16)[0]
    pos = {"header": 32 + H // 2, "padding": 32 + H, "blob": len(data) - 32 - 7,
           "trailer": len(data) - 5}[where]
    if where == "padding" and (32 + H) % 256 == 0:
        pytest.skip("no padding in this file")
    data[pos] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(PlanError) as e:
        load_plan(path)
    assert str(e.value).startswith(f"{path}: checksum: SHA-256 mismatch, the file is corrupted")


def test_flipped_length_field(plan_file):
    _, path = plan_file
    data = bytearray(path.read_bytes())
    data[24] ^= 0x01  # blob length
    path.write_bytes(bytes(data))
    with pytest.raises(PlanError, match="lengths:"):
        load_plan(path)


def test_bad_json(plan_file):
    _, path = plan_file
    _, blob = split_file(path)
    write_raw(path, b'{"format": "trtrun-plan", oops', blob)
    with pytest.raises(PlanError, match="header JSON: cannot parse"):
        load_plan(path)
    write_raw(path, b"\xff\xfe not utf-8", blob)
    with pytest.raises(PlanError, match="header JSON: cannot parse"):
        load_plan(path)
    write_raw(path, b"[1, 2, 3]", blob)
    with pytest.raises(PlanError, match="header: must be a JSON object, got list"):
        load_plan(path)


def _op(hdr, name):
    return next(op for op in hdr["ops"] if op["name"] == name)


def _swap_ops(h):
    i = next(i for i, op in enumerate(h["ops"]) if op["name"] == "l0.attn")
    h["ops"][i], h["ops"][i - 1] = h["ops"][i - 1], h["ops"][i]


# (mutation, expected message fragment). Each is one schema violation the loader must name.
SCHEMA_CASES = {
    "unknown op type": (lambda h: _op(h, "l0.attn").update(type="FlashAttn"),
                        r"header\.ops\[2\] \('l0.attn'\)\.type: unknown op type 'FlashAttn'"),
    "missing tensor": (lambda h: _op(h, "l0.fc2").update(inputs=["l0.nothing"]),
                       r"ops\[6\] \('l0.fc2'\)\.inputs\[0\]: tensor 'l0.nothing' is not in header.tensors"),
    "missing weight": (lambda h: h["weights"].pop("l0.fc1.bias"),
                       r"\('l0.fc1'\)\.weights\.bias: weight 'l0.fc1.bias' is not in header.weights"),
    "missing required weight role": (lambda h: _op(h, "l0.fc1")["weights"].pop("weight"),
                                     r"\('l0.fc1'\)\.weights\.weight: Linear needs a 'weight' weight"),
    "unknown weight role": (lambda h: _op(h, "l0.fc1")["weights"].update(scale="l0.fc1.bias"),
                            r"Linear has no weight role 'scale'"),
    "weight outside blob": (lambda h: h["weights"]["l0.fc2.weight"].update(offset=h["weights"]["l0.fc2.weight"]["offset"] + 1 << 20),
                            r"header\.weights\.l0\.fc2\.weight: bytes \[\d+, \d+\) lie outside the weights blob"),
    "unaligned offset": (lambda h: h["weights"]["l0.fc2.weight"].update(offset=h["weights"]["l0.fc2.weight"]["offset"] + 4),
                         r"weights\.l0\.fc2\.weight\.offset: must be a non-negative multiple of 256"),
    "nbytes mismatch": (lambda h: h["weights"]["emb.word"].update(nbytes=h["weights"]["emb.word"]["nbytes"] - 2),
                        r"weights\.emb\.word\.nbytes: is \d+ but float16\[50, 16\] takes 1600 bytes"),
    "dtype mismatch": (lambda h: h["weights"]["emb.word"].update(dtype="float32"),
                       r"weights\.emb\.word\.nbytes: is 1600 but float32\[50, 16\] takes 3200 bytes"),
    "shape mismatch": (lambda h: h["weights"]["emb.word"].update(shape=[50, 8]),
                       r"weights\.emb\.word\.nbytes: is 1600 but float16\[50, 8\] takes 800 bytes"),
    "nbytes wraps int64": (lambda h: h["weights"].update(huge={"dtype": "float16", "shape": [2 ** 32, 2 ** 32],
                                                                  "offset": 0, "nbytes": 0}),
                           r"weights\.huge\.nbytes: is 0 but float16\[4294967296, 4294967296\] takes 36893488147419103232"),
    "bad weight dtype": (lambda h: h["weights"]["emb.word"].update(dtype="bfloat16"),
                         r"weights\.emb\.word\.dtype: 'bfloat16' is not one of"),
    "weights overlap": (lambda h: h["weights"]["emb.position"].update(offset=h["weights"]["emb.word"]["offset"]),
                        r"overlap weight"),
    "not topological": (_swap_ops, r"\('l0.attn'\)\.inputs\[0\]: tensor 'l0.qkv_out' is used before any op "
                                   r"produces it \(ops are not topologically ordered"),
    "produced twice": (lambda h: _op(h, "l0.fc2").update(outputs=["l0.h1"]), r"tensor 'l0.h1' is produced twice"),
    "duplicate op name": (lambda h: _op(h, "l0.fc2").update(name="l0.fc1"), r"op name 'l0.fc1' used twice"),
    "profile min > max": (lambda h: h["profile"].update(batch=[4, 2, 1]),
                          r"header\.profile\.batch: needs 1 <= min <= opt <= max, got \[4, 2, 1\]"),
    "profile missing seq": (lambda h: h["profile"].pop("seq"), r"header\.profile\.seq: must be \[min, opt, max\]"),
    "profile floats": (lambda h: h["profile"].update(seq=[1, 16.5, 40]), r"header\.profile\.seq: must be \[min, opt, max\] integers"),
    "profile zero": (lambda h: h["profile"].update(seq=[0, 16, 40]), r"header\.profile\.seq: needs 1 <= min"),
    "profile beyond positions": (lambda h: h["profile"].update(seq=[1, 16, 41]),
                                 r"header\.profile\.seq: max sequence 41 .* exceeds the 40 rows of the position table"),
    "bad precision": (lambda h: h.update(precision="int8"), r"header\.precision: 'int8' is not one of"),
    "bad op precision": (lambda h: _op(h, "l0.fc1").update(precision="bf16"), r"\('l0.fc1'\)\.precision: 'bf16'"),
    "missing ops": (lambda h: h.pop("ops"), r"header\.ops: missing"),
    "wrong format": (lambda h: h.update(format="onnx"), r"header\.format: is 'onnx', expected 'trtrun-plan'"),
    "json version differs": (lambda h: h.update(version=2), r"header\.version: is 2, expected 1"),
    "bad tensor shape": (lambda h: h["tensors"]["l0.h1"].update(shape=["B", "T", 16]), r"tensors\.l0\.h1\.shape"),
    "linear shape mismatch": (lambda h: h["tensors"]["l0.inter"].update(shape=["B", "S", 63]),
                              r"output 'l0.inter' has shape \[B, S, 63\], expected \[B, S, 64\]"),
    "attention heads mismatch": (lambda h: _op(h, "l0.attn")["attrs"].update(num_heads=3),
                                 r"qkv 'l0.qkv_out' has shape \[B, S, 48\], expected \[B, S, 72\]"),
    "missing epsilon": (lambda h: _op(h, "l0.ln1")["attrs"].pop("epsilon"), r"\('l0.ln1'\)\.attrs\.epsilon: missing"),
    "bad activation": (lambda h: _op(h, "l0.fc1")["attrs"].update(activation="mish"), r"attrs\.activation: 'mish'"),
    "bad mask_positions": (lambda h: _op(h, "emb")["attrs"].update(mask_positions="yes"),
                           r"\('emb'\)\.attrs\.mask_positions: must be true or false, got 'yes'"),
    "too many inputs": (lambda h: _op(h, "l0.fc1")["inputs"].extend(["l0.h1", "l0.h1"]),
                        r"Linear takes at most 2 inputs"),
    "unknown graph input": (lambda h: (h["inputs"].append({"name": "pixels", "dtype": "int64", "shape": ["B", "S"]}),
                                       h["tensors"].update(pixels={"dtype": "int64", "shape": ["B", "S"]})),
                            r"'pixels' is not a known input"),
    "output not produced": (lambda h: (h["outputs"].append({"name": "ghost", "dtype": "float32", "shape": ["B", "S", 16]}),
                                       h["tensors"].update(ghost={"dtype": "float32", "shape": ["B", "S", 16]})),
                            r"output 'ghost' is not produced"),
    "int tensor into linear": (lambda h: _op(h, "l0.fc1").update(inputs=["input_ids"]),
                               r"tensor 'input_ids' is int64, Linear needs float32 or float16"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_schema_violation(plan_file, case):
    _, path = plan_file
    hdr, blob = split_file(path)
    mutate, pattern = SCHEMA_CASES[case]
    mutate(hdr)
    write_raw(path, hdr, blob)
    with pytest.raises(PlanError, match=pattern) as e:
        load_plan(path)
    assert str(e.value).startswith(f"{path}: ")


def test_valid_raw_file_loads(plan_file):
    """The hand-written independent writer produces files the loader accepts (format agreement)."""
    plan, path = plan_file
    hdr, blob = split_file(path)
    write_raw(path, hdr, blob)
    back = load_plan(path)
    for k, w in plan.weights.items():
        np.testing.assert_array_equal(back.weights[k], w)


# ---------------------------------------------------------------------------------------------
# check_feeds
# ---------------------------------------------------------------------------------------------


def _feeds(B=2, S=5, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab, (B, S)),
            "attention_mask": np.ones((B, S), np.int64),
            "token_type_ids": rng.integers(0, 2, (B, S))}


def test_check_feeds_ok_and_normalizes():
    plan = tiny_plan()
    f = _feeds()
    f["input_ids"] = f["input_ids"].astype(np.int32)
    f["attention_mask"] = np.asfortranarray(np.ones((2, 5), np.int32))
    out = plan.check_feeds(f)
    assert list(out) == ["input_ids", "attention_mask", "token_type_ids"]
    for a in out.values():
        assert a.dtype == np.int64 and a.flags.c_contiguous and a.shape == (2, 5)
    np.testing.assert_array_equal(out["input_ids"], f["input_ids"])


def test_check_feeds_defaults_optional_inputs():
    plan = tiny_plan()
    out = plan.check_feeds({"input_ids": [[1, 2, 3]]})
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1, 1]])
    np.testing.assert_array_equal(out["token_type_ids"], [[0, 0, 0]])


@pytest.mark.parametrize("shape,axis,n,lo,hi", [((9, 5), "batch", 9, 1, 8), ((2, 41), "seq", 41, 1, 40)])
def test_check_feeds_outside_profile(shape, axis, n, lo, hi):
    plan = tiny_plan()
    with pytest.raises(ShapeError) as e:
        plan.check_feeds({"input_ids": np.zeros(shape, np.int64)})
    what = "batch size" if axis == "batch" else "sequence length"
    assert str(e.value) == (f"input 'input_ids' has shape {shape}: {what} {n} is outside the plan's profile "
                            f"{axis} range [{lo}, {hi}] (opt {plan.profile[axis][1]}); rebuild the plan with a "
                            f"wider profile")


def test_check_feeds_token_id_too_large():
    plan = tiny_plan()
    f = _feeds()
    f["input_ids"][1, 3] = 50
    f["input_ids"][1, 4] = 70
    with pytest.raises(InputError) as e:
        plan.check_feeds(f)
    assert str(e.value) == ("input 'input_ids' has value 50 at position [1, 3] (and 1 more): token ids must lie "
                            "in [0, 50) (the vocabulary size)")
    assert isinstance(e.value, ValueError)


def test_check_feeds_negative_id():
    plan = tiny_plan()
    f = _feeds()
    f["input_ids"][0, 0] = -1
    with pytest.raises(InputError, match=r"input 'input_ids' has value -1 at position \[0, 0\]: token ids"):
        plan.check_feeds(f)


def test_check_feeds_float_ids():
    plan = tiny_plan()
    f = _feeds()
    f["input_ids"] = f["input_ids"].astype(np.float32)
    with pytest.raises(InputError, match=r"input 'input_ids' has dtype float32; token ids and masks must be integers"):
        plan.check_feeds(f)


def test_check_feeds_missing_and_unknown():
    plan = tiny_plan()
    with pytest.raises(InputError, match=r"missing required input 'input_ids'"):
        plan.check_feeds({"attention_mask": np.ones((1, 3), np.int64)})
    with pytest.raises(InputError, match=r"unknown input 'pixel_values': this plan takes input_ids, attention_mask, "
                                         r"token_type_ids"):
        plan.check_feeds({"input_ids": np.ones((1, 3), np.int64), "pixel_values": np.ones((1, 3))})
    dec = tiny_plan(arch="decoder")
    with pytest.raises(InputError, match=r"unknown input 'token_type_ids'"):
        dec.check_feeds(_feeds())


def test_check_feeds_rank_and_mismatch():
    plan = tiny_plan()
    with pytest.raises(ShapeError, match=r"input 'input_ids' has shape \(5,\); expected rank 2"):
        plan.check_feeds({"input_ids": np.arange(5)})
    f = _feeds()
    f["attention_mask"] = np.ones((2, 4), np.int64)
    with pytest.raises(ShapeError, match=r"input 'attention_mask' has shape \(2, 4\) but input_ids has \(2, 5\)"):
        plan.check_feeds(f)


def test_check_feeds_mask_and_token_types():
    plan = tiny_plan()
    f = _feeds()
    f["attention_mask"][0, 2] = 2
    with pytest.raises(InputError, match=r"input 'attention_mask' has value 2 at position \[0, 2\]: .* 0 or 1"):
        plan.check_feeds(f)
    f = _feeds()
    f["token_type_ids"][1, 1] = 2
    with pytest.raises(InputError, match=r"input 'token_type_ids' has value 2 at position \[1, 1\]: .*\[0, 2\)"):
        plan.check_feeds(f)


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------


def test_summary_and_to_dict(plan_file):
    _, path = plan_file
    plan = load_plan(path)
    text = plan.summary()
    assert str(path) in text and "precision hybrid" in text
    assert "profile: batch min 1 / opt 2 / max 8, seq min 1 / opt 16 / max 40" in text
    for op in plan.ops:
        assert op["name"] in text
    assert "l0.attn" in text and "Attention" in text and "float16[B, S, 48]" in text
    total = sum(e["nbytes"] for e in plan.header["weights"].values())
    assert f"({total} bytes)" in text and "float16:" in text and "float32:" in text
    d = plan.to_dict()
    json.dumps(d)  # JSON-able
    assert d["weights"]["bytes"] == total
    assert d["ops_by_precision"] == {"hybrid": len(plan.ops)}
    ln = next(o for o in d["ops"] if o["name"] == "l0.ln1")
    assert ln["outputs"][0]["dtype"] == "float16" and ln["inputs"][0]["dtype"] == "float32"
    assert ln["weights"]["gamma"]["dtype"] == "float32"


@pytest.mark.parametrize("buckets,max_distance,bidirectional", [(32, 2, True), (32, 8, True), (1, 128, True),
                                                                 (32, 16, False)])
def test_relative_bias_max_distance_within_the_exact_buckets_is_refused(buckets, max_distance, bidirectional):
    """T5's bucket function gives negative indices (which numpy would wrap to the table's last rows) when
    max_distance is at or below the exact buckets, or a bidirectional table has 1 bucket: the validator refuses."""
    from trtrun.reference import relative_buckets

    p = tiny_plan(max_pos=40)
    h, w = copy.deepcopy(p.header), dict(p.weights)
    for op in h["ops"]:
        if op["type"] == "Attention":
            op["weights"]["relative_bias"] = "rb"
            op["attrs"].update(relative_max_distance=max_distance, relative_bidirectional=bidirectional)
    w["rb"] = np.ones((buckets, 2), np.float32)
    with pytest.raises(PlanError, match=r"'l0.attn'.*relative_max_distance.*does not fit"):
        Plan.from_parts(h, w)
    # a table that fits (MPNet's and T5's 32 buckets, max distance 128) has only valid indices at any length
    for op in h["ops"]:
        if op["type"] == "Attention":
            op["attrs"].update(relative_max_distance=128, relative_bidirectional=True)
    w["rb"] = np.ones((32, 2), np.float32)
    Plan.from_parts(h, w)
    assert 0 <= relative_buckets(40, 32, 128, True).min() and relative_buckets(1000, 32, 128, True).max() < 32


def test_per_head_qk_norm_weights_are_validated():
    """q_norm and k_norm ([head_size] each, with qk_norm_epsilon) come as a pair; the validator names what is off,
    and a valid pair passes and runs on the reference backend."""
    from trtrun.reference import ReferenceBackend

    p = tiny_plan(max_pos=40)
    att = next(o for o in p.header["ops"] if o["type"] == "Attention")
    D = att["attrs"]["head_size"]

    def with_norm(**change):
        h, w = copy.deepcopy(p.header), dict(p.weights)
        for op in h["ops"]:
            if op["type"] == "Attention":
                op["weights"].update(q_norm="qn", k_norm="kn")
                op["attrs"]["qk_norm_epsilon"] = 1e-6
        w["qn"] = np.linspace(0.5, 1.5, D, dtype=np.float32)
        w["kn"] = np.linspace(1.5, 0.5, D, dtype=np.float32)
        for k, v in change.items():
            if k in ("qn", "kn"):
                w[k] = v
            for op in h["ops"]:
                if op["type"] == "Attention" and k == "drop_k":
                    del op["weights"]["k_norm"]
                if op["type"] == "Attention" and k == "drop_both":
                    del op["weights"]["k_norm"], op["weights"]["q_norm"]
                if op["type"] == "Attention" and k == "eps":
                    op["attrs"]["qk_norm_epsilon"] = v
        return h, w

    with pytest.raises(PlanError, match=r"'l0.attn'.*needs both 'q_norm' and 'k_norm'"):
        Plan.from_parts(*with_norm(drop_k=True))
    with pytest.raises(PlanError, match=r"k_norm 'kn'.*"):
        Plan.from_parts(*with_norm(kn=np.ones(D + 1, np.float32)))
    with pytest.raises(PlanError, match=r"qk_norm_epsilon.*>= 0"):
        Plan.from_parts(*with_norm(eps=-1.0))
    with pytest.raises(PlanError, match=r"qk_norm_epsilon needs 'q_norm' and 'k_norm'"):
        Plan.from_parts(*with_norm(drop_both=True))
    plan = Plan.from_parts(*with_norm())
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 50, (2, 9)), "attention_mask": np.ones((2, 9), np.int64)}
    with_n = ReferenceBackend(plan).run(feeds)
    without = ReferenceBackend(p).run(feeds)
    # the norm changes the scores (gamma far from 1): a plan that ignored the weights would give the same output
    name = next(iter(with_n))
    assert np.isfinite(with_n[name]).all() and not np.allclose(with_n[name], without[name], atol=1e-3)


def test_an_rmsnorm_epsilon_may_be_zero_a_layernorm_epsilon_may_not():
    """An RMSNorm computes x / sqrt(mean(x^2) + eps): a file whose exporter dropped a tiny epsilon (torch.onnx's
    dynamo exporter on Helium's 1e-8) computes it with 0, and so does its plan. A LayerNorm's stays positive, and
    a negative one is refused, naming the op (a NaN cannot be written: the header is strict JSON)."""
    from trtrun.reference import ReferenceBackend

    base = tiny_plan("hybrid")
    hdr = copy.deepcopy({k: v for k, v in base.header.items() if k != "weights"})
    ln = next(op for op in hdr["ops"] if op["type"] == "LayerNorm")
    ln["attrs"]["epsilon"] = 0.0
    with pytest.raises(PlanError, match=rf"\('{ln['name']}'\)\.attrs\.epsilon: must be a finite positive number"):
        Plan.from_parts(copy.deepcopy(hdr), dict(base.weights))
    ln["type"] = "RMSNorm"
    del ln["weights"]["beta"]
    plan = Plan.from_parts(copy.deepcopy(hdr), dict(base.weights))
    ids = np.random.default_rng(0).integers(1, 50, (2, 5))
    y = ReferenceBackend(plan).run({"input_ids": ids, "attention_mask": np.ones_like(ids),
                                    "token_type_ids": np.zeros_like(ids)})["last_hidden_state"]
    assert np.isfinite(y).all()
    ln["attrs"]["epsilon"] = -1e-6
    with pytest.raises(PlanError, match=rf"\('{ln['name']}'\)\.attrs\.epsilon: must be a finite non-negative"):
        Plan.from_parts(copy.deepcopy(hdr), dict(base.weights))
