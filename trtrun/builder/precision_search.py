"""fp8 plans and the precision search under a fidelity budget (`--precision fp8`, `--precision auto`).

`finish_fp8` turns the hybrid lowering into an fp8 plan (every Linear fp8; static activation scales
calibrated on text, or per-token scales). `search` assigns each Linear fp8, hybrid (fp16 operands) or fp32:

1. Sensitivity, on the calibration text: `base` is the hybrid plan with every Linear in fp32. For each
   Linear i alone in fp8, then alone in hybrid, d_i(p) = 1 - the worst-sample cosine of the final outputs
   against `base`; d_0 = 1 - the worst-sample cosine of `base` against the fp32 plan (what the other ops' hybrid
   arithmetic costs). 2 runs a Linear, plus two.
2. The model: the assignment's worst-sample 1 - cosine is predicted as d_0 + sum_i d_i(p_i). For small
   errors 1 - cos(y + e, y) ~ |e_perp|^2 / (2 |y|^2), and the squared norms of independent errors add; adding
   each layer's *worst* sample is the sum's upper bound where the worst samples differ. Both make it a
   conservative estimate; the held-apart run below is the judge.
3. The search: the cheapest assignment whose prediction meets the budget 1 - X is a multiple-choice knapsack
   (one of three items per layer, additive cost and additive loss). A greedy upgrade order can miss the
   optimum (a costly layer that buys little fidelity beside a cheap one that buys much); a dynamic programme
   over the loss budget cut into BUDGET_BINS steps is exact up to that step, each loss rounded *up* to a
   step, so its answer also meets the unrounded budget. L layers x 3 choices x BUDGET_BINS: milliseconds.
4. The check: the chosen plan runs on the held-apart text against the fp32 plan. If its worst-sample cosine
   misses X, the prediction was optimistic by the ratio measured/predicted: the budget shrinks by that ratio
   (and 10% more) and the search runs again, at most MAX_ROUNDS times; then the plan with every Linear hybrid,
   then every Linear fp32, is tried. Only a budget that no assignment meets (not even all-fp32 Linears) is a
   BuildError, naming the cosine that plan reached.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import BuildError
from ..types import FP8
from .cost_model import CostModel, gemm_shape
from .quantize_fp8 import LINEAR_CHOICES, assign_precisions, calibrate, linear_ops

BUDGET_BINS = 4000
MAX_ROUNDS = 4


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
                for name, arr in zip(op["outputs"], be._run_op(op, env)):
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


def _loss(cos: np.ndarray) -> float:
    w = worst(cos)
    return math.inf if math.isnan(w) else max(0.0, 1.0 - w)


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
    choice = {op["name"]: FP8 for op in linear_ops(header_h)}
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
            q = 0 if d <= 0 else (math.ceil(d / step - 1e-9) if budget > 0 else bins + 1)
            if q > bins or not math.isfinite(d):
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


def search(header_h, weights_h, header_32, weights_32, *, min_cosine: float, calib, holdout,
           weight_scale="channel", activations="dynamic", cost_model: CostModel | None = None,
           calib_name=None, holdout_name=None, log=None) -> tuple[dict, dict]:
    """(header, weights) of the cheapest assignment found whose worst-sample cosine against the fp32 plan on
    `holdout` is at least `min_cosine` (module docstring). The header's builder.precision_search records the
    sensitivities, the prediction, the measured fidelity and the costs."""
    log = log or (lambda m: None)
    if not (isinstance(min_cosine, (int, float)) and not isinstance(min_cosine, bool) and 0 < min_cosine < 1):
        raise ValueError(f"min_cosine must be a number in (0, 1), got {min_cosine!r}")
    if not calib or not holdout:
        raise ValueError("the precision search needs calibration text and held-apart text (calib, holdout)")
    cm = cost_model or CostModel()
    t0 = time.perf_counter()
    linears = linear_ops(header_h)
    names = [op["name"] for op in linears]
    plan32 = _plan(header_32, weights_32)
    ref_cal = run_outputs(plan32, calib)
    ref_hold = run_outputs(plan32, holdout)

    x_amax = calibrate(_plan(header_h, weights_h), calib) if activations == "static" else None

    def make(choice):
        return assign_precisions(header_h, weights_h, weights_32, choice, weight_scale=weight_scale, x_amax=x_amax)

    all32 = {n: "fp32" for n in names}
    base = _plan(*make(all32))
    suffix = SuffixRunner(base, calib)
    out_base = suffix.run(base, len(base.ops))
    d0 = _loss(sample_cosines(out_base, ref_cal, calib))
    index = {op["name"]: i for i, op in enumerate(base.ops)}
    loss, cost, per_op = [], [], {}
    for k, op in enumerate(linears):
        shape = gemm_shape(op, header_h["profile"], weights_32)
        c = {p: cm.cost(*shape, p) for p in LINEAR_CHOICES}
        d = {"fp32": 0.0}
        for p in (FP8, "hybrid"):
            variant = _plan(*make({**all32, op["name"]: p}))
            # from the op that writes this Linear's input on: in the variant that input may be fp16 (rounded by
            # its producer), everything before it is base's
            start = min(index[o["name"]] for o in base.ops if op["inputs"][0] in o["outputs"]) \
                if any(op["inputs"][0] in o["outputs"] for o in base.ops) else 0
            d[p] = _loss(sample_cosines(suffix.run(variant, start), out_base, calib))
        loss.append(d)
        cost.append(c)
        del variant
        per_op[op["name"]] = {"mnk": list(shape), "loss": {p: float(f"{v:.3g}") for p, v in d.items()},
                              "cost_us": {p: float(f"{v:.4g}") for p, v in c.items()}}
        log(f"sensitivity {k + 1}/{len(linears)} {op['name']}: 1-cos fp8 {d[FP8]:.2e}, fp16 {d['hybrid']:.2e}")

    def total_cost(choice_list):
        return float(sum(cost[i][p] for i, p in enumerate(choice_list)))

    budget = 1.0 - float(min_cosine) - d0
    rounds = []
    chosen = None
    measured = None
    for r in range(MAX_ROUNDS):
        pick = knapsack(loss, cost, budget) if budget > 0 else None
        if pick is None:
            rounds.append({"budget": float(f"{budget:.4g}"), "found": False})
            break
        header, weights = make(dict(zip(names, pick)))
        cos = sample_cosines(run_outputs(_plan(header, weights), holdout), ref_hold, holdout)
        measured = worst(cos)
        predicted = d0 + sum(loss[i][p] for i, p in enumerate(pick))
        rounds.append({"budget": float(f"{budget:.4g}"), "predicted_worst_cos": float(f"{1 - predicted:.7f}"),
                       "measured_worst_cos": _json_num(measured), "cost_us": total_cost(pick),
                       "counts": {p: pick.count(p) for p in LINEAR_CHOICES}})
        log(f"search round {r + 1}: {pick.count(FP8)} fp8, {pick.count('hybrid')} fp16, {pick.count('fp32')} fp32 "
            f"Linears; predicted worst cos {1 - predicted:.6f}, measured on held-apart text {measured:.6f}")
        if not math.isnan(measured) and measured >= min_cosine:
            chosen = pick
            break
        miss = 1.0 - measured if not math.isnan(measured) else math.inf
        shrink = (predicted - d0) / (miss - d0) if miss > d0 and math.isfinite(miss) else 0.5
        budget = (budget * min(shrink, 1.0) * 0.9) if budget > 0 else budget
    fallback = None
    if chosen is None:
        for p in ("hybrid", "fp32"):
            pick = [p] * len(names)
            header, weights = make(dict(zip(names, pick)))
            measured = worst(sample_cosines(run_outputs(_plan(header, weights), holdout), ref_hold, holdout))
            rounds.append({"fallback": p, "measured_worst_cos": _json_num(measured), "cost_us": total_cost(pick)})
            if not math.isnan(measured) and measured >= min_cosine:
                chosen, fallback = pick, p
                break
    if chosen is None:
        raise BuildError(f"--min-cosine {min_cosine}: no assignment meets it on the held-apart text; with every "
                         f"Linear in fp32 (the other ops as in hybrid) the worst-sample cosine is {measured:.7f}")
    hybrid_cost = total_cost(["hybrid"] * len(names))
    info = {
        "min_cosine": float(min_cosine),
        "calibration_text": calib_name or "given batches", "calibration_samples": _samples(calib),
        "heldout_text": holdout_name or "given batches", "heldout_samples": _samples(holdout),
        "fp8": {"weight_scale": weight_scale, "activation_scale": activations},
        "other_ops_loss": float(f"{d0:.3g}"),
        "cost_model": cm.source, "cost_estimated": cm.estimated,
        "cost_us": total_cost(chosen), "cost_us_all_hybrid": hybrid_cost,
        "cost_us_all_fp8": total_cost([FP8] * len(names)),
        "measured_worst_cos": measured, "fallback": fallback,
        "counts": {p: chosen.count(p) for p in LINEAR_CHOICES},
        "rounds": rounds, "seconds": round(time.perf_counter() - t0, 1),
        "ops": per_op,
    }
    header.setdefault("builder", {})["precision_search"] = info
    if activations == "static":
        header["builder"]["fp8"] = {"weight_scale": weight_scale, "activation_scale": activations,
                                    "calibration": {"text": calib_name or "given batches",
                                                    "samples": _samples(calib)}}
    return header, weights


def check_options(precision, fp8_weights, fp8_activations, calib, holdout, min_cosine, cost_table):
    """ValueError (before any work) for fp8/auto settings that do not fit together -> the CostModel to use."""
    from ..types import FP8_ACTIVATION_SCALES, FP8_WEIGHT_SCALES

    if fp8_weights not in FP8_WEIGHT_SCALES:
        raise ValueError(f"fp8_weights must be one of {', '.join(FP8_WEIGHT_SCALES)}, got {fp8_weights!r}")
    if fp8_activations not in FP8_ACTIVATION_SCALES:
        raise ValueError(f"fp8_activations must be one of {', '.join(FP8_ACTIVATION_SCALES)}, got {fp8_activations!r}")
    if precision not in (FP8, "auto"):
        what = "calib" if calib is not None else "min_cosine" if min_cosine is not None else "cost_table"
        raise ValueError(f"{what} applies to precision fp8 or auto only, not {precision}")
    if precision == FP8 and (min_cosine is not None or cost_table is not None):
        raise ValueError("min_cosine and cost_table belong to precision auto (the search), not fp8")
    if fp8_activations == "static" and not calib:
        raise ValueError("static fp8 activation scales need calibration text (calib)")
    if precision == FP8 and fp8_activations == "dynamic" and calib:
        raise ValueError("calib is for static fp8 activation scales (fp8_activations='static'); dynamic ones need none")
    if precision == "auto":
        if min_cosine is None:
            raise ValueError("precision auto needs min_cosine (the worst-sample cosine to keep against fp32)")
        if isinstance(min_cosine, bool) or not isinstance(min_cosine, (int, float)) or not 0 < min_cosine < 1:
            raise ValueError(f"min_cosine must be a number in (0, 1), got {min_cosine!r}")
        if not calib or not holdout:
            raise ValueError("precision auto needs calibration text and held-apart text (calib, holdout)")
    if cost_table is None or isinstance(cost_table, CostModel):
        return cost_table
    return CostModel.load(cost_table)
