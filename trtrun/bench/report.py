"""summary.md (written by the tool from results.jsonl, never by hand) and the plots.

The numbers it states come from trtrun.bench.analysis, which the plots read too.

What the summary states, per model, from the measured points only:
- speedup over the CPU baseline (onnxruntime fp32, every host core) at batch 1 and at the best point,
  end to end (host numpy in, host numpy out, for both) and, for reference, trtrun's GPU time;
- hybrid's overhead over fp16 (GPU time p50, same shape, same CUDA-graph mode);
- memory: trtrun's device memory (weights + arena + workspace, as the runtime reports) against PyTorch
  fp32 eager's peak (parameters + torch.cuda.max_memory_allocated growth) at the same shape;
- every point where a trtrun engine is slower than a baseline (GPU time p50 against the GPU baselines,
  end-to-end p50 against the CPU baseline), or a line saying there is none.
Comparisons pair points measured on the same card only.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from .._io import atomic_write
from ..types import NAMED_ARCHS
from .analysis import (GPU_BASELINES, Index, compute_label, cpu_speedups, headline, hybrid_overheads, memory_rows,
                       p50, slower_points)
from .results import ENGINE_ORDER, ResultStore

SUMMARY = "summary.md"
# BERT-base hybrid latency targets (ms, p50) the summary checks where the sweep measured them
SPEED_TARGETS = {"b1s128": 0.35, "b32s128": 1.6}


def _fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}")


def _fmt_x(v):
    return "-" if v is None else f"{v:.1f}x" if v >= 10 else f"{v:.2f}x"


def _mib(v):
    return "-" if v is None else f"{v / 2**20:.0f} MiB"


def _timer_label(r, br, which) -> str:
    if which == "e2e":
        return "end to end"
    cuda = all(str(x.get("gpu_timer") or "").startswith("CUDA") for x in (r, br))
    return "GPU time" if cuda else "compute time (host clock)"


# ------------------------------------------------------------------------------------------ summary
def summary_markdown(store: ResultStore, cfg=None) -> str:
    idx = Index(store)
    L: list[str] = []
    w = L.append
    sessions = store.sessions
    cards = sorted({str(s.get("card")) for s in sessions if s.get("card")})
    w("# trtrun bench summary")
    w("")
    w("Written by `trtrun bench` from results.jsonl (do not edit by hand; `trtrun bench --report-only "
      "--out DIR` rewrites it).")
    w("")
    if sessions:
        last = sessions[-1]
        w(f"- card: {', '.join(cards) if cards else 'none (reference backend, CPU only)'}"
          f"{'  **(several cards: comparisons pair points of the same card only)**' if len(cards) > 1 else ''}")
        for k in ("gpu_uuid", "driver", "cuda", "host_cpu", "host_cores", "torch", "transformers", "onnxruntime",
                  "trtrun", "git"):
            vals = sorted({str(s.get(k)) for s in sessions if s.get(k) not in (None, "")})
            if vals:
                w(f"- {k}: {', '.join(vals)}")
        w(f"- sessions: {len(sessions)} ({sessions[0].get('date')} .. {last.get('date')}); backend "
          f"{', '.join(sorted({str(s.get('backend')) for s in sessions}))}")
        w(f"- command (last session): `{last.get('command')}`")
    n_ok = len(idx.ok)
    w(f"- points: {len(idx.all)} recorded, {n_ok} measured; per engine: " + ", ".join(
        f"{e} {sum(1 for r in idx.ok if r['engine'] == e)}" for e in
        sorted({r['engine'] for r in idx.ok}, key=lambda e: ENGINE_ORDER.index(e) if e in ENGINE_ORDER else 99)))
    w("")
    w("## How it was measured")
    w("")
    conf = (sessions[-1].get("config") if sessions else None) or {}
    if compute_label(idx) == "host-clock time":
        w("- host-clock time: no GPU ran here (the numpy reference backend, torch on the CPU): each engine call "
          "is timed by the host clock; statistics min, mean, p50, p90, p99 over the timed iterations (n is in "
          "results.jsonl). They say nothing about trtrun's speed on a GPU.")
    else:
        w("- GPU time: CUDA events recorded on the stream the engine runs on, around the engine's work only "
          "(inputs already on the device, outputs into preallocated device buffers); iterations enqueued back to "
          "back; statistics min, mean, p50, p90, p99 over the timed iterations (n is in results.jsonl). The "
          "reference backend and torch on the CPU are timed by the host clock instead.")
    w("- End to end: host numpy in to host numpy out through pinned host buffers (host-to-device and "
      "device-to-host copies counted), host clock, one synchronous call per sample.")
    if conf:
        w(f"- Per point: up to {conf.get('warmup')} warm-up and {conf.get('iters')} timed iterations, fewer "
          f"when they would take more than {conf.get('max_time')} s, never fewer than {conf.get('min_iters')} "
          f"(CPU baseline: {conf.get('cpu_min_iters')}); inputs rotated among {conf.get('input_sets')} sets of "
          f"real token ids (Wikipedia text through the model's tokenizer), every row full length.")
        if "torch-compile" in (conf.get("baselines") or []):
            grid = ("the full grid" if conf.get("compile_grid") == "full" else
                    f"the subset batch {conf.get('compile_batch')} x sequence {conf.get('compile_seq')} "
                    f"(compiling takes 10-30 s per shape; `--compile-grid full` runs every point)")
            w(f"- torch.compile(mode=\"reduce-overhead\", dynamic=False) fp16 (CUDA graphs), compiled per shape, "
              f"on {grid}.")
        if "cpu" in (conf.get("baselines") or []):
            grid = ("the full grid" if conf.get("cpu_grid") == "full" else
                    f"the subset batch {conf.get('cpu_batch')} x sequence {conf.get('cpu_seq')} "
                    f"(`--cpu-grid full` runs every point)")
            w(f"- CPU baseline: onnxruntime fp32 on the fp32 ONNX, "
              f"{conf.get('cpu_threads') or 'all'} host threads, on {grid}; timed end to end.")
    mem_src = sorted({r["mem_source"] for r in idx.ok if r.get("mem_source")})
    for m in mem_src:
        w(f"- Memory ({'trtrun' if m.startswith('runtime') else 'PyTorch'}): {m}.")
    w("- PyTorch baselines run the same weights as the ONNX (named architectures: recreated with the same "
      "config and seed as the export); the cross-engine output checks below say whether they compute the "
      "same function.")
    w("")
    for model in idx.models:
        _model_section(idx, model, w)
    _unavailable_section(idx, w)
    return "\n".join(L) + "\n"


def _model_section(idx: Index, model: str, w) -> None:
    w(f"## {model}")
    w("")
    head = headline(idx, model)
    if head is None:
        w("No trtrun point measured.")
        w("")
        return
    tl = compute_label(idx, model)
    checks = [c for c in idx.checks if c["model"] == model]
    for c in checks:
        cos = c.get("cosine")
        w(f"- output check {c['a']} vs {c['b']} (batch {c['batch']}, seq {c['seq']}): "
          + (f"mean cosine {cos:.7f} (1 - cosine = {1 - cos:.1e})" if cos is not None
             else f"could not run ({c.get('note')})")
          + (" **(low: these engines do not compute the same function)**" if cos is not None and cos < 0.99 else ""))
    # --- CPU speedup
    sp = cpu_speedups(idx, model, head)
    if sp:
        b1 = [x for x in sp if x[0] == 1]
        if b1:
            w(f"- **Speedup over the CPU baseline at batch 1** ({head} vs onnxruntime fp32): "
              + ", ".join(f"seq {s}: {_fmt_x(e)} end to end ({_fmt_x(g)} on {tl})" for _, s, e, g in b1) + ".")
        else:
            w("- Speedup over the CPU baseline at batch 1: the CPU baseline has no batch-1 point.")
        best = max((x for x in sp if x[2] is not None), key=lambda x: x[2], default=None)
        if best:
            w(f"- **Speedup over the CPU baseline at the best point**: {_fmt_x(best[2])} end to end at batch "
              f"{best[0]}, seq {best[1]} ({head}; {_fmt_x(best[3])} on {tl}).")
        alls = []
        for e in idx.engines(model):
            if e.startswith("trtrun-"):
                alls += [(x[2], e, x[0], x[1]) for x in cpu_speedups(idx, model, e) if x[2] is not None]
        if alls:
            v, e, b, s = max(alls)
            if e != head:
                w(f"  (best over every trtrun precision: {_fmt_x(v)} with {e} at batch {b}, seq {s}.)")
    else:
        w("- Speedup over the CPU baseline: not measured (no CPU baseline point shares a shape with trtrun).")
    # --- GPU baselines
    for base in GPU_BASELINES:
        rs = []
        for b, s in idx.shapes(model, base):
            t, r = idx.get(model, head, b, s), idx.get(model, base, b, s)
            if t is not None and r is not None and idx.same_card(t, r) and p50(t) and p50(r):
                rs.append((p50(r) / p50(t), b, s))
        if rs:
            lo, hi = min(rs), max(rs)
            w(f"- Speedup over {base} ({head}, {tl} p50, {len(rs)} shapes): median "
              f"{_fmt_x(statistics.median(x[0] for x in rs))}, from {_fmt_x(lo[0])} (batch {lo[1]}, seq {lo[2]}) "
              f"to {_fmt_x(hi[0])} (batch {hi[1]}, seq {hi[2]}).")
    # --- hybrid overhead
    ho = hybrid_overheads(idx, model)
    if ho:
        vals = [x[3] for x in ho]
        worst = max(ho, key=lambda x: x[3])
        w(f"- **Hybrid's overhead over fp16** ({tl} p50, {len(ho)} shapes): median {100 * statistics.median(vals):+.1f}%, "
          f"range {100 * min(vals):+.1f}% .. {100 * max(vals):+.1f}% (largest at batch {worst[0]}, seq {worst[1]}, "
          f"graphs {worst[2]}); above 10% at {sum(v > 0.10 + 1e-9 for v in vals)} of {len(vals)}.")
    else:
        w("- Hybrid's overhead over fp16: not measured (needs trtrun-hybrid and trtrun-fp16 at the same shapes).")
    # --- memory
    mr = memory_rows(idx, model)
    if mr:
        for e in sorted({x[0] for x in mr}, key=lambda e: ENGINE_ORDER.index(e) if e in ENGINE_ORDER else 99):
            rows = [x for x in mr if x[0] == e]
            big = max(rows, key=lambda x: (x[1] * x[2], x[1]))
            reds = [1 - t / f for _, _, _, t, f in rows]
            w(f"- **Memory reduction against PyTorch fp32 eager** ({e}): {100 * (1 - big[3] / big[4]):.1f}% less at "
              f"batch {big[1]}, seq {big[2]} ({_mib(big[3])} vs {_mib(big[4])}); over {len(rows)} shapes "
              f"{100 * min(reds):.1f}% .. {100 * max(reds):.1f}% (trtrun's arena is sized for the profile's "
              f"largest shape, so its number is the same at every shape).")
    else:
        w("- Memory reduction against PyTorch fp32 eager: not measured (needs device memory of both; the "
          "reference backend and the CPU report none).")
    # --- slower points
    sl = slower_points(idx, model)
    if not sl:
        w("- **Where trtrun is slower than a baseline**: nowhere; every trtrun point was faster than every "
          "baseline measured at its shape.")
    else:
        by_pair = defaultdict(int)
        for r, base, *_ in sl:
            by_pair[(r["engine"], base)] += 1
        w(f"- **Where trtrun is slower than a baseline**: {len(sl)} comparisons ("
          + ", ".join(f"{e} vs {b}: {n}" for (e, b), n in sorted(by_pair.items())) + "); every one is listed below.")
    w("")
    if sl:
        w(f"### {model}: points where trtrun is slower than a baseline")
        w("")
        w("| trtrun engine | graphs | batch | seq | trtrun p50 ms | baseline | baseline p50 ms | ratio | timer |")
        w("|---|---|---|---|---|---|---|---|---|")
        for r, base, t, bt, which, br in sorted(sl, key=lambda x: (x[0]["engine"], x[0]["cuda_graphs"], x[1],
                                                                x[0]["batch"], x[0]["seq"])):
            w(f"| {r['engine']} | {r['cuda_graphs']} | {r['batch']} | {r['seq']} | {_fmt_ms(t)} | {base} | "
              f"{_fmt_ms(bt)} | {t / bt:.2f} | {_timer_label(r, br, which)} |")
        w("")
    _targets_section(idx, model, w)
    _tables(idx, model, w)


def _targets_section(idx: Index, model: str, w) -> None:
    """The speed and memory targets (BERT-base / GPT-2), where the sweep measured them."""
    if model not in NAMED_ARCHS:  # full-size named architectures only
        return
    base = model
    lines = []
    h = lambda b, s: p50(idx.get(model, "trtrun-hybrid", b, s))  # noqa: E731
    if base == "bert-base":
        for (b, s), lim in (((1, 128), SPEED_TARGETS["b1s128"]), ((32, 128), SPEED_TARGETS["b32s128"])):
            v = h(b, s)
            if v is not None:
                lines.append(f"| hybrid {compute_label(idx, model)} b={b} s={s} <= {lim} ms | {_fmt_ms(v)} ms | "
                             f"{'yes' if v <= lim else 'NO'} |")
    n_cmp = n_win = 0
    for b in (1, 8, 32):
        for s in (32, 128, 512):
            t, c = idx.get(model, "trtrun-hybrid", b, s), idx.get(model, "torch-compile", b, s)
            if t is not None and c is not None and idx.same_card(t, c):
                n_cmp += 1
                n_win += p50(t) < p50(c)
    if n_cmp:
        lines.append(f"| hybrid faster than torch.compile at batch {{1,8,32}} x seq {{32,128,512}} | "
                     f"{n_win} of {n_cmp} shapes | {'yes' if n_win == n_cmp == 9 else 'NO' if n_win < n_cmp else 'partly measured'} |")
    ho = [x[3] for x in hybrid_overheads(idx, model)]
    if ho:
        lines.append(f"| hybrid at most 10% over fp16 | max {100 * max(ho):+.1f}% | {'yes' if max(ho) <= 0.10 + 1e-9 else 'NO'} |")
    mr = [x for x in memory_rows(idx, model) if x[0] == "trtrun-hybrid"]
    if mr:
        big = max(mr, key=lambda x: (x[1] * x[2], x[1]))
        frac = big[3] / big[4]
        lines.append(f"| hybrid memory <= 40% of torch fp32 eager (b={big[1]} s={big[2]}) | {100 * frac:.1f}% | "
                     f"{'yes' if frac <= 0.40 else 'NO'} |")
    if lines:
        w(f"### {model}: speed targets")
        w("")
        w("| target | measured | met |")
        w("|---|---|---|")
        for line in lines:
            w(line)
        w("")


def _tables(idx: Index, model: str, w) -> None:
    w(f"### {model}: p50 latency (ms; {compute_label(idx, model)}, CPU baseline end to end)")
    w("")
    for e in idx.engines(model):
        modes = sorted({r["cuda_graphs"] for r in idx.ok if r["model"] == model and r["engine"] == e})
        for g in modes:
            shapes = [(r["batch"], r["seq"]) for r in idx.ok if r["model"] == model and r["engine"] == e
                      and r["cuda_graphs"] == g]
            bs = sorted({b for b, _ in shapes})
            ss = sorted({s for _, s in shapes})
            which = "e2e" if e == "cpu" else "gpu"
            w(f"{e}" + (f", CUDA graphs {g}" if g in ("on", "off") and e.startswith("trtrun") else ""))
            w("")
            w("| batch \\ seq | " + " | ".join(map(str, ss)) + " |")
            w("|---|" + "---|" * len(ss))
            for b in bs:
                w(f"| {b} | " + " | ".join(_fmt_ms(p50(idx.get(model, e, b, s, g), which)) for s in ss) + " |")
            w("")


def _unavailable_section(idx: Index, w) -> None:
    bad = [r for r in idx.all if r.get("status") != "ok"]
    if not bad:
        return
    w("## Points not measured")
    w("")
    groups = defaultdict(list)
    for r in bad:
        groups[(r["model"], r["engine"], r["status"], r.get("note") or "")].append(r)
    for (m, e, st, note), rs in sorted(groups.items()):
        w(f"- {m} {e}: {st} at {len(rs)} point(s): {note}")
    w("")


def write_report(store: ResultStore, cfg=None, *, plots: bool = True, log=None) -> list[Path]:
    """summary.md (+ plots/*.png) in the store's folder; returns the paths written."""
    log = log or (lambda m: None)
    out = Path(store.out)
    text = summary_markdown(store, cfg)
    path = out / SUMMARY
    atomic_write(path, text)
    paths = [path]
    if plots:
        try:
            from .plots import write_plots

            paths += write_plots(store, out / "plots")
        except ImportError as e:
            log(f"plots skipped: matplotlib is not installed ({e}): pip install 'trtrun[bench]'")
    return paths


def short_table(store: ResultStore) -> str:
    """A few lines for the terminal: per model and engine, points measured and p50 at landmark shapes."""
    idx = Index(store)
    marks = [(1, 128), (8, 128), (32, 128), (32, 512)]
    lines = []
    for model in idx.models:
        shapes = set(idx.shapes(model))
        cols = [m for m in marks if m in shapes] or sorted(shapes)[:4]
        lines.append(f"{model}: p50 ms ({compute_label(idx, model)}; cpu end to end)")
        lines.append(f"  {'engine':<15} {'points':>6} " + " ".join(f"{f'b{b} s{s}':>10}" for b, s in cols))
        for e in idx.engines(model):
            n = sum(1 for r in idx.ok if r["model"] == model and r["engine"] == e)
            which = "e2e" if e == "cpu" else "gpu"
            lines.append(f"  {e:<15} {n:>6} " + " ".join(f"{_fmt_ms(p50(idx.get(model, e, b, s), which)):>10}"
                                                      for b, s in cols))
    bad = [r for r in idx.all if r.get("status") != "ok"]
    if bad:
        lines.append(f"not measured: {sum(r['status'] == 'unavailable' for r in bad)} unavailable, "
                     f"{sum(r['status'] == 'error' for r in bad)} failed (see summary.md)")
    return "\n".join(lines)
