"""The runtime on hand-made one-layer plans that reach each branch of native/runtime/ (fused and unfused GEMM
epilogues, operand casts, gelu erf/tanh, attention with and without a mask input, causal, position offsets,
token types, tf32), against trtrun.reference on the same plan. Small: also the compute-sanitizer target."""

from __future__ import annotations

import numpy as np
import pytest

import rt_helpers as h
from trtrun.errors import InputError

pytestmark = pytest.mark.gpu

VARIANTS = {
    "plain": {},
    "x32-bias32-nomask": dict(x32_linear=True, bias32_out16=True, mask_input=False),
    "causal-tanh-offset": dict(causal=True, activation="gelu_tanh", token_types=False, embed_ln=False,
                               position_offset=2),
    "nomask-causal": dict(causal=True, mask_input=False, activation="gelu_tanh"),
    "bias32-tanh": dict(bias32_out16=True, activation="gelu_tanh"),
    "prenorm-tanh": dict(activation="gelu_tanh", ffn_input_dies=True),
    "prenorm-res32": dict(activation="gelu_tanh", ffn_input_dies=True, residual32=True),
}
SHAPES = [(1, 1, False), (3, 17, True), (8, 100, True), (2, 144, False), (5, 33, True)]


@pytest.fixture(scope="module")
def built():
    h.need_runtime()
    from trtrun.runtime import Engine

    cache = {}

    def get(variant, precision, tf32=False):
        key = (variant, precision, tf32)
        if key not in cache:
            plan = h.handmade_plan(precision=precision, tf32=tf32, **VARIANTS[variant])
            cache[key] = (plan, Engine(plan))
        return cache[key]

    return get


@pytest.mark.parametrize("precision", ["fp32", "hybrid", "fp16"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("use_graphs", [True, False])
def test_handmade_vs_reference(built, variant, precision, use_graphs):
    if precision != "hybrid" and variant in ("x32-bias32-nomask", "bias32-tanh"):
        pytest.skip("fp32 inputs/biases into fp16 GEMMs are hybrid-plan situations")
    from trtrun.reference import ReferenceBackend

    plan, engine = built(variant, precision)
    ref = ReferenceBackend(plan)
    ctx = engine.create_context(use_graphs=use_graphs)
    worst = 1.0
    for i, (B, S, padded) in enumerate(SHAPES):
        feeds = h.random_feeds(plan, B, S, padded=padded, seed=i)
        got = ctx.run(feeds)["out"]
        again = ctx.run(feeds)["out"]  # the second run replays the captured graph
        want = ref.run(feeds)["out"]
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, again)
        cos = h.cosine_per_sample(got, want, h.valid_mask(feeds))
        worst = min(worst, cos.min())
        assert cos.min() >= h.COS_MIN[precision], (variant, precision, B, S, cos)
        # fp32 plans: the same arithmetic up to summation order; hybrid/fp16: the reference emulates the
        # kernels' roundings, so the difference is a few fp16 ulps (fp16 spacing 2^-11 relative)
        tol = 2e-5 if precision == "fp32" else 3e-3 if precision == "hybrid" else 1e-2
        assert h.rel_l2(got, want, h.valid_mask(feeds)) < tol, (variant, precision, B, S)
    stats = ctx.stats()
    if use_graphs:
        assert stats["graph_count"] >= 1 and not stats["graph_note"], stats
    else:
        assert stats["graph_count"] == 0
    h.report("handmade", f"{variant:20s} {precision:6s} graphs={use_graphs!s:5s} min cos {worst:.8f} "
                         f"arena {stats['arena_bytes'] / 2**20:.2f} MiB (no reuse: "
                         f"{stats['arena_naive_bytes'] / 2**20:.2f})")


def test_tf32_flag(built):
    """tf32 plans run (CUBLAS_COMPUTE_32F_FAST_TF32): within tf32's error of the fp32 reference."""
    from trtrun.reference import ReferenceBackend

    plan, engine = built("plain", "fp32", True)
    feeds = h.random_feeds(plan, 4, 50, padded=True)
    got = engine.create_context().run(feeds)["out"]
    want = ReferenceBackend(plan).run(feeds)["out"]  # the reference rounds GEMM operands to tf32 too
    assert h.cosine_per_sample(got, want, h.valid_mask(feeds)).min() >= 0.9999


@pytest.mark.parametrize("variant", ["plain", "causal-tanh-offset", "x32-bias32-nomask"])
def test_bucketing_changes_nothing(built, variant):
    """Padding to the sequence bucket (pad keys masked, pad rows dropped) gives the exact-length result,
    up to GEMM summation order (the GEMMs have other row counts, so cuBLASLt may tile differently)."""
    plan, engine = built(variant, "fp32")
    padded_ctx = engine.create_context(bucket=True)
    exact_ctx = engine.create_context(bucket=False)
    for i, (B, S) in enumerate([(1, 1), (2, 9), (3, 33), (4, 129), (2, 150)]):
        feeds = h.random_feeds(plan, B, S, padded=True, seed=10 + i)
        a = padded_ctx.run(feeds)["out"]
        b = exact_ctx.run(feeds)["out"]
        m = h.valid_mask(feeds)
        assert h.rel_l2(a, b, m) < 1e-6, (variant, B, S)
    # left padding in a causal model: a fully masked first row forces the exact length (see Context._bucket)
    if VARIANTS[variant].get("causal") and "attention_mask" in [i["name"] for i in plan.inputs]:
        feeds = h.random_feeds(plan, 2, 21, seed=3)
        feeds["attention_mask"][1, :5] = 0
        a = padded_ctx.run(feeds)["out"]
        b = exact_ctx.run(feeds)["out"]
        assert h.rel_l2(a, b, np.ones(a.shape[:2], bool)) < 1e-6


@pytest.mark.parametrize("precision", ["fp32", "hybrid"])
@pytest.mark.parametrize("variant", ["causal-tanh-offset", "prenorm-tanh"])
def test_ffn_chunks_change_nothing(built, variant, precision):
    """Feed-forward pairs run in row chunks at the larger shapes (ContextOptions::ffn_chunks, default 2): the
    arena is smaller, and the result is the unchunked one up to GEMM summation order (the chunked GEMMs have
    other row counts, so cuBLASLt may pick other tiles). The profile allows 8 x 158 rows: chunks of 632 rows,
    below the default ffn_chunk_min_rows (4096), so the default context does not chunk and 256 is asked for."""
    from trtrun.errors import InputError

    plan, engine = built(variant, precision)  # tanh GELU: FFN1 fused in cuBLASLt, so chunkable
    whole = engine.create_context(ffn_chunks=1)
    chunked = engine.create_context(ffn_chunk_min_rows=256)
    default = engine.create_context()
    s1, s2 = whole.stats(), chunked.stats()
    # the intermediate [rows_max, 4*64] is planned at half its rows; not at all with 632-row chunks by default
    assert s2["arena_bytes"] < s1["arena_bytes"], (s1, s2)
    assert default.stats()["arena_bytes"] == s1["arena_bytes"]
    for i, (B, S) in enumerate([(8, 150), (8, 100), (3, 17), (7, 158)]):
        feeds = h.random_feeds(plan, B, S, padded=True, seed=40 + i)
        a = whole.run(feeds)["out"]
        b = chunked.run(feeds)["out"]
        assert np.isfinite(b).all()
        tol = 2e-5 if precision == "fp32" else 3e-3
        assert h.rel_l2(b, a, h.valid_mask(feeds)) < tol, (precision, B, S)
    h.report("handmade", f"ffn_chunks {variant} {precision}: arena {s1['arena_bytes'] / 2**20:.3f} -> "
                         f"{s2['arena_bytes'] / 2**20:.3f} MiB")
    with pytest.raises(InputError, match="ffn_chunks"):
        engine.create_context(ffn_chunks=0)
    with pytest.raises(InputError, match="ffn_chunk_min_rows"):
        engine.create_context(ffn_chunk_min_rows=0)


@pytest.mark.parametrize("variant,precision,fused", [
    ("prenorm-res32", "hybrid", 2),       # fp32 residual (GPT-2's stream): proj -> ln1 and fc2 -> ln2 fused;
                                          # fc2 is also the second Linear of a row-chunked FFN pair
    ("x32-bias32-nomask", "hybrid", 2),   # fp32 residuals, a cast before proj and an unfused fp32-bias fc
    ("plain", "hybrid", 0),               # fp16 residual (BERT-style hybrid): cuBLASLt's C must have y's type
    ("plain", "fp32", 0),                 # fp32 GEMMs: left alone (measured slower)
    ("plain", "fp16", 0),                 # fp16 statistics round x and r before adding: never fused
])
def test_residual_fusion_changes_nothing(built, variant, precision, fused):
    """A Linear feeding a LayerNorm with an fp32 residual adds the residual in the GEMM epilogue (the
    LayerNorm then reads the sum): the same fp32 sum in another order, so the result is the unfused one up to
    fp32 rounding; other plans are left alone. fuse_residual_min_rows=1 fuses at every shape (the default
    fuses from ContextOptions.fuse_residual_min_rows rows on: below, the plain path runs bit for bit; from there
    on, the fused one, bit for bit)."""
    from trtrun.runtime import bucket_seq
    from trtrun.runtime.options import ContextOptions

    threshold = ContextOptions().fuse_residual_min_rows
    plan, engine = built(variant, precision)
    # every context chunks the FFN (as before ffn_chunk_min_rows existed), so fc2 is fused *and* chunked
    plain = engine.create_context(fuse_residual=False, ffn_chunk_min_rows=256)
    fusing = engine.create_context(fuse_residual_min_rows=1, ffn_chunk_min_rows=256)
    default = engine.create_context(ffn_chunk_min_rows=256)
    assert plain.stats()["fused_residuals"] == 0
    assert fusing.stats()["fused_residuals"] == fused == default.stats()["fused_residuals"]
    rows_seen = set()
    for i, (B, S, padded) in enumerate(SHAPES + [(8, 150, True)]):
        feeds = h.random_feeds(plan, B, S, padded=padded, seed=60 + i)
        a = plain.run(feeds)["out"]
        b = fusing.run(feeds)["out"]
        c = default.run(feeds)["out"]
        assert np.isfinite(b).all()
        rows = B * bucket_seq(S, plan.profile["seq"][2])
        rows_seen.add(rows >= threshold)
        np.testing.assert_array_equal(c, a if rows < threshold else b)
        if not fused:
            np.testing.assert_array_equal(a, b)
        else:
            # both sides round the same fp16 GEMM operands; only the fp32 order of (x@w + bias) + r differs
            assert h.rel_l2(b, a, h.valid_mask(feeds)) < 1e-4, (variant, precision, B, S)
    assert rows_seen == {False, True}, "the shapes must fall on both sides of the default threshold"
    with pytest.raises(InputError, match="fuse_residual_min_rows"):
        engine.create_context(fuse_residual_min_rows=0)


@pytest.mark.parametrize("variant,precision,splits", [
    ("plain", "hybrid", 2),              # proj -> ln1 (K = 64: 2 slices of 32), fc2 -> ln2 (K = 256: 8)
    ("prenorm-res32", "hybrid", 2),      # fp32 residual stream, the LayerNorms' sum outputs
    ("bias32-tanh", "hybrid", 2),        # fc's fp32 bias: its own epilogue kernel, then fc2 split
    ("x32-bias32-nomask", "hybrid", 2),  # fp32 LayerNorm outputs cast for qkv and fc; proj and fc2 split
    ("plain", "fp32", 0),                # fp32 GEMM operands: never split
    ("plain", "fp16", 0),                # fp16 statistics: never split
])
def test_split_ln_close_to_unsplit(built, variant, precision, splits):
    """Linear -> LayerNorm split into K slices summed by the LayerNorm (Context split_ln_*, here 32-deep slices
    at up to 300 rows) on each branch of the one-layer plans; also the compute-sanitizer's view of the path.
    Against the unsplit path only the skipped fp16 rounding of the Linear output (~2.8e-4 rms relative) and
    the fp32 summation order differ: 1e-3 relative L2 for one layer. Above 300 rows, bit for bit."""
    from trtrun.runtime import bucket_seq

    plan, engine = built(variant, precision)
    plain = engine.create_context(split_ln_max_rows=0)
    split = engine.create_context(split_ln_max_rows=300, split_ln_slice=32)
    assert split.stats()["split_linears"] == splits, split.stats()
    for i, (B, S, padded) in enumerate(SHAPES):
        feeds = h.random_feeds(plan, B, S, padded=padded, seed=80 + i)
        a = plain.run(feeds)["out"]
        b = split.run(feeds)["out"]
        assert np.isfinite(b).all()
        if not splits or B * bucket_seq(S, plan.profile["seq"][2]) > 300:
            np.testing.assert_array_equal(a, b)
        else:
            assert h.rel_l2(b, a, h.valid_mask(feeds)) < 1e-3, (variant, precision, B, S)


@pytest.mark.parametrize("search", ["focused", "exhaustive"])
@pytest.mark.parametrize("precision", ["fp32", "hybrid", "fp16"])
@pytest.mark.parametrize("variant", ["plain", "prenorm-res32", "x32-bias32-nomask"])
def test_gemm_search_beyond_the_heuristic(built, variant, precision, search):
    """gemm_search="exhaustive" and "focused" time cuBLASLt configurations the heuristic does not propose (other
    tiles, cluster shapes, custom options; native/runtime/gemm.cpp add_configs, add_focus_tiles/variants). Whatever they
    pick must compute the same GEMMs: against the reference with the bounds of test_handmade_vs_reference
    (out-of-place +C epilogues included: prenorm-res32 fuses the residual add at >= 2048 rows only, so
    fuse_residual_min_rows=1 here). The choices are kept under their search (what save_gemm_cache writes)."""
    if precision != "hybrid" and variant == "x32-bias32-nomask":
        pytest.skip("fp32 inputs/biases into fp16 GEMMs are hybrid-plan situations")
    from trtrun.reference import ReferenceBackend
    from trtrun.runtime import GEMM_SEARCHES
    from trtrun.runtime.extension import load_extension

    plan, engine = built(variant, precision)
    ref = ReferenceBackend(plan)
    ctx = engine.create_context(gemm_search=search, fuse_residual_min_rows=1)
    assert ctx.stats()["gemm_search"] == search
    for i, (B, S, padded) in enumerate(SHAPES):
        feeds = h.random_feeds(plan, B, S, padded=padded, seed=70 + i)
        got = ctx.run(feeds)["out"]
        np.testing.assert_array_equal(got, ctx.run(feeds)["out"])  # graph replay: the tuned algorithms again
        want = ref.run(feeds)["out"]
        assert np.isfinite(got).all()
        assert h.cosine_per_sample(got, want, h.valid_mask(feeds)).min() >= h.COS_MIN[precision], (B, S)
        tol = 2e-5 if precision == "fp32" else 3e-3 if precision == "hybrid" else 1e-2
        assert h.rel_l2(got, want, h.valid_mask(feeds)) < tol, (variant, precision, B, S)
    # choices are stored under their search, by name; a focused context takes an exhaustive choice made earlier in
    # the process for the same shape instead of tuning it again
    assert set(GEMM_SEARCHES) == {"heuristic", "exhaustive", "focused"}
    served_by = {"exhaustive": {"exhaustive"}, "focused": {"exhaustive", "focused"}}[search]
    assert any(e["search"] in served_by for e in load_extension().gemm_cache_export())
    with pytest.raises(InputError, match="gemm_search"):
        engine.create_context(gemm_search="fastest")


_CACHE_SCRIPT = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import rt_helpers as h
from trtrun.plan import load_plan
from trtrun.runtime import Engine, load_gemm_cache, save_gemm_cache
plan_path, cache_in, cache_out, out_npy = sys.argv[2:6]
taken = load_gemm_cache(cache_in) if cache_in != "-" else 0
plan = load_plan(plan_path)
ctx = Engine(plan).create_context(gemm_search="exhaustive")
feeds = h.random_feeds(plan, 3, 17, padded=True, seed=5)
y = ctx.run(feeds)["out"]
np.save(out_npy, y)
n = save_gemm_cache(cache_out)
print(json.dumps({"taken": taken, "saved": n}))
"""


def test_gemm_cache_roundtrip(built, tmp_path):
    """save_gemm_cache / load_gemm_cache between processes (each has its own process-wide choices): a second
    process that loads the first one's file runs the same algorithms (it exports entries identical to the
    loaded ones, and its output is bitwise equal), instead of timing again. An entry whose algorithm cuBLASLt
    rejects (garbage algorithm data) is dropped at its first use and the shape is tuned as usual: the output
    still matches the reference."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from trtrun.reference import ReferenceBackend
    from trtrun.runtime import GEMM_CACHE_FORMAT, GEMM_CACHE_VERSION

    plan, _ = built("plain", "hybrid")
    plan_path = tmp_path / "plain.plan"
    plan.save(plan_path)
    helpers = str(Path(h.__file__).parent)

    def run(cache_in, cache_out, out_npy):
        r = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT, helpers, str(plan_path), str(cache_in),
                            str(cache_out), str(out_npy)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    first = run("-", tmp_path / "a.json", tmp_path / "a.npy")
    assert first["taken"] == 0 and first["saved"] >= 3  # qkv, proj, fc1, fc2 (fc1/fc2 may share a shape)
    # b.json already holds an entry of another GPU: saving keeps it beside this process's choices
    a = json.loads((tmp_path / "a.json").read_text())["entries"]
    foreign = dict(a[0], device="Another GPU")
    (tmp_path / "b.json").write_text(json.dumps({"format": GEMM_CACHE_FORMAT, "version": GEMM_CACHE_VERSION,
                                                 "entries": [foreign]}))
    second = run(tmp_path / "a.json", tmp_path / "b.json", tmp_path / "b.npy")
    assert second["taken"] == first["saved"] and second["saved"] == first["saved"] + 1
    b = json.loads((tmp_path / "b.json").read_text())["entries"]
    key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
    assert sorted(map(key, a + [foreign])) == sorted(map(key, b))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))

    doc = json.loads((tmp_path / "a.json").read_text())
    for e in doc["entries"]:
        e["algo"] = [0x7FFF_FFFF_FFFF_FFFF] * 8
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    third = run(tmp_path / "bad.json", tmp_path / "c.json", tmp_path / "c.npy")
    assert third["taken"] == first["saved"] and third["saved"] == first["saved"]
    c = json.loads((tmp_path / "c.json").read_text())["entries"]
    assert all(e["algo"] != [0x7FFF_FFFF_FFFF_FFFF] * 8 for e in c)  # re-tuned, not kept
    feeds = h.random_feeds(plan, 3, 17, padded=True, seed=5)
    want = ReferenceBackend(plan).run(feeds)["out"]
    got = np.load(tmp_path / "c.npy")
    assert h.rel_l2(got, want, h.valid_mask(feeds)) < 3e-3
