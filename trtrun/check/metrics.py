"""Fidelity metrics of one output against its fp32 reference, and the statistics `trtrun check` reports.

Everything here is plain numpy in float64 and knows nothing about plans or backends, so each function can
be tested on hand-made arrays with known answers (tests/check/test_check_metrics.py).

Conventions (docs/check.md says the same for users):
- Only valid tokens count (attention_mask == 1); padded positions are never compared.
- A sample's cosine is over its whole output (all valid tokens' vectors concatenated); its worst-token
  cosine is the smallest cosine between one token's output vector and the reference's.
- A cosine involving a NaN or Inf is NaN ("undefined"): summaries count those samples separately and a
  --min-cosine budget treats them as broken. Two all-zero vectors have cosine 1, one zero vector 0.
- max_abs: the largest |out - ref| over finite elements. max_rel: the largest |out - ref| / max(|ref|, tau)
  with tau = 1% of the sample's reference RMS: an element whose true value is ~0 would otherwise make the
  ratio meaningless (1e-3 / 1e-9), while any element of ordinary size is judged by its own magnitude.
- nan / inf: counts of NaN / +-Inf elements; nan_tokens / inf_tokens: valid tokens with at least one.
"""

from __future__ import annotations

import math

import numpy as np

F64 = np.float64
REL_FLOOR = 0.01  # tau = REL_FLOOR * RMS(reference) in max_rel (see the module docstring)
# sequence-length buckets (valid tokens), upper bounds inclusive; the last one takes everything longer
LENGTH_EDGES = (16, 32, 64, 128, 256, 512)


def cosine(a, b) -> float:
    """Cosine similarity of two arrays (flattened), in float64. NaN if either holds a NaN or Inf;
    1.0 for two all-zero arrays, 0.0 when exactly one is all zero."""
    a = np.asarray(a, dtype=F64).ravel()
    b = np.asarray(b, dtype=F64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cosine: shapes differ, {a.shape} vs {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def row_cosines(a, b) -> np.ndarray:
    """Cosine of each row (last axis) of a [T, N] against b [T, N], with cosine()'s conventions."""
    a = np.asarray(a, dtype=F64)
    b = np.asarray(b, dtype=F64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"row_cosines: need two [T, N] arrays of one shape, got {a.shape} and {b.shape}")
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a0 = np.where(finite[:, None], a, 0.0)
    b0 = np.where(finite[:, None], b, 0.0)
    na = np.linalg.norm(a0, axis=1)
    nb = np.linalg.norm(b0, axis=1)
    dot = np.einsum("ij,ij->i", a0, b0)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.clip(dot / (na * nb), -1.0, 1.0)
    zero_a, zero_b = na == 0, nb == 0
    c = np.where(zero_a & zero_b, 1.0, np.where(zero_a | zero_b, 0.0, c))
    return np.where(finite, c, np.nan)


def compare_sample(out, ref, mask=None) -> dict:
    """Metrics of one sample: out and ref [S, N] (or [S]), mask [S] (1 = valid token; None = all valid).

    Returns tokens, cos, cos_worst_token, worst_token (index among all positions), max_abs, max_rel,
    nan, inf (element counts), nan_tokens, inf_tokens, nonfinite_tokens.
    """
    out = np.asarray(out)
    ref = np.asarray(ref)
    if out.shape != ref.shape:
        raise ValueError(f"compare_sample: output {out.shape} and reference {ref.shape} differ")
    if out.ndim == 1:
        out, ref = out[:, None], ref[:, None]
    S = out.shape[0]
    valid = np.ones(S, bool) if mask is None else np.asarray(mask).astype(bool).reshape(S)
    idx = np.flatnonzero(valid)
    o = out[valid].astype(F64).reshape(len(idx), -1)
    r = ref[valid].astype(F64).reshape(len(idx), -1)
    nan_el = np.isnan(o)
    inf_el = np.isinf(o)
    res = {"tokens": int(len(idx)),
           "nan": int(nan_el.sum()), "inf": int(inf_el.sum()),
           "nan_tokens": int(nan_el.any(axis=1).sum()), "inf_tokens": int(inf_el.any(axis=1).sum()),
           "nonfinite_tokens": int((nan_el | inf_el).any(axis=1).sum())}
    if len(idx) == 0:
        res.update(cos=float("nan"), cos_worst_token=float("nan"), worst_token=-1,
                   max_abs=float("nan"), max_rel=float("nan"))
        return res
    res["cos"] = cosine(o, r)
    tc = row_cosines(o, r)
    if np.isnan(tc).any():
        j = int(np.flatnonzero(np.isnan(tc))[0])
        res["cos_worst_token"] = float("nan")
    else:
        j = int(np.argmin(tc))
        res["cos_worst_token"] = float(tc[j])
    res["worst_token"] = int(idx[j])
    both = np.isfinite(o) & np.isfinite(r)
    if not both.any():
        res["max_abs"] = res["max_rel"] = float("nan")
        return res
    err = np.abs(o - r)[both]
    rf = r[np.isfinite(r)]
    tau = REL_FLOOR * math.sqrt(float(np.mean(rf * rf))) if rf.size else 0.0
    denom = np.maximum(np.abs(r[both]), tau)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(denom > 0, err / np.where(denom > 0, denom, 1.0), np.where(err > 0, np.inf, 0.0))
    res["max_abs"] = float(err.max())
    res["max_rel"] = float(rel.max())
    return res


def compare_batch(out, ref, mask=None) -> list[dict]:
    """compare_sample for each row of out/ref [B, S, N] (mask [B, S])."""
    out = np.asarray(out)
    ref = np.asarray(ref)
    if out.shape != ref.shape:
        raise ValueError(f"compare_batch: output {out.shape} and reference {ref.shape} differ")
    return [compare_sample(out[b], ref[b], None if mask is None else mask[b]) for b in range(out.shape[0])]


def distribution(values) -> dict:
    """min, p1, p5, median, mean and max of the finite values, with n (all values) and n_undefined
    (NaN/Inf values, left out of the statistics). Percentiles by linear interpolation (numpy's default)."""
    v = np.asarray(list(values), dtype=F64).ravel()
    fin = v[np.isfinite(v)]
    d = {"n": int(v.size), "n_undefined": int(v.size - fin.size)}
    if fin.size == 0:
        d.update({k: None for k in ("min", "p1", "p5", "median", "mean", "max")})
        return d
    d.update(min=float(fin.min()), p1=float(np.percentile(fin, 1)), p5=float(np.percentile(fin, 5)),
             median=float(np.median(fin)), mean=float(fin.mean()), max=float(fin.max()))
    return d


def rates(samples: list[dict]) -> dict:
    """NaN / Inf / non-finite rates over samples (share of samples with >= 1 such token) and over tokens
    (share of valid tokens with >= 1 such element), with the raw counts."""
    n = len(samples)
    tokens = sum(s["tokens"] for s in samples)
    out = {"samples": n, "tokens": tokens}
    for kind, key in (("nan", "nan_tokens"), ("inf", "inf_tokens"), ("nonfinite", "nonfinite_tokens")):
        bad_s = sum(1 for s in samples if s[key] > 0)
        bad_t = sum(s[key] for s in samples)
        out[f"{kind}_samples"] = bad_s
        out[f"{kind}_tokens"] = bad_t
        out[f"{kind}_rate_sample"] = bad_s / n if n else 0.0
        out[f"{kind}_rate_token"] = bad_t / tokens if tokens else 0.0
    return out


def bucket_label(length: int, edges=LENGTH_EDGES) -> str:
    lo = 1
    for hi in edges:
        if length <= hi:
            return f"{lo}-{hi}"
        lo = hi + 1
    return f">{edges[-1]}"


def bucket_labels(edges=LENGTH_EDGES) -> list[str]:
    labels, lo = [], 1
    for hi in edges:
        labels.append(f"{lo}-{hi}")
        lo = hi + 1
    return labels + [f">{edges[-1]}"]


def summarize(samples: list[dict], edges=LENGTH_EDGES) -> dict:
    """The per-run summary of compare_sample results: distributions of each metric, the rates, and the
    same split by sequence-length bucket (buckets with no sample are left out)."""
    s = {"cos": distribution(x["cos"] for x in samples),
         "cos_worst_token": distribution(x["cos_worst_token"] for x in samples),
         "max_abs": distribution(x["max_abs"] for x in samples),
         "max_rel": distribution(x["max_rel"] for x in samples),
         "rates": rates(samples)}
    by = {}
    for label in bucket_labels(edges):
        group = [x for x in samples if bucket_label(x["tokens"], edges) == label]
        if not group:
            continue
        by[label] = {"samples": len(group),
                     "cos_min": distribution(x["cos"] for x in group)["min"],
                     "cos_median": distribution(x["cos"] for x in group)["median"],
                     "cos_worst_token_min": distribution(x["cos_worst_token"] for x in group)["min"],
                     "cos_undefined": sum(1 for x in group if not math.isfinite(x["cos"])),
                     **{k: v for k, v in rates(group).items() if k not in ("samples",)}}
    s["by_length"] = by
    return s


# ------------------------------------------------------------------------------------- intervals

def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (95% by default).

    Chosen over the normal (Wald) interval because it keeps close to nominal coverage for n in the
    hundreds and for proportions near 0 or 1, and never leaves [0, 1]."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap_diff(correct_a, correct_b, *, n_boot: int = 10000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """(mean(b) - mean(a), low, high): a percentile bootstrap interval for the accuracy difference of two
    classifiers' per-example correctness (0/1 arrays) on the SAME test examples, resampling examples.

    Paired, because both precisions label the same sentences: their errors are strongly correlated, and
    the interval of the difference is far narrower than the two accuracies' own intervals suggest."""
    a = np.asarray(correct_a, dtype=F64).ravel()
    b = np.asarray(correct_b, dtype=F64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_bootstrap_diff: need two equal non-empty arrays, got {a.shape}, {b.shape}")
    d = b - a
    rng = np.random.default_rng(seed)
    n = d.size
    means = np.empty(n_boot)
    step = max(1, (1 << 22) // n)
    for i in range(0, n_boot, step):
        j = min(n_boot, i + step)
        means[i:j] = d[rng.integers(0, n, size=(j - i, n))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(d.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial test of b vs c at p=1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2 * tail))


def nan_ratio(real_rate: float, random_rate: float) -> dict:
    """How real-text and random-id NaN rates compare: ratio real/random and a sentence saying it."""
    if real_rate == 0 and random_rate == 0:
        return {"ratio": None, "text": "no NaN in either"}
    if random_rate == 0:
        return {"ratio": float("inf"), "text": "NaN on real text only (none on random ids)"}
    r = real_rate / random_rate
    if real_rate == 0:
        return {"ratio": 0.0, "text": "NaN on random ids only (none on real text)"}
    more = "real text" if r >= 1 else "random ids"
    x = r if r >= 1 else 1 / r
    return {"ratio": r, "text": f"{x:.2f}x more often on {more}"}
