"""`trtrun build`: ONNX in, engine plan out (simplify, fuse, pin precision, lower)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from ..types import BUILD_PRECISIONS, FP8_ACTIVATION_SCALES, FP8_WEIGHT_SCALES
from ._ui import Progress, human_bytes, status
from .options import precision_option, profile_options, quiet_option

FP8_HELP = ("; fp8: Linear layers in fp8 E4M3 (fp32 accumulation), the rest as hybrid; auto: each Linear fp8, "
            "fp16 or fp32, the fastest choice meeting --min-cosine (docs/precision.md)")


def _fraction(what, example):
    def check(ctx, param, value):
        if value is None:
            return None
        try:
            v = float(value)
        except ValueError:
            raise click.BadParameter(f"must be a number in (0, 1), e.g. {example}; got {value!r}") from None
        if not 0 < v < 1:
            raise click.BadParameter(f"must be a number in (0, 1) ({what}), e.g. {example}; got {value!r}")
        return v
    return check


_min_cosine = _fraction("a worst-sample cosine", "0.9995")
_min_top1 = _fraction("a fraction of token positions", "0.99")


def _position_rows(onnx_path) -> int | None:
    """Rows of the model's position-embedding table, read from the graph without its weights (a cheap
    first check of --max: the builder knows the exact limit only after its fusion passes). The table is a
    rank-2 initializer gathered with indices that do not come from a graph input (word and token-type
    tables are indexed by input_ids / token_type_ids, possibly through a Cast); None where that is not
    exactly one table."""
    import onnx

    try:
        g = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - unreadable: the builder reports it with its own message
        return None
    rows = {t.name: int(t.dims[0]) for t in g.initializer if len(t.dims) == 2}
    inputs = {i.name for i in g.input} - set(rows)
    producer = {o: n for n in g.node for o in n.output}

    def from_input(name: str, depth: int = 0) -> bool:
        if name in inputs:
            return True
        n = producer.get(name)
        return (n is not None and depth < 4 and n.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Identity")
                and bool(n.input) and from_input(n.input[0], depth + 1))

    tables = {n.input[0] for n in g.node if n.op_type == "Gather" and n.domain in ("", "ai.onnx")
              and len(n.input) == 2 and n.input[0] in rows and not from_input(n.input[1])}
    return rows[tables.pop()] if len(tables) == 1 else None


def _fmt_profile(profile) -> str:
    if not profile:
        return "?"
    return ", ".join(f"{axis} {'/'.join(str(v) for v in profile[axis])}" for axis in ("batch", "seq") if axis in profile)


@click.command("build")
@click.argument("onnx_path", metavar="MODEL.onnx", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="plan file to write (default: MODEL.<precision>.plan beside the ONNX file)")
@precision_option(default="hybrid", choices=BUILD_PRECISIONS, extra_help=FP8_HELP)
@profile_options
@click.option("--save-onnx", type=click.Path(dir_okay=False), default=None,
              help="also write the rewritten ONNX (fused ops, explicit Casts); runs in onnxruntime")
@click.option("--tf32", is_flag=True, help="fp32 GEMMs may use TF32 on the GPU (off by default)")
@click.option("--gelu", type=click.Choice(["auto", "exact", "tanh"]), default="auto", show_default=True,
              help="GELU form: auto = the tanh form in fp16/hybrid plans (fuses into the GEMM epilogue; "
                   "differs from erf by < 4.8e-4, under one fp16 step), exact erf in fp32; see docs/builder.md")
@click.option("--ln-input", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="hybrid: dtype of a Linear output read by a post-norm LayerNorm (BERT). fp16 is what an "
                   "fp16 linear layer writes; fp32 keeps one rounding fewer and moves 2 more bytes an element. "
                   "The LayerNorm computes in fp32 either way; see docs/plan-format.md")
@click.option("--prenorm-input", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="hybrid: dtype of a Linear output that a pre-norm LayerNorm/RMSNorm adds into the fp32 residual "
                   "stream (GPT-2, Llama, ModernBERT); the stream and the statistics stay fp32 either way")
@click.option("--outputs", "outputs", default=None, metavar="NAME[,NAME]",
              help="keep only these graph outputs (default: every output the model has); the others, and what "
                   "only they need, are dropped before fusion (as Polygraphy's --onnx-outputs)")
@click.option("--fp8-weights", type=click.Choice(FP8_WEIGHT_SCALES), default="channel", show_default=True,
              help="fp8/auto: one weight scale per output channel, or one per weight tensor")
@click.option("--fp8-activations", type=click.Choice(FP8_ACTIVATION_SCALES), default=None,
              help="fp8/auto: activation scales per token at run time (dynamic) or calibrated on --calib text (static) "
                   "[default: fp8: static with --calib, else dynamic; auto: dynamic]")
@click.option("--calib", default=None, metavar="rt|wiki|imdb|FILE",
              help="fp8/auto: calibration text (fp8: static activation scales; auto: also each Linear's "
                   "sensitivity) [auto's default: rt]")
@click.option("--calib-samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="texts drawn from --calib")
@click.option("--holdout", default=None, metavar="rt|wiki|imdb|FILE",
              help="auto: held-apart text the chosen plan is checked on [default: other texts of --calib's set]")
@click.option("--holdout-samples", type=click.IntRange(min=1), default=None, help="texts drawn from --holdout "
              "[default: 256]")
@click.option("--min-cosine", callback=_min_cosine, default=None, metavar="X",
              help="auto: the worst-sample cosine against fp32 the plan must keep on the held-apart text, "
                   "extrapolated to the worst of --worst-of such texts")
@click.option("--worst-of", type=click.IntRange(min=1), default=None, metavar="N",
              help="auto with --min-cosine: the budget holds for the worst of N texts like the held-apart ones, "
                   "extrapolated from how their worst falls with the sample count and judged with a margin "
                   "measured on their own tail [default: 1000]")
@click.option("--min-top1", callback=_min_top1, default=None, metavar="X",
              help="auto, instead of --min-cosine, for a decoder whose output is logits (an LM head): the fraction "
                   "of held-apart token positions whose top-1 next token agrees with the fp32 plan's")
@click.option("--cost-table", type=click.Path(exists=True, dir_okay=False), default=None,
              help="auto: per-GEMM timings (JSON, docs/precision.md) [default: an estimate from FLOPs and "
                   "Hopper's rates, labelled so]")
@click.option("--tokenizer", type=click.Path(exists=True, file_okay=False), default=None,
              help="fp8/auto: tokenizer for the calibration text [default: beside the model, else the data "
                   "folder's for its vocabulary]")
@quiet_option
def command(onnx_path, output, precision, profile, save_onnx, tf32, gelu, ln_input, prenorm_input, outputs, fp8_weights,
            fp8_activations, calib, calib_samples, holdout, holdout_samples, min_cosine, worst_of, min_top1, cost_table,
            tokenizer, quiet):
    """Build an engine plan from MODEL.onnx.

    \b
    Precision: fp32 (all fp32), fp16 (naive full fp16: shows where fp16 overflows), hybrid (fp16
    GEMMs with fp32 accumulation; LayerNorm and softmax in fp32; fp32 outputs).
    fp8 (every Linear in fp8 E4M3, the rest as hybrid) and auto (each Linear fp8, fp16 or fp32: the
    fastest assignment whose worst-sample cosine against fp32 on held-apart text meets --min-cosine,
    or whose top-1 next-token agreement meets --min-top1); docs/precision.md.
    Profile: --min/--opt/--max BATCH,SEQ (default batch 1/8/32, sequence 1/128/512 capped by the
    model's positions); a run outside it is refused. Nothing is written if the build fails.
    """
    from ..builder import build, same_file
    from ..errors import InputError

    src = Path(onnx_path)
    out = Path(output) if output else src.with_name(f"{src.stem}.{precision}.plan")
    # refuse before any work: writing over the source model would destroy it, and -o equal to
    # --save-onnx would replace the rewritten ONNX with the plan
    if same_file(out, src):
        raise click.UsageError(f"-o {out} is the source model itself; writing the plan there would replace it")
    if save_onnx and same_file(save_onnx, src):
        raise click.UsageError(f"--save-onnx {save_onnx} is the source model itself; writing there would replace it")
    if save_onnx and same_file(save_onnx, out):
        raise click.UsageError(f"--save-onnx {save_onnx} and the plan output {out} are the same file")
    if ln_input != "fp16" and precision != "hybrid":
        status(f"note: --ln-input only affects hybrid plans; the {precision} plan ignores it", quiet)
    if prenorm_input != "fp32" and precision != "hybrid":
        status(f"note: --prenorm-input only affects hybrid plans; the {precision} plan ignores it", quiet)
    fp8_kw = _fp8_options(precision, fp8_weights, fp8_activations, calib, calib_samples, holdout, holdout_samples,
                          min_cosine, cost_table, tokenizer, save_onnx, min_top1=min_top1, worst_of=worst_of)
    if tf32 and precision != "fp32":
        status(f"note: --tf32 only affects fp32 GEMMs; the {precision} plan records it but uses no fp32 GEMM", quiet)

    if profile is not None:  # before the passes: a sequence the position table cannot hold is refused at once
        rows = _position_rows(src)
        if rows is not None and profile["seq"][2] > rows:
            raise InputError(f"--max sequence {profile['seq'][2]} exceeds the model's {rows} positions "
                             f"(its position-embedding table has {rows} rows)")

    if outputs is not None:
        outputs = [o.strip() for o in outputs.split(",") if o.strip()]
        if not outputs:
            raise click.UsageError("--outputs needs at least one output name")

    status(f"building {src} -> {out} (precision {precision}"
           + (f", profile {_fmt_profile(profile)}" if profile else "") + ")", quiet)
    progress = Progress(enabled=not quiet)
    try:
        if fp8_kw:
            fp8_kw.update(_text_batches(src, fp8_kw, profile, quiet))
            fp8_kw["log"] = lambda m: (progress.close(), status(m, quiet))
        plan = build(src, precision=precision, profile=profile, save_onnx=save_onnx, progress=progress,
                     gelu=gelu, tf32=tf32, ln_input=ln_input, prenorm_input=prenorm_input, outputs=outputs,
                     **fp8_kw)
    finally:
        elapsed = progress.close()

    out.parent.mkdir(parents=True, exist_ok=True)
    plan.save(out)  # atomic: a failed or interrupted save leaves no partial plan

    weights = sum(int(w.get("nbytes", 0)) for w in plan.header.get("weights", {}).values())
    status(f"wrote {out}: {len(plan.header.get('ops', []))} ops, precision {plan.header.get('precision', precision)}, "
           f"profile {_fmt_profile(plan.header.get('profile'))}, weights {human_bytes(weights)}, "
           f"file {human_bytes(out.stat().st_size)}, built in {elapsed:.1f}s", quiet)
    for c in plan.source.get("conversions", []):
        status(f"note: {c}", quiet)
    from ..runtime.tail import on_host

    tail = [o for o in plan.ops if on_host(plan, o)]
    if tail:
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(Counter(o["type"] for o in tail).items()))
        status(f"note: {kinds} op(s) after the token states write one vector a sample or one value a token; the GPU "
               f"runtime runs them on the host, after copying the token states back (docs/runtime.md, \"The host "
               f"tail\")", quiet)
    if save_onnx:
        status(f"wrote {save_onnx} (rewritten ONNX)", quiet)
    for line in _precision_lines(plan):
        status(line, quiet)


def _fp8_options(precision, fp8_weights, fp8_activations, calib, calib_samples, holdout, holdout_samples,
                 min_cosine, cost_table, tokenizer, save_onnx, min_top1=None, worst_of=None) -> dict:
    """The fp8/auto options as build() takes them (before the text is read); UsageError for those that do not
    fit --precision."""
    if precision not in ("fp8", "auto"):
        given = [o for o, v in (("--calib", calib), ("--holdout", holdout), ("--min-cosine", min_cosine),
                                ("--min-top1", min_top1), ("--worst-of", worst_of),
                                ("--cost-table", cost_table), ("--fp8-activations", fp8_activations),
                                ("--holdout-samples", holdout_samples)) if v is not None]
        if fp8_weights != "channel":
            given.append("--fp8-weights")
        if given:
            raise click.UsageError(f"{given[0]} applies to --precision fp8 or auto, not {precision}")
        return {}
    if save_onnx:
        raise click.UsageError(f"--save-onnx: the rewritten ONNX has no {precision} form; build a hybrid plan for it")
    if precision == "fp8":
        for o, v in (("--min-cosine", min_cosine), ("--min-top1", min_top1), ("--worst-of", worst_of),
                     ("--cost-table", cost_table), ("--holdout", holdout), ("--holdout-samples", holdout_samples)):
            if v is not None:
                raise click.UsageError(f"{o} belongs to --precision auto (the search), not fp8")
        act = fp8_activations or ("static" if calib else "dynamic")
        if act == "static" and not calib:
            raise click.UsageError("--fp8-activations static needs calibration text: --calib rt|wiki|imdb|FILE")
        if act == "dynamic" and calib:
            raise click.UsageError("--calib sets static activation scales; dynamic ones need no calibration text")
    else:
        if min_cosine is not None and min_top1 is not None:
            raise click.UsageError("--min-cosine and --min-top1 are two budgets; give one (--min-top1 for a decoder's "
                                   "logits, --min-cosine for any model)")
        if min_cosine is None and min_top1 is None:
            raise click.UsageError("--precision auto needs --min-cosine X (the worst-sample cosine to keep) "
                                   "or --min-top1 X (top-1 next-token agreement, a decoder with an LM head)")
        if worst_of is not None and min_cosine is None:
            raise click.UsageError("--worst-of belongs to --min-cosine (a worst sample); --min-top1 is a mean over "
                                   "token positions")
        act = fp8_activations or "dynamic"
        calib = calib or "rt"
    extra = {k: v for k, v in (("min_top1", min_top1), ("worst_of", worst_of)) if v is not None}
    return {**extra, "fp8_weights": fp8_weights, "fp8_activations": act, "min_cosine": min_cosine, "cost_table": cost_table,
            "_calib": calib, "_n": calib_samples, "_holdout": (holdout or "same") if precision == "auto" else None,
            "_n_holdout": holdout_samples, "_tokenizer": tokenizer}


def _text_batches(src, kw, profile, quiet) -> dict:
    """Reads and tokenizes the calibration (and held-apart) text named in kw's private keys -> build() kwargs."""
    from .. import calibration as C

    calib, n, holdout = kw.pop("_calib"), kw.pop("_n"), kw.pop("_holdout")
    n_hold, tok_dir = kw.pop("_n_holdout"), kw.pop("_tokenizer")
    if calib is None:
        return {}
    tok = C.tokenizer_for_onnx(src, tok_dir)
    seq_max = profile["seq"][2] if profile else 512
    max_len = min(seq_max, (profile["seq"][1] if profile else 128))
    cal_t, hold_t = C.text_sets(calib, n, holdout, n_hold)
    out = {"calib": C.batches(tok, cal_t, max_len), "calib_name": f"{calib} (seed {C.SEED})"}
    msg = f"calibration text: {len(cal_t)} texts of {calib}, at most {max_len} tokens"
    if hold_t is not None:
        hname = calib if holdout in ("same", calib) else holdout
        out.update(holdout=C.batches(tok, hold_t, max_len),
                   holdout_name=hname + (" (none of them calibration texts)" if hname == calib else ""))
        msg += f"; held-apart: {len(hold_t)} texts of {out['holdout_name']}"
    status(msg, quiet)
    return out


def _precision_lines(plan) -> list[str]:
    """What the build chose: the fp8 settings and the search's outcome (the plan's builder record)."""
    from ..plan.summary import _builder_lines

    return [line.strip() for line in _builder_lines(plan.header.get("builder", {}))]
