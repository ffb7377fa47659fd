"""The sweep's plots (matplotlib, Agg, PNG), one set per model, in DIR/plots/:

    <model>-latency.png          p50 latency against sequence length, one panel per batch size, every engine
    <model>-speedup.png          heatmaps batch x sequence of trtrun's speedup over PyTorch fp32 eager,
                                 torch.compile and the CPU baseline
    <model>-memory.png           peak device memory per precision and baseline (largest shape; and vs tokens)
    <model>-hybrid-overhead.png  heatmap of hybrid's GPU time over fp16's, in percent
Comparisons use the same times as summary.md: GPU p50 against GPU baselines, end to end against the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

from .analysis import GPU_BASELINES, Index, compute_label, headline, hybrid_overheads, p50
from .results import ResultStore

STYLE = {
    "trtrun-fp32": ("tab:blue", "o", "-"),
    "trtrun-fp16": ("tab:orange", "s", "-"),
    "trtrun-hybrid": ("tab:green", "D", "-"),
    "torch-fp32": ("tab:gray", "v", "--"),
    "torch-fp16": ("tab:brown", "^", "--"),
    "torch-compile": ("tab:purple", "P", "--"),
    "cpu": ("black", "x", ":"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _save(plt, fig, path: Path, rect=None) -> Path:
    """Lay `fig` out (within `rect`, if given), write it to `path` and free it."""
    if rect is None:
        fig.tight_layout()
    else:
        fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _card_title(idx: Index) -> str:
    cards = sorted({str(s.get("card")) for s in idx.sessions.values() if s.get("card")})
    return ", ".join(cards) if cards else "CPU (reference backend)"


def write_plots(store: ResultStore, out_dir) -> list[Path]:
    idx = Index(store)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    paths = []
    for model in idx.models:
        if not any(r["model"] == model for r in idx.ok):
            continue
        for fn in (_latency, _speedup, _memory, _hybrid):
            p = fn(plt, idx, model, out_dir)
            if p is not None:
                paths.append(p)
    return paths


def _latency(plt, idx: Index, model: str, out_dir: Path):
    batches = sorted({b for b, _ in idx.shapes(model)})
    if not batches:
        return None
    n = len(batches)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, b in zip(axes.flat, batches):
        for e in idx.engines(model):
            modes = sorted({r["cuda_graphs"] for r in idx.ok if r["model"] == model and r["engine"] == e})
            for g in modes:
                pts = sorted((r["seq"], p50(r, "e2e" if e == "cpu" else "gpu")) for r in idx.ok
                             if r["model"] == model and r["engine"] == e and r["cuda_graphs"] == g and r["batch"] == b)
                pts = [(s, v) for s, v in pts if v is not None]
                if not pts:
                    continue
                color, marker, ls = STYLE.get(e, ("tab:red", ".", "-"))
                if e.startswith("trtrun") and g == "off" and len(modes) > 1:
                    ls = ":"
                label = e + (f" (graphs {g})" if e.startswith("trtrun") and len(modes) > 1 else "")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, linestyle=ls,
                        label=label, markersize=4)
        ax.set_title(f"batch {b}")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        seqs = sorted({s for _, s in idx.shapes(model)})
        ax.set_xticks(seqs, [str(s) for s in seqs])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    h, lab = axes.flat[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=min(len(lab), 4), fontsize=8)
    fig.suptitle(f"{model}: p50 latency vs sequence length ({_card_title(idx)}; {compute_label(idx, model)}, "
                 f"CPU baseline end to end)")
    return _save(plt, fig, out_dir / f"{_slug(model)}-latency.png", rect=(0, 0.08, 1, 0.95))


def _heat(ax, plt, grid, bs, ss, title, fmt, cmap, center=None, log=False):
    """A batch x seq heatmap of `grid` values, each cell annotated with fmt(value); missing cells '-'.
    log: color by log10(value) (speedups: 0.5x and 2x equally far from 1x); center: the value drawn
    in the colormap's middle (1x for speedups, 0% for overheads)."""
    import numpy as np

    a = np.array([[grid.get((b, s), np.nan) for s in ss] for b in bs], dtype=float)
    c = np.log10(np.where(a > 0, a, np.nan)) if log else a.copy()
    mid = (np.log10(center) if log else center) if center is not None else None
    finite = c[np.isfinite(c)]
    if mid is not None and finite.size:
        span = max(abs(finite.max() - mid), abs(finite.min() - mid), 1e-9)
        lo, hi = mid - span, mid + span
    else:
        lo, hi = (finite.min(), finite.max()) if finite.size else (0, 1)
    im = ax.imshow(c, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    ax.set_xticks(range(len(ss)), [str(s) for s in ss])
    ax.set_yticks(range(len(bs)), [str(b) for b in bs])
    ax.set_xlabel("sequence length")
    ax.set_ylabel("batch")
    ax.set_title(title, fontsize=9)
    for i in range(len(bs)):
        for j in range(len(ss)):
            v = a[i, j]
            # dark cells (far from the middle of a diverging map) get white text
            t = (c[i, j] - lo) / (hi - lo) if np.isfinite(c[i, j]) and hi > lo else 0.5
            color = "white" if abs(t - 0.5) > 0.35 else "black"
            ax.text(j, i, "-" if not np.isfinite(v) else fmt(v), ha="center", va="center", fontsize=7, color=color)
    cb = plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if log:
        cb.set_label("log10", fontsize=7)


def _fmt_speedup(v: float) -> str:
    return f"{v:.1f}x" if v >= 10 else f"{v:.2f}x" if v >= 0.1 else f"{v:.2g}x"


def _speedup(plt, idx: Index, model: str, out_dir: Path):
    head = headline(idx, model)
    if head is None:
        return None
    panels = []
    for base in ("torch-fp32", "torch-compile", "cpu"):
        which = "e2e" if base == "cpu" else "gpu"
        grid = {}
        for b, s in idx.shapes(model, head):
            t, r = idx.get(model, head, b, s), idx.get(model, base, b, s)
            if t is not None and r is not None and idx.same_card(t, r):
                tv, rv = p50(t, which), p50(r, which)
                if tv and rv:
                    grid[(b, s)] = rv / tv
        if grid:
            panels.append((base, which, grid))
    if not panels:
        return None
    bs = sorted({b for b, _ in idx.shapes(model)})
    ss = sorted({s for _, s in idx.shapes(model)})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (base, which, grid) in zip(axes.flat, panels):
        name = {"torch-fp32": "PyTorch fp32 eager", "torch-compile": "torch.compile fp16", "cpu": "CPU (onnxruntime fp32)"}[base]
        _heat(ax, plt, grid, bs, ss, f"{head} speedup over {name}\n({'end to end' if which == 'e2e' else compute_label(idx, model)} p50)",
              _fmt_speedup, "RdYlGn", center=1.0, log=True)
    fig.suptitle(f"{model}: speedup ({_card_title(idx)})", fontsize=10)
    return _save(plt, fig, out_dir / f"{_slug(model)}-speedup.png")


def _memory(plt, idx: Index, model: str, out_dir: Path):
    rows = [r for r in idx.ok if r["model"] == model and r.get("peak_mem_bytes")]
    if not rows:
        return None
    engines = [e for e in idx.engines(model) if any(r["engine"] == e for r in rows)]
    # the largest shape measured by the most engines
    shapes = sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda x: (sum(
        1 for e in engines if idx.get(model, e, *x) and idx.get(model, e, *x).get("peak_mem_bytes")), x[0] * x[1]))
    b, s = shapes[-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    vals = []
    for e in engines:
        r = idx.get(model, e, b, s)
        vals.append((e, (r or {}).get("peak_mem_bytes")))
    vals = [(e, v) for e, v in vals if v]
    ax1.bar(range(len(vals)), [v / 2**20 for _, v in vals], color=[STYLE.get(e, ("tab:red",))[0] for e, _ in vals])
    ax1.set_xticks(range(len(vals)), [e for e, _ in vals], rotation=30, ha="right", fontsize=8)
    for i, (_, v) in enumerate(vals):
        ax1.text(i, v / 2**20, f"{v / 2**20:.0f}", ha="center", va="bottom", fontsize=8)
    ax1.set_ylabel("peak device memory (MiB)")
    ax1.set_title(f"batch {b}, seq {s}", fontsize=9)
    for e in engines:
        pts = sorted((r["batch"] * r["seq"], r["peak_mem_bytes"] / 2**20) for r in rows if r["engine"] == e)
        if pts:
            color, marker, ls = STYLE.get(e, ("tab:red", ".", "-"))
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, linestyle=ls, label=e,
                     markersize=3)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("tokens per batch (batch x seq)")
    ax2.set_ylabel("peak device memory (MiB)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7)
    fig.suptitle(f"{model}: peak device memory ({_card_title(idx)}; trtrun: weights + arena + workspace; "
                 f"torch: parameters + max_memory_allocated growth)", fontsize=9)
    return _save(plt, fig, out_dir / f"{_slug(model)}-memory.png")


def _hybrid(plt, idx: Index, model: str, out_dir: Path):
    ho = hybrid_overheads(idx, model)
    if not ho:
        return None
    modes = sorted({g for *_, g, _ in ho})
    fig, axes = plt.subplots(1, len(modes), figsize=(max(7.0, 5.4 * len(modes)), 4.2), squeeze=False)
    bs = sorted({x[0] for x in ho})
    ss = sorted({x[1] for x in ho})
    for ax, g in zip(axes.flat, modes):
        grid = {(b, s): 100 * v for b, s, gg, v in ho if gg == g}
        _heat(ax, plt, grid, bs, ss, f"hybrid over fp16, {compute_label(idx, model)} p50 (%)" + (f", graphs {g}" if g in ("on", "off") else ""),
              lambda v: f"{v:+.1f}%", "coolwarm", center=0.0)
    fig.suptitle(f"{model}: hybrid precision's cost over fp16 ({_card_title(idx)})", fontsize=10)
    return _save(plt, fig, out_dir / f"{_slug(model)}-hybrid-overhead.png")


__all__ = ["write_plots", "GPU_BASELINES"]
