"""What `trtrun inspect` shows of a plan: a JSON-able description (`--json`) and the human-readable summary."""

from __future__ import annotations

from .format import FORMAT_NAME, FORMAT_VERSION
from .validate import fmt_shape


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def weight_stats(header: dict) -> dict:
    """Weight tensors and bytes, in all and by dtype."""
    by: dict[str, dict[str, int]] = {}
    total = 0
    for e in header["weights"].values():
        d = by.setdefault(e["dtype"], {"count": 0, "bytes": 0})
        d["count"] += 1
        d["bytes"] += e["nbytes"]
        total += e["nbytes"]
    return {"count": len(header["weights"]), "bytes": total, "by_dtype": by}


def _tensor_desc(plan, name: str) -> dict:
    t = plan.tensors[name]
    return {"name": name, "dtype": t["dtype"], "shape": list(t["shape"])}


def plan_dict(plan) -> dict:
    """A JSON-able description (what `trtrun inspect --json` prints); no weight values."""
    ops = []
    for op in plan.ops:
        ops.append({
            "type": op["type"], "name": op["name"], "precision": op["precision"],
            "inputs": [_tensor_desc(plan, t) if t else None for t in op["inputs"]],
            "outputs": [_tensor_desc(plan, t) if t else None for t in op["outputs"]],
            "weights": {role: {"name": w, "dtype": plan.header["weights"][w]["dtype"],
                               "shape": list(plan.header["weights"][w]["shape"])}
                        for role, w in op.get("weights", {}).items() if w},
            "attrs": op.get("attrs", {}),
        })
        if op["precision"] == "fp8":
            ops[-1]["fp8_scales"] = fp8_scales(plan.header, op)
    counts: dict[str, int] = {}
    for op in plan.ops:
        counts[op["precision"]] = counts.get(op["precision"], 0) + 1
    return {
        "path": str(plan.path) if plan.path else None,
        "format": FORMAT_NAME, "version": plan.header.get("version", FORMAT_VERSION),
        "precision": plan.precision, "tf32": plan.tf32,
        "profile": plan.profile, "model": plan.model, "source": plan.source,
        "inputs": plan.inputs, "outputs": plan.outputs,
        "ops": ops, "ops_by_precision": counts,
        "weights": weight_stats(plan.header),
        "builder": plan.header.get("builder", {}),
    }


def fp8_scales(header: dict, op: dict) -> dict:
    """An fp8 Linear's scale kinds, read off its weight roles: {"weight": "channel"|"tensor",
    "activation": "static"|"dynamic"}."""
    ws = op.get("weights", {}).get("weight_scale")
    per_tensor = bool(ws) and list(header["weights"][ws]["shape"]) == [1]
    return {"weight": "tensor" if per_tensor else "channel",
            "activation": "static" if op.get("weights", {}).get("x_scale") else "dynamic"}


def _builder_lines(b: dict) -> list[str]:
    """The fp8 settings and the precision search's outcome, as `trtrun build` recorded them."""
    lines = []
    f = b.get("fp8")
    if isinstance(f, dict):
        cal = f.get("calibration") if isinstance(f.get("calibration"), dict) else None
        lines.append(f"  fp8: weight scales per {f.get('weight_scale')}, activation scales {f.get('activation_scale')}"
                     + (f" (calibrated on {cal.get('text')}, {cal.get('samples')} samples)" if cal else ""))
    s = b.get("precision_search")
    if isinstance(s, dict):
        c = s.get("counts") or {}
        num = lambda v, d: f"{v:.{d}f}" if isinstance(v, float) else repr(v)[:40]  # noqa: E731
        if s.get("budget") == "top1":
            what = (f"min top-1 {s.get('min_top1')} on held-apart {s.get('heldout_text')} ({s.get('heldout_samples')} "
                    f"samples), measured top-1 agreement with fp32 {num(s.get('measured_top1'), 5)} "
                    f"({s.get('agree')} of {s.get('positions')} positions, standard error {s.get('stderr')}; predicted "
                    f"{num(s.get('predicted'), 5)})")
        else:
            ext = (f", extrapolated to the worst of {s['worst_of']} such texts "
                   f"{num(s.get('extrapolated_worst_cos'), 7)}, judged with margin {s.get('margin')} "
                   f"{num(s.get('judged_worst_cos'), 7)}" if s.get("worst_of") and s.get("margin") else "")
            what = (f"min cosine {s.get('min_cosine')} on held-apart {s.get('heldout_text')} "
                    f"({s.get('heldout_samples')} samples), measured worst-sample cosine "
                    f"{num(s.get('measured_worst_cos'), 7)}{ext}")
        lines.append(f"  precision search: {what}; "
                     f"Linears {c.get('fp8', 0)} fp8, {c.get('hybrid', 0)} fp16, {c.get('fp32', 0)} fp32"
                     + (f" (fell back to all {s['fallback']})" if s.get("fallback") else ""))
        us = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else repr(v)[:40]  # noqa: E731 (builder is free-form)
        lines.append(f"  precision search cost: {us(s.get('cost_us'))} us against {us(s.get('cost_us_all_hybrid'))} "
                     f"us all-hybrid (cost model: {s.get('cost_model')})")
    return lines


def summary_text(plan) -> str:
    """Human-readable description for `trtrun inspect`."""
    d = plan_dict(plan)
    lines = []
    title = f"trtrun plan {d['path']}" if d["path"] else "trtrun plan (in memory)"
    lines.append(title)
    lines.append(f"  format version {d['version']}, precision {d['precision']}, "
                 f"tf32 {'on' if d['tf32'] else 'off'}")
    src = d["source"] or {}
    if src:
        sha = src.get("sha256") or ""
        bits = [f"{src.get('path', '?')}"]
        if sha:
            bits.append(f"sha256 {sha[:16]}…")
        if src.get("producer"):
            bits.append(f"producer {src['producer']}")
        if src.get("opset") is not None:
            bits.append(f"opset {src['opset']}")
        lines.append("  source: " + ", ".join(bits))
        if src.get("weights"):
            lines.append(f"  source weights: {src['weights']}, converted at build time to the plan's precision")
        for c in src.get("conversions") or []:
            lines.append(f"  source conversion: {c}")
    m = d["model"] or {}
    if m:
        lines.append("  model: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    p = d["profile"]
    lines.append(f"  profile: batch min {p['batch'][0]} / opt {p['batch'][1]} / max {p['batch'][2]}, "
                 f"seq min {p['seq'][0]} / opt {p['seq'][1]} / max {p['seq'][2]}")
    fmt = lambda t: f"{t['name']} {t['dtype']}{fmt_shape(t['shape'])}"  # noqa: E731
    lines.append("  inputs:  " + ", ".join(fmt(t) for t in d["inputs"]))
    lines.append("  outputs: " + ", ".join(fmt(t) for t in d["outputs"]))
    counts = ", ".join(f"{n} {p}" for p, n in d["ops_by_precision"].items())
    lines.append(f"  ops: {len(d['ops'])} ({counts})")
    wtype = max([len(o["type"]) for o in d["ops"]] + [4])
    wname = max([len(o["name"]) for o in d["ops"]] + [4])
    lines.append(f"    {'#':>3}  {'type':<{wtype}}  {'name':<{wname}}  {'precision':<9}  inputs -> outputs")
    for i, o in enumerate(d["ops"]):
        ins = ", ".join(fmt(t) for t in o["inputs"] if t)
        outs = ", ".join(fmt(t) for t in o["outputs"] if t)
        extra = ""
        if o["type"] == "Linear" and (o["attrs"].get("activation", "none") != "none" or o["attrs"].get("gated")):
            extra = f"  [{o['attrs'].get('activation', 'none')}" + (", gated]" if o["attrs"].get("gated") else "]")
        if "fp8_scales" in o:
            extra += f"  [fp8 scales: weight per {o['fp8_scales']['weight']}, activation {o['fp8_scales']['activation']}]"
        elif o["type"] == "Pool":
            tid = o["attrs"].get("token_id")
            extra = f"  [{o['attrs'].get('mode')}" + (f" {tid}" if tid is not None else "") + \
                (", L2-normalized]" if o["attrs"].get("normalize") else "]")
        elif o["type"] == "Embedding":  # the input rules Plan.check_feeds enforces for it
            rules = ([f"padding id {o['attrs']['padding_id']} only trailing"] if "padding_id" in o["attrs"] else []) + \
                    (["mask ones then zeros"] if o["attrs"].get("mask_positions") else []) + \
                    ([f"token {o['attrs']['refused_id']} refused"] if "refused_id" in o["attrs"] else [])
            extra = f"  [{', '.join(rules)}]" if rules else ""
        elif o["type"] == "Attention":
            a = o["attrs"]
            extra = f"  [heads {a.get('num_heads')} x {a.get('head_size')}" + \
                    (f", {a['num_kv_heads']} K/V heads" if a.get("num_kv_heads", a.get("num_heads")) !=
                     a.get("num_heads") else "") + \
                    (f", rotary {a['rotary_dim']}" if a.get("rotary_dim") else "") + \
                    (", relative-position bias" if o["weights"].get("relative_bias") else "") + \
                    (", ALiBi" if o["weights"].get("alibi_slopes") else "") + \
                    (f", window {a['window']}" if a.get("window") is not None else "") + \
                    ((", q/k LayerNorm" if a.get("qk_norm_kind") == "layer" else ", q/k norm") +
                     (" after the rotary" if a.get("qk_norm_after_rotary") else "")
                     if o["weights"].get("q_norm") else "") + \
                    (", causal]" if a.get("causal") else "]")
        lines.append(f"    {i:>3}  {o['type']:<{wtype}}  {o['name']:<{wname}}  {o['precision']:<9}  "
                     f"{ins} -> {outs}{extra}")
    ws = d["weights"]
    per = ", ".join(f"{dt}: {fmt_bytes(v['bytes'])} in {v['count']}" for dt, v in sorted(ws["by_dtype"].items()))
    lines.append(f"  weights: {ws['count']} tensors, {fmt_bytes(ws['bytes'])} ({ws['bytes']} bytes)"
                 + (f"; {per}" if per else ""))
    b = d["builder"] or {}
    if b:
        lines.append("  builder: " + ", ".join(
            f"{k} {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in b.items()
            if k not in ("fp8", "precision_search")))
        lines += _builder_lines(b)
    return "\n".join(lines)
