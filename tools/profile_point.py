"""Time one (model, precision, batch, seq) point of the GPU runtime, and mark one graph replay for ncu.

    python3 tools/profile_point.py --model bert-base --precision hybrid --point 1x128 --point 32x128
    ncu --profile-from-start off --clock-control none --cache-control none --metrics gpu__time_duration.sum \\
        --csv python3 tools/profile_point.py --model bert-base --point 1x128 --ncu

For each point: GPU time of one run by CUDA events (median and p10/p90 of --iters replays, 4 input sets of
real-looking random ids rotated, never zeros), with the context's CUDA graph captured beforehand. With
--ncu, one extra replay per point runs between cudaProfilerStart/Stop, so ncu (started with
--profile-from-start off) measures exactly the kernels of one forward pass. Exports and builds are cached
under --cache (default /tmp/trtrun-profile). Random weights: right for speed only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from trtrun.export import EXPORT_ARCHS
from trtrun.types import GEMM_SEARCHES


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="bert-base", choices=sorted(EXPORT_ARCHS),
                    help="a named architecture of `trtrun export` (random weights)")
    ap.add_argument("--precision", default="hybrid", choices=["fp32", "fp16", "hybrid", "fp8"])
    ap.add_argument("--point", action="append", default=None, help="BxS (repeatable; default 1x128)")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--ncu", action="store_true", help="profile one replay per point (cudaProfilerStart/Stop)")
    ap.add_argument("--cache", default="/tmp/trtrun-profile")
    ap.add_argument("--ffn-chunks", type=int, default=None, help="Context ffn_chunks (default: the runtime's)")
    ap.add_argument("--workspace-mib", type=int, default=None, help="cuBLASLt workspace (default: the runtime's)")
    ap.add_argument("--no-fuse-residual", action="store_true", help="Context fuse_residual=False")
    ap.add_argument("--ln-input", default="fp16", choices=["fp16", "fp32"],
                    help="build option ln_input (hybrid: dtype of Linear outputs read by post-norm LayerNorms)")
    ap.add_argument("--prenorm-input", default="fp32", choices=["fp32", "fp16"],
                    help="build option prenorm_input (hybrid: dtype of Linear outputs a pre-norm adds into the stream)")
    ap.add_argument("--gemm-search", default=None, choices=GEMM_SEARCHES,
                    help="Context gemm_search (default: the runtime's)")
    ap.add_argument("--gemm-cache", default=None, help="load_gemm_cache(FILE) first (fixed GEMM choices for A/B runs)")
    ap.add_argument("--variant", action="append", default=None,
                    help="NAME:key=int,...[,env.VAR=value] another context with these options (repeatable); "
                         "points alternate; a value may hold commas (env.TRTRUN_ATTN_CFG=2,4)")
    ap.add_argument("--rounds", type=int, default=1, help="timing rounds per context and point")
    ap.add_argument("--fp8-scales", default="channel-dynamic", choices=["channel-dynamic", "tensor-static"],
                    help="fp8: weight scales per channel with per-token activation scales (the default), or one per "
                         "tensor with static activation scales calibrated on random ids (cuBLASLt's scalar scales)")
    ap.add_argument("--plan", default=None, help="time this plan file instead of exporting and building --model")
    a = ap.parse_args()
    points = [tuple(int(x) for x in p.lower().split("x")) for p in (a.point or ["1x128"])]

    import torch

    from trtrun.builder import build
    from trtrun.export import export_model
    from trtrun.runtime import Engine

    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    onnx = cache / f"{a.model}.onnx"
    if a.plan:
        plan_path = Path(a.plan)
    elif not onnx.exists():
        t = time.time()
        export_model(a.model, onnx, seed=0)
        print(f"exported {onnx} in {time.time() - t:.1f}s", flush=True)
    if not a.plan:
        tag = f".{a.fp8_scales}" if a.precision == "fp8" else ""
        plan_path = cache / (f"{a.model}.{a.precision}{tag}{'' if a.ln_input == 'fp16' else '.ln32'}"
                             f"{'' if a.prenorm_input == 'fp32' else '.pre16'}.plan")
    if not plan_path.exists():
        t = time.time()
        kw = {}
        if a.precision == "fp8" and a.fp8_scales == "tensor-static":
            rng = np.random.default_rng(1)
            kw = dict(fp8_weights="tensor", fp8_activations="static", calib_name="random ids",
                      calib=[{"input_ids": rng.integers(1000, 20000, (4, 128), dtype=np.int64),
                              "attention_mask": np.ones((4, 128), np.int64)} for _ in range(2)])
        build(onnx, precision=a.precision, profile={"batch": (1, 8, 32), "seq": (1, 128, 512)},
              ln_input=a.ln_input, prenorm_input=a.prenorm_input, **kw).save(plan_path)
        print(f"built {plan_path} in {time.time() - t:.1f}s", flush=True)

    if a.gemm_cache:
        from trtrun.runtime import load_gemm_cache

        print(f"GEMM cache {a.gemm_cache}: took {load_gemm_cache(a.gemm_cache)} entries", flush=True)
    eng = Engine.load(plan_path)
    # the POINT line's labels: a --plan file by its name and its own precision
    if a.plan:
        label, prec = plan_path.stem, eng.plan.precision
    else:
        label, prec = a.model + ("+pre16" if a.prenorm_input == "fp16" else ""), a.precision
    kw = {}
    if a.ffn_chunks is not None:
        kw["ffn_chunks"] = a.ffn_chunks
    if a.workspace_mib is not None:
        kw["workspace_bytes"] = a.workspace_mib << 20
    if a.no_fuse_residual:
        kw["fuse_residual"] = False
    if a.gemm_search is not None:
        kw["gemm_search"] = a.gemm_search
    # --variant NAME:key=int,...: more contexts on the same engine, each with kw updated by its keys; every point is
    # then timed on each context in turn, --rounds times (alternated, so clock and thermal drift hit all alike).
    # A key env.VAR=value sets that environment variable while the context's graph is captured (the kernel
    # launchers read e.g. TRTRUN_ATTN_QB at launch time), and unsets it after.
    variants = [("base", dict(kw), {})]
    for v in a.variant or []:
        name, _, spec = v.partition(":")
        vk, envs = dict(kw), {}
        # a comma starts the next key only where "key=" follows, so a value may hold commas (env.TRTRUN_ATTN_CFG=2,4)
        for item in filter(None, re.split(r",(?=\s*[A-Za-z_][\w.]*=)", spec)):
            k, _, val = item.partition("=")
            if k.strip().startswith("env."):
                envs[k.strip()[4:]] = val
            else:
                vk[k.strip()] = int(val) if val.strip().lstrip("-").isdigit() else val.strip()  # e.g. gemm_search=focused
        variants.append((name, vk, envs))
    envs_of = {name: envs for name, _, envs in variants}
    @contextlib.contextmanager
    def env_of(name):  # a variant's env.* keys, set while its context is created (read there, e.g.
        saved = {k: os.environ.get(k) for k in envs_of[name]}  # TRTRUN_STAGE_SEPARATE) and its graph captured
        os.environ.update(envs_of[name])
        try:
            yield
        finally:
            for k, old in saved.items():
                if old is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = old

    ctxs = []
    for name, vk, _ in variants:
        with env_of(name):
            ctxs.append((name, vk, eng.create_context(**vk)))
    st = ctxs[0][2].stats()
    dev = torch.device("cuda", 0)
    stream = torch.cuda.Stream(dev)
    rng = np.random.default_rng(0)
    names = [i["name"] for i in eng.plan.inputs] if hasattr(eng, "plan") else ["input_ids", "attention_mask"]
    print(f"{torch.cuda.get_device_name(0)}; plan {plan_path.name}; inputs {names}; context {kw or 'defaults'}: "
          f"weights {eng.weight_bytes / 2**20:.1f} MiB, arena {st['arena_bytes'] / 2**20:.1f} MiB, "
          f"workspace {st['workspace_bytes'] / 2**20:g} MiB", flush=True)
    for B, S in points:
        sets = []
        for _ in range(4):
            f = {"input_ids": torch.from_numpy(rng.integers(1000, 20000, (B, S), dtype=np.int64)).to(dev),
                 "attention_mask": torch.ones((B, S), dtype=torch.int64, device=dev)}
            if "token_type_ids" in names:
                f["token_type_ids"] = torch.zeros((B, S), dtype=torch.int64, device=dev)
            sets.append(f)
        out = {eng._outputs[0][0]: torch.empty((B, S, eng._outputs[0][2][0]), dtype=torch.float32, device=dev)}
        firsts = {}
        for name, _, ctx in ctxs:
            with env_of(name):
                t_first = time.perf_counter()
                for i in range(20):  # the first runs capture the graph and tune the GEMMs; then warm
                    ctx.run_device(sets[i % 4], out, stream=stream)
                stream.synchronize()
                firsts[name] = time.perf_counter() - t_first
        if len(ctxs) > 1:  # the variants must compute the same thing
            ref = None
            for name, _, ctx in ctxs:
                ctx.run_device(sets[1], out, stream=stream)
                stream.synchronize()
                got = next(iter(out.values())).clone()
                if ref is None:
                    ref = got
                elif not torch.equal(ref, got):
                    print(f"VARIANT {name} differs from base at {B}x{S}: max |diff| "
                          f"{(ref - got).abs().max().item():.3g}", flush=True)
        for r in range(a.rounds):
            for name, vk, ctx in ctxs:
                ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(a.iters)]
                with torch.cuda.stream(stream):
                    for i, (e0, e1) in enumerate(ev):
                        e0.record(stream)
                        ctx.run_device(sets[i % 4], out, stream=stream)
                        e1.record(stream)
                stream.synchronize()
                ms = np.array([e0.elapsed_time(e1) for e0, e1 in ev])
                tag = f"{name} " if len(ctxs) > 1 else ""
                print(f"POINT {label} {prec} {B}x{S} {tag}{vk or ''}: p50 {np.median(ms):.4f} ms  "
                      f"p10 {np.quantile(ms, 0.1):.4f}  p90 {np.quantile(ms, 0.9):.4f}  (n={len(ms)}, "
                      f"graphs {ctx.stats().get('graph_count')}, 20 warm-up runs {firsts[name]:.2f} s)", flush=True)
        if a.ncu:
            ctx = ctxs[-1][2]
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
            ctx.run_device(sets[0], out, stream=stream)
            stream.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
    for _, _, ctx in ctxs:
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
