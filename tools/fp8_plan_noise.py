"""How far apart two *correct* fp8 runs of one plan can land, against how far a *wrong* one lands: the evidence
behind the whole-plan bound of tests/gpu/test_runtime_fp8.py::test_fp8_plan_vs_reference. Host only (the numpy
reference backend); the same tiny models, plans, shapes and feeds as that test.

The measure is the test's: the relative L2 distance of a run to the reference fp8 run, as a ratio to the
reference fp8 run's own distance from the fp32 plan, pooled over the test's shapes (every valid token of all of
them). Two columns per plan:

- legit: the reference fp8 run with one difference injected that a correct GPU run may have:
    hopper-13 / hopper-10  the fp8 GEMM's partial sums cut to 13 / 10 mantissa bits within each 32-wide K chunk
                           before fp32 promotion (Hopper's fp8 tensor cores keep fewer than fp32's bits between
                           cuBLASLt's promotions, FAST_ACCUM off);
    ulp16                  one fp16 ulp up or down on 1% of every fp8 GEMM's input elements (a LayerNorm, GELU or
                           softmax output rounded the other way by a different fp32 summation order);
    both                   the two together (twice, with fresh random flips);
    scale-order            (acc * s_x) * s_w instead of acc * (s_x * s_w).
- wrong: the reference run of another plan of the same model measured against this plan's: what a GPU run that
  quantized with other scales (per tensor for per channel, static for dynamic), ran some Linears in fp16/fp32
  (mixed), or ran hybrid instead would show.

A bound is sound when it sits above every legit ratio and below every wrong one.

    python3 tools/fp8_plan_noise.py [--kinds bert-tiny,gpt2-tiny] [--per-shape]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

F16, F32, F64 = np.float16, np.float32, np.float64


def _trunc(a: np.ndarray, bits: int) -> np.ndarray:
    """float32 values with their mantissa truncated to `bits` bits (toward zero)."""
    a = np.array(a, F32)
    a.view(np.uint32)[...] &= np.uint32((0xFFFFFFFF << (23 - bits)) & 0xFFFFFFFF)
    return a


def _legit_gemms(fp8, rng):
    """The injected differences, each an fp8_gemm with trtrun.fp8.fp8_gemm's signature."""
    plain = fp8.fp8_gemm

    def hopper(bits, chunk=32):
        def gemm(x2, q_w, s_w, x_scale):
            q_x, s_x = fp8.quantize_activation(x2, x_scale)
            X, W = q_x.astype(F64), np.asarray(q_w).astype(F64)
            acc = np.zeros((X.shape[0], W.shape[1]), F32)
            for k0 in range(0, X.shape[1], chunk):  # each chunk's sum is exact in float64, then cut
                acc = acc + _trunc((X[:, k0:k0 + chunk] @ W[k0:k0 + chunk]).astype(F32), bits)
            return acc * (s_x * np.asarray(s_w, F32).reshape(1, -1))
        return gemm

    def flip(x2):
        x = np.asarray(x2, F32)
        away = np.where(rng.random(x.shape) < 0.5, F16(np.inf), F16(-np.inf))
        return np.where(rng.random(x.shape) < 0.01, np.nextafter(x.astype(F16), away).astype(F32), x)

    def scale_order(x2, q_w, s_w, x_scale):
        q_x, s_x = fp8.quantize_activation(x2, x_scale)
        return (q_x.astype(F32) @ np.asarray(q_w).astype(F32) * s_x) * np.asarray(s_w, F32).reshape(1, -1)

    h13 = hopper(13)
    return {"hopper-13": h13, "hopper-10": hopper(10),
            "ulp16": lambda x2, *a: plain(flip(x2), *a),
            "both": lambda x2, *a: h13(flip(x2), *a), "both-again": lambda x2, *a: h13(flip(x2), *a),
            "scale-order": scale_order}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="bert-tiny,gpt2-tiny")
    ap.add_argument("--per-shape", action="store_true", help="also print each shape's ratios")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))
    import rt_helpers as h  # noqa: E402  (the GPU tests' model and feed factories; they need no GPU)
    import test_runtime_fp8 as t  # noqa: E402

    import trtrun.fp8 as fp8
    from trtrun.reference import ReferenceBackend

    plain = fp8.fp8_gemm
    legit = _legit_gemms(fp8, np.random.default_rng(0))
    print(f"{'model':9s} {'plan':20s} | legit (max: name)            | wrong (min: name)")
    for kind in args.kinds.split(","):
        plans = t._plans(kind)
        out = plans["fp32"].outputs[0]["name"]
        ref = {name: ReferenceBackend(p) for name, p in plans.items()}
        for variant in t.VARIANTS:
            num = {k: 0.0 for k in list(legit) + [v for v in ["hybrid"] + t.VARIANTS if v != variant]}
            den = 0.0
            for i, (B, S, padded) in enumerate(t.SHAPES):
                feeds = h.random_feeds(plans[variant], B, S, padded=padded, seed=500 + i)
                m = h.valid_mask(feeds)
                want = ref[variant].run(feeds)[out][m].astype(F64)
                d2 = float(np.sum((want - ref["fp32"].run(feeds)[out][m]) ** 2))
                den += d2
                row = {}
                for name in num:
                    if name in legit:
                        fp8.fp8_gemm = legit[name]  # ref_linear imports it at each call
                        try:
                            got = ReferenceBackend(plans[variant]).run(feeds)[out]
                        finally:
                            fp8.fp8_gemm = plain
                    else:
                        got = ref[name].run(feeds)[out]
                    e2 = float(np.sum((got[m].astype(F64) - want) ** 2))
                    num[name] += e2
                    row[name] = (e2 / d2) ** 0.5
                if args.per_shape:
                    print(f"  {kind} {variant} B={B} S={S}: " + " ".join(f"{k} {v:.3f}" for k, v in row.items()))
            ratio = {k: (v / den) ** 0.5 for k, v in num.items()}
            lk = max(legit, key=lambda k: ratio[k])
            wk = min((k for k in ratio if k not in legit), key=lambda k: ratio[k])
            print(f"{kind:9s} {variant:20s} | {ratio[lk]:.3f} {lk:24s} | {ratio[wk]:.3f} {wk}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
