"""fp8 plans and the precision search under a fidelity budget (`--precision fp8`, `--precision auto`).

`finish_fp8` turns the hybrid lowering into an fp8 plan (every Linear fp8; static activation scales
calibrated on text, or per-token scales). `search` assigns each Linear fp8, hybrid (fp16 operands) or fp32:

1. Sensitivity, on the calibration text (for min_cosine; min_top1 below): `base` is the hybrid plan with every
   Linear in fp32. For each Linear i alone in fp8, then alone in hybrid, d_i(p) = 1 - the worst-sample cosine of
   the final outputs against `base`; d_0 = 1 - the worst-sample cosine of `base` against the fp32 plan (what
   the other ops' hybrid arithmetic costs). 2 runs a Linear, plus two.
2. The model: the assignment's worst-sample 1 - cosine is predicted as d_0 + sum_i d_i(p_i). For small
   errors 1 - cos(y + e, y) ~ |e_perp|^2 / (2 |y|^2), and the squared norms of independent errors add; adding
   each layer's *worst* sample is the sum's upper bound where the worst samples differ. Both make it a
   conservative estimate; the held-apart run below is the judge.
3. The search: the cheapest assignment whose prediction meets the budget 1 - X is a multiple-choice knapsack
   (one of three items per layer, additive cost and additive loss). A greedy upgrade order can miss the
   optimum (a costly layer that buys little fidelity beside a cheap one that buys much); a dynamic programme
   over the loss budget cut into BUDGET_BINS steps is exact up to that step, each loss rounded *up* to a
   step, so its answer also meets the unrounded budget. L layers x 3 choices x BUDGET_BINS: milliseconds.
4. The check: the chosen plan runs on the held-apart text against the fp32 plan. A worst sample depends on how
   many samples were drawn (the worst of 256 texts is lower than the worst of 64), so the budget is judged on
   the worst expected among `worst_of` texts like the held-apart ones, extrapolated from them
   (extrapolated_worst_loss: a power law in the sample count, fitted on the held-apart texts). If it misses X,
   the prediction was optimistic by the ratio measured/predicted: the budget shrinks by that ratio (and 10%
   more) and the search runs again, at most MAX_ROUNDS times; then the plan with every Linear hybrid, then
   every Linear fp32, is tried. Only a budget that no assignment meets (not even all-fp32 Linears) is a
   BuildError, naming what that plan reached.

A top-1 budget (min_top1, for a decoder whose output is next-token logits) is the fraction of held-apart token
positions whose argmax agrees with the fp32 plan's: a mean, not a worst, so it is judged as measured. Its
sensitivities are measured in a currency that predicts it (Top1Model): per Linear and position, how much the
Linear moves the margins between the fp32 top-1 token and its runners-up; an assignment's margin noise is the
sum of those squares, and a position keeps its token with the Gaussian probability of its margin surviving
that noise. The prediction is not additive, so the knapsack takes its tangent (each Linear's squared margin
changes weighted by what noise costs at each position, at all-fp8's noise level) and a bisection on the
knapsack's budget finds the cheapest pick whose full prediction meets the target.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import BuildError
from ..types import FP8
from .cost_model import CostModel, fp8_scale_kind, gemm_shape
from .quantize_fp8 import LINEAR_CHOICES, assign_precisions, calibrate, fp8_refusal, linear_ops

BUDGET_BINS = 4000
MAX_ROUNDS = 4
# --min-cosine's promise: the worst of this many texts like the held-apart ones (extrapolated_worst_loss). A worst
# sample depends on how many were drawn; 1000 is about four times the default held-apart count, as far as the
# power law was checked on MiniLM (docs/precision.md)
WORST_OF = 1000


# ----------------------------------------------------------------------------------------------- measuring
def _plan(header, weights):
    from ..plan import Plan

    return Plan.from_parts(header, weights)


def run_outputs(plan, batches) -> list[dict]:
    """The plan's outputs on every batch (reference backend)."""
    from ..reference import ReferenceBackend

    be = ReferenceBackend(plan)
    return [be.run(f) for f in batches]


class SuffixRunner:
    """Runs plans that differ from `base` from their first differing op on: every tensor before it is taken
    from base's run on the same batches (captured once), cast to the dtype the other plan gives it. That cast
    is the producer's own single rounding (each op computes in fp32 or its precision and rounds once to its
    output dtype), so the result equals a full run; the sensitivity runs, which change one Linear each, take
    on average half the time."""

    def __init__(self, base, batches):
        from ..reference import ReferenceBackend

        self.base = base
        self.batches = batches
        self.envs = [ReferenceBackend(base).run(f, capture=True)[1] for f in batches]

    def run(self, plan, start: int) -> list[dict]:
        from ..reference import ReferenceBackend

        be = ReferenceBackend(plan)
        ops = plan.ops
        outs = []
        for env0 in self.envs:
            env = dict(env0)
            for op in ops[start:]:
                for t in op["inputs"]:
                    if t and t in env and t in plan.tensors and env[t].dtype != np.dtype(plan.tensors[t]["dtype"]):
                        env[t] = env[t].astype(plan.tensors[t]["dtype"])
            for op in ops[start:]:
                for name, arr in zip(op["outputs"], be.run_op(op, env)):
                    if name:
                        env[name] = arr
            outs.append({o["name"]: np.asarray(env[o["name"]], np.float32) for o in plan.outputs})
        return outs


def sample_cosines(outs_a: list[dict], outs_b: list[dict], batches) -> np.ndarray:
    """Per sample: the cosine of a and b over the sample's valid tokens and every float output, float64.
    Pooled [B, N] outputs count whole; [B, S, N] ones over the rows whose attention_mask is 1. A non-finite
    output gives nan (worst of all, below)."""
    cos = []
    for oa, ob, f in zip(outs_a, outs_b, batches):
        ids = np.asarray(f["input_ids"])
        mask = np.asarray(f.get("attention_mask", np.ones_like(ids))).astype(bool)
        for b in range(ids.shape[0]):
            xa, xb = [], []
            for name in oa:
                a, c = np.asarray(oa[name]), np.asarray(ob[name])
                if a.ndim >= 3 and a.shape[:2] == mask.shape:
                    xa.append(a[b][mask[b]].ravel())
                    xb.append(c[b][mask[b]].ravel())
                else:
                    xa.append(a[b].ravel())
                    xb.append(c[b].ravel())
            x, y = np.concatenate(xa).astype(np.float64), np.concatenate(xb).astype(np.float64)
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                cos.append(float("nan"))
                continue
            nx, ny = np.linalg.norm(x), np.linalg.norm(y)
            cos.append(float(x @ y / (nx * ny)) if nx and ny else (1.0 if nx == ny else 0.0))
    return np.asarray(cos)


def worst(cos: np.ndarray) -> float:
    """The worst sample's cosine; nan when any sample is not finite."""
    return float("nan") if np.isnan(cos).any() else float(np.min(cos))


def expected_worst_loss(losses, n: int) -> float:
    """The expected largest of n values drawn without replacement from `losses` (exact, from the order
    statistics: the k-th largest of N is the largest of the draw with probability C(N-1-k, n-1) / C(N, n))."""
    x = np.sort(np.asarray(losses, np.float64))[::-1]
    N = len(x)
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, {N}] (the number of values), got {n}")
    k = np.arange(N - n + 1)
    lg = math.lgamma
    logp = np.array([lg(N - kk) - lg(n) - lg(N - kk - n + 1) for kk in k]) - (lg(N + 1) - lg(n + 1) - lg(N - n + 1))
    return float(np.exp(logp) @ x[:N - n + 1])


def _loss(cos: np.ndarray) -> float:
    w = worst(cos)
    return math.inf if math.isnan(w) else max(0.0, 1.0 - w)


def extrapolated_worst_loss(losses, n_target: int) -> float:
    """The worst-sample loss (1 - cosine) expected among n_target texts like these n, from how the expected worst
    grows with the sample count on these texts themselves: E[worst of m] for m = n/4, n/2, n (exact, from the
    order statistics), a least-squares line in ln E against ln m (a power law), continued to n_target.
    Measured on MiniLM (docs/precision.md): the fp8 plan's worst follows a power law from 16 to 512 texts; the
    mixed plan's grows faster than one at small n, so a line through 64..256 texts (the default held-apart
    count) over-predicts its worst of 1024 by 4%, while one through 16..64 under-predicts it by 11%. An
    exponential or Gaussian tail grows slower than any power, so for them the rule is conservative. n_target
    <= n: the expected worst of n_target of these. Never below the measured worst; a non-finite loss: inf."""
    x = np.asarray(losses, np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("no losses to extrapolate from")
    if not np.isfinite(x).all():
        return math.inf
    if n_target <= n:
        return expected_worst_loss(x, n_target)
    worst_n = float(x.max())
    ms = sorted({m for m in (n // 4, n // 2, n) if m >= 2})
    if len(ms) < 2 or worst_n <= 0:  # too few texts to see a trend, or nothing lost: what was measured is all
        return worst_n
    e = np.array([expected_worst_loss(x, m) for m in ms])
    slope = float(np.polyfit(np.log(ms), np.log(np.maximum(e, worst_n * 1e-12)), 1)[0])
    return max(worst_n, float(e[-1]) * (n_target / n) ** max(slope, 0.0))


MARGIN_QUANTILE = 0.9


def extrapolation_margin(losses, draws: int = 200, seed: int = 0) -> float:
    """How far extrapolated_worst_loss falls short on these texts' own tail: from `draws` random quarters of the n
    losses, the worst of n extrapolated, against the worst measured on all n; the MARGIN_QUANTILE quantile of
    measured / extrapolated, at least 1. A light tail gives ~1.2; a heavy one (a few texts far worse than the
    rest) more, which is when a worst read off n texts says least about the worst of 4n. Fewer than 32 texts
    (quarters under 8): 1, nothing to learn from."""
    x = np.asarray(losses, np.float64)
    n = len(x)
    if n < 32 or not np.isfinite(x).all() or x.max() <= 0:
        return 1.0
    rng = np.random.default_rng(seed)
    worst_n = float(x.max())
    ext = np.array([extrapolated_worst_loss(rng.choice(x, n // 4, replace=False), n) for _ in range(draws)])
    return max(1.0, float(np.quantile(worst_n / np.maximum(ext, worst_n * 1e-12), MARGIN_QUANTILE)))


# ----------------------------------------------------------------------------------------------- top-1
TOP1_CANDIDATES = 4  # the fp32 top-1 and its 3 runners-up: a flip to a token beyond them needs an error larger
                     # than the margin to the 4th, which the runner-up margins already rule out in practice


def logits_output(header: dict, weights: dict) -> str:
    """The name of the plan's next-token logits output: a decoder (causal attention) whose output is
    [batch, seq, vocab], vocab the rows of its Embedding op's word table. BuildError naming what the
    model outputs otherwise (top-1 agreement needs logits)."""
    ops = header["ops"]
    outs = ", ".join(f"{o['name']} {list(o.get('shape', []))}" for o in header["outputs"])
    causal = any(op["type"] == "Attention" and op.get("attrs", {}).get("causal") for op in ops)
    if not causal:
        raise BuildError(f"--min-top1 needs a decoder with an LM head (next-token logits); this model's attention "
                         f"is not causal (an encoder; outputs {outs}): use --min-cosine")
    emb = next((op for op in ops if op["type"] == "Embedding"), None)
    word = weights.get(emb.get("weights", {}).get("word")) if emb else None
    vocab = int(word.shape[0]) if word is not None else None
    cands = [o["name"] for o in header["outputs"] if len(o.get("shape", [])) == 3 and vocab is not None
             and o["shape"][2] == vocab and np.dtype(o["dtype"]).kind == "f"]
    if len(cands) != 1:
        raise BuildError(f"--min-top1 needs next-token logits [batch, seq, {vocab or 'vocab'}] as an output (a decoder "
                         f"with an LM head); this model outputs {outs}" + ("" if not cands else " (several such)"))
    return cands[0]


def _logit_rows(outs: list[dict], batches, name: str):
    """Each batch's logits at its valid positions (attention_mask 1): [positions, vocab] float32."""
    for o, f in zip(outs, batches):
        ids = np.asarray(f["input_ids"])
        mask = np.asarray(f.get("attention_mask", np.ones_like(ids))).astype(bool)
        yield np.asarray(o[name], np.float32)[mask]


def top1_agreement(outs: list[dict], ref_outs: list[dict], batches, name: str) -> tuple[int, int]:
    """(positions whose argmax over `name` agrees with ref's, valid positions). A non-finite row disagrees."""
    agree = total = 0
    for a, r in zip(_logit_rows(outs, batches, name), _logit_rows(ref_outs, batches, name)):
        ok = np.isfinite(a).all(axis=-1)
        agree += int(((a.argmax(-1) == r.argmax(-1)) & ok).sum())
        total += a.shape[0]
    return agree, total


_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _phi_upper(z: np.ndarray) -> np.ndarray:
    """P(N(0, 1) > z)."""
    return 0.5 * _erfc(z / math.sqrt(2.0))


class Top1Model:
    """The margin-aware model of top-1 agreement with the fp32 plan (module docstring, step 2).

    Per valid position p of the calibration text: the fp32 plan's top-1 token and its runners-up j
    (TOP1_CANDIDATES in all), base's margins m_pj = z_top1 - z_j (base's own error already in them), and
    per Linear and precision the change of each margin, delta_ipj, that Linear alone makes. Independent
    rounding errors add as variances, so an assignment's margin noise is V_pj = sum_i delta_ipj^2 and p
    keeps fp32's token with probability prod_j P(m_pj + N(0, V_pj) > 0). A step function on each position
    becomes a smooth one: a Linear that flips no token on the calibration text still counts by how close
    it pushes the near-ties."""

    def __init__(self, ref_outs, base_outs, batches, name: str, k: int = TOP1_CANDIDATES):
        self.name, self.batches = name, batches
        self.idx, self.base = [], []
        for r, b in zip(_logit_rows(ref_outs, batches, name), _logit_rows(base_outs, batches, name)):
            kk = min(k, r.shape[1])
            top = np.argsort(-r, axis=1, kind="stable")[:, :kk]
            self.idx.append(top)
            self.base.append(self._margins(b, top))
        self.margin = np.concatenate(self.base) if self.base else np.zeros((0, k - 1))
        self.positions = self.margin.shape[0]

    @staticmethod
    def _margins(z, top):
        g = np.take_along_axis(np.asarray(z, np.float64), top, axis=1)
        return g[:, :1] - g[:, 1:]

    def variance(self, outs) -> np.ndarray:
        """delta^2 of a variant's outputs against base, [positions, runners-up]. A non-finite row: inf."""
        d = np.concatenate([self._margins(z, top) for z, top in zip(_logit_rows(outs, self.batches, self.name),
                                                                         self.idx)]) - self.margin
        return np.where(np.isfinite(d), d * d, np.inf)

    def agreement(self, V: np.ndarray) -> float:
        """Predicted fraction of positions keeping fp32's token, with margin noise variances V."""
        m = self.margin
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(V > 0, m / np.sqrt(V), np.where(m > 0, np.inf, -np.inf))
        keep = np.prod(1.0 - _phi_upper(z), axis=1)
        return float(keep.mean()) if len(keep) else 1.0

    def weights(self, V: np.ndarray) -> np.ndarray:
        """d(predicted disagreement)/dV_pj at noise V, per position: what a little more variance at p costs
        there (the knapsack's linear loss, module docstring)."""
        m = np.maximum(self.margin, 0.0)
        Vs = np.maximum(V, 1e-30)
        with np.errstate(over="ignore", invalid="ignore"):
            w = np.exp(-m * m / (2 * Vs)) / math.sqrt(2 * math.pi) * m / (2 * Vs ** 1.5)
        return np.where(np.isfinite(w), w, 0.0) / max(self.positions, 1)


# ----------------------------------------------------------------------------------------------- fp8
def finish_fp8(header_h, weights_h, weights_32, *, weight_scale="channel", activations="dynamic",
               calib=None, calib_name=None, log=None) -> tuple[dict, dict]:
    """The fp8 plan's (header, weights): every Linear fp8, from the hybrid lowering and the fp32 weights."""
    x_amax = None
    info = {"weight_scale": weight_scale, "activation_scale": activations}
    if activations == "static":
        if not calib:
            raise ValueError("static fp8 activation scales need calibration text (calib batches)")
        t = time.perf_counter()
        x_amax = calibrate(_plan(header_h, weights_h), calib)
        info["calibration"] = {"text": calib_name or "given batches", "samples": _samples(calib),
                               "on": "the hybrid plan's Linear inputs, amax over valid tokens",
                               "seconds": round(time.perf_counter() - t, 2)}
        if log:
            log(f"calibrated {len(x_amax)} activation scales on {_samples(calib)} samples of "
                f"{calib_name or 'text'} in {time.perf_counter() - t:.1f}s")
    kept = {op["name"]: why for op in linear_ops(header_h) if (why := fp8_refusal(op, weights_32))}
    choice = {op["name"]: "hybrid" if op["name"] in kept else FP8 for op in linear_ops(header_h)}
    if kept:
        info["kept_hybrid"] = kept
        if log:
            log(f"{len(kept)} Linear(s) kept hybrid (fp16): " + "; ".join(f"{k}: {v}" for k, v in kept.items()))
    header, weights = assign_precisions(header_h, weights_h, weights_32, choice, weight_scale=weight_scale,
                                        x_amax=x_amax)
    header.setdefault("builder", {})["fp8"] = info
    return header, weights


def _json_num(v: float):
    """v for the plan's JSON header, None for NaN (a round whose plan wrote NaN; JSON has no NaN)."""
    return None if v is None or math.isnan(v) else v


def _samples(batches) -> int:
    return int(sum(np.asarray(f["input_ids"]).shape[0] for f in batches))


# ----------------------------------------------------------------------------------------------- search
def knapsack(loss: list[dict], cost: list[dict], budget: float, bins: int = BUDGET_BINS) -> list[str] | None:
    """The cheapest choice per layer (a key of loss[i] / cost[i]) with sum of losses <= budget, each loss
    rounded up to budget/bins; None when even the least lossy choices exceed it."""
    if budget < 0:
        return None
    L = len(loss)
    if L == 0:
        return []
    step = budget / bins if budget > 0 else 1.0
    INF = math.inf
    best = np.full(bins + 1, INF)  # best[b]: least cost of the layers so far with quantized loss exactly b
    best[0] = 0.0
    back = []
    for i in range(L):
        new = np.full(bins + 1, INF)
        arg = np.full(bins + 1, -1, np.int64)
        keys = list(loss[i])
        for j, p in enumerate(keys):
            d = loss[i][p]
            if not math.isfinite(d):  # no such choice for this layer (an fp8 GEMM cuBLASLt cannot run)
                continue
            q = 0 if d <= 0 else (math.ceil(d / step - 1e-9) if budget > 0 else bins + 1)
            if q > bins:
                continue
            cand = np.full(bins + 1, INF)
            cand[q:] = best[:bins + 1 - q] + cost[i][p]
            better = cand < new
            new[better] = cand[better]
            arg[better] = j
        back.append((keys, arg))
        best = new
    b = int(np.argmin(best))
    if not math.isfinite(best[b]):
        return None
    out = []
    for i in range(L - 1, -1, -1):
        keys, arg = back[i]
        j = int(arg[b])
        p = keys[j]
        out.append(p)
        d = loss[i][p]
        b -= 0 if d <= 0 else math.ceil(d / step - 1e-9)
    return out[::-1]


def _budget(min_cosine, min_top1) -> tuple[str, float]:
    """("cosine" | "top1", X) from the two budgets, exactly one of which is given; ValueError otherwise."""
    if min_cosine is None and min_top1 is None:
        raise ValueError("precision auto needs min_cosine (the worst-sample cosine to keep against fp32, any model) "
                         "or min_top1 (top-1 next-token agreement, a decoder with an LM head)")
    if min_cosine is not None and min_top1 is not None:
        raise ValueError("precision auto takes one budget, min_cosine or min_top1; both were given")
    kind, x = ("cosine", min_cosine) if min_cosine is not None else ("top1", min_top1)
    what = "min_cosine" if kind == "cosine" else "min_top1"
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1:
        raise ValueError(f"{what} must be a number in (0, 1), got {x!r}")
    return kind, float(x)


def search(header_h, weights_h, header_32, weights_32, *, min_cosine: float | None = None, calib, holdout,
           min_top1: float | None = None, worst_of: int = WORST_OF, weight_scale="channel", activations="dynamic",
           cost_model: CostModel | None = None, calib_name=None, holdout_name=None, log=None) -> tuple[dict, dict]:
    """(header, weights) of the cheapest assignment found that meets the budget against the fp32 plan on
    `holdout` (module docstring): min_cosine, the worst-sample cosine extrapolated to `worst_of` texts like the
    held-apart ones, or min_top1, the fraction of held-apart positions whose argmax over the logits agrees with
    the fp32 plan's. The header's builder.precision_search records the sensitivities, the prediction, what was
    measured on how many samples, and the costs."""
    log = log or (lambda m: None)
    kind, x = _budget(min_cosine, min_top1)
    if isinstance(worst_of, bool) or not isinstance(worst_of, int) or worst_of < 1:
        raise ValueError(f"worst_of must be a positive integer (texts), got {worst_of!r}")
    if not calib or not holdout:
        raise ValueError("the precision search needs calibration text and held-apart text (calib, holdout)")
    logits = logits_output(header_h, weights_h) if kind == "top1" else None
    cm = cost_model or CostModel()
    scales = fp8_scale_kind(weight_scale, activations)
    t0 = time.perf_counter()
    linears = linear_ops(header_h)
    names = [op["name"] for op in linears]
    plan32 = _plan(header_32, weights_32)
    ref_cal = run_outputs(plan32, calib)
    ref_hold = run_outputs(plan32, holdout)
    n_hold = _samples(holdout)

    x_amax = calibrate(_plan(header_h, weights_h), calib) if activations == "static" else None

    def make(choice):
        return assign_precisions(header_h, weights_h, weights_32, choice, weight_scale=weight_scale, x_amax=x_amax)

    all32 = {n: "fp32" for n in names}
    base = _plan(*make(all32))
    suffix = SuffixRunner(base, calib)
    out_base = suffix.run(base, len(base.ops))
    if kind == "cosine":
        d0 = _loss(sample_cosines(out_base, ref_cal, calib))
    else:
        model = Top1Model(ref_cal, out_base, calib, logits)
        a, t = top1_agreement(out_base, ref_cal, calib, logits)
        d0 = 1.0 - a / t
        var = []  # per Linear: {precision: delta^2 [positions, runners-up]}
    index = {op["name"]: i for i, op in enumerate(base.ops)}
    loss, cost, per_op, no_fp8_ops = [], [], {}, {}
    for k, op in enumerate(linears):
        shape = gemm_shape(op, header_h["profile"], weights_32)
        c = {p: cm.cost(*shape, p, fp8_scales=scales) for p in LINEAR_CHOICES}
        d = {"fp32": 0.0}
        v = {"fp32": 0.0}
        flips = {}
        no_fp8 = fp8_refusal(op, weights_32)
        for p in ("hybrid",) if no_fp8 else (FP8, "hybrid"):
            variant = _plan(*make({**all32, op["name"]: p}))
            # from the op that writes this Linear's input on: in the variant that input may be fp16 (rounded by
            # its producer), everything before it is base's
            start = min(index[o["name"]] for o in base.ops if op["inputs"][0] in o["outputs"]) \
                if any(op["inputs"][0] in o["outputs"] for o in base.ops) else 0
            out = suffix.run(variant, start)
            if kind == "cosine":
                d[p] = _loss(sample_cosines(out, out_base, calib))
            else:
                v[p] = model.variance(out)
                a, t = top1_agreement(out, out_base, calib, logits)
                flips[p] = t - a
        if no_fp8:  # no fp8 candidate: its fp8 entries are the hybrid ones, and the knapsack's loss is inf
            d[FP8], v[FP8], flips[FP8] = math.inf, v.get("hybrid", 0.0), flips.get("hybrid", 0)
            no_fp8_ops[op["name"]] = no_fp8
        if kind == "top1":
            var.append(v)
        loss.append(d)
        cost.append(c)
        del variant
        per_op[op["name"]] = {"mnk": list(shape), "cost_us": {p: float(f"{v:.4g}") for p, v in c.items()}}
        if no_fp8:
            per_op[op["name"]]["no_fp8"] = no_fp8
        if kind == "cosine":
            per_op[op["name"]]["loss"] = {p: float(f"{v:.3g}") for p, v in d.items() if math.isfinite(v)}
            log(f"sensitivity {k + 1}/{len(linears)} {op['name']}: 1-cos fp8 {d[FP8]:.2e}, fp16 {d['hybrid']:.2e}")
        else:
            per_op[op["name"]]["margin_var"] = {p: float(f"{float(np.mean(v[p])):.3g}") for p in (FP8, "hybrid")}
            per_op[op["name"]]["flips"] = flips
            log(f"sensitivity {k + 1}/{len(linears)} {op['name']}: mean margin variance fp8 "
                f"{float(np.mean(v[FP8])):.2e} ({flips[FP8]} flips), fp16 {float(np.mean(v['hybrid'])):.2e} "
                f"({flips['hybrid']} flips) of {model.positions} positions")

    def total_cost(choice_list):
        return float(sum(cost[i][p] for i, p in enumerate(choice_list)))

    if kind == "top1":
        # the knapsack's loss: each Linear's variance weighted by what variance costs at each position, at the
        # noise of every Linear in fp8 (a noise level at which the near-ties are seen; at base's, zero weight)
        V8 = sum(vv[FP8] for vv in var)
        w = model.weights(V8)
        for i, vv in enumerate(var):
            loss[i] = {p: (0.0 if p == "fp32" else float(np.sum(w * np.where(np.isfinite(vv[p]), vv[p], 1e300))))
                       for p in LINEAR_CHOICES}
            if names[i] in no_fp8_ops:
                loss[i][FP8] = math.inf

        def predict(pick):  # predicted disagreement with fp32 (1 - top-1)
            V = sum((var[i][p] for i, p in enumerate(pick) if p != "fp32"), np.zeros_like(model.margin))
            return 1.0 - model.agreement(V)

        def choose(target):
            """The cheapest knapsack pick whose predicted disagreement meets target: bisection on the knapsack's
            linear budget (the prediction is not additive; the knapsack's linear loss is its tangent)."""
            lo, hi = 0.0, float(sum(max(l[p] for p in (FP8, "hybrid")) for l in loss)) * 1.01 + 1e-300
            best = knapsack(loss, cost, 0.0)
            if best is None or predict(best) > target:
                return None
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                pick = knapsack(loss, cost, mid)
                if pick is not None and predict(pick) <= target:
                    lo, best = mid, pick
                else:
                    hi = mid
            return best
    else:
        def predict(pick):
            return d0 + sum(loss[i][p] for i, p in enumerate(pick))

        def choose(target):
            return knapsack(loss, cost, target - d0) if target - d0 > 0 else None

    def measure(pick):
        """(metric measured on the held-apart text, the loss the budget is judged by, its record)."""
        out = run_outputs(_plan(*make(dict(zip(names, pick)))), holdout)
        if kind == "cosine":
            cos = sample_cosines(out, ref_hold, holdout)
            w_ = worst(cos)
            if math.isnan(w_):
                return w_, math.inf, {"measured_worst_cos": None, "extrapolated_worst_cos": None, "margin": None,
                                      "judged_worst_cos": None}
            ext = extrapolated_worst_loss(1.0 - cos, worst_of)
            # the extrapolation is an estimate from n texts; beyond them it is judged with the margin its own
            # shortfall on quarters of them measures (a heavy tail: MiniLM's mixed plans, docs/precision.md)
            m_ = extrapolation_margin(1.0 - cos) if worst_of > len(cos) else 1.0
            return w_, ext * m_, {"measured_worst_cos": _json_num(w_), "extrapolated_worst_cos": 1.0 - ext,
                                  "margin": round(m_, 3), "judged_worst_cos": 1.0 - ext * m_}
        a_, t_ = top1_agreement(out, ref_hold, holdout, logits)
        # a mean over positions: its binomial standard error says how far the population's may lie from it
        f_ = a_ / t_
        return f_, 1.0 - f_, {"measured_top1": f_, "agree": a_, "positions": t_,
                              "stderr": float(f"{math.sqrt(f_ * (1 - f_) / t_):.2g}")}

    def log_round(r, pick, predicted, rec):
        log(f"search round {r + 1}: {pick.count(FP8)} fp8, {pick.count('hybrid')} fp16, {pick.count('fp32')} fp32 "
            f"Linears; " + _round_text(kind, predicted, rec, n_hold, worst_of))

    chosen, chosen_rec, rounds, measured, rec = settle(choose, predict, measure, total_cost, 1.0 - x, d0, log_round)
    fallback = None
    if chosen is None:
        for p in ("hybrid", "fp32"):
            pick = [p] * len(names)
            measured, judged, rec = measure(pick)
            rounds.append({"fallback": p, **rec, "cost_us": total_cost(pick)})
            if math.isfinite(judged) and judged <= 1.0 - x:
                chosen, fallback = pick, p
                break
    if chosen is None:
        got = (f"the worst-sample cosine is {measured:.7f}" + (f" (extrapolated to {worst_of} texts and judged with "
               f"its margin {rec['judged_worst_cos']})" if worst_of > n_hold else "")) if kind == "cosine" else \
            f"top-1 agreement is {measured:.5f} ({rec['agree']} of {rec['positions']} positions)"
        raise BuildError(f"--min-{'cosine' if kind == 'cosine' else 'top1'} {x}: no assignment meets it on the "
                         f"held-apart text; with every Linear in fp32 (the other ops as in hybrid) {got}")
    header, weights = make(dict(zip(names, chosen)))
    hybrid_cost = total_cost(["hybrid"] * len(names))
    info = {
        "budget": kind, ("min_cosine" if kind == "cosine" else "min_top1"): x,
        "calibration_text": calib_name or "given batches", "calibration_samples": _samples(calib),
        "heldout_text": holdout_name or "given batches", "heldout_samples": n_hold,
        "fp8": {"weight_scale": weight_scale, "activation_scale": activations},
        "other_ops_loss": float(f"{d0:.3g}"),
        "cost_model": cm.source, "cost_estimated": cm.estimated,
        "cost_us": total_cost(chosen), "cost_us_all_hybrid": hybrid_cost,
        "cost_us_all_fp8": total_cost(["hybrid" if n in no_fp8_ops else FP8 for n in names]),
        "predicted": float(f"{1 - predict(chosen):.7f}"),
        **rec, "fallback": fallback,
        "counts": {p: chosen.count(p) for p in LINEAR_CHOICES},
        "rounds": rounds, "seconds": round(time.perf_counter() - t0, 1),
        "ops": per_op,
    }
    if kind == "cosine":
        info["worst_of"] = worst_of
    else:
        info["logits"] = logits
        info["calibration_positions"] = model.positions
    header.setdefault("builder", {})["precision_search"] = info
    if activations == "static":
        header["builder"]["fp8"] = {"weight_scale": weight_scale, "activation_scale": activations,
                                    "calibration": {"text": calib_name or "given batches",
                                                    "samples": _samples(calib)}}
    return header, weights


def settle(choose, predict, measure, total_cost, budget: float, d0: float, log_round=None):
    """The rounds of the check (module docstring, step 4): choose(target) -> a pick or None, predict(pick) -> its
    predicted loss, measure(pick) -> (metric, judged loss, record), budget the loss allowed (1 - X). A miss shrinks
    the target by predicted/judged (and 10% more); once a shrunken target has met the budget, the rounds left
    bisect between it and the smallest target that missed, for a cheaper pick that still meets it.
    -> (cheapest pick that met the budget or None, its (metric, record), the rounds' records, the last metric
    and record measured)."""
    target = budget
    rounds = []
    chosen = chosen_rec = None
    measured = rec = None
    failed = hit = None  # the smallest target whose pick missed the budget, the largest whose pick met it
    tried = set()
    for r in range(MAX_ROUNDS):
        pick = choose(target) if target > 0 else None
        if pick is None:
            rounds.append({"budget": float(f"{target:.4g}"), "found": False})
            break
        if tuple(pick) in tried:  # the target between a miss and a hit picks what was already measured
            break
        tried.add(tuple(pick))
        predicted = predict(pick)
        measured, judged, rec = measure(pick)
        rounds.append({"budget": float(f"{target:.4g}"), "predicted": float(f"{1 - predicted:.7f}"), **rec,
                       "cost_us": total_cost(pick), "counts": {p: pick.count(p) for p in LINEAR_CHOICES}})
        if log_round:
            log_round(r, pick, predicted, rec)
        if math.isfinite(judged) and judged <= budget:
            if chosen is None or total_cost(pick) < total_cost(chosen):
                chosen, chosen_rec = pick, (measured, rec)
            hit = target if hit is None else max(hit, target)
        else:
            failed = target if failed is None else min(failed, target)
        if failed is None:  # met at the first try
            break
        if hit is not None:
            # a shrunken target met the budget, perhaps with room to spare: the cheapest pick lies between it and
            # the smallest target that missed; the rounds left bisect there (geometric mean: targets span decades)
            target = math.sqrt(hit * failed)
            continue
        # the prediction was optimistic by predicted/judged (beyond what the other ops cost): shrink the target by
        # that ratio and 10% more
        shrink = (predicted - d0) / (judged - d0) if judged > d0 and math.isfinite(judged) else 0.5
        target = d0 + (target - d0) * min(shrink, 1.0) * 0.9
    if chosen is not None:
        measured, rec = chosen_rec
    return chosen, chosen_rec, rounds, measured, rec


def _round_text(kind, predicted, rec, n_hold, worst_of) -> str:
    if kind == "top1":
        return (f"predicted top-1 {1 - predicted:.5f}, measured on held-apart text {rec['measured_top1']:.5f} "
                f"({rec['agree']} of {rec['positions']} positions, standard error {rec['stderr']:.2g})")
    m, e, j = rec["measured_worst_cos"], rec["extrapolated_worst_cos"], rec["judged_worst_cos"]
    f = lambda v: "nan" if v is None else f"{v:.6f}"  # noqa: E731
    return (f"predicted worst cos {1 - predicted:.6f}, measured on {n_hold} held-apart texts {f(m)}"
            + (f", extrapolated to the worst of {worst_of} {f(e)}, judged with margin {rec['margin']} {f(j)}"
               if worst_of > n_hold else ""))


def check_options(precision, fp8_weights, fp8_activations, calib, holdout, min_cosine, cost_table, min_top1=None,
                  worst_of=None):
    """ValueError (before any work) for fp8/auto settings that do not fit together -> the CostModel to use."""
    from ..types import FP8_ACTIVATION_SCALES, FP8_WEIGHT_SCALES

    if fp8_weights not in FP8_WEIGHT_SCALES:
        raise ValueError(f"fp8_weights must be one of {', '.join(FP8_WEIGHT_SCALES)}, got {fp8_weights!r}")
    if fp8_activations not in FP8_ACTIVATION_SCALES:
        raise ValueError(f"fp8_activations must be one of {', '.join(FP8_ACTIVATION_SCALES)}, got {fp8_activations!r}")
    search_only = (("min_cosine", min_cosine), ("min_top1", min_top1), ("cost_table", cost_table),
                   ("worst_of", worst_of))
    if precision not in (FP8, "auto"):
        what = "calib" if calib is not None else next(k for k, v in search_only if v is not None)
        raise ValueError(f"{what} applies to precision fp8 or auto only, not {precision}")
    if precision == FP8 and any(v is not None for _, v in search_only):
        raise ValueError("min_cosine, min_top1, worst_of and cost_table belong to precision auto (the search), not fp8")
    if fp8_activations == "static" and not calib:
        raise ValueError("static fp8 activation scales need calibration text (calib)")
    if precision == FP8 and fp8_activations == "dynamic" and calib:
        raise ValueError("calib is for static fp8 activation scales (fp8_activations='static'); dynamic ones need none")
    if precision == "auto":
        kind, _ = _budget(min_cosine, min_top1)
        if worst_of is not None:
            if kind != "cosine":
                raise ValueError("worst_of belongs to min_cosine (a worst sample); min_top1 is a mean over positions")
            if isinstance(worst_of, bool) or not isinstance(worst_of, int) or worst_of < 1:
                raise ValueError(f"worst_of must be a positive integer (texts), got {worst_of!r}")
        if not calib or not holdout:
            raise ValueError("precision auto needs calibration text and held-apart text (calib, holdout)")
    if cost_table is None or isinstance(cost_table, CostModel):
        return cost_table
    return CostModel.load(cost_table)
