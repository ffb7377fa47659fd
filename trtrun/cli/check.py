"""`trtrun check`: fidelity of fp16/hybrid plans against fp32, fp16 overflow headroom, random vs real
inputs and downstream accuracy; JSON + markdown reports and plots; non-zero exit when a budget breaks."""

from __future__ import annotations

from pathlib import Path

import click

from ..types import OP_PRECISIONS
from ._ui import status
from .options import (EXISTING_DIR, backend_option, model_size_options, model_source, parse_choice_list,
                      precision_option, quiet_option)

EXIT_BUDGET = 3  # a --min-cosine / --max-nan-rate budget broke (1 = error, 2 = usage), so CI can tell them apart


def _data_spec(ctx, param, value):
    """--data names nothing (not random, not a file, not data sets): a bad command line, refused at once."""
    from ..check.inputs import check_data_spec
    from ..errors import InputError

    try:
        check_data_spec(value, present=False)
    except InputError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1], ctx, param) from None
    return value


@click.command("check")
@click.argument("model", metavar="MODEL", callback=model_source("an .onnx file or a Hugging Face model folder"))
@precision_option(default="fp16,hybrid", multiple=True, choices=OP_PRECISIONS,
                  extra_help=" (fp8: Linear layers in fp8 with per-token scales, on the reference backend; "
                             "docs/precision.md)")
@click.option("--data", "data_spec", default="rt,wiki", show_default=True, metavar="SPEC", callback=_data_spec,
              help="random, or real inputs: data sets rt, wiki, imdb (comma list: samples split evenly), a text "
                   "file (one text a line) or token ids (.npy/.npz/.json)")
@click.option("--max-samples", "-n", type=click.IntRange(min=1), default=256, show_default=True,
              help="samples per input set (real; random ids get the same count)")
@backend_option
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default="check-report", show_default=True,
              help="folder for report.json, report.md and the plots")
@click.option("--min-cosine", type=float, default=None,
              help="budget: every sample's cosine vs fp32 must be >= this (NaN breaks it)")
@click.option("--max-nan-rate", type=click.FloatRange(min=0, max=1), default=None,
              help="budget: share of samples with NaN/Inf output must be <= this")
@click.option("--gate", default=None, metavar="PRECISIONS",
              help="precisions the budgets apply to (default: every checked precision), e.g. hybrid")
@click.option("--random/--no-random", "compare_random", default=True, show_default=True,
              help="also run random token ids of the real samples' lengths and compare NaN rates")
@click.option("--headroom-samples", type=click.IntRange(min=1), default=None,
              help="samples captured for the overflow headroom (default: all on the reference backend, "
                   "64 per input set with the GPU runtime)")
@click.option("--downstream", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="encoders: Rotten Tomatoes logistic-regression head; decoders: next-token agreement "
                   "(auto: the classifier only for real weights)")
@click.option("--downstream-train", type=click.IntRange(min=10), default=None,
              help="train sentences of the downstream head  [default: max(256, 16 x -n), at most all 6,824]")
@click.option("--downstream-test", type=click.IntRange(min=10), default=None,
              help="test sentences of the downstream head  [default: max(128, 4 x -n), at most all 1,706]")
@click.option("--fp32-reference", "fp32", type=click.Choice(["onnxruntime", "plan"]), default="onnxruntime",
              show_default=True, help="onnxruntime fp32 on the original ONNX, or the fp32 plan on the same backend")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="truncate texts to this many tokens (default: the plan's largest sequence)")
@click.option("--tokenizer", type=EXISTING_DIR, default=None,
              help="tokenizer folder (default: the model folder's, or by vocabulary size in the data folder)")
@model_size_options
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the sample draw, random ids and named architectures' weights")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="keep the exported ONNX here (default: a temporary folder)")
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--per-sample/--no-per-sample", default=True, show_default=True,
              help="include every sample's metrics in report.json")
@quiet_option
def command(model, precision, data_spec, max_samples, backend, out_dir, min_cosine, max_nan_rate, gate,
            compare_random, headroom_samples, downstream, downstream_train, downstream_test, fp32, batch_size,
            max_length, tokenizer, overrides, allow_large, seed, work_dir, plots, per_sample, quiet):
    """Check MODEL's fp16 and hybrid plans against fp32 on real text and random ids.

    \b
    MODEL: an .onnx file (built per precision), a Hugging Face model folder or a named
    architecture (bert-base, gpt2; random weights, sizes via --hidden-size, --layers, ...;
    over 4 GiB of weights with --allow-large), exported first. Writes OUT/report.json,
    OUT/report.md and plots. Exit code 3 when a --min-cosine or --max-nan-rate budget breaks
    (the reports are written first).
    """
    from ..check import CheckOptions, run_check, write_reports

    gate_list = parse_choice_list(gate, OP_PRECISIONS, "--gate") if gate else None
    if gate_list and set(gate_list) - set(precision):
        raise click.UsageError(f"--gate {','.join(g for g in gate_list if g not in precision)}: not among the "
                               f"checked precisions (--precision {','.join(precision)})")
    opts = CheckOptions(
        model=model, out_dir=Path(out_dir), precisions=precision, data=data_spec, max_samples=max_samples,
        backend=backend, min_cosine=min_cosine, max_nan_rate=max_nan_rate, gate=gate_list,
        compare_random=compare_random, headroom_samples=headroom_samples, downstream=downstream,
        downstream_train=downstream_train, downstream_test=downstream_test, fp32=fp32, batch_size=batch_size,
        max_length=max_length, tokenizer=tokenizer, overrides=overrides or None, allow_large=allow_large, seed=seed,
        work_dir=Path(work_dir) if work_dir else None, plots=plots, per_sample=per_sample)
    report = run_check(opts, log=lambda m: status(m, quiet))
    files = write_reports(report, opts.out_dir, plots=plots)
    _print_summary(report)
    status(f"wrote {', '.join(str(p) for p in files.values())}", quiet)
    if report["failures"]:
        for f in report["failures"]:
            click.echo(f"trtrun: check failed: {f}", err=True)
        raise click.exceptions.Exit(EXIT_BUDGET)


def _print_summary(report: dict) -> None:
    b = report["backend"]
    click.echo(f"{report['model']['source']}: {b['name']} backend, fp32 reference {report['fp32_reference']}")
    for p, by in report["results"].items():
        for sn, r in by.items():
            rt = r["rates"]
            c, w = r["cos"], r["cos_worst_token"]
            fmt = (lambda x: "NaN" if x is None else f"{x:.7f}")
            click.echo(f"  {p:6s} {sn:6s} {rt['samples']:5d} samples  cos min {fmt(c['min'])} "
                       f"(p1 {fmt(c['p1'])}, {c['n_undefined']} NaN)  worst-token min {fmt(w['min'])}  "
                       f"NaN samples {rt['nan_samples']}  Inf samples {rt['inf_samples']}")
    for sn, per_p in report["headroom"]["by_set"].items():
        for p, res in per_p.items():
            nf, of = res["first_nonfinite"], res["first_overflow"]
            if nf["samples"] or of["samples"]:
                where = nf.get("first_op", {}).get("op") or of.get("first_point", {}).get("op")
                click.echo(f"  headroom {p} {sn}: {of['samples']} samples past 65504 in fp16, "
                           f"{nf['samples']} with NaN/Inf; first at {where}")
    _print_downstream(report.get("downstream") or {})
    click.echo(f"verdict: {report['verdict']}")


def _print_downstream(ds: dict) -> None:
    """The downstream results in a few lines (report.md has the tables)."""
    cls = ds.get("classification")
    if cls is not None and "skipped" in cls:
        click.echo(f"  downstream: skipped ({cls['skipped']})")
    elif cls is not None:
        sp = cls["split"]
        click.echo(f"  downstream: Rotten Tomatoes polarity, head trained on {sp['train']} fp32 embeddings, "
                   f"accuracy on {sp['test']} test sentences (95% interval)"
                   + ("; RANDOM weights: only the differences mean anything" if cls.get("note") else ""))
        for name, r in cls["results"].items():
            lo, hi = r["wilson95"]
            line = f"    {name:6s} {r['accuracy']:.4f} [{lo:.4f}, {hi:.4f}]"
            if "diff_vs_fp32" in r:
                dlo, dhi = r["diff_bootstrap95"]
                line += (f"  vs fp32 {r['diff_vs_fp32']:+.4f} [{dlo:+.4f}, {dhi:+.4f}], "
                         f"{r['flipped_to_wrong']} flipped to wrong, {r['flipped_to_right']} to right")
            if r.get("no_answer"):
                line += f", {r['no_answer']} without an answer (NaN/Inf)"
            click.echo(line)
    lm = ds.get("language_model")
    if lm is not None:
        click.echo(f"  downstream: next token over {lm['positions']} positions (agreement with fp32's top-1, "
                   f"mean |change of log p|)")
        for name, r in lm["results"].items():
            agree, d = r.get("top1_agreement"), r.get("ll_diff_mean_abs")
            click.echo(f"    {name:6s} top-1 agreement {'n/a' if agree is None else f'{agree:.4f}'}, "
                       f"|d log p| {'n/a' if d is None else f'{d:.2e}'} nats"
                       + (f", {r['nonfinite_positions']} non-finite positions" if r.get("nonfinite_positions") else ""))
