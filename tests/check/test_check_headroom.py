"""Overflow headroom on hand-made plans: an fp16 overflow planted at a known op must be found there, with
the right quantity, in every sample; the hybrid plan with the same weights must hold those values in fp32
and stay finite. Plans come from tests/plan/test_plan.py's tiny_plan (3-layer BERT-like, hidden 16, 2 heads)."""

from __future__ import annotations

import numpy as np
import pytest

from trtrun.check.headroom import FP16_MAX, HeadroomAccumulator, layer_of, why_hybrid_is_safe
from trtrun.plan import Plan
from trtrun.reference import ReferenceBackend

from handmade_plans import tiny_plan  # noqa: E402  (tests/handmade_plans.py)

N, H, LAYERS = 16, 2, 3


def planted(precision: str, changes: dict) -> Plan:
    """tiny_plan with some weights replaced: changes = {weight name: f(float64 array) -> new values}."""
    p = tiny_plan(precision, layers=LAYERS, hidden=N, heads=H, seed=1)
    w = dict(p.weights)
    for name, fn in changes.items():
        w[name] = np.asarray(fn(w[name].astype(np.float64)), dtype=w[name].dtype)
    header = {k: v for k, v in p.header.items() if k != "weights"}
    return Plan.from_parts(header, w)


def feeds(B=4, S=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, size=(B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, 7:] = 0
    mask[B - 1, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((B, S), np.int64)}


def headroom(plan, f=None):
    f = f or feeds()
    out, env = ReferenceBackend(plan).run(f, capture=True)
    acc = HeadroomAccumulator(plan)
    acc.update(f, env)
    return out, acc.result()


def point(res, op, quantity):
    got = [p for p in res["points"] if p["op"] == op and p["quantity"] == quantity]
    assert len(got) == 1, (op, quantity)
    return got[0]


# one large outlier channel in layer 1's FFN output: |s - mean| ~ 375 in that channel, so (s - mean)^2
# ~ 1.4e5 > 65504 in an fp16 LayerNorm; the row sum (~400) and s itself stay far below 65504
OUTLIER = {"l1.fc2.bias": lambda b: np.where(np.arange(b.size) == 0, 400.0, b)}
# a large shift on every channel: sum over 16 channels ~ 8e4 > 65504, each s ~ 5000 still fits
SHIFT = {"l1.fc2.bias": lambda b: b + 5000.0}


def test_silent_variance_overflow_located_at_the_right_op():
    out, res = headroom(planted("fp16", OUTLIER))
    of = res["first_overflow"]
    assert of["samples"] == 4                               # every sample
    assert of["first_point"]["op"] == "l1.ln2" and of["first_point"]["quantity"] == "dev_sq"
    assert of["first_point_counts"] == {"l1.ln2 dev_sq": 4}
    assert of["first_point"]["held"] == "float16"
    # silent: Inf variance makes (s - mean) / sqrt(var) zero, so the output is beta and finite
    assert res["first_nonfinite"]["samples"] == 0
    assert np.isfinite(out["last_hidden_state"]).all()
    # nothing before layer 1's second LayerNorm came near the limit
    for p in res["points"]:
        if p["op_index"] < of["first_point"]["op_index"]:
            assert p["samples_over_fp16"] == 0, p
    dev = point(res, "l1.ln2", "dev_sq")["max"]
    assert 1.0e5 < dev < 1.8e5 and point(res, "l1.ln2", "row_sum")["max"] < FP16_MAX


def test_nan_from_mean_overflow_located_and_hybrid_safe():
    out16, r16 = headroom(planted("fp16", SHIFT))
    nf = r16["first_nonfinite"]
    assert nf["samples"] == 4 and nf["first_op"]["op"] == "l1.ln2" and nf["first_op"]["layer"] == "1"
    assert nf["first_op_counts"] == {"l1.ln2": 4}
    assert r16["first_overflow"]["first_point"]["quantity"] == "row_sum"
    assert r16["first_overflow"]["first_point"]["op"] == "l1.ln2"
    m = feeds()["attention_mask"].astype(bool)
    assert np.isnan(out16["last_hidden_state"][m]).any()

    out32, rh = headroom(planted("hybrid", SHIFT))
    assert np.isfinite(out32["last_hidden_state"]).all()
    assert rh["first_nonfinite"]["samples"] == 0 and rh["first_overflow"]["samples"] == 0
    row = point(rh, "l1.ln2", "row_sum")
    assert row["held"] == "float32" and row["max"] > FP16_MAX        # the same value, held in fp32
    safe = why_hybrid_is_safe(r16, rh)
    at = {(a["op"], a["quantity"]): a for a in safe["at_fp16_overflow_points"]}
    assert at[("l1.ln2", "row_sum")]["hybrid_held"] == "float32"
    assert safe["hybrid_fp16_over"] == 0 and safe["hybrid_fp16_points"] > 0
    # every point the hybrid plan keeps in fp16 (its fp16 tensors and GEMM operands) stayed below 65504
    assert all(p["max"] <= FP16_MAX for p in rh["points"] if p["held"] == "float16")


def test_attention_score_overflow():
    # Q and K biases of 200 in layer 0: scores ~ D * 200^2 / sqrt(D) ~ 1.1e5 > 65504
    qk = {"l0.qkv.bias": lambda b: np.where(np.arange(b.size) < 2 * N, 200.0, b)}
    out, res = headroom(planted("fp16", qk))
    assert res["first_overflow"]["first_point"]["op"] == "l0.attn"
    assert res["first_overflow"]["first_point"]["quantity"] == "scores"
    assert res["first_nonfinite"]["first_op"]["op"] == "l0.attn"
    # the qkv tensor itself (200) fits fp16: only the product overflows
    assert point(res, "l0.qkv", "output")["samples_over_fp16"] == 0
    _, rh = headroom(planted("hybrid", qk))
    sc = point(rh, "l0.attn", "scores")
    assert sc["held"] == "float32" and sc["max"] > FP16_MAX and rh["first_nonfinite"]["samples"] == 0


def test_padding_is_ignored_and_values_known():
    plan = tiny_plan("fp32", layers=1, hidden=N, heads=H, seed=2)
    f = feeds()
    out, env = ReferenceBackend(plan).run(f, capture=True)
    env = dict(env)
    h0 = env["h0"].copy()
    h0[1, 9, 0] = np.inf                                     # row 1 is padding from position 7 on
    env["h0"] = h0
    acc = HeadroomAccumulator(plan)
    acc.update(f, env)
    res = acc.result()
    p = point(res, "emb", "output")
    assert res["first_nonfinite"]["samples"] == 0 and p["samples_nonfinite"] == 0
    m = f["attention_mask"].astype(bool)
    assert p["max"] == pytest.approx(float(np.abs(env["h0"][m]).max()))
    # the LayerNorm sum point is x + residual over valid tokens, recomputed in float64
    s = env["l0.attn_proj"].astype(np.float64) + env["h0"].astype(np.float64)
    s[1, 9] = 0
    assert point(res, "l0.ln1", "sum")["max"] == pytest.approx(float(np.abs(s[m]).max()))
    d = s - s.mean(-1, keepdims=True)
    assert point(res, "l0.ln1", "var_sum")["max"] == pytest.approx(float((d * d).sum(-1)[m].max()), rel=1e-12)


def test_rows_argument_drops_filler_rows_and_layer_names():
    plan = tiny_plan("fp16", layers=1, hidden=N, heads=H, seed=2)
    f = feeds(B=3)
    out, env = ReferenceBackend(plan).run(f, capture=True)
    acc = HeadroomAccumulator(plan)
    acc.update(f, env, rows=2)
    assert acc.result()["samples"] == 2
    assert layer_of("model.encoder.layer.11.output.LayerNorm") == "11"
    assert layer_of("model.h.3.ln_1") == "3"
    assert layer_of("l2.fc1") == "2"
    assert layer_of("model.ln_f", "LayerNorm") == "final"
    assert layer_of("embeddings", "Embedding") == "emb"
