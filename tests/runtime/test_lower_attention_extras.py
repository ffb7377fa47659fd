"""The Attention's score biases (relative-position tables, ALiBi) and sliding windows as the GPU runtime takes them
(trtrun/runtime/lower.py), on the host: no GPU needed.

The kernel adds bias[h][j - i + Smax - 1] from one fp32 table per distinct (table, attributes) of shape
[H, 2*Smax - 1], Smax the profile's longest sequence. These tests hold that table to the reference backend's own
[H, S, S] bias at every (i, j) for several S <= Smax (bit for bit: the same function makes both), check which layers
share a table, how the window reaches the Engine, what lowering still refuses, the Engine's and the kernel entry
point's checks of the new arguments, and the host-side rule that runs a batch at its exact length when a window
leaves some row without a key (its output would depend on the padded length).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import engine_args, engine_refusal, native_extension
from handmade_plans import tiny_plan

from trtrun.errors import DeviceError, InputError, PlanError
from trtrun.plan import Plan
from trtrun.reference import ReferenceBackend
from trtrun.runtime.lower import check_gpu_support, has_fully_masked_rows, lower_plan
from trtrun.runtime.tail import split_host_tail

SMAX = 40  # the hand-made plans' profile: seq [1, 16, 40]
KINDS = ["relative-bidirectional", "relative-unidirectional", "alibi", "alibi-symmetric"]


def _extras_plan(kind: str | None, *, precision="hybrid", layers=2, window=None, seed=0, other_table=False,
                 hidden=64, heads=2, softcap=None) -> Plan:
    """tiny_plan with a score bias of `kind` on every Attention (one table shared by the layers, or with
    other_table a second table for the last layer) and/or a sliding window. Two heads of 32: the tables' head axis
    has two rows to tell apart, at the smallest head size the GPU runtime lowers."""
    base = tiny_plan(precision, layers=layers, seed=seed, hidden=hidden, heads=heads)
    rng = np.random.default_rng(seed + 17)
    hdr = copy.deepcopy({k: v for k, v in base.header.items() if k != "weights"})
    w = dict(base.weights)
    att = [o for o in hdr["ops"] if o["type"] == "Attention"]
    for n, op in enumerate(att):
        if kind is not None and kind.startswith("relative"):
            name = "rel_b" if other_table and n == len(att) - 1 else "rel"
            # 32 buckets, max distance 20: exact, log-spaced and saturated buckets all occur below Smax = 40
            w.setdefault(name, rng.normal(0, 1, (32, heads)).astype(np.float32))
            op["weights"]["relative_bias"] = name
            op["attrs"].update(relative_max_distance=20, relative_bidirectional=kind.endswith("bidirectional"))
        elif kind is not None:
            name = "slopes_b" if other_table and n == len(att) - 1 else "slopes"
            w.setdefault(name, rng.uniform(0.01, 1.0, heads).astype(np.float32))
            op["weights"]["alibi_slopes"] = name
            op["attrs"]["alibi_symmetric"] = kind.endswith("symmetric")
        if window is not None:
            op["attrs"]["window"] = window
        if softcap is not None:
            op["attrs"]["softcap"] = softcap
            hdr["version"] = 3  # the plan format's version for softcap (docs/plan-format.md)
    return Plan.from_parts(hdr, w)


def _dense(table: np.ndarray, S: int, smax: int) -> np.ndarray:
    """[H, S, S] from the per-distance table: entry (i, j) at column j - i + smax - 1."""
    d = np.arange(S)[None, :] - np.arange(S)[:, None]
    return table[:, d + smax - 1]


@pytest.mark.parametrize("kind", KINDS)
def test_distance_table_is_the_references_bias_at_every_query_and_key(kind):
    plan = _extras_plan(kind)
    low = lower_plan(plan)
    ref = ReferenceBackend(plan)
    by_name = {o["name"]: o for o in plan.ops}
    att = [d for d in low["ops"] if d["type"] == "Attention"]
    assert len(att) == 2
    for d in att:
        table = low["weights"][d["weights"]["score_bias"]][1]
        assert table.dtype == np.float32 and table.shape == (2, 2 * SMAX - 1) and table.flags.c_contiguous
        assert d["window"] == -1
        for S in (1, 2, 7, 16, 33, SMAX):
            want = ref._score_bias(by_name[d["name"]], S)
            got = _dense(table, S, SMAX)
            assert want.shape == got.shape == (2, S, S)
            np.testing.assert_array_equal(got, want, err_msg=f"{kind} S={S}")
    # the layers name one table: one device table
    assert len({d["weights"]["score_bias"] for d in att}) == 1


def test_distance_tables_vary_along_both_directions():
    """The tables are not trivially symmetric or constant where the model's bias is not (so the equality above
    would catch a transposed or mirrored index): a bidirectional relative table and ALiBi differ between j - i = d
    and -d; a unidirectional one is constant for keys after the query (bucket 0), as T5's decoder has it."""
    for kind, mirrored in (("relative-bidirectional", False), ("alibi", False), ("alibi-symmetric", True)):
        low = lower_plan(_extras_plan(kind))
        t = low["weights"][next(d for d in low["ops"] if d["type"] == "Attention")["weights"]["score_bias"]][1]
        assert np.array_equal(t, t[:, ::-1]) == mirrored, kind
    low = lower_plan(_extras_plan("relative-unidirectional"))
    t = low["weights"][next(d for d in low["ops"] if d["type"] == "Attention")["weights"]["score_bias"]][1]
    assert (t[:, SMAX - 1:] == t[:, SMAX - 1:SMAX]).all() and not (t[:, :SMAX] == t[:, SMAX - 1:SMAX]).all()


@pytest.mark.parametrize("kind", ["relative-bidirectional", "alibi"])
def test_layers_naming_another_table_get_their_own(kind):
    low = lower_plan(_extras_plan(kind, layers=3, other_table=True))
    idx = [d["weights"]["score_bias"] for d in low["ops"] if d["type"] == "Attention"]
    assert idx[0] == idx[1] != idx[2]
    assert not np.array_equal(low["weights"][idx[0]][1], low["weights"][idx[2]][1])


def test_alibi_symmetric_and_not_are_two_tables_of_one_slope_weight():
    """The attributes are part of what a table is: the same slopes, once causal-style and once symmetric."""
    plan = _extras_plan("alibi")
    hdr = copy.deepcopy({k: v for k, v in plan.header.items() if k != "weights"})
    next(o for o in reversed(hdr["ops"]) if o["type"] == "Attention")["attrs"]["alibi_symmetric"] = True
    low = lower_plan(Plan.from_parts(hdr, plan.weights))
    idx = [d["weights"]["score_bias"] for d in low["ops"] if d["type"] == "Attention"]
    assert idx[0] != idx[1]
    np.testing.assert_array_equal(low["weights"][idx[1]][1], -np.abs(low["weights"][idx[0]][1]))


@pytest.mark.parametrize("window,want", [(None, -1), (0, 0), (5, 5), (39, 39), (10_000, SMAX)])
def test_window_reaches_the_engine(window, want):
    """-1 for none; a window at or past the profile's longest sequence masks nothing at any run length and is
    capped there (the kernel's launcher treats any window >= S - 1 as none)."""
    low = lower_plan(_extras_plan(None, window=window))
    for d in low["ops"]:
        if d["type"] == "Attention":
            assert d["window"] == want and "score_bias" not in d["weights"]


def test_softcap_reaches_the_engine():
    """Gemma 2's cap goes to the Engine as the op's `softcap` (the kernel caps the scaled scores before any bias);
    without one the attribute is absent (the Engine's default, 0: none)."""
    for kind in (None, "alibi"):
        low = lower_plan(_extras_plan(kind, softcap=30.0, window=4))
        atts = [d for d in low["ops"] if d["type"] == "Attention"]
        assert [d["softcap"] for d in atts] == [30.0, 30.0] and all(d["window"] == 4 for d in atts)
    assert all("softcap" not in d for d in lower_plan(_extras_plan(None))["ops"])


def test_plans_with_biases_and_windows_lower_and_a_pool_is_left_to_the_host():
    """check_gpu_support takes every kind (it refused each by name before); a Pool op beside a score bias passes
    it too: it is the plan's host tail, which lower_plan refuses by name and split_host_tail takes off (the device
    part lowers with the pooled state's input as its output)."""
    for kind in KINDS:
        check_gpu_support(_extras_plan(kind, window=4))
    plan = _extras_plan("relative-bidirectional", precision="fp32")
    hdr = json.loads(json.dumps({k: v for k, v in plan.header.items() if k != "weights"}))
    hdr["ops"].append({"type": "Pool", "name": "pool", "inputs": ["last_hidden_state", "attention_mask"],
                       "outputs": ["pooled"], "weights": {}, "attrs": {"mode": "cls"}, "precision": "fp32"})
    hdr["tensors"]["pooled"] = {"dtype": "float32", "shape": ["B", 64]}
    hdr["outputs"].append({"name": "pooled", "dtype": "float32", "shape": ["B", 64]})
    pooled = Plan.from_parts(hdr, plan.weights)
    check_gpu_support(pooled)
    with pytest.raises(PlanError, match=r"op 'pool' belongs to the plan's host tail"):
        lower_plan(pooled)
    device, tail = split_host_tail(pooled)
    assert [op["name"] for op in tail] == ["pool"]
    assert [o["name"] for o in device.outputs] == ["last_hidden_state"]
    low = lower_plan(device)
    assert [d["type"] for d in low["ops"]] == [op["type"] for op in plan.ops]


# ---------------------------------------------------------------------------------------------- bucketing rule
def _brute(mask: np.ndarray, causal: bool, window: int | None) -> bool:
    B, S = mask.shape
    for b in range(B):
        for i in range(S):
            keys = [j for j in range(S) if mask[b, j] and not (causal and j > i)
                    and not (window is not None and abs(i - j) > window)]
            if not keys:
                return True
    return False


def test_fully_masked_rows_by_rule():
    """has_fully_masked_rows (Context._seq_bucket runs such batches at their exact length) against a row by row
    count, on random masks, right and left padding and holes, with and without causal and windows of 0..S."""
    rng = np.random.default_rng(5)
    seen = set()
    for trial in range(300):
        B, S = int(rng.integers(1, 4)), int(rng.integers(1, 24))
        kind = trial % 4
        m = np.ones((B, S), np.int64)
        for b in range(B):
            if kind == 0:
                m[b, int(rng.integers(0, S + 1)):] = 0  # right padding (possibly all)
            elif kind == 1:
                m[b, :int(rng.integers(0, S + 1))] = 0  # left padding
            elif kind == 2:
                m[b] = rng.random(S) < 0.5
            else:
                a = int(rng.integers(0, S))
                m[b, a:a + int(rng.integers(1, S + 1))] = 0  # a hole
        causal = bool(rng.integers(0, 2))
        window = None if trial % 5 == 0 else int(rng.integers(0, S + 2))
        want = _brute(m, causal, window)
        assert has_fully_masked_rows(m, causal, window) == want, (m, causal, window)
        seen.add(want)
    assert seen == {True, False}
    # the rules the bucketing had before windows: an all-zero sample (bidirectional), a masked first key (causal)
    assert has_fully_masked_rows(np.array([[1, 1, 0], [0, 0, 0]]))
    assert not has_fully_masked_rows(np.array([[0, 1, 0], [1, 0, 0]]))
    assert has_fully_masked_rows(np.array([[0, 1, 1]]), causal=True)
    assert not has_fully_masked_rows(np.array([[1, 0, 1]]), causal=True)
    # right padding longer than the window: the last pad rows see no valid key (ModernBERT's local layers)
    pad = np.array([[1] * 5 + [0] * 11])
    assert has_fully_masked_rows(pad, window=4) and not has_fully_masked_rows(pad, window=11)


# ---------------------------------------------------------------------------------------------- the extension
def test_engine_takes_the_bias_table_and_window():
    """A lowered plan with a shared score-bias table and a window passes the Engine's description checks (without a
    GPU the first error is the device's); a table of the wrong shape or dtype, or a window below -1, is an InputError
    naming the op, raised before the device is asked."""
    c = native_extension()
    low = lower_plan(_extras_plan("relative-bidirectional", window=6, hidden=64))
    att = next(d for d in low["ops"] if d["type"] == "Attention")
    if c.device_count() == 0:
        with pytest.raises(DeviceError):
            c.Engine(*engine_args(low))

    def broken(change):
        return engine_refusal(c, low, change)

    def short(bad, weights):
        i = att["weights"]["score_bias"]
        weights[i] = (weights[i][0], weights[i][1][:, :-1].copy())

    def half(bad, weights):
        i = att["weights"]["score_bias"]
        weights[i] = (weights[i][0], weights[i][1].astype(np.float16))

    for change in (short, half):
        msg = broken(change)
        assert msg.startswith(f"op '{att['name']}': weight 'score_bias' (") and \
            msg.endswith(f") must be float32 [num_heads 2, 2 * max sequence - 1 = {2 * SMAX - 1}]"), msg

    def bad_window(bad, weights):
        next(o for o in bad["ops"] if o["name"] == att["name"])["window"] = -2

    assert broken(bad_window) == f"op '{att['name']}': window must be >= 0, or -1 for none"


def test_attention_entry_point_checks_the_bias_arguments():
    """_C.plugins.attention_gqa takes the table and window as keywords; the launcher refuses a table shorter than the
    run or misaligned before it touches a device (null qkv here, so nothing reaches one), and attention_config
    takes `extras`."""
    p = native_extension().plugins
    with pytest.raises(InputError, match=r"attention: a score bias table \[heads, 2\*bias_max_seq - 1\] needs "
                                         r"1 <= seq 40 <= bias_max_seq <= 2\^30, got bias_max_seq=39"):
        p.attention_gqa(0, "float16", 0, 0, "float16", 1, 40, 4, 4, 32, 0.17, False, "hybrid", 0, bias=256,
                        bias_max_seq=39)
    with pytest.raises(InputError, match="attention: the score bias table must be 4-byte aligned"):
        p.attention_gqa(0, "float16", 0, 0, "float16", 1, 40, 4, 4, 32, 0.17, False, "hybrid", 0, bias=258,
                        bias_max_seq=40)
    with pytest.raises(InputError, match="attention: qkv and y must not be null"):
        p.attention_gqa(0, "float16", 0, 0, "float16", 1, 40, 4, 4, 32, 0.17, False, "hybrid", 0, bias=256,
                        bias_max_seq=40, window=3)
    with pytest.raises(InputError, match="attention_config: precision must be one of fp32, fp16, hybrid(, fp8)?; got 'x'"):
        p.attention_config(1, 128, 12, 64, False, "x", extras=True)


# ---------------------------------------------------------------------------------------------- table sizes
def _long_plan(kind: str, seq_max: int, *, layers=2, other_table=False) -> Plan:
    """_extras_plan (or, for "rotary", rotary tables of width 4 on every layer) without a position table, so that
    nothing in the file bounds the profile's longest sequence, which is then `seq_max`."""
    plan = _extras_plan(None if kind == "rotary" else kind, layers=layers, other_table=other_table)
    hdr = copy.deepcopy({k: v for k, v in plan.header.items() if k != "weights"})
    w = dict(plan.weights)
    del next(o for o in hdr["ops"] if o["type"] == "Embedding")["weights"]["position"], w["emb.position"]
    hdr["model"]["max_position"] = 2 ** 31 - 1
    hdr["profile"]["seq"] = [1, 16, seq_max]
    if kind == "rotary":
        w["inv_freq"] = np.array([1.0, 0.01], np.float32)
        for op in hdr["ops"]:
            if op["type"] == "Attention":
                op["attrs"]["rotary_dim"] = 4
                op["weights"]["inv_freq"] = "inv_freq"
    return Plan.from_parts(hdr, w)


@pytest.mark.parametrize("kind", ["relative-bidirectional", "alibi", "rotary"])
def test_tables_of_a_huge_profile_are_refused_before_they_are_made(kind, tmp_path):
    """A profile of 2^31 - 1 tokens with no position table validates (the reference backend runs any length it is
    given); its fp32 tables by position would take 32 GiB (a score bias of 2 heads, or rotary cos and sin 2 wide):
    lowering used to start making them (MemoryError, or the kernel's OOM killer where memory overcommits). It is a PlanError
    naming the op now, from check_gpu_support (so 'auto' falls back to the reference backend), before any table is
    made: a child process with 3 GiB of address space shows it."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    path = _long_plan(kind, 2 ** 31 - 1).save(tmp_path / "long.plan")
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from trtrun.errors import PlanError
        from trtrun.plan import load_plan
        from trtrun.runtime.lower import lower_plan
        plan = load_plan({str(path)!r})
        try:
            lower_plan(plan)
            print("LOWERED")
        except PlanError as e:
            print("PlanError:", e)
    """)
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo)
    assert r.returncode == 0, r.stderr[-2000:]
    what = "rotary cos/sin" if kind == "rotary" else "score bias"
    assert r.stdout.startswith(f"PlanError: op 'l0.attn': the GPU runtime's fp32 tables by position ({what} "), r.stdout
    assert "at the profile's max sequence 2,147,483,647, more than the 256 MiB lowering makes; build the plan for " \
           "shorter sequences (trtrun build --max BATCH,SEQ)" in r.stdout, r.stdout


def test_table_limit_counts_each_shared_table_once(monkeypatch):
    """The limit is on what lowering makes: layers sharing a table (one relative table, one inv_freq) count it once, a
    second table counts again; at the limit the plan lowers."""
    import trtrun.runtime.lower as lower

    bias = 2 * (2 * 1000 - 1) * 4  # [2 heads, 2 * 1000 - 1] float32
    monkeypatch.setattr(lower, "MAX_TABLE_BYTES", bias)
    low = lower_plan(_long_plan("relative-bidirectional", 1000, layers=3))
    assert len({d["weights"]["score_bias"] for d in low["ops"] if d["type"] == "Attention"}) == 1
    with pytest.raises(PlanError, match=r"op 'l2\.attn': the GPU runtime's fp32 tables by position \(score bias "
                                        r"\[num_heads, 2 \* max seq - 1\] here\) would take "):
        lower_plan(_long_plan("relative-bidirectional", 1000, layers=3, other_table=True))
    rotary = 2 * 1000 * 2 * 4  # cos and sin [1000, 2]
    monkeypatch.setattr(lower, "MAX_TABLE_BYTES", rotary)
    lower_plan(_long_plan("rotary", 1000, layers=3))
    monkeypatch.setattr(lower, "MAX_TABLE_BYTES", rotary - 1)
    with pytest.raises(PlanError, match=r"op 'l0\.attn': .* \(rotary cos/sin \[max seq, rotary_dim/2\] x 2 here\)"):
        lower_plan(_long_plan("rotary", 1000, layers=3))
