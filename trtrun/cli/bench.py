"""`trtrun bench`: latency, throughput and memory of trtrun against PyTorch and the CPU over a grid.

Options given on the command line override the config file (--config); everything else keeps the
defaults (batch 1..32, sequence 32..512, precisions fp32,fp16,hybrid, every baseline).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..types import (BACKENDS, BASELINES, BENCH_BATCHES, BENCH_SEQS, CUDA_GRAPHS, GEMM_SEARCHES, GRID_MODES,
                     OP_PRECISIONS, PRECISIONS)
from ._ui import status
from .options import (EXISTING_DIR, EXISTING_FILE, EXPORT_ARCHS, model_size_options, model_source, parse_choice_list,
                      parse_int_list, quiet_option)

DEFAULT_BASELINES = ",".join(BASELINES)


def _ints(what):
    return lambda ctx, p, v: None if v is None else parse_int_list(v, what)


def _baselines(ctx, p, v):
    if v is None:
        return None
    if v.strip().lower() in ("none", ""):
        return []
    return parse_choice_list(v, BASELINES, "--baselines")


def _precisions(ctx, p, v):
    return None if v is None else parse_choice_list(v, OP_PRECISIONS, "--precision")


def _tokens(ctx, p, values):
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep:
            name, path = "*", v
        if not Path(path).is_file():
            raise click.BadParameter(f"file {path!r} does not exist", ctx, p)
        out[name] = path
    return out


@click.command("bench")
@click.argument("models", nargs=-1, metavar="[MODEL]...", callback=model_source("an ONNX file or a .plan", EXPORT_ARCHS))
@click.option("--config", "config_file", type=EXISTING_FILE, default=None,
              help="a sweep configuration (.toml or .json), e.g. bench/paper.toml; options given here override it")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="folder for results.jsonl, results.csv, summary.md, plots/ (and cache/ unless --cache-dir)")
@click.option("--batch", default=None, callback=_ints("--batch"), metavar="B,B,...",
              help=f"batch sizes  [default: {','.join(map(str, BENCH_BATCHES))}]")
@click.option("--seq", default=None, callback=_ints("--seq"), metavar="S,S,...",
              help=f"sequence lengths  [default: {','.join(map(str, BENCH_SEQS))}]")
@click.option("--precision", "precisions", default=None, callback=_precisions, metavar="P,P,...",
              help=f"trtrun precisions: {', '.join(OP_PRECISIONS)}  [default: {', '.join(PRECISIONS)}; a plan: its own]")
@click.option("--baselines", default=None, callback=_baselines, metavar="NAME,...",
              help=f"baselines, or none  [default: {DEFAULT_BASELINES}]")
@click.option("--cuda-graphs", type=click.Choice(CUDA_GRAPHS), default=None,
              help="trtrun with CUDA graphs on, off, or both (two points per shape)  [default: on]")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="gpu: trtrun's CUDA runtime (CUDA events); reference: the numpy backend on the CPU (host clock; "
                   "for testing the tool)  [default: gpu]")
@click.option("--gemm-search", type=click.Choice(GEMM_SEARCHES), default=None,
              help="how trtrun's GPU contexts choose each GEMM algorithm: heuristic (cuBLASLt's top 8, timed), "
                   "focused (those and ~300 tile/cluster/option configurations of the heuristic's algorithm, timed "
                   "after an L2 flush: 3-5 s for the first shape in a process, up to ~2 s for later ones) or exhaustive "
                   "(every accepted configuration: a minute for the first shape, seconds after; see --gemm-cache)  "
                   "[default: focused]")
@click.option("--gemm-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="GEMM cache file: its tuned choices are taken before the sweep (when it exists) and every choice "
                   "made is saved to it after, so a second sweep skips the tuning")
@click.option("--resume", is_flag=True, help="continue the sweep in --out: skip points already in results.jsonl")
@click.option("--overwrite", is_flag=True, help="discard results already in --out")
@click.option("--retry-failed", is_flag=True, help="with --resume: measure points that failed (status error) again")
@click.option("--iters", type=click.IntRange(min=1), default=None, help="timed iterations per point  [default: 200]")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="warm-up iterations per point  [default: 50]")
@click.option("--min-iters", type=click.IntRange(min=1), default=None,
              help="timed iterations at least, whatever --max-time says  [default: 10]")
@click.option("--max-time", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="cap on each timed phase of a point (fewer iterations for slow points)  [default: 1.0]")
@click.option("--input-sets", type=click.IntRange(min=1), default=None,
              help="sets of real token ids rotated between iterations  [default: 4]")
@click.option("--compile-grid", type=click.Choice(GRID_MODES), default=None,
              help="torch.compile on batch {1,8,32} x seq {32,128,512} only (compiling takes 10-30 s a shape) or "
                   "on every point  [default: subset]")
@click.option("--cpu-grid", type=click.Choice(GRID_MODES), default=None,
              help="CPU baseline on batch {1,8,32} x seq {32,128,512} only, or every point  [default: subset]")
@click.option("--cpu-threads", type=click.IntRange(min=1), default=None,
              help="onnxruntime threads for the CPU baseline  [default: every host core]")
@click.option("--tokens", "tokens", multiple=True, callback=_tokens, metavar="[MODEL=]FILE.npz",
              help="real token ids to use (bench/tokens/*.npz) instead of tokenizing the data folder's text")
@click.option("--torch-model", type=EXISTING_DIR, default=None,
              help="Hugging Face folder the ONNX/plan came from (the torch baselines' weights)")
@model_size_options
@click.option("--seed", type=int, default=None, help="named architectures: weight seed; also input sampling")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="exported ONNX and built plans (default: OUT/cache)")
@click.option("--deadline", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="start no point after this many seconds (then write the report; --resume continues)")
@click.option("--report-only", is_flag=True, help="rewrite results.csv, summary.md and plots from results.jsonl")
@click.option("--no-plots", is_flag=True, help="write no PNG plots")
@quiet_option
@click.pass_context
def command(ctx, models, config_file, out_dir, overrides, tokens, report_only, no_plots, quiet, **opts):
    """Measure trtrun against PyTorch and the CPU on a batch x sequence grid, and report.

    \b
    MODEL: an ONNX file, a .plan, or a named architecture (bert-base, gpt2, llama, qwen2, mistral, qwen3,
    gpt-neox, mpnet, deberta-v2, modernbert: random weights at the shape `trtrun export` gives it, exported and
    built per precision, cached in the out folder; torch baselines on the same weights). Several may be given.
    \b
    Examples:
      trtrun bench bert-base --out out/bench-bert
      trtrun bench --config bench/paper.toml --out out/paper --resume
      trtrun bench model.onnx --batch 1,8 --seq 128 --baselines cpu --out out/mine
    \b
    Writes OUT/results.jsonl (one record a point, appended as it finishes), OUT/results.csv (with a header
    block: card, driver, CUDA, versions, date, command line), OUT/summary.md and OUT/plots/*.png.
    """

    from ..bench.config import BenchConfig, BenchConfigError, config_fields, read_config_file

    if report_only:
        from ..bench.report import short_table, write_report
        from ..bench.results import RESULTS, ResultStore

        if not (Path(out_dir) / RESULTS).is_file():
            raise BenchConfigError(f"--report-only: {Path(out_dir) / RESULTS} does not exist")
        store = ResultStore(out_dir, resume=True)
        store.write_csv()
        for p in write_report(store, plots=not no_plots, log=lambda m: status(m, quiet)):
            status(f"wrote {p}", quiet)
        click.echo(short_table(store))
        return 0

    kw = read_config_file(config_file) if config_file else {}
    source = ctx.get_parameter_source
    given = lambda name: source(name) not in (None, click.core.ParameterSource.DEFAULT)  # noqa: E731
    if models:
        kw["models"] = list(models)
    for name, value in opts.items():
        if given(name) and value is not None:
            kw[name] = value
    if overrides:
        kw["overrides"] = overrides
    if tokens:
        names = kw.get("models") or []
        tk = dict(kw.get("tokens") or {})
        for k, v in tokens.items():
            if k == "*":
                for m in names:
                    tk[m] = v
            else:
                tk[k] = v
        kw["tokens"] = tk
    kw.setdefault("models", [])
    kw["out"] = Path(out_dir)
    kw["plots"] = not no_plots
    kw["command_line"] = _command_line(ctx)
    unknown = set(kw) - config_fields()
    if unknown:  # a bug here, not the user's
        raise AssertionError(f"bench: unmapped settings {unknown}")
    cfg = BenchConfig(**kw)

    from ..bench.report import short_table
    from ..bench.sweep import run_sweep

    outcome = run_sweep(cfg, log=lambda m: status(m, quiet), progress=not quiet)
    click.echo(short_table(outcome.store))
    status(f"bench: {outcome.measured} point(s) measured, {outcome.skipped} already there, {outcome.left} left; "
           f"results in {cfg.out}", quiet)
    if outcome.stopped:
        status(f"bench: stopped early ({outcome.stopped}); run again with --resume to finish", quiet)
    return 0


def _command_line(ctx) -> str:
    """The command as given (options from the command line, in click's order)."""
    import shlex

    parts = ["trtrun", "bench"]
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name)
        if src in (None, click.core.ParameterSource.DEFAULT):
            continue
        v = ctx.params.get(p.name)
        if p.name == "models":
            parts += list(v)
            continue
        opt = p.opts[0] if p.opts else p.name
        if isinstance(p, click.Option) and p.is_flag:
            parts.append(opt)
        elif p.name == "tokens":
            for k, f in (v or {}).items():
                parts += [opt, f if k == "*" else f"{k}={f}"]
        elif isinstance(v, (list, tuple)):
            parts += [opt, ",".join(map(str, v)) or "none"]
        elif isinstance(v, dict):
            parts += [opt, str(v)]
        else:
            parts += [opt, str(v)]
    return shlex.join(parts)
