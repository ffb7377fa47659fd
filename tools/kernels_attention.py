"""Microbenchmark of trtrun's fused attention kernel against PyTorch's scaled_dot_product_attention.

    python3 tools/kernels_attention.py [--quick] [--out FILE]

Both sides take the same packed qkv [B, S, 3*H*D] (PyTorch through [B, H, S, D] views of it, as a
Hugging Face model would hand them over) and run inside a captured CUDA graph of `--per-graph` launches
(so host launch cost is out of both numbers); the graph is replayed `--reps` times, each replay timed with
CUDA events; the median per launch is reported. Inputs are random normal (never zeros), rotated over
several buffers so small problems are not served from L2 alone. Precisions: ours hybrid vs torch fp16
SDPA (fp32 softmax, P in fp16: the same arithmetic); ours fp16 (fp16 softmax); ours fp32 vs torch fp32
SDPA with TF32 off.
Needs torch with CUDA and the plugin binding (trtrun._C or tools/kernels_build.py's standalone module).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "gpu"))
sys.path.insert(0, str(REPO))

import test_plugins as H  # noqa: E402  (the kernel tests' helpers: binding lookup, pointers)


def card() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def time_graph(torch, fn, per_graph: int, reps: int) -> float:
    """Median ms per call of fn() (which enqueues on the current stream), from CUDA-graph replays."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up outside the graph (module load, first-launch costs)
            fn(0)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(per_graph):
            fn(i)
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / per_graph)
    return statistics.median(times)


def bench_case(torch, P, B, S, Hh, D, causal, masked, prec, per_graph, reps, with_torch=True, window=-1):
    HD = Hh * D
    dt = torch.float32 if prec == "fp32" else torch.float16
    nbuf = max(2, min(8, int(2e8 // (B * S * 3 * HD * 2)) or 1))
    gen = torch.Generator(device="cuda").manual_seed(B * 1000 + S)
    qkvs = [torch.randn(B, S, 3 * HD, device="cuda", dtype=dt, generator=gen) for _ in range(nbuf)]
    ys = [torch.empty(B, S, HD, device="cuda", dtype=dt) for _ in range(nbuf)]
    mask = None
    if masked == "ones":  # a mask with every key valid: what a BERT plan passes for unpadded batches
        mask = torch.ones(B, S, device="cuda", dtype=torch.int32)
    elif masked:  # right padding: lengths uniform in [S/2, S]
        lens = torch.randint(S // 2, S + 1, (B,), generator=gen, device="cuda")
        mask = (torch.arange(S, device="cuda")[None, :] < lens[:, None]).to(torch.int32).contiguous()
    scale = 1.0 / math.sqrt(D)
    code = {"fp32": P.FP32, "fp16": P.FP16, "hybrid": P.HYBRID}[prec]
    dcode = P.F32 if dt == torch.float32 else P.F16

    def ours(i):
        k = i % nbuf
        if window >= 0:  # the sliding-window (EXTRA) kernels: ModernBERT's local layers, Mistral-style windows
            P.attention_gqa(qkvs[k].data_ptr(), "float32" if dt == torch.float32 else "float16",
                            0 if mask is None else mask.data_ptr(), ys[k].data_ptr(),
                            "float32" if dt == torch.float32 else "float16", B, S, Hh, Hh, D, scale, causal, prec,
                            torch.cuda.current_stream().cuda_stream, window=window)
            return
        P.attention(qkvs[k].data_ptr(), dcode, 0 if mask is None else mask.data_ptr(), ys[k].data_ptr(), dcode,
                    B, S, Hh, D, scale, causal, code, torch.cuda.current_stream().cuda_stream)

    views = [tuple(q[..., j * HD:(j + 1) * HD].view(B, S, Hh, D).transpose(1, 2) for j in range(3)) for q in qkvs]
    tmask = None
    if mask is not None:
        tmask = (mask != 0)[:, None, None, :]
        if causal:
            tmask = tmask & torch.ones(S, S, dtype=torch.bool, device="cuda").tril()[None, None]
    if window >= 0:  # what transformers hands SDPA for a local layer: a band of |i - j| <= window
        pos = torch.arange(S, device="cuda")
        band = ((pos[None, :] - pos[:, None]).abs() <= window)[None, None]
        if causal:
            band = band & torch.ones(S, S, dtype=torch.bool, device="cuda").tril()[None, None]
        tmask = band if tmask is None else tmask & band

    def theirs(i):
        q, k, v = views[i % nbuf]
        if tmask is None:
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        else:
            torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=tmask, scale=scale)

    t_ours = time_graph(torch, ours, per_graph, reps)
    t_torch = time_graph(torch, theirs, per_graph, reps) if with_torch else float("nan")
    flops = 4.0 * B * Hh * S * S * D * (0.5 if causal else 1.0)
    return t_ours, t_torch, flops


def parse_case(text: str) -> tuple:
    """'B,S,H,D,causal,mask,prec' -> the tuple bench_case takes (mask: none, ones or pad = right padding)."""
    parts = text.split(",")
    if len(parts) != 7:
        raise SystemExit(f"--case {text!r}: expected B,S,H,D,causal,mask,prec (7 fields), got {len(parts)}")
    try:
        B, S, Hh, D, causal = (int(x) for x in parts[:5])
    except ValueError:
        raise SystemExit(f"--case {text!r}: B, S, H, D and causal must be integers") from None
    masks = {"none": False, "ones": "ones", "pad": True}
    if parts[5] not in masks or parts[6] not in ("hybrid", "fp16", "fp32"):
        raise SystemExit(f"--case {text!r}: mask must be none|ones|pad and prec hybrid|fp16|fp32")
    return (B, S, Hh, D, bool(causal), masks[parts[5]], parts[6])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--per-graph", type=int, default=20)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--case", action="append", default=None, metavar="B,S,H,D,causal,mask,prec",
                    help="time these cases instead of the built-in list (repeatable), e.g. 32,128,12,64,0,ones,hybrid "
                         "(causal 0|1; mask none|ones|pad)")
    ap.add_argument("--no-torch", action="store_true", help="time ours only (A/B runs of our own variants)")
    ap.add_argument("--sweep", action="store_true",
                    help="also time each forced tensor-core configuration (TRTRUN_ATTN_CFG=MT,warps); with --case, "
                         "over those cases")
    ap.add_argument("--window", type=int, default=-1,
                    help="every case with this sliding window (keys within W of the query; the kernels with extras), "
                         "torch with the same band as its mask")
    args = ap.parse_args()
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    P, why = H.load_plugins()
    if P is None:
        print(f"plugin binding not found: {why}")
        return 1
    cases = [  # (B, S, heads, head_size, causal, masked, precision)
        (32, 512, 12, 64, False, False, "hybrid"),
        (32, 512, 12, 64, False, True, "hybrid"),
        (32, 512, 12, 64, False, "ones", "hybrid"),  # what a BERT plan passes for an unpadded batch
        (32, 512, 12, 64, True, False, "hybrid"),
        (8, 512, 12, 64, True, False, "hybrid"),   # GPT-2's causal shapes at few sequences
        (1, 512, 12, 64, True, False, "hybrid"),
        (1, 128, 12, 64, True, False, "hybrid"),
        (32, 128, 12, 64, True, False, "hybrid"),
        (32, 128, 12, 64, False, False, "hybrid"),
        (32, 128, 12, 64, False, "ones", "hybrid"),
        (8, 128, 12, 64, False, False, "hybrid"),
        (1, 128, 12, 64, False, False, "hybrid"),
        (1, 128, 12, 64, False, "ones", "hybrid"),
        (1, 32, 12, 64, False, False, "hybrid"),
        (32, 32, 12, 64, False, False, "hybrid"),
        (32, 512, 12, 32, False, False, "hybrid"),
        (16, 512, 16, 128, False, False, "hybrid"),
        (32, 512, 12, 64, False, False, "fp16"),
        (32, 128, 12, 64, False, False, "fp16"),
        (32, 512, 12, 64, False, False, "fp32"),
        (32, 128, 12, 64, False, False, "fp32"),
    ]
    if args.case:
        cases = [parse_case(c) for c in args.case]
    if args.quick:
        cases = [c for c in cases if c[0] == 32 and c[1] == 512 and c[3] == 64 and c[5] is False]
    head = (f"# trtrun attention kernel vs torch SDPA ({torch.__version__}), {card()}, "
            f"{datetime.date.today().isoformat()}; median ms per call, CUDA-graph replays; overrides: "
            + (" ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("TRTRUN_ATTN_")) or "none"))
    lines = [head, f"{'B':>3} {'S':>4} {'H':>3} {'D':>4} {'causal':>6} {'mask':>5} {'prec':>6} | "
             f"{'ours ms':>8} {'TFLOP/s':>7} | {'torch ms':>8} {'TFLOP/s':>7} | {'ours/torch':>10} | launch config"]
    print(lines[0])
    print(lines[1])
    for (B, S, Hh, D, causal, masked, prec) in cases:
        t_o, t_t, fl = bench_case(torch, P, B, S, Hh, D, causal, masked, prec, args.per_graph, args.reps,
                                  with_torch=not args.no_torch, window=args.window)
        line = (f"{B:>3} {S:>4} {Hh:>3} {D:>4} {str(causal):>6} {str(masked):>5} {prec:>6} | {t_o:8.4f} "
                f"{fl / t_o / 1e9:7.1f} | {t_t:8.4f} {fl / t_t / 1e9:7.1f} | {t_o / t_t:10.2f}")
        if hasattr(P, "attention_config"):
            code = {"fp32": P.FP32, "fp16": P.FP16, "hybrid": P.HYBRID}[prec]
            line += " | " + P.attention_config(B, S, Hh, D, causal, code, args.window >= 0)
        print(line, flush=True)
        lines.append(line)
    if args.sweep:
        lines.append("# sweep: ours ms per forced configuration TRTRUN_ATTN_CFG=MT,nw[,KS] (16*MT rows per warp, nw "
                     "warps per key group, KS key groups a block); auto = the launcher's choice")
        cfgs = {"auto": {}}
        for c in ("1,4", "1,2", "1,1", "2,4", "2,2", "2,1", "1,4,2", "1,2,2"):
            cfgs[c] = {"TRTRUN_ATTN_CFG": c}
        lines.append(f"{'B':>3} {'S':>4} {'H':>3} {'D':>4} {'causal':>6} {'mask':>5} {'prec':>6} | "
                     + " ".join(f"{c:>7}" for c in cfgs))
        print(lines[-2])
        print(lines[-1])
        sweep_cases = cases if args.case else [(32, 512, 12, 64, False, False, "hybrid"),
                       (32, 512, 12, 64, False, True, "hybrid"),
                       (32, 512, 12, 64, True, False, "hybrid"),
                       (1, 512, 12, 64, True, False, "hybrid"),
                       (8, 512, 12, 64, True, False, "hybrid"),
                       (1, 512, 12, 64, False, True, "hybrid"),
                       (32, 128, 12, 64, False, False, "hybrid"),
                       (32, 128, 12, 64, False, "ones", "hybrid"),
                       (32, 128, 12, 64, True, False, "hybrid"),
                       (8, 128, 12, 64, False, "ones", "hybrid"),
                       (32, 64, 12, 64, False, "ones", "hybrid"),
                       (32, 128, 12, 32, False, "ones", "hybrid"),
                       (8, 128, 12, 64, False, False, "hybrid"),
                       (1, 128, 12, 64, False, False, "hybrid"),
                       (1, 128, 12, 64, False, "ones", "hybrid"),
                       (1, 512, 12, 64, False, "ones", "hybrid"),
                       (1, 256, 12, 64, True, False, "hybrid"),
                       (2, 512, 12, 64, True, False, "hybrid"),
                       (8, 512, 12, 64, False, False, "hybrid"),
                       (1, 512, 12, 64, False, False, "hybrid"),
                       (32, 512, 12, 64, False, False, "fp16")]
        for (B, S, Hh, D, causal, masked, prec) in sweep_cases:
            row = []
            for c, env in cfgs.items():
                os.environ.pop("TRTRUN_ATTN_CFG", None)
                os.environ.update(env)
                t, _, _ = bench_case(torch, P, B, S, Hh, D, causal, masked, prec, args.per_graph, args.reps,
                                     with_torch=False, window=args.window)
                row.append(f"{t:7.4f}")
            os.environ.pop("TRTRUN_ATTN_CFG", None)
            line = f"{B:>3} {S:>4} {Hh:>3} {D:>4} {str(causal):>6} {str(masked):>5} {prec:>6} | " + " ".join(row)
            print(line, flush=True)
            lines.append(line)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
