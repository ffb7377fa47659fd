"""The decoders' speed grid on one GPU (issue 20's speed acceptance): SmolLM2-135M-shaped (trtrun.export's "llama"
default: hidden 576, 30 layers, 9 heads, 3 K/V heads) and ModernBERT-base-shaped models (random weights), batch
{1, 8, 32} x sequence {128, 512}: trtrun hybrid beside torch.compile(mode="reduce-overhead") fp16 of the same
model, in one process on one card. The torch model's attention is transformers' default, SDPA (--torch-attention
eager times the explicit matmul-softmax-matmul form instead: slower at 512 tokens, so a weaker baseline). GPU time per forward pass by CUDA events around each call on torch's current
stream (trtrun through run_device with CUDA graphs on), p50 of --iters calls after --warmup. Random token ids, no
padding.

    python3 bench/decoders_grid.py --out $OUT/decoders-grid.json          (on the GPU machine; ~5-8 min)

`trtrun bench` takes only BERT-base/GPT-2 by name (its torch baselines rebuild named models), hence this script.
A model the GPU lowering refuses (ModernBERT's attention windows have no kernel yet) is reported with the refusal
and its torch.compile column still timed. Each point's result is printed as one JSON line as it completes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

MODELS = ("llama", "modernbert")  # trtrun.export's defaults are SmolLM2-135M's and ModernBERT-base's shapes
BATCH = (1, 8, 32)
SEQ = (128, 512)


def _p50(times_ms):
    return float(np.median(np.asarray(times_ms)))


def _time(call, torch, warmup, iters):
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize()
    return _p50([s.elapsed_time(e) for s, e in zip(starts, ends)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--work", default="/tmp/decoders-grid", help="exported models and plans (reused when present)")
    ap.add_argument("--out", default=None, help="JSON file of every point")
    ap.add_argument("--torch-attention", default="sdpa", choices=["sdpa", "eager"],
                    help="the torch baseline's attention implementation (default sdpa, transformers' own default)")
    args = ap.parse_args(argv)

    import torch

    from trtrun.builder import build
    from trtrun.errors import PlanError
    from trtrun.export import export_model, load_torch_model
    from trtrun.runtime import Engine, gpu_available

    ok, why = gpu_available()
    if not ok:
        print(f"GPU runtime unavailable: {why}", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    points = []
    for arch in args.models.split(","):
        onnx = work / f"{arch}.onnx"
        if not onnx.exists():
            export_model(arch, onnx, seed=0)
        plan = build(onnx, precision="hybrid", profile={"batch": (1, 8, max(BATCH)), "seq": (1, 128, max(SEQ))})
        vocab = int(plan.vocab_size)
        try:
            ctx, refused = Engine(plan).create_context(), None
        except PlanError as e:
            ctx, refused = None, str(e)
        model = load_torch_model(arch, seed=0, attention=args.torch_attention).half().cuda().eval()
        compiled = torch.compile(model, mode="reduce-overhead")
        for B in BATCH:
            for S in SEQ:
                rng = np.random.default_rng(B * 1000 + S)
                ids = torch.from_numpy(rng.integers(1, vocab, (B, S))).cuda()
                mask = torch.ones_like(ids)
                row = {"model": arch, "card": card, "batch": B, "seq": S, "torch_attention": args.torch_attention}
                if ctx is not None:
                    feeds = {"input_ids": ids, "attention_mask": mask}
                    # no buffer for an output that passes an input through: run_device returns the tensor fed
                    out = {o: torch.empty((B, S) + tuple(int(d) for d in spec["shape"][2:]), device="cuda",
                                          dtype=getattr(torch, spec["dtype"]))
                           for o, spec in ((o["name"], o) for o in plan.outputs if "input" not in o)}
                    stream = torch.cuda.current_stream()
                    row["trtrun_hybrid_ms"] = _time(lambda: ctx.run_device(feeds, out, stream=stream), torch,
                                                    args.warmup, args.iters)
                else:
                    row["trtrun_hybrid_ms"] = None
                    row["trtrun_refused"] = refused
                t0 = time.perf_counter()
                with torch.inference_mode():
                    kw = {"input_ids": ids, "attention_mask": mask}
                    if arch == "llama":
                        kw["use_cache"] = False
                    row["torch_compile_fp16_ms"] = _time(lambda: compiled(**kw), torch, args.warmup, args.iters)
                row["torch_compile_wall_s"] = round(time.perf_counter() - t0, 1)
                if row["trtrun_hybrid_ms"] is not None:
                    row["trtrun_faster"] = row["trtrun_hybrid_ms"] < row["torch_compile_fp16_ms"]
                print(json.dumps(row), flush=True)
                points.append(row)
        del compiled, model
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps({"points": points}, indent=1) + "\n")
    faster = [p["trtrun_faster"] for p in points if "trtrun_faster" in p]
    print(f"trtrun hybrid faster at {sum(faster)} of {len(faster)} timed points "
          f"({len(points) - len(faster)} points without a trtrun time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
