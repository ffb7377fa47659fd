"""fp8 on all-MiniLM-L6-v2 (real weights): fidelity against fp32 and hybrid, downstream accuracy, and the precision
search, all on the numpy reference backend (CPU; speed awaits the GPU path).

    python scripts/fp8_fidelity.py [--model .data/minilm] [--rt 256] [--wiki 128] [--calib 64] [--holdout 256]
                                   [--auto-only] [--json R.json]
    python scripts/fp8_fidelity.py --worst-vs-n 1024 [--raw R.npz] [--json R.json]

Texts: Rotten Tomatoes sentences and Wikipedia paragraphs (at most --max-len tokens), each set shuffled once with
a fixed seed; the first --rt / --wiki texts are measured, the next --calib of each set calibrate (so no
measured text is a calibration text), and the next --holdout are `--precision auto`'s held-apart text (so no
measured text is one either). Plans: fp32 (the reference), hybrid, fp8 with per-channel or per-tensor weight
scales and dynamic (per-token) or static activation scales calibrated on rt or on wiki, and `--precision auto
--min-cosine X` calibrated on one set with the other set's held-apart texts.
Per plan and set: the worst and the 1st-percentile sample cosine against fp32 and against hybrid (each sample's
valid token states flattened), and the worst sentence-embedding cosine (mean-pooled, normalized, as the model is
used); downstream: the Rotten Tomatoes head of `trtrun check` trained on fp32 embeddings, accuracy per plan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=".data/minilm")
    ap.add_argument("--onnx", default=None, help="where the exported ONNX is kept (default: a temporary folder)")
    ap.add_argument("--rt", type=int, default=256)
    ap.add_argument("--wiki", type=int, default=128)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--holdout", type=int, default=256, help="held-apart texts of each set for auto (default 256)")
    ap.add_argument("--worst-of", type=int, default=None, help="auto: --worst-of (default the builder's)")
    ap.add_argument("--auto-only", action="store_true", help="build fp32, hybrid and the auto plans only")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--min-cosine", default="0.9995", help="comma list of budgets for auto")
    ap.add_argument("--downstream-train", type=int, default=1024)
    ap.add_argument("--downstream-test", type=int, default=512)
    ap.add_argument("--skip-downstream", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worst-vs-n", type=int, default=None, metavar="POOL",
                    help="instead: how the worst sample falls with the sample count. fp8 and auto --min-cosine (calibrated "
                         "on --calib wiki texts, held apart on --calib rt texts) against fp32 on POOL other rt and "
                         "--wiki other wiki texts; per-sample cosines to --raw, expected worst of n = 16..512 to --json")
    ap.add_argument("--raw", default=None, help="--worst-vs-n: write the per-sample cosines here (.npz)")
    ap.add_argument("--from-raw", default=None, metavar="R.npz",
                    help="--worst-vs-n's analysis again from its --raw file, without running anything")
    args = ap.parse_args(argv)
    if args.from_raw:
        res = worst_vs_n_analysis(dict(np.load(args.from_raw)))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        return 0
    if args.worst_vs_n:
        return worst_vs_n(args)

    import tempfile

    from trtrun import calibration as C
    from trtrun import data
    from trtrun.builder import build
    from trtrun.builder.precision_search import run_outputs, sample_cosines, worst
    from trtrun.check.downstream import classification_check, mean_pool
    from trtrun.export import export_model
    from trtrun.reference import ReferenceBackend

    tmp = tempfile.TemporaryDirectory()
    onnx = Path(args.onnx) if args.onnx else Path(tmp.name) / "minilm.onnx"
    if not onnx.exists():
        export_model(Path(args.model), onnx)
    tok = data.load_tokenizer(args.model)
    sets, calib, hold = {}, {}, {}
    for name, n in (("rt", args.rt), ("wiki", args.wiki)):
        texts = data.load_texts(name, n=n + args.calib + args.holdout, seed=20)
        sets[name] = C.batches(tok, texts[:n], args.max_len)
        calib[name] = C.batches(tok, texts[n:n + args.calib], args.max_len)
        hold[name] = C.batches(tok, texts[n + args.calib:], args.max_len)
    print(f"measured: {args.rt} rt, {args.wiki} wiki texts; calibration: {args.calib} other texts of each; held apart "
          f"for auto: {args.holdout} others of each; at most {args.max_len} tokens", flush=True)

    plans, notes = {}, {}

    def timed_build(key, **kw):
        t = time.perf_counter()
        plans[key] = build(onnx, **kw)
        notes[key] = {"build_s": round(time.perf_counter() - t, 1)}
        print(f"built {key} in {notes[key]['build_s']}s", flush=True)

    timed_build("fp32", precision="fp32")
    timed_build("hybrid", precision="hybrid")
    for w in () if args.auto_only else ("channel", "tensor"):
        timed_build(f"fp8 dynamic, {w}", precision="fp8", fp8_weights=w)
        for c in ("rt", "wiki"):
            timed_build(f"fp8 static ({c}), {w}", precision="fp8", fp8_weights=w, fp8_activations="static",
                        calib=calib[c], calib_name=c)
    for x in [float(v) for v in args.min_cosine.split(",")]:
        for c, h in (("rt", "wiki"), ("wiki", "rt")):
            key = f"auto {x} (calib {c}, held apart {h})"
            kw = {"worst_of": args.worst_of} if args.worst_of else {}
            timed_build(key, precision="auto", min_cosine=x, calib=calib[c], holdout=hold[h], calib_name=c,
                        holdout_name=h, log=print, **kw)
            s = plans[key].header["builder"]["precision_search"]
            notes[key].update({k: s.get(k) for k in ("counts", "measured_worst_cos", "extrapolated_worst_cos",
                                                     "worst_of", "heldout_samples", "cost_us", "cost_us_all_hybrid",
                                                     "cost_us_all_fp8", "rounds", "other_ops_loss")})

    outs = {}
    for key, plan in plans.items():
        t = time.perf_counter()
        outs[key] = {sn: run_outputs(plan, b) for sn, b in sets.items()}
        print(f"ran {key} in {time.perf_counter() - t:.1f}s", flush=True)

    def emb_cos(a, b, batches):
        out = []
        for oa, ob, f in zip(a, b, batches):
            pa = mean_pool(next(iter(oa.values())), f["attention_mask"])
            pb = mean_pool(next(iter(ob.values())), f["attention_mask"])
            out += list((pa * pb).sum(1))
        return float(np.min(out))

    results = {}
    for key in plans:
        r = {}
        for sn, b in sets.items():
            c32 = sample_cosines(outs[key][sn], outs["fp32"][sn], b)
            ch = sample_cosines(outs[key][sn], outs["hybrid"][sn], b)
            r[sn] = {"worst_cos_vs_fp32": worst(c32), "p1_cos_vs_fp32": float(np.percentile(c32, 1)),
                     "worst_cos_vs_hybrid": worst(ch),
                     "worst_embedding_cos_vs_fp32": emb_cos(outs[key][sn], outs["fp32"][sn], b)}
        results[key] = {**r, **notes[key]}
        print(f"{key:44s} " + "  ".join(f"{sn}: worst {r[sn]['worst_cos_vs_fp32']:.6f} (p1 {r[sn]['p1_cos_vs_fp32']:.6f},"
                                         f" vs hybrid {r[sn]['worst_cos_vs_hybrid']:.6f}, emb {r[sn]['worst_embedding_cos_vs_fp32']:.7f})"
                                         for sn in sets), flush=True)

    if not (args.skip_downstream or args.auto_only):
        keep = ["hybrid", "fp8 dynamic, channel", "fp8 dynamic, tensor", "fp8 static (rt), channel",
                "fp8 static (wiki), channel"] + [k for k in plans if k.startswith("auto")]
        runs = {k: ReferenceBackend(plans[k]).run for k in keep}
        t = time.perf_counter()
        ds = classification_check(tok, ReferenceBackend(plans["fp32"]).run, runs, max_len=args.max_len, batch_size=16,
                                  max_train=args.downstream_train, max_test=args.downstream_test, log=print)
        print(f"downstream in {time.perf_counter() - t:.0f}s", flush=True)
        for k, v in ds["results"].items():
            print(f"downstream {k:44s} accuracy {v['accuracy']:.4f} ({v['correct']}/{v['n']})"
                  + (f", vs fp32 {v['diff_vs_fp32']:+.4f} [{v['diff_bootstrap95'][0]:+.4f}, {v['diff_bootstrap95'][1]:+.4f}],"
                     f" flipped {v['flipped_to_wrong']} wrong / {v['flipped_to_right']} right" if k != "fp32" else ""),
                  flush=True)
        results["downstream"] = ds
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


def worst_vs_n_analysis(raw: dict) -> dict:
    """Per pool of per-sample cosines: the expected worst of n = 16..1024 texts (exact, from the order
    statistics), and the margin rule (extrapolated_worst_loss) checked on it: from 200 random held-apart sets of
    n_h texts, the worst of 4 n_h extrapolated, against the pool's expected worst of 4 n_h."""
    from trtrun.builder.precision_search import expected_worst_loss, extrapolated_worst_loss, extrapolation_margin

    res = {"curves": {}, "rule": {}}
    rng = np.random.default_rng(0)
    for key, cos in raw.items():
        loss = 1.0 - np.asarray(cos, np.float64)
        ns = [n for n in (16, 32, 64, 128, 256, 512, 1024) if n <= len(loss)]
        res["curves"][key] = {str(n): 1.0 - expected_worst_loss(loss, n) for n in ns}
        print(f"{key:9s} ({len(loss)} texts): expected worst cosine of n texts: "
              + ", ".join(f"n={n} {1.0 - expected_worst_loss(loss, n):.6f}" for n in ns), flush=True)
        for nh in (16, 32, 64, 128):
            if 4 * nh > len(loss):
                continue
            truth = expected_worst_loss(loss, 4 * nh)
            draws = [rng.choice(loss, nh, replace=False) for _ in range(200)]
            ext = np.array([extrapolated_worst_loss(d, 4 * nh) for d in draws])
            judged = ext * np.array([extrapolation_margin(d) for d in draws])
            meas = np.array([d.max() for d in draws])
            r = {"n_heldout": nh, "n_target": 4 * nh, "true_worst_cos": 1.0 - truth,
                 "extrapolated_mean_cos": 1.0 - float(ext.mean()), "extrapolated_ge_truth": float((ext >= truth).mean()),
                 "judged_mean_cos": 1.0 - float(judged.mean()), "judged_ge_truth": float((judged >= truth).mean()),
                 "measured_worst_ge_truth": float((meas >= truth).mean())}
            res["rule"][f"{key} {nh}->{4 * nh}"] = r
            print(f"  rule {nh}->{4 * nh}: true expected worst {1 - truth:.6f}; extrapolated (mean of 200 draws) "
                  f"{r['extrapolated_mean_cos']:.6f}, at or below the truth in {100 * r['extrapolated_ge_truth']:.0f}% "
                  f"of draws; with the margin {r['judged_mean_cos']:.6f}, {100 * r['judged_ge_truth']:.0f}% (the "
                  f"measured worst of {nh} alone: {100 * r['measured_worst_ge_truth']:.0f}%)", flush=True)
    return res


def worst_vs_n(args) -> int:
    """The expected worst-sample cosine of n texts drawn from a pool, for n = 16..512, for the fp8 plan and the
    plan `--precision auto` chooses (docs/precision.md, "How the worst sample falls with the sample count")."""
    import tempfile

    from trtrun import calibration as C
    from trtrun import data
    from trtrun.builder import build
    from trtrun.builder.precision_search import expected_worst_loss, run_outputs, sample_cosines

    tmp = tempfile.TemporaryDirectory()
    onnx = Path(args.onnx) if args.onnx else Path(tmp.name) / "minilm.onnx"
    if not onnx.exists():
        from trtrun.export import export_model
        export_model(Path(args.model), onnx)
    tok = data.load_tokenizer(args.model)
    rt = data.load_texts("rt", n=args.worst_vs_n + args.calib, seed=20)
    wiki = data.load_texts("wiki", n=args.wiki + args.calib, seed=20)
    pools = {"rt": C.batches(tok, rt[:args.worst_vs_n], args.max_len), "wiki": C.batches(tok, wiki[:args.wiki], args.max_len)}
    hold, cal = C.batches(tok, rt[args.worst_vs_n:], args.max_len), C.batches(tok, wiki[args.wiki:], args.max_len)
    x = float(args.min_cosine.split(",")[0])
    plans = {"fp32": build(onnx, precision="fp32"), "fp8": build(onnx, precision="fp8")}
    t = time.perf_counter()
    plans["auto"] = build(onnx, precision="auto", min_cosine=x, calib=cal, holdout=hold, calib_name="wiki",
                          holdout_name="rt", log=print)
    s = plans["auto"].header["builder"]["precision_search"]
    print(f"auto {x} (calib wiki, held apart rt) built in {time.perf_counter() - t:.0f}s: {s['counts']}", flush=True)
    raw = {}
    for sn, b in pools.items():
        ref = run_outputs(plans["fp32"], b)
        for key in ("fp8", "auto"):
            raw[f"{key}_{sn}"] = sample_cosines(run_outputs(plans[key], b), ref, b)
    if args.raw:
        np.savez(args.raw, **raw)
    res = {"min_cosine": x, "auto_counts": s["counts"], "auto_heldout_worst": s["measured_worst_cos"],
           **worst_vs_n_analysis(raw)}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
