"""Downstream checks: does a precision change what the model is used for?

Encoders: a logistic-regression sentiment head trained on fp32 mean-pooled sentence embeddings of the
Rotten Tomatoes train split, then accuracy on the held-out split with embeddings from each precision's
engine (the head stays the fp32-trained one, as a deployed head would). Decoders: next-token top-1
agreement with fp32 and the change in next-token log-likelihood, with logits = hidden @ wte^T from the
tied embedding matrix the plan's Embedding op holds.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import metrics
from .inputs import SampleSet, batches

F32, F16, F64 = np.float32, np.float16, np.float64
SPLIT_SEED = 20260101  # fixed: the train/test split of Rotten Tomatoes never changes between runs
TEST_FRACTION = 0.2


# ------------------------------------------------------------------------------------------- pooling

def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Mean of each sample's valid token vectors (float64), L2-normalized as all-MiniLM-L6-v2's own
    pipeline does (Transformer -> mean Pooling -> Normalize); non-finite values propagate. An output of one vector a
    sample ([B, N]: a pooled embedding, a classifier's logits) is that vector."""
    m = np.asarray(mask, dtype=F64)[..., None]
    h = np.asarray(hidden, dtype=F64)
    with np.errstate(invalid="ignore", over="ignore"):
        if h.ndim == 2:
            pooled = h
        else:
            h = np.where(m > 0, h, 0.0)
            pooled = h.sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
        if normalize:
            pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled


def embed(run, samples: SampleSet, *, batch_size: int, seq_min: int = 1, batch_min: int = 1,
          output: str | None = None, progress=None) -> np.ndarray:
    """Mean-pooled normalized embeddings [N, hidden] of every sample, in sample order.
    progress(done, total) is called after each batch."""
    out = None
    done = 0
    for idx, feeds in batches(samples, batch_size, seq_min=seq_min, batch_min=batch_min):
        res = run(feeds)
        h = res[output] if output else next(iter(res.values()))
        pooled = mean_pool(h[:len(idx)], feeds["attention_mask"][:len(idx)])
        if out is None:
            out = np.empty((samples.n, pooled.shape[1]))
        out[idx] = pooled
        done += len(idx)
        if progress is not None:
            progress(done, samples.n)
    return out


def _progress_lines(log, what: str, every_s: float = 10.0):
    """A progress(done, total) callback that logs `what: done/total sentences, Ns` every `every_s` seconds
    and at the end (the check's status lines are plain lines, for terminals and logs alike)."""
    t0 = t_said = time.perf_counter()

    def progress(done, total):
        nonlocal t_said
        now = time.perf_counter()
        if now - t_said >= every_s or done >= total:
            t_said = now
            log(f"  {what}: {done}/{total} sentences, {now - t0:.0f}s")
    return progress


# ------------------------------------------------------------------------------------------- classifier

class LogisticHead:
    """L2-regularized logistic regression on the embeddings as they are (mean-pooled, L2-normalized), the
    way MTEB's classification tasks evaluate sentence embeddings: no feature standardization. (Standardizing
    would divide by each feature's train-set spread, and all-MiniLM-L6-v2 has output features that are
    constant to 1e-9 across sentences: a rounding-level change there would become a shift of whole standard
    deviations and flip predictions for no reason that matters to a user.)

    scikit-learn's LogisticRegression(C=1.0, lbfgs) where installed (`pip install 'trtrun[check]'`);
    otherwise the same objective, 0.5*||w||^2 + C * sum(log-loss), minimized by Newton's method in numpy
    (exact to the solver's tolerance: the problem is strictly convex). C is fixed, never tuned on the
    test split."""

    def __init__(self, C: float = 1.0):
        self.C = float(C)
        self.impl = None

    def fit(self, X, y):
        X = np.asarray(X, F64)
        y = np.asarray(y).astype(int)
        try:
            import sklearn
            from sklearn.linear_model import LogisticRegression
        except ImportError:
            self._fit_newton(X, y)
            self.impl = "numpy Newton (scikit-learn not installed)"
        else:
            self.model = LogisticRegression(C=self.C, max_iter=5000)
            self.model.fit(X, y)
            self.w = self.model.coef_.ravel().astype(F64)
            self.b = float(self.model.intercept_[0])
            self.impl = f"scikit-learn {sklearn.__version__} LogisticRegression(C={self.C:g}, lbfgs)"
        return self

    def _fit_newton(self, Z, y, iters: int = 50):
        n, d = Z.shape
        A = np.hstack([Z, np.ones((n, 1))])
        w = np.zeros(d + 1)
        reg = np.ones(d + 1) / self.C
        reg[-1] = 0.0  # the intercept is not penalized (as in scikit-learn)
        for _ in range(iters):
            p = 1 / (1 + np.exp(-(A @ w)))
            g = A.T @ (p - y) + reg * w
            Hm = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg)
            step = np.linalg.solve(Hm + 1e-10 * np.eye(d + 1), g)
            w -= step
            if np.abs(step).max() < 1e-10:
                break
        self.w, self.b = w[:-1], float(w[-1])

    def predict(self, X) -> np.ndarray:
        """0/1 labels; a row with NaN/Inf features gets -1 (counted wrong: the engine produced no answer)."""
        X = np.asarray(X, F64)
        ok = np.isfinite(X).all(axis=1)
        pred = (np.where(ok[:, None], X, 0.0) @ self.w + self.b > 0).astype(int)
        return np.where(ok, pred, -1)


def rt_split(n: int, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION):
    """(train indices, test indices) of a fixed seeded permutation of range(n), in permutation order (so a
    cap on either takes a random subset: the file is grouped by label)."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * test_fraction))
    return perm[k:], perm[:k]


def classification_check(tokenizer, fp32_run, runs: dict, *, max_len: int, batch_size: int,
                         seq_min: int = 1, batch_min: int = 1, max_train: int | None = None,
                         max_test: int | None = None, fit_feeds=None, log=None, scaled: bool = False) -> dict:
    """Train the head on fp32 embeddings of the RT train split; accuracy of every precision on the test
    split, with a Wilson interval each and, against fp32, the paired difference (bootstrap interval),
    the flipped predictions and McNemar's exact p. scaled: the caps were derived from --max-samples (the
    status line says how to change them)."""
    from .. import data

    texts, labels = data.load_rt_labeled()
    tr, te = rt_split(len(texts))
    if max_train:
        tr = tr[:max_train]
    if max_test:
        te = te[:max_test]

    def samples(idx):
        t = [texts[i] for i in idx]
        feeds = data.encode(tokenizer, t, max_len)
        if fit_feeds:
            feeds = fit_feeds(feeds)
        return SampleSet("rt", feeds, ["rt"] * len(t), t)

    kw = dict(batch_size=batch_size, seq_min=seq_min, batch_min=batch_min)
    train_set, test_set = samples(tr), samples(te)
    log = log or (lambda msg: None)
    n_all = len(tr) + len(te) * (1 + len(runs))
    log(f"downstream: Rotten Tomatoes head on {len(tr)} train and {len(te)} test sentences (of {len(texts)}): "
        f"{n_all} embeddings"
        + ("; sizes scale with -n, --downstream-train/--downstream-test set them, --downstream off skips this"
           if scaled else ""))
    Xtr = embed(fp32_run, train_set, progress=_progress_lines(log, "downstream fp32, train"), **kw)
    head = LogisticHead().fit(Xtr, labels[tr])
    y = labels[te]
    res = {"task": "Rotten Tomatoes sentence polarity (binary)",
           "split": {"seed": SPLIT_SEED, "test_fraction": TEST_FRACTION, "train": int(len(tr)),
                     "test": int(len(te)), "of": int(len(texts))},
           "features": "mean-pooled, L2-normalized last_hidden_state (as they are, no standardization)",
           "classifier": head.impl, "trained_on": "fp32 reference embeddings", "results": {}}
    correct = {}
    pooled = {}
    for name, run in [("fp32", fp32_run)] + list(runs.items()):
        X = embed(run, test_set, progress=_progress_lines(log, f"downstream {name}, test"), **kw)
        pooled[name] = X
        pred = head.predict(X)
        c = (pred == y).astype(int)
        correct[name] = c
        lo, hi = metrics.wilson_interval(int(c.sum()), len(c))
        res["results"][name] = {"accuracy": float(c.mean()), "correct": int(c.sum()), "n": int(len(c)),
                                "wilson95": [lo, hi], "no_answer": int((pred < 0).sum())}
    for name in runs:
        a, b = correct["fp32"], correct[name]
        d, lo, hi = metrics.paired_bootstrap_diff(a, b, seed=1)
        lost = int(((a == 1) & (b == 0)).sum())
        gained = int(((a == 0) & (b == 1)).sum())
        cos = [metrics.cosine(u, v) for u, v in zip(pooled["fp32"], pooled[name])]
        res["results"][name].update({
            "diff_vs_fp32": d, "diff_bootstrap95": [lo, hi], "flipped_to_wrong": lost,
            "flipped_to_right": gained, "mcnemar_p": metrics.mcnemar_exact(lost, gained),
            "embedding_cos_min": metrics.distribution(cos)["min"]})
    return res


# ------------------------------------------------------------------------------------------- decoders

class LanguageModelAccumulator:
    """Next-token agreement with fp32 and log-likelihood change, from hidden states and the tied wte.

    fp32 logits: float32 hidden @ float32 wte^T. fp16/hybrid logits: both operands rounded to fp16,
    float32 accumulation -- the GEMM an fp16 LM head would run (the plan's Linear rule). Positions t
    whose next token t+1 is valid are scored against that token."""

    def __init__(self, wte: np.ndarray, precisions, *, chunk_rows: int = 256):
        self.wte32 = np.ascontiguousarray(np.asarray(wte, F32).T)  # [N, V]
        self.wte16 = self.wte32.astype(F16).astype(F32)
        self.precisions = list(precisions)
        self.chunk = chunk_rows
        self.stats = {p: {"positions": 0, "agree": 0, "nonfinite": 0, "ll_diff": [], }
                      for p in self.precisions}
        self.ref_nll: list[float] = []

    @staticmethod
    def _log_softmax(z):
        m = z.max(axis=1, keepdims=True)
        with np.errstate(over="ignore", invalid="ignore"):
            return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))

    def update(self, ids, mask, h_ref, outs: dict) -> None:
        ids = np.asarray(ids)
        mask = np.asarray(mask).astype(bool)
        B, S = ids.shape
        pos = mask[:, :-1] & mask[:, 1:]          # [B, S-1]: t scored against t+1
        bi, ti = np.nonzero(pos)
        if bi.size == 0:
            return
        tgt = ids[bi, ti + 1]
        for i in range(0, bi.size, self.chunk):
            sl = slice(i, i + self.chunk)
            hr = np.asarray(h_ref[bi[sl], ti[sl]], F32)
            lr = self._log_softmax(hr @ self.wte32)
            top_r = lr.argmax(axis=1)
            ll_r = lr[np.arange(lr.shape[0]), tgt[sl]].astype(F64)
            self.ref_nll.extend((-ll_r).tolist())
            for p in self.precisions:
                hp = np.asarray(outs[p][bi[sl], ti[sl]], F32)
                ok = np.isfinite(hp).all(axis=1)
                hp16 = np.where(ok[:, None], hp, 0).astype(F16).astype(F32)
                with np.errstate(over="ignore", invalid="ignore"):
                    lp = self._log_softmax(hp16 @ self.wte16)
                ok &= np.isfinite(lp).all(axis=1)
                st = self.stats[p]
                st["positions"] += int(ok.size)
                st["nonfinite"] += int((~ok).sum())
                st["agree"] += int(((lp.argmax(axis=1) == top_r) & ok).sum())
                ll_p = lp[np.arange(lp.shape[0]), tgt[sl]].astype(F64)
                st["ll_diff"].extend((ll_p - ll_r)[ok].tolist())

    def result(self, note: str) -> dict:
        out = {"note": note, "logits": "hidden @ wte^T (tied embedding matrix of the plan's Embedding op)",
               "positions": len(self.ref_nll),
               "fp32_mean_nll": float(np.mean(self.ref_nll)) if self.ref_nll else None, "results": {}}
        for p, st in self.stats.items():
            d = np.asarray(st["ll_diff"])
            out["results"][p] = {
                "positions": st["positions"], "nonfinite_positions": st["nonfinite"],
                "top1_agreement": st["agree"] / st["positions"] if st["positions"] else None,
                "top1_agreement_wilson95": list(metrics.wilson_interval(st["agree"], st["positions"]))
                if st["positions"] else None,
                "ll_diff_mean": float(d.mean()) if d.size else None,
                "ll_diff_mean_abs": float(np.abs(d).mean()) if d.size else None,
                "ll_diff_max_abs": float(np.abs(d).max()) if d.size else None,
            }
        return out


def word_embedding(plan) -> np.ndarray:
    """The Embedding op's word table [V, N] (the tied LM-head matrix of GPT-2-style models)."""
    for op in plan.ops:
        if op["type"] == "Embedding":
            return np.asarray(plan.weights[op["weights"]["word"]])
    raise ValueError("the plan has no Embedding op, so no word table to compute logits from")


def is_finite_number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
