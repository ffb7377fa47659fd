"""Writing a `trtrun check` report: report.json (everything), report.md (the tables a reader wants) and
three plots (cosine histogram, NaN rate by sequence length, headroom per layer)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .._io import atomic_write
from .headroom import FP16_MAX

LN_QUANTITIES = ("sum", "row_sum", "dev_sq", "var_sum")


def _clean(o):
    """JSON-safe copy: NaN/Inf floats become the strings "nan", "inf", "-inf" (strict JSON has no such
    numbers), numpy scalars and arrays become Python values."""
    import numpy as np

    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(report: dict, path: Path) -> Path:
    def write(f):
        json.dump(_clean(report), f, indent=1, allow_nan=False)
        f.write("\n")

    return atomic_write(path, write, text=True)


# ------------------------------------------------------------------------------------------- formatting

def _f(x, spec=".3g", none="-"):
    if x is None:
        return none
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, spec)


def _cos(x):
    return _f(x, ".7f")


def _pct(k, n):
    return f"{k} ({k / n:.2%})" if n else "0"


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def markdown(report: dict, plots: dict[str, str] | None = None) -> str:
    m = report["model"]
    L = []
    L.append(f"# trtrun check: {m['source']}")
    L.append("")
    if report["failures"]:
        L.append(f"**FAIL**: {len(report['failures'])} budget(s) broken:")
        L += [f"- {f}" for f in report["failures"]]
    else:
        s = report["settings"]
        budgets = [f"--min-cosine {s['min_cosine']}" if s["min_cosine"] is not None else None,
                   f"--max-nan-rate {s['max_nan_rate']}" if s["max_nan_rate"] is not None else None]
        budgets = [b for b in budgets if b]
        L.append("**PASS**" + (f": {', '.join(budgets)} held for {', '.join(s['gate'])}" if budgets
                               else " (no budget given)"))
    L.append("")
    b = report["backend"]
    rows = [["model", f"{m['source']} ({m['kind']}, weights {m['weights']}): {m['arch']}, {m['layers']} layers, "
                      f"hidden {m['hidden']}, {m['heads']} heads, vocabulary {m['vocab_size']}"],
            ["engines", f"{b['name']} backend ({b['why']}); device: {b['device']}"],
            ["fp32 reference", report["fp32_reference"]],
            ["tokenizer", report.get("tokenizer") or "-"]]
    for sn, d in report["data"].items():
        ln = d["length"]
        rows.append([f"data: {sn}", f"{d['samples']} samples, {d['tokens']} tokens (length min {_f(ln['min'], '.0f')}, "
                                    f"median {_f(ln['median'], '.0f')}, max {_f(ln['max'], '.0f')}): {d['note']}"])
    st = report["settings"]
    rows.append(["settings", f"batch {st['batch_size']}, max length {st['max_length']}, profile {st['profile']}, "
                             f"seed {st['seed']}"])
    rows.append(["run", f"{report['date']}, trtrun {report['trtrun_version']}, "
                        f"{report['timing'].get('total_s', '?')} s in all"])
    L += _table(["", ""], rows)
    L.append("")

    # ---------------------------------------------------------------- fidelity
    L.append("## Fidelity against fp32")
    L.append("")
    L.append("Per sample over its valid tokens: cosine of the whole output and of the worst token, largest "
             "absolute and relative error; NaN/Inf counted per sample (>= 1 token) and per token.")
    L.append("")
    hdr = ["precision", "data", "samples", "cos min", "cos p1", "cos median", "worst-token cos min",
           "max abs err", "max rel err", "NaN samples", "NaN tokens", "Inf samples", "Inf tokens"]
    rows = []
    for p, by in report["results"].items():
        for sn, r in by.items():
            rt = r["rates"]
            c = r["cos"]
            cmin = _cos(c["min"]) + (f" ({c['n_undefined']} NaN)" if c["n_undefined"] else "")
            rows.append([p, sn, rt["samples"], cmin, _cos(c["p1"]), _cos(c["median"]),
                         _cos(r["cos_worst_token"]["min"]), _f(r["max_abs"]["max"]), _f(r["max_rel"]["max"]),
                         _pct(rt["nan_samples"], rt["samples"]), _pct(rt["nan_tokens"], rt["tokens"]),
                         _pct(rt["inf_samples"], rt["samples"]), _pct(rt["inf_tokens"], rt["tokens"])])
    L += _table(hdr, rows)
    L.append("")
    L.append("### By sequence length (valid tokens)")
    L.append("")
    rows = []
    for p, by in report["results"].items():
        for sn, r in by.items():
            for bucket, g in r["by_length"].items():
                rows.append([p, sn, bucket, g["samples"], _cos(g["cos_min"]), _cos(g["cos_worst_token_min"]),
                             _pct(g["nonfinite_samples"], g["samples"])])
    L += _table(["precision", "data", "length", "samples", "cos min", "worst-token cos min",
                 "NaN/Inf samples"], rows)
    L.append("")

    # ---------------------------------------------------------------- random vs real
    if report["random_vs_real"]:
        L.append("## Random token ids against real text")
        L.append("")
        L.append(f"Random ids: {report['data']['random']['note']}. The seed paper reports that random inputs "
                 "underestimate full fp16's NaN rate by up to 6x; this is what these inputs show.")
        L.append("")
        rows = []
        for p, v in report["random_vs_real"].items():
            a, r = v["real"], v["random"]
            rows.append([p, f"{_pct(a['nan_samples'], a['samples'])} / {_pct(a['nan_tokens'], a['tokens'])}",
                         f"{_pct(r['nan_samples'], r['samples'])} / {_pct(r['nan_tokens'], r['tokens'])}",
                         v["nan_sample"]["text"],
                         f"{_pct(a['nonfinite_samples'], a['samples'])} / {_pct(r['nonfinite_samples'], r['samples'])}",
                         f"{_cos(v['cos_min']['real'])} / {_cos(v['cos_min']['random'])}",
                         f"{_cos(v['cos_worst_token_min']['real'])} / {_cos(v['cos_worst_token_min']['random'])}"])
        L += _table(["precision", "NaN real (samples / tokens)", "NaN random (samples / tokens)",
                     "real vs random (samples)", "NaN or Inf samples real / random", "cos min real / random",
                     "worst-token cos min real / random"], rows)
        L.append("")

    # ---------------------------------------------------------------- headroom
    h = report["headroom"]
    L.append("## Overflow headroom (fp16's largest finite value: 65504)")
    L.append("")
    L.append(f"Intermediate values {h['source']}; samples per set: "
             + ", ".join(f"{sn} {n}" for sn, n in h["samples"].items()) + ". Values are the largest |value| "
             "over those samples' valid tokens; headroom = 65504 / that value.")
    L.append("")
    for sn, per_p in h["by_set"].items():
        for p, res in per_p.items():
            if p == "fp32":
                continue
            nf, of = res["first_nonfinite"], res["first_overflow"]
            line = f"- **{p}, {sn}**: "
            if nf["samples"]:
                fo = nf["first_op"]
                line += (f"NaN/Inf first appears at op `{fo['op']}` ({fo['type']}, layer {fo['layer']}, op "
                         f"#{fo['op_index']}); {nf['samples']} of {res['samples']} samples have a non-finite "
                         f"output somewhere (first op per sample: "
                         + ", ".join(f"`{k}` {v}" for k, v in nf["first_op_counts"].items()) + "). ")
            else:
                line += "no op produced NaN/Inf. "
            if of["samples"]:
                fp = of["first_point"]
                line += (f"First value beyond what its dtype holds: `{fp['op']}` {fp['quantity']} "
                         f"(held in {fp['held']}, max {_f(fp['max'])}); {of['samples']} samples went past "
                         "65504 somewhere in fp16 (first point per sample: "
                         + ", ".join(f"`{k}` {v}" for k, v in of["first_point_counts"].items()) + ").")
            else:
                line += "No value held in fp16 went past 65504."
            L.append(line)
    L.append("")
    main_set = "real" if "real" in h["by_set"] else next(iter(h["by_set"]))
    per_p = h["by_set"][main_set]
    base = "hybrid" if "hybrid" in per_p else next(iter(per_p))
    f16 = per_p.get("fp16")
    f16_over = {}
    if f16:
        for p in f16["points"]:
            f16_over[(p["op"], p["quantity"])] = p["samples_over_fp16"]
    L.append(f"### Per layer ({main_set} data; values from the {base} plan, which tracks fp32 closely)")
    L.append("")
    L.append("LayerNorm / embedding sums: the residual stream s = x + residual, |sum(s)| (the mean's reduction), "
             "max (s - mean)^2 and sum (s - mean)^2 = N * variance (the variance's reduction). An fp16 LayerNorm "
             "holds all four in fp16; past 65504 the variance becomes Inf and the output silently collapses to "
             "beta, or the mean becomes Inf and the output NaN.")
    L.append("")
    rows = []
    pts = [p for p in per_p[base]["points"] if p["quantity"] in LN_QUANTITIES]
    by_op: dict[str, dict] = {}
    for p in pts:
        by_op.setdefault(p["op"], {"layer": p["layer"], "type": p["type"], "held": p["held"]})[p["quantity"]] = p
    for op, d in by_op.items():
        vals = [d[q]["max"] for q in LN_QUANTITIES if q in d]
        worst = max((v for v in vals if isinstance(v, float) and math.isfinite(v)), default=float("nan"))
        over = sum(f16_over.get((op, q), 0) for q in LN_QUANTITIES) if f16 else None
        rows.append([d["layer"], f"`{op}`", d["type"],
                     *[_f(d[q]["max"]) if q in d else "-" for q in LN_QUANTITIES],
                     _f(FP16_MAX / worst if worst and math.isfinite(worst) else float("nan"), ".3g") + "x",
                     d["held"], "-" if over is None else over])
    L += _table(["layer", "op", "type", "max abs s", "max abs sum(s)", "max (s-mean)^2", "max sum (s-mean)^2",
                 "fp16 headroom", f"held in {base}", "fp16 plan: sample-points over 65504"], rows)
    L.append("")
    rows = []
    for p in per_p[base]["points"]:
        if p["quantity"] == "scores":
            rows.append([p["layer"], f"`{p['op']}`", _f(p["max"]), _f(p["headroom_fp16"]) + "x", p["held"],
                         "-" if not f16 else f16_over.get((p["op"], "scores"), 0)])
    if rows:
        L.append("Attention scores scale * QK^T (over the pairs the mask allows):")
        L.append("")
        L += _table(["layer", "op", "max abs score", "fp16 headroom", f"held in {base}",
                     "fp16 plan: samples over 65504"], rows)
        L.append("")
    saf = h.get("hybrid_safety", {}).get(main_set)
    if saf:
        # the heading is a claim: made only when the hybrid plan's own numbers on these samples back it
        hyb = per_p.get("hybrid") or {}
        h_nf = (hyb.get("first_nonfinite") or {}).get("samples", 0)
        h_of = (hyb.get("first_overflow") or {}).get("samples", 0)
        if saf["hybrid_fp16_over"] == 0 and h_nf == 0 and h_of == 0:
            L.append("### Why the hybrid plan is safe")
        else:
            L.append("### The hybrid plan is NOT safe on these samples")
            L.append("")
            L.append(f"Hybrid plan, {main_set} data: {h_nf} samples with a NaN/Inf output somewhere, {h_of} samples "
                     f"with a value beyond what its dtype holds, {saf['hybrid_fp16_over']} sample-points over "
                     "65504 where it holds values in fp16.")
        L.append("")
        if saf["at_fp16_overflow_points"]:
            L.append("Where the fp16 plan went past 65504, the hybrid plan holds the value in:")
            L.append("")
            L += _table(["op", "layer", "quantity", "fp16 plan: samples over", "fp16 plan max", "hybrid holds it in",
                         "hybrid max", "headroom in that dtype"],
                        [[f"`{a['op']}`", a["layer"], a["quantity"], a["fp16_samples_over"], _f(a["fp16_max"]),
                          a["hybrid_held"], _f(a["hybrid_max"]), _f(a["hybrid_headroom"]) + "x"]
                         for a in saf["at_fp16_overflow_points"]])
            L.append("")
        else:
            L.append("The fp16 plan did not go past 65504 on these samples" if f16 else
                     "No fp16 plan was checked here")
            big = saf.get("hybrid_fp32_largest_reduction")
            if big:
                L[-1] += (f"; the largest LayerNorm quantity the hybrid plan keeps in fp32 is `{big['op']}` "
                          f"{big['quantity']} = {_f(big['max'])}, fp16 headroom {_f(big['headroom_fp16'])}x.")
            else:
                L[-1] += "."
            L.append("")
        w = saf.get("hybrid_fp16_min_headroom")
        L.append(f"The hybrid plan holds {saf['hybrid_fp16_points']} points in fp16 (fp16 tensors and GEMM operands); "
                 f"sample-points over 65504 there: {saf['hybrid_fp16_over']}."
                 + (f" The closest to the limit: `{w['tensor'] or w['op']}` ({w['quantity']}, layer {w['layer']}), "
                    f"max {_f(w['max'])}, headroom {_f(w['headroom_fp16'])}x." if w else ""))
        L.append("")
        rows = []
        fp16pts = sorted([p for p in per_p["hybrid"]["points"] if p["held"] == "float16"],
                         key=lambda p: (p["headroom_fp16"] if math.isfinite(p["headroom_fp16"]) else 1e300))[:8]
        for p in fp16pts:
            rows.append([f"`{p['tensor'] or p['op']}`", p["type"], p["layer"], _f(p["max"]), _f(p["median"]),
                         _f(p["headroom_fp16"]) + "x"])
        if rows:
            L.append("Hybrid fp16 points closest to the limit:")
            L.append("")
            L += _table(["tensor", "producer", "layer", "max abs", "median of sample maxima", "headroom"], rows)
            L.append("")
            allrows = [[f"`{p['tensor'] or p['op']}`", p["type"], p["layer"], _f(p["max"]), _f(p["headroom_fp16"]) + "x",
                        p["samples_over_fp16"]]
                       for p in per_p["hybrid"]["points"] if p["held"] == "float16"]
            L.append(f"<details><summary>Every value the hybrid plan holds in fp16 ({len(allrows)}, plan order)"
                     "</summary>")
            L.append("")
            L += _table(["tensor", "producer", "layer", "max abs", "headroom", "samples over 65504"], allrows)
            L.append("")
            L.append("</details>")
            L.append("")

    # ---------------------------------------------------------------- downstream
    ds = report.get("downstream") or {}
    if ds:
        L.append("## Downstream")
        L.append("")
    c = ds.get("classification")
    if c and "skipped" in c:
        L.append(f"Sentiment classification: skipped ({c['skipped']}).")
        L.append("")
    elif c:
        sp = c["split"]
        L.append(f"{c['task']}: a logistic-regression head ({c['classifier']}) on {c['features']}, trained on "
                 f"{c['trained_on']} of the train split ({sp['train']} sentences; fixed split seed {sp['seed']}, "
                 f"{sp['test_fraction']:.0%} held out of {sp['of']}), evaluated on {sp['test']} held-out sentences "
                 "with each engine's embeddings.")
        if c.get("note"):
            L.append("")
            L.append(f"**{c['note']}**")
        L.append("")
        rows = []
        for name, r in c["results"].items():
            lo, hi = r["wilson95"]
            if name == "fp32":
                rows.append([name, f"{r['accuracy']:.4f}", f"[{lo:.4f}, {hi:.4f}]", "-", "-", "-", "-"])
            else:
                dlo, dhi = r["diff_bootstrap95"]
                rows.append([name, f"{r['accuracy']:.4f}", f"[{lo:.4f}, {hi:.4f}]",
                             f"{r['diff_vs_fp32']:+.4f} [{dlo:+.4f}, {dhi:+.4f}]",
                             f"{r['flipped_to_wrong']} / {r['flipped_to_right']}", _f(r["mcnemar_p"], ".3g"),
                             _cos(r["embedding_cos_min"])])
        L += _table(["embeddings from", "accuracy", "95% Wilson interval", "difference vs fp32 [95% paired bootstrap]",
                     "flipped to wrong / to right", "McNemar exact p", "sentence-embedding cos min"], rows)
        L.append("")
        L.append("Intervals: each accuracy is a binomial proportion over independent test sentences, so the "
                 "Wilson score interval (good coverage at n in the hundreds and near 0 or 1). All engines label "
                 "the same sentences, so the difference to fp32 gets a paired bootstrap interval (10,000 "
                 "resamples of sentences) and McNemar's exact test on the flipped predictions: that is the test "
                 "of 'no accuracy loss', far sharper than comparing the two Wilson intervals.")
        L.append("")
    lmr = ds.get("language_model")
    if lmr:
        L.append(f"Next-token check: {lmr['note']}")
        L.append("")
        rows = []
        for p, r in lmr["results"].items():
            w = r["top1_agreement_wilson95"]
            rows.append([p, r["positions"], _f(r["top1_agreement"], ".5f") +
                         (f" [{w[0]:.5f}, {w[1]:.5f}]" if w else ""), _f(r["ll_diff_mean"], "+.3g"),
                         _f(r["ll_diff_mean_abs"], ".3g"), _f(r["ll_diff_max_abs"], ".3g"),
                         r["nonfinite_positions"]])
        L += _table(["precision", "positions", "top-1 agreement with fp32 [95% Wilson]", "mean LL diff (nats)",
                     "mean abs LL diff", "max abs LL diff", "non-finite positions"], rows)
        L.append("")
        L.append(f"fp32 mean next-token NLL: {_f(lmr['fp32_mean_nll'], '.4f')} nats over {lmr['positions']} positions.")
        L.append("")

    # ---------------------------------------------------------------- plots and definitions
    if plots:
        L.append("## Plots")
        L.append("")
        for title, fname in plots.items():
            L.append(f"![{title}]({fname})")
            L.append("")
    L.append("## Definitions")
    L.append("")
    L += ["- Only valid tokens (attention_mask = 1) count; padding is never compared.",
          "- cos: cosine similarity of a sample's whole output (all valid tokens) with fp32's; worst-token cos: "
          "the smallest per-token cosine. NaN/Inf in either makes it undefined (NaN), counted as a failure.",
          "- max rel err: max |out - ref| / max(|ref|, 1% of the sample's reference RMS).",
          "- NaN/Inf samples: samples with at least one valid token holding a NaN/Inf; tokens likewise. "
          "--max-nan-rate is checked against the share of samples with NaN or Inf.",
          "- Headroom: 65504 / the largest |value| seen; below 1 means fp16 overflowed there.",
          f"- Timing (s): {json.dumps(report['timing'])}."]
    L.append("")
    return "\n".join(L)


# ------------------------------------------------------------------------------------------- plots

def plot_all(report: dict, out_dir: Path) -> tuple[dict[str, str], str | None]:
    """Write the three plots; returns ({title: file name}, None) or ({}, why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return {}, f"matplotlib is not installed ({e}): no plots (pip install 'trtrun[check]')"
    import numpy as np

    files = {}
    # 1. cosine histogram (1 - cos, log scale: cosines near 1 are unreadable on a linear axis)
    ps = report.get("per_sample", {}).get("data", {})
    if ps:
        fig, ax = plt.subplots(figsize=(7, 4))
        curves = []
        for p, by in ps.items():
            for sn, rows in by.items():
                cos = np.array([r[1] if isinstance(r[1], float) else np.nan for r in rows], dtype=float)
                bad = int((~np.isfinite(cos)).sum())
                curves.append((f"{p} {sn} (n={len(rows)}{f', {bad} NaN' if bad else ''})",
                               np.log10(np.clip(1 - cos[np.isfinite(cos)], 1e-9, 1))))
        allv = np.concatenate([v for _, v in curves]) if curves else np.zeros(1)
        lo = min(float(allv.min()) if allv.size else -8, np.log10(1 - 0.9998)) - 0.2
        hi = max(float(allv.max()) if allv.size else 0, np.log10(1 - 0.9998)) + 0.2
        bins = np.linspace(lo, hi, 60)
        for label, v in curves:
            ax.hist(v, bins=bins, histtype="step", linewidth=1.5, label=label)
        ax.axvline(np.log10(1 - 0.9998), color="k", linestyle="--", linewidth=1, label="cos = 0.9998")
        ax.set_xlabel("log10(1 - cosine) per sample (whole output vs fp32)")
        ax.set_ylabel("samples")
        ax.set_title(f"Cosine against fp32: {report['model']['source']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "cosine_hist.png", dpi=110)
        plt.close(fig)
        files["cosine histogram"] = "cosine_hist.png"

    # 2. NaN/Inf rate by sequence length
    fig, ax = plt.subplots(figsize=(7, 4))
    series = []
    buckets: list[str] = []
    for p, by in report["results"].items():
        for sn, r in by.items():
            series.append((f"{p} {sn}", r["by_length"]))
            for b in r["by_length"]:
                if b not in buckets:
                    buckets.append(b)
    from .metrics import bucket_labels

    buckets = [b for b in bucket_labels() if b in buckets]
    x = np.arange(len(buckets))
    w = 0.8 / max(1, len(series))
    any_bad = False
    for i, (label, by) in enumerate(series):
        y = [by[b]["nonfinite_rate_sample"] if b in by else 0.0 for b in buckets]
        any_bad |= any(v > 0 for v in y)
        ax.bar(x + i * w - 0.4 + w / 2, y, width=w, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(buckets)
    ax.set_xlabel("sequence length (valid tokens)")
    ax.set_ylabel("share of samples with NaN/Inf")
    if not any_bad:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no NaN/Inf in any sample", transform=ax.transAxes, ha="center", fontsize=12)
    ax.set_title("NaN/Inf rate by sequence length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "nan_by_length.png", dpi=110)
    plt.close(fig)
    files["NaN rate by sequence length"] = "nan_by_length.png"

    # 3. headroom per layer
    h = report["headroom"]["by_set"]
    sn = "real" if "real" in h else next(iter(h))
    per_p = h[sn]
    base = "hybrid" if "hybrid" in per_p else next(iter(per_p))
    pts = per_p[base]["points"]
    kinds = [("sum", "residual stream max |s|", "o-"), ("var_sum", "LayerNorm sum (s-mean)^2", "s-"),
             ("dev_sq", "LayerNorm max (s-mean)^2", "^-"), ("scores", "attention max |score|", "d-")]
    fig, ax = plt.subplots(figsize=(9, 5.2))
    order = sorted({p["op_index"] for p in pts if p["quantity"] in dict((k, 0) for k, _, _ in kinds)})
    pos = {i: j for j, i in enumerate(order)}
    for q, label, style in kinds:
        sel = [p for p in pts if p["quantity"] == q]
        if not sel:
            continue
        xs = [pos[p["op_index"]] for p in sel]
        ys = [p["max"] if isinstance(p["max"], float) and math.isfinite(p["max"]) and p["max"] > 0 else np.nan
              for p in sel]
        ax.plot(xs, ys, style, label=label, markersize=4)
    f16 = per_p.get("fp16")
    if f16:
        over = [p for p in f16["points"] if p["samples_over_fp16"] > 0 and p["op_index"] in pos]
        if over:
            ax.plot([pos[p["op_index"]] for p in over], [FP16_MAX * 1.5] * len(over), "rx", markersize=8,
                    label="fp16 plan: over 65504 here")
    ax.axhline(FP16_MAX, color="r", linestyle="--", linewidth=1, label="fp16 max 65504")
    ax.set_yscale("log")
    op_by_index = {p["op_index"]: p for p in pts}
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([op_by_index[i]["layer"] for i in order], fontsize=7)
    ax.set_xlabel("LayerNorm / attention ops in plan order (label: layer)")
    ax.set_ylabel("largest |value|")
    ax.set_title(f"Headroom per layer ({base} plan, {sn} data, {report['headroom']['samples'].get(sn)} samples)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    fig.tight_layout()
    fig.savefig(out_dir / "headroom.png", dpi=110)
    plt.close(fig)
    files["headroom per layer"] = "headroom.png"
    return files, None


def write_reports(report: dict, out_dir, plots: bool = True) -> dict[str, Path]:
    """report.json, report.md and (unless plots=False or matplotlib is missing) three PNGs in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    plot_files, why = plot_all(report, out) if plots else ({}, "plots turned off")
    if why:
        report.setdefault("notes", []).append(why)
    report["plots"] = plot_files
    files["json"] = write_json(report, out / "report.json")
    md = out / "report.md"
    md.write_text(markdown(report, plot_files), encoding="utf-8")
    files["md"] = md
    for f in plot_files.values():
        files[f] = out / f
    return files
