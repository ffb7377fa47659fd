"""The numbers a sweep's summary and its plots show, from the measured points only: an index of the ok
points, and per model the speedups over the CPU baseline, hybrid's overhead over fp16, memory against
PyTorch fp32, and every point where trtrun is slower than a baseline. Comparisons pair points measured on
the same card only. trtrun.bench.report writes them as markdown, trtrun.bench.plots as figures.
"""

from __future__ import annotations

from .results import ENGINE_ORDER, ResultStore

GPU_BASELINES = ("torch-fp32", "torch-fp16", "torch-compile")


class Index:
    """Lookup of ok points: (model, engine, batch, seq) -> record, trtrun preferring CUDA graphs on."""

    def __init__(self, store: ResultStore):
        self.sessions = {s["session"]: s for s in store.sessions}
        self.all = store.points
        self.ok = [r for r in self.all if r.get("status") == "ok"]
        self.models = list(dict.fromkeys(r["model"] for r in self.all))
        self.by = {}
        rank = {"on": 0, "n/a": 1, "off": 2}
        for r in self.ok:
            k = (r["model"], r["engine"], r["batch"], r["seq"])
            old = self.by.get(k)
            if old is None or rank.get(r["cuda_graphs"], 3) < rank.get(old["cuda_graphs"], 3):
                self.by[k] = r
        self.graph = {(r["model"], r["engine"], r["batch"], r["seq"], r["cuda_graphs"]): r for r in self.ok}
        self.checks = store.checks

    def card(self, r) -> str | None:
        return (self.sessions.get(r.get("session")) or {}).get("card")

    def get(self, model, engine, b, s, graphs=None):
        if graphs is not None:
            return self.graph.get((model, engine, b, s, graphs))
        return self.by.get((model, engine, b, s))

    def engines(self, model) -> list[str]:
        es = {r["engine"] for r in self.ok if r["model"] == model}
        return sorted(es, key=lambda e: (ENGINE_ORDER.index(e) if e in ENGINE_ORDER else 99, e))

    def shapes(self, model, engine=None) -> list[tuple[int, int]]:
        return sorted({(r["batch"], r["seq"]) for r in self.ok if r["model"] == model
                       and (engine is None or r["engine"] == engine)})

    def same_card(self, a, b) -> bool:
        return self.card(a) == self.card(b)


def p50(r, which="gpu"):
    if r is None:
        return None
    st = r.get("gpu_ms" if which == "gpu" else "e2e_ms")
    return None if not st else st.get("p50")


def headline(idx: Index, model: str) -> str | None:
    es = idx.engines(model)
    for e in ("trtrun-hybrid", "trtrun-fp16", "trtrun-fp32"):
        if e in es:
            return e
    return None


def cpu_speedups(idx: Index, model: str, engine: str):
    """[(b, s, e2e speedup, gpu-time speedup)] over the CPU baseline, on shapes both measured."""
    out = []
    for b, s in idx.shapes(model, "cpu"):
        c, t = idx.get(model, "cpu", b, s), idx.get(model, engine, b, s)
        if t is None or c is None or not idx.same_card(c, t):
            continue
        ce = p50(c, "e2e")
        te, tg = p50(t, "e2e"), p50(t, "gpu")
        out.append((b, s, ce / te if ce and te else None, ce / tg if ce and tg else None))
    return out


def hybrid_overheads(idx: Index, model: str):
    """[(b, s, graphs, overhead fraction)] of trtrun-hybrid over trtrun-fp16, GPU p50."""
    out = []
    for r in idx.ok:
        if r["model"] != model or r["engine"] != "trtrun-hybrid":
            continue
        f = idx.get(model, "trtrun-fp16", r["batch"], r["seq"], r["cuda_graphs"])
        h, g = p50(r), p50(f)
        if f is not None and h and g and idx.same_card(r, f):
            out.append((r["batch"], r["seq"], r["cuda_graphs"], h / g - 1.0))
    return sorted(out)


def memory_rows(idx: Index, model: str):
    """[(engine, b, s, trtrun bytes, torch fp32 bytes)] at every shape both measured (graphs-on record)."""
    out = []
    for e in idx.engines(model):
        if not e.startswith("trtrun-"):
            continue
        for b, s in idx.shapes(model, e):
            t, f = idx.get(model, e, b, s), idx.get(model, "torch-fp32", b, s)
            if t and f and t.get("peak_mem_bytes") and f.get("peak_mem_bytes") and idx.same_card(t, f):
                out.append((e, b, s, t["peak_mem_bytes"], f["peak_mem_bytes"]))
    return out


def slower_points(idx: Index, model: str):
    """[(trtrun record, baseline engine, trtrun ms, baseline ms, "gpu"|"e2e", baseline record)] wherever
    trtrun is slower."""
    out = []
    for r in idx.ok:
        if r["model"] != model or not r["engine"].startswith("trtrun-"):
            continue
        for base in (*GPU_BASELINES, "cpu"):
            br = idx.get(model, base, r["batch"], r["seq"])
            if br is None or not idx.same_card(r, br):
                continue
            which = "e2e" if base == "cpu" else "gpu"
            t, bt = p50(r, which), p50(br, which)
            if t is not None and bt is not None and t > bt:
                out.append((r, base, t, bt, which, br))
    return out


def compute_label(idx: "Index", model: str | None = None) -> str:
    """What the non-end-to-end times of `model` (all models: None) are: "GPU time" where every one was taken
    by CUDA events, "host-clock time" where none was (the reference backend, torch on the CPU), else both."""
    cuda = {str(r.get("gpu_timer") or "").startswith("CUDA") for r in idx.ok
            if r.get("engine") != "cpu" and r.get("gpu_ms") and (model is None or r["model"] == model)}
    if cuda == {False}:
        return "host-clock time"
    if cuda == {True, False}:
        return "GPU time (CUDA events; host clock where no GPU ran)"
    return "GPU time"
