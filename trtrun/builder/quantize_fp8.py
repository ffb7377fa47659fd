"""Per-Linear precision on a lowered plan: fp8 (E4M3, trtrun/fp8.py), hybrid (fp16 operands) or fp32.

This pass works on the lowered plan rather than the graph because its inputs are measured by running plans:
the static activation scales come from running the hybrid plan on calibration text (`calibrate`), and the
precision search (builder/precision_search.py) runs many assignments. The builder lowers the model twice,
as an fp32 plan (the reference, and where the fp8 weights are quantized from: one rounding, not fp16's then
fp8's) and as a hybrid plan; `assign_precisions` then gives each Linear op of the hybrid plan its precision:

- fp8: the weight becomes float8_e4m3fn with a float32 `weight_scale` ([N] per output channel, or [1]), a
  static activation scale becomes an `x_scale` [1] weight (absent: per-token scales at run time); the bias
  stays fp16 and the tensors keep their hybrid dtypes (the quantization reads the fp16 x).
- hybrid: as in a hybrid plan.
- fp32: fp32 weight and bias, and the op's x and y tensors fp32, so the layer computes on unrounded values.
Every other op stays as in the hybrid plan. The plan's precision is "fp8" when every Linear is fp8, "hybrid"
when every one is hybrid, else "mixed".
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import BuildError
from ..fp8 import quantize_weight
from ..types import FP8, FP8_WEIGHT_SCALES

LINEAR_CHOICES = (FP8, "hybrid", "fp32")  # what a Linear op may be given here


def linear_ops(header: dict) -> list[dict]:
    """The plan's Linear ops, in execution order."""
    return [op for op in header["ops"] if op["type"] == "Linear"]


def fp8_refusal(op: dict, weights: dict) -> str | None:
    """Why this Linear cannot be fp8 on the GPU, or None: cuBLASLt's fp8 GEMMs need 16-byte leading dimensions,
    so its weight's K and N must be multiples of 16 (a vocabulary projection of 50257 columns is not). Such a
    Linear stays hybrid in fp8 plans and is no fp8 candidate for the precision search."""
    k, n = (int(d) for d in weights[op["weights"]["weight"]].shape)
    if k % 16 or n % 16:
        return f"its weight is {k} x {n}: cuBLASLt's fp8 GEMMs need both multiples of 16"
    return None


def calibrate(plan, batches) -> dict[str, float]:
    """{Linear op name: amax of |x|} over the valid tokens (attention_mask 1) of every batch, running `plan`
    on the reference backend. Batches are dicts of token-id arrays (trtrun.data.encode's). The maximum over
    batches does not depend on their order or split, so the scales are a function of the texts alone."""
    from ..reference import ReferenceBackend

    if not batches:
        raise BuildError("fp8 calibration needs at least one batch of calibration text")
    ops = linear_ops(plan.header)
    amax = {op["name"]: 0.0 for op in ops}
    be = ReferenceBackend(plan)
    for feeds in batches:
        fed = plan.check_feeds(feeds)
        _, env = be.run(fed, capture=True)
        valid = fed["attention_mask"].astype(bool) if "attention_mask" in fed else \
            np.ones(fed["input_ids"].shape, bool)
        for op in ops:
            x = env[op["inputs"][0]]
            if x.ndim == 3 and x.shape[:2] == valid.shape:
                x = x[valid]
            if x.size:
                m = float(np.max(np.abs(x.astype(np.float32))))
                if not np.isfinite(m):
                    raise BuildError(f"fp8 calibration: op {op['name']!r} reads a non-finite value on the "
                                     f"calibration text; its activation scale cannot be set")
                amax[op["name"]] = max(amax[op["name"]], m)
    return amax


def assign_precisions(header_h: dict, weights_h: dict, weights_32: dict, choice: dict[str, str], *,
                      weight_scale: str = "channel", x_amax: dict[str, float] | None = None) -> tuple[dict, dict]:
    """(header, weights) of the hybrid plan (header_h, weights_h) with each Linear op given choice[op name]
    (default hybrid). weights_32 holds the same weights in fp32 (the fp32 lowering of the same graph).
    x_amax: calibrated activation maxima for static fp8 scales (None: per-token scales at run time).
    The inputs are not modified."""
    if weight_scale not in FP8_WEIGHT_SCALES:
        raise ValueError(f"fp8 weight scale must be one of {', '.join(FP8_WEIGHT_SCALES)}, got {weight_scale!r}")
    linears = {op["name"]: op for op in linear_ops(header_h)}
    unknown = sorted(set(choice) - set(linears))
    if unknown:
        raise ValueError(f"no Linear op named {unknown[0]!r} (this plan's: {', '.join(list(linears)[:6])}...)")
    bad = {k: v for k, v in choice.items() if v not in LINEAR_CHOICES}
    if bad:
        k = next(iter(bad))
        raise ValueError(f"op {k!r}: precision {bad[k]!r} is not one of {', '.join(LINEAR_CHOICES)}")
    header = copy.deepcopy(header_h)
    header.pop("weights", None)
    tensors = header["tensors"]
    # a weight shared by ops of different precisions gets one stored copy per precision
    uses: dict[str, set] = {}
    for op in header["ops"]:
        p = choice.get(op["name"], "hybrid") if op["type"] == "Linear" else "keep"
        for w in op.get("weights", {}).values():
            uses.setdefault(w, set()).add(p)
    out: dict[str, np.ndarray] = {}

    def put(name: str, variant: str, make):
        key = name if len(uses.get(name, ())) <= 1 else f"{name}.{variant}"
        if key not in out:
            out[key] = make()
        return key

    for op in header["ops"]:
        wts = op.get("weights", {})
        if op["type"] != "Linear":
            op["weights"] = {r: put(w, "keep", lambda w=w: weights_h[w]) for r, w in wts.items()}
            continue
        p = choice.get(op["name"], "hybrid")
        new = {}
        if p == FP8:
            w = wts["weight"]
            if w not in weights_32:
                raise BuildError(f"op {op['name']!r}: no fp32 value of weight {w!r} to quantize to fp8")
            wkey = w if len(uses[w]) <= 1 else f"{w}.fp8"
            q, s = quantize_weight(weights_32[w], weight_scale)
            if wkey not in out:
                out[wkey] = q
                out[wkey + ".scale"] = s
            new["weight"], new["weight_scale"] = wkey, wkey + ".scale"
            if "bias" in wts:
                new["bias"] = put(wts["bias"], "hybrid", lambda b=wts["bias"]: weights_h[b])
            if x_amax is not None:
                if op["name"] not in x_amax:
                    raise BuildError(f"op {op['name']!r}: no calibrated activation range for its static fp8 scale")
                from ..fp8 import amax_scale
                xs = f"{op['name']}.x_scale"
                out[xs] = amax_scale(np.array([x_amax[op["name"]]], np.float32))
                new["x_scale"] = xs
        elif p == "fp32":
            for r, w in wts.items():
                new[r] = put(w, "fp32", lambda w=w: np.asarray(weights_32[w], np.float32))
            for t in (op["inputs"][0], op["outputs"][0]):
                if tensors[t]["dtype"] == "float16":
                    tensors[t]["dtype"] = "float32"
        else:
            new = {r: put(w, "hybrid", lambda w=w: weights_h[w]) for r, w in wts.items()}
        op["weights"] = new
        op["precision"] = p
    for io in header["inputs"] + header["outputs"]:
        io["dtype"] = tensors[io["name"]]["dtype"]
    kinds = {choice.get(n, "hybrid") for n in linears}
    header["precision"] = kinds.pop() if len(kinds) == 1 and kinds <= {FP8, "hybrid"} else "mixed"
    return header, out

