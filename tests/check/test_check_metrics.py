"""trtrun.check.metrics and the downstream helpers on hand-made inputs whose answers are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trtrun.check import metrics as M
from trtrun.check.downstream import LanguageModelAccumulator, LogisticHead, mean_pool, rt_split


# ------------------------------------------------------------------------------------------- cosine

@pytest.mark.parametrize("a,b,want", [
    ([1, 0], [0, 1], 0.0),
    ([1, 2, 3], [2, 4, 6], 1.0),
    ([1, 0], [1, 1], 1 / math.sqrt(2)),
    ([1, -2, 3], [-1, 2, -3], -1.0),
    ([3, 4], [4, 3], 24 / 25),
])
def test_cosine_known_vectors(a, b, want):
    assert M.cosine(a, b) == pytest.approx(want, abs=1e-15)


def test_cosine_conventions():
    assert M.cosine([0, 0], [0, 0]) == 1.0        # two zero outputs agree
    assert M.cosine([0, 0], [1, 0]) == 0.0        # one zero output does not
    assert math.isnan(M.cosine([np.nan, 1], [1, 1]))
    assert math.isnan(M.cosine([np.inf, 1], [1, 1]))
    assert math.isnan(M.cosine([1, 1], [1, -np.inf]))
    with pytest.raises(ValueError):
        M.cosine([1, 2], [1, 2, 3])


def test_row_cosines():
    a = np.array([[1, 0], [3, 4], [0, 0], [np.nan, 1]])
    b = np.array([[0, 1], [6, 8], [0, 0], [1, 1]])
    got = M.row_cosines(a, b)
    assert got[:3].tolist() == [0.0, 1.0, 1.0]
    assert math.isnan(got[3])


# ------------------------------------------------------------------------------------------- one sample

def test_compare_sample_known_answers():
    # token 0 exact, token 1 rotated by 90 degrees, token 2 is padding (garbage there must not count)
    ref = np.array([[3.0, 4.0], [1.0, 0.0], [7.0, 7.0]])
    out = np.array([[3.0, 4.0], [0.0, 1.0], [np.nan, np.inf]])
    r = M.compare_sample(out, ref, [1, 1, 0])
    assert r["tokens"] == 2
    assert r["cos"] == pytest.approx(25 / 26, abs=1e-15)       # (9 + 16) / (sqrt(26) sqrt(26))
    assert r["cos_worst_token"] == pytest.approx(0.0, abs=1e-15)
    assert r["worst_token"] == 1
    assert r["max_abs"] == 1.0
    # max_rel: errors 1 at ref 1.0 (ratio 1) and at ref 0.0, where the floor tau = 1% of the reference RMS
    # sqrt((9 + 16 + 1 + 0) / 4) applies: 1 / (0.01 * sqrt(6.5))
    assert r["max_rel"] == pytest.approx(1 / (0.01 * math.sqrt(6.5)), rel=1e-12)
    assert r["nan"] == r["inf"] == r["nan_tokens"] == r["inf_tokens"] == r["nonfinite_tokens"] == 0


def test_compare_sample_injected_nan_and_inf():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5, 8))
    out = ref + 1e-3
    out[1, 3] = np.nan
    out[3, 0] = np.inf
    out[3, 1] = -np.inf
    r = M.compare_sample(out, ref, np.ones(5))
    assert (r["nan"], r["inf"]) == (1, 2)
    assert (r["nan_tokens"], r["inf_tokens"], r["nonfinite_tokens"]) == (1, 1, 2)
    assert math.isnan(r["cos"]) and math.isnan(r["cos_worst_token"])
    assert r["worst_token"] == 1                                 # the first token with an undefined cosine
    assert r["max_abs"] == pytest.approx(1e-3, rel=1e-9)         # over the finite elements only
    # masked out, the same NaN and Inf count for nothing
    r2 = M.compare_sample(out, ref, [1, 0, 1, 0, 1])
    assert r2["nan"] == r2["inf"] == 0 and r2["tokens"] == 3
    assert r2["cos"] == pytest.approx(M.cosine(out[[0, 2, 4]], ref[[0, 2, 4]]))


def test_compare_batch_rows_and_shapes():
    ref = np.ones((2, 3, 4))
    out = ref.copy()
    out[1, 2] = -1
    res = M.compare_batch(out, ref, np.array([[1, 1, 1], [1, 1, 1]]))
    assert res[0]["cos"] == 1.0 and res[0]["max_abs"] == 0.0
    assert res[1]["cos"] == pytest.approx(1 / 3)                 # (8 - 4) / 12
    assert res[1]["cos_worst_token"] == -1.0 and res[1]["worst_token"] == 2
    with pytest.raises(ValueError):
        M.compare_batch(out, ref[:, :2])


# ------------------------------------------------------------------------------------------- statistics

def test_distribution_percentiles():
    v = list(range(1, 102)) + [float("nan")]                    # 1..101 and one undefined value
    d = M.distribution(v)
    assert d["n"] == 102 and d["n_undefined"] == 1
    assert d["min"] == 1 and d["max"] == 101
    assert d["p1"] == pytest.approx(2.0)                         # linear interpolation: rank 0.01 * 100 = 1
    assert d["p5"] == pytest.approx(6.0)
    assert d["median"] == 51 and d["mean"] == 51
    empty = M.distribution([float("nan")])
    assert empty["min"] is None and empty["n_undefined"] == 1


def test_rates_and_buckets():
    s = [{"tokens": 10, "nan_tokens": 0, "inf_tokens": 0, "nonfinite_tokens": 0, "cos": 1.0,
          "cos_worst_token": 1.0, "max_abs": 0.0, "max_rel": 0.0},
         {"tokens": 30, "nan_tokens": 3, "inf_tokens": 0, "nonfinite_tokens": 3, "cos": float("nan"),
          "cos_worst_token": float("nan"), "max_abs": 0.1, "max_rel": 0.2},
         {"tokens": 60, "nan_tokens": 0, "inf_tokens": 6, "nonfinite_tokens": 6, "cos": float("nan"),
          "cos_worst_token": float("nan"), "max_abs": 0.1, "max_rel": 0.2}]
    r = M.rates(s)
    assert r["nan_rate_sample"] == pytest.approx(1 / 3) and r["nan_rate_token"] == pytest.approx(3 / 100)
    assert r["inf_rate_sample"] == pytest.approx(1 / 3) and r["inf_rate_token"] == pytest.approx(6 / 100)
    assert r["nonfinite_rate_sample"] == pytest.approx(2 / 3)
    assert [M.bucket_label(n) for n in (1, 16, 17, 64, 65, 512, 513)] == \
        ["1-16", "1-16", "17-32", "33-64", "65-128", "257-512", ">512"]
    summ = M.summarize(s)
    assert set(summ["by_length"]) == {"1-16", "17-32", "33-64"}
    assert summ["by_length"]["17-32"]["nan_samples"] == 1
    assert summ["cos"]["n_undefined"] == 2


def test_wilson_interval():
    # textbook values (Newcombe 1998, Table I: 0/10 -> 0 to 0.2775; 81/263 -> 0.2553 to 0.3662)
    assert M.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert M.wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    lo, hi = M.wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi) and 0.40 < lo < 0.41
    with pytest.raises(ValueError):
        M.wilson_interval(11, 10)


def test_mcnemar_and_bootstrap():
    assert M.mcnemar_exact(0, 0) == 1.0
    assert M.mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert M.mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    a = np.array([1, 0, 1, 1, 0] * 40)
    assert M.paired_bootstrap_diff(a, a) == (0.0, 0.0, 0.0)
    d, lo, hi = M.paired_bootstrap_diff(np.zeros(50), np.ones(50))
    assert (d, lo, hi) == (1.0, 1.0, 1.0)
    b = a.copy()
    b[:20] = 1 - b[:20]                                         # 20 flips: 12 to wrong, 8 to right
    d, lo, hi = M.paired_bootstrap_diff(a, b, seed=3)
    assert d == pytest.approx((8 - 12) / 200) and lo < d < hi


def test_nan_ratio_sentences():
    assert M.nan_ratio(0, 0) == {"ratio": None, "text": "no NaN in either"}
    r = M.nan_ratio(0.06, 0.01)
    assert r["ratio"] == pytest.approx(6.0) and r["text"].startswith("6.00x more often on real text")
    assert M.nan_ratio(0.1, 0)["ratio"] == float("inf")
    assert M.nan_ratio(0, 0.1)["ratio"] == 0.0


# ------------------------------------------------------------------------------------------- downstream helpers

def test_mean_pool_valid_tokens_only():
    h = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    p = mean_pool(h, np.array([[1, 1, 0]]), normalize=False)
    assert p.tolist() == [[2.0, 0.0]]
    assert mean_pool(h, np.array([[1, 1, 0]])).tolist() == [[1.0, 0.0]]


def test_rt_split_fixed_and_disjoint():
    tr, te = rt_split(100)
    assert len(te) == 20 and len(tr) == 80 and not set(tr) & set(te)
    tr2, te2 = rt_split(100)
    assert (tr == tr2).all() and (te == te2).all()


def test_logistic_head_numpy_matches_sklearn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.3 * rng.normal(size=400) > 0).astype(int)
    head = LogisticHead()
    head._fit_newton(X, y)
    acc = (head.predict(X) == y).mean()
    assert acc > 0.9
    Xbad = X[:3].copy()
    Xbad[1, 2] = np.nan
    assert head.predict(Xbad)[1] == -1                          # no answer, counted wrong
    sk = pytest.importorskip("sklearn.linear_model")
    ref = sk.LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(X, y)
    # same objective (0.5 |w|^2 + C * log-loss, intercept unpenalized), so the same optimum
    assert np.allclose(head.w, ref.coef_.ravel(), atol=1e-4)
    assert head.b == pytest.approx(float(ref.intercept_[0]), abs=1e-4)


def test_language_model_accumulator_known_logits():
    # wte rows e0..e3 (V=4, N=2); hidden states equal to a row make that token the argmax
    wte = np.array([[4.0, 0.0], [0.0, 4.0], [-4.0, 0.0], [0.0, -4.0]])
    ids = np.array([[0, 1, 2, 3, 0]])
    mask = np.array([[1, 1, 1, 1, 0]])                          # 3 scored positions: t = 0, 1, 2
    h = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [5.0, 5.0]]])
    acc = LanguageModelAccumulator(wte, ["same", "broken"])
    bad = h.copy()
    bad[0, 1] = np.nan                                          # position 1 gives no answer
    bad[0, 2] = [0.0, 1.0]                                      # position 2 now predicts token 1 instead of 2
    acc.update(ids, mask, h, {"same": h, "broken": bad})
    r = acc.result("test")
    assert r["positions"] == 3
    assert r["results"]["same"]["top1_agreement"] == 1.0
    assert r["results"]["same"]["ll_diff_max_abs"] < 1e-2      # only fp16 rounding of operands
    b = r["results"]["broken"]
    assert b["nonfinite_positions"] == 1 and b["top1_agreement"] == pytest.approx(1 / 3)
    # log p(next) under fp32 at t=0: logits h0 @ wte^T = [4, 0, -4, 0], target token 1
    z = np.array([4.0, 0.0, -4.0, 0.0])
    want = z[1] - np.log(np.exp(z).sum())
    assert -acc.ref_nll[0] == pytest.approx(want, abs=1e-5)
