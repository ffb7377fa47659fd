"""Time torch.compile's side of a bench point, and mark one CUDA-graph replay for ncu: the baseline's kernels beside
ours (tools/profile_point.py) in the same metric.

    python3 tools/profile_torch.py --model modernbert --point 8x128 --point 32x128
    ncu --profile-from-start off --clock-control none --cache-control none --metrics gpu__time_duration.sum \\
        --csv python3 tools/profile_torch.py --model modernbert --point 8x128 --ncu > ncu_torch.csv
    python3 tools/ncu_shares.py ncu_torch.csv

The model is the bench's baseline (trtrun.bench): a named architecture recreated as `trtrun export NAME` makes it
(same config, seed 0 and weights), fp16, SDPA attention, torch.compile(mode="reduce-overhead", dynamic=False),
compiled afresh per point. GPU time by CUDA events over --iters replays (median, p10/p90), 4 input sets of random
ids rotated, every row full length. With --ncu, one extra replay per point runs between cudaProfilerStart/Stop,
after compilation and warm-up, so ncu (--profile-from-start off) sees exactly one forward pass's kernels.
Random weights: right for speed only.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="modernbert", help="a named architecture of `trtrun export` (default modernbert)")
    ap.add_argument("--point", action="append", default=None, help="BxS (repeatable; default 8x128)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--ncu", action="store_true", help="profile one replay per point (cudaProfilerStart/Stop)")
    a = ap.parse_args()
    points = [tuple(int(x) for x in p.lower().split("x")) for p in (a.point or ["8x128"])]
    if a.iters < 1 or any(b < 1 or s < 1 for b, s in points):
        ap.error("--iters and every BxS must be >= 1")

    import torch

    from trtrun.export import EXPORT_ARCHS, _import_torch, _load_model

    if a.model not in EXPORT_ARCHS:
        ap.error(f"--model must be one of {', '.join(sorted(EXPORT_ARCHS))}, got {a.model!r}")
    if not torch.cuda.is_available():
        print("profile_torch: no CUDA device", file=sys.stderr)
        return 2
    torch_mod, transformers = _import_torch()
    model, config = _load_model(torch_mod, transformers, a.model, None, 0, attention="sdpa")
    dev = torch.device("cuda", 0)
    model = model.to(device=dev, dtype=torch.float16).eval()
    vocab = int(getattr(config, "vocab_size", 30522))
    print(f"{torch.cuda.get_device_name(dev)}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"{a.model} fp16, SDPA, torch.compile(mode='reduce-overhead')", flush=True)

    def fwd(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    mark = torch.compiler.cudagraph_mark_step_begin
    rng = np.random.default_rng(0)
    for b, s in points:
        torch._dynamo.reset()
        fn = torch.compile(fwd, mode="reduce-overhead", dynamic=False)
        sets = [dict(input_ids=torch.from_numpy(rng.integers(1000, min(vocab, 30000), (b, s))).to(dev),
                     attention_mask=torch.ones((b, s), dtype=torch.int64, device=dev)) for _ in range(4)]

        def call(i):
            mark()
            return fn(**sets[i % len(sets)])

        with torch.no_grad():
            t = time.time()
            for i in range(20):  # compile, capture, warm up
                call(i)
            torch.cuda.synchronize(dev)
            warm = time.time() - t
            ms = []
            for i in range(a.iters):
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                call(i)
                e1.record()
                e1.synchronize()
                ms.append(e0.elapsed_time(e1))
            if a.ncu:
                torch.cuda.synchronize(dev)
                torch.cuda.profiler.start()
                call(0)
                torch.cuda.synchronize(dev)
                torch.cuda.profiler.stop()
        p10, p50, p90 = np.percentile(ms, [10, 50, 90])
        print(f"POINT {a.model} torch-compile {b}x{s} : p50 {p50:.4f} ms  p10 {p10:.4f}  p90 {p90:.4f}  "
              f"(n={a.iters}, compile + 20 warm-up runs {warm:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
