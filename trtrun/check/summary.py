"""One markdown page over several `trtrun check` reports: the fp16 against hybrid table, the random against
real table, the downstream tables, and the paper's acceptance line (hybrid cosine >= 0.9998 on every
sample, no NaN) per model.

    python -m trtrun.check.summary SUMMARY.md NAME=DIR [NAME=DIR ...]      (DIR holds report.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .report import _cos, _f, _pct, _table

PAPER_COS = 0.9998


def _num(x):
    """A report.json number back to float ("nan"/"inf" strings included); None stays None."""
    if x is None:
        return None
    if isinstance(x, str):
        return float(x)
    return float(x)


def acceptance(rep: dict, precision: str = "hybrid") -> dict:
    """Whether `precision` met the paper's claim on every input set: cos >= 0.9998 on every sample, no NaN."""
    out = {}
    for sn, r in rep["results"].get(precision, {}).items():
        cmin = _num(r["cos"]["min"])
        ok = (cmin is not None and cmin >= PAPER_COS and r["cos"]["n_undefined"] == 0
              and r["rates"]["nan_samples"] == 0)
        out[sn] = {"ok": bool(ok), "cos_min": cmin, "nan_samples": r["rates"]["nan_samples"],
                   "samples": r["rates"]["samples"]}
    return out


def summary_markdown(reports: dict[str, dict]) -> str:
    L = ["# trtrun check: summary", ""]
    rows = []
    for name, rep in reports.items():
        m = rep["model"]
        b = rep["backend"]
        sets = ", ".join(f"{sn} {d['samples']} samples / {d['tokens']} tokens" for sn, d in rep["data"].items())
        rows.append([name, f"{m['arch']}, {m['layers']} layers, hidden {m['hidden']}; weights {m['weights']}",
                     f"{b['name']} ({b['device']})", rep["fp32_reference"].split(" on ")[0], sets, rep["date"]])
    L += _table(["model", "shape and weights", "engines", "fp32 reference", "inputs", "date"], rows)
    L.append("")

    L.append(f"## Acceptance: hybrid cosine >= {PAPER_COS} on every sample and no NaN")
    L.append("")
    rows = []
    for name, rep in reports.items():
        for sn, a in acceptance(rep).items():
            rows.append([name, sn, a["samples"], _cos(a["cos_min"]), a["nan_samples"], "yes" if a["ok"] else "**no**"])
    L += _table(["model", "data", "samples", "hybrid cos min", "hybrid NaN samples", "met"], rows)
    L.append("")

    L.append("## fp16 against hybrid")
    L.append("")
    rows = []
    for name, rep in reports.items():
        hr = rep.get("headroom", {}).get("by_set", {})
        for p, by in rep["results"].items():
            for sn, r in by.items():
                rt = r["rates"]
                h = hr.get(sn, {}).get(p, {})
                of = h.get("first_overflow", {})
                where = "-"
                if of.get("samples"):
                    fp = of["first_point"]
                    where = f"`{fp['op']}` {fp['quantity']} ({of['samples']} samples)"
                elif h:
                    where = "none"
                rows.append([name, p, sn, rt["samples"], _cos(_num(r["cos"]["min"])), _cos(_num(r["cos"]["p1"])),
                             _cos(_num(r["cos"]["median"])), _cos(_num(r["cos_worst_token"]["min"])),
                             _f(_num(r["max_abs"]["max"])), _pct(rt["nan_samples"], rt["samples"]),
                             _pct(rt["nan_tokens"], rt["tokens"]), _pct(rt["inf_samples"], rt["samples"]), where])
    L += _table(["model", "precision", "data", "samples", "cos min", "cos p1", "cos median", "worst-token cos min",
                 "max abs err", "NaN samples", "NaN tokens", "Inf samples", "first fp16 overflow (headroom runs)"],
                rows)
    L.append("")
    rows = []
    for name, rep in reports.items():
        by_set = rep.get("headroom", {}).get("by_set", {})
        sn = "real" if "real" in by_set else next(iter(by_set), None)
        if sn is None or "hybrid" not in by_set[sn]:
            continue
        pts = [p for p in by_set[sn]["hybrid"]["points"] if p["quantity"] in ("sum", "row_sum", "dev_sq", "var_sum")]
        if not pts:
            continue
        worst = min(pts, key=lambda p: _num(p["headroom_fp16"]))
        f16pts = [p for p in by_set[sn]["hybrid"]["points"] if p["held"] == "float16"]
        w16 = min(f16pts, key=lambda p: _num(p["headroom_fp16"])) if f16pts else None
        rows.append([name, sn, rep["headroom"]["samples"].get(sn), f"`{worst['op']}` {worst['quantity']}",
                     _f(_num(worst["max"])), _f(_num(worst["headroom_fp16"])) + "x",
                     "-" if w16 is None else f"`{w16['tensor'] or w16['op']}`",
                     "-" if w16 is None else _f(_num(w16["headroom_fp16"])) + "x"])
    if rows:
        L.append("Smallest fp16 headroom of a LayerNorm reduction (kept in fp32 by hybrid), and of any value the "
                 "hybrid plan holds in fp16:")
        L.append("")
        L += _table(["model", "data", "samples", "LayerNorm point", "max", "fp16 headroom",
                     "closest hybrid fp16 value", "its headroom"], rows)
        L.append("")

    rows = []
    for name, rep in reports.items():
        for p, v in (rep.get("random_vs_real") or {}).items():
            a, r = v["real"], v["random"]
            rows.append([name, p, _pct(a["nan_samples"], a["samples"]), _pct(r["nan_samples"], r["samples"]),
                         v["nan_sample"]["text"], _pct(a["nonfinite_samples"], a["samples"]),
                         _pct(r["nonfinite_samples"], r["samples"]),
                         f"{_cos(_num(v['cos_min']['real']))} / {_cos(_num(v['cos_min']['random']))}",
                         f"{_cos(_num(v['cos_worst_token_min']['real']))} / "
                         f"{_cos(_num(v['cos_worst_token_min']['random']))}"])
    if rows:
        L.append("## Random token ids against real text (matched lengths)")
        L.append("")
        L += _table(["model", "precision", "NaN samples real", "NaN samples random", "real vs random",
                     "NaN/Inf real", "NaN/Inf random", "cos min real / random", "worst-token cos min real / random"],
                    rows)
        L.append("")

    rows = []
    for name, rep in reports.items():
        c = (rep.get("downstream") or {}).get("classification")
        if not c or "skipped" in c:
            continue
        for eng, r in c["results"].items():
            lo, hi = r["wilson95"]
            diff = "-" if eng == "fp32" else (f"{r['diff_vs_fp32']:+.4f} [{r['diff_bootstrap95'][0]:+.4f}, "
                                              f"{r['diff_bootstrap95'][1]:+.4f}]")
            flips = "-" if eng == "fp32" else f"{r['flipped_to_wrong']} / {r['flipped_to_right']}"
            rows.append([name, eng, f"{r['accuracy']:.4f}", f"[{lo:.4f}, {hi:.4f}]", diff, flips,
                         "-" if eng == "fp32" else _f(_num(r["mcnemar_p"]))])
    if rows:
        L.append("## Downstream: Rotten Tomatoes sentiment head (trained on fp32 embeddings)")
        L.append("")
        L += _table(["model", "embeddings from", "accuracy", "95% Wilson", "diff vs fp32 [95% paired bootstrap]",
                     "flipped to wrong / right", "McNemar p"], rows)
        L.append("")
    rows = []
    notes = []
    for name, rep in reports.items():
        lm = (rep.get("downstream") or {}).get("language_model")
        if not lm:
            continue
        notes.append(f"- {name}: {lm['note']}")
        for p, r in lm["results"].items():
            w = r["top1_agreement_wilson95"]
            rows.append([name, p, r["positions"], _f(_num(r["top1_agreement"]), ".5f")
                         + (f" [{w[0]:.5f}, {w[1]:.5f}]" if w else ""), _f(_num(r["ll_diff_mean"]), "+.3g"),
                         _f(_num(r["ll_diff_mean_abs"])), _f(_num(r["ll_diff_max_abs"])), r["nonfinite_positions"]])
    if rows:
        L.append("## Downstream: next-token agreement with fp32 (decoders)")
        L.append("")
        L += _table(["model", "precision", "positions", "top-1 agreement [95% Wilson]", "mean LL diff",
                     "mean abs LL diff", "max abs LL diff", "non-finite"], rows)
        L.append("")
        L += notes
        L.append("")
    for name, rep in reports.items():
        if rep.get("failures"):
            L.append(f"- {name}: budgets broken: " + "; ".join(rep["failures"]))
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    dest, pairs = Path(args[0]), args[1:]
    reports = {}
    for pair in pairs:
        name, _, d = pair.partition("=")
        if not d:
            name, d = Path(pair).name, pair
        f = Path(d) / "report.json"
        if f.is_file():
            reports[name] = json.loads(f.read_text(encoding="utf-8"))
        else:
            print(f"summary: {f} is missing; {name} left out", file=sys.stderr)
    if not reports:
        print("summary: no report found", file=sys.stderr)
        return 1
    dest.write_text(summary_markdown(reports), encoding="utf-8")
    print(f"summary: wrote {dest} ({', '.join(reports)})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
