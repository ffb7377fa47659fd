"""`trtrun build`: ONNX in, engine plan out (simplify, fuse, pin precision, lower)."""

from __future__ import annotations

from pathlib import Path

import click

from ._ui import Progress, human_bytes, status
from .options import precision_option, profile_options, quiet_option


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
@precision_option(default="hybrid")
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
@click.option("--outputs", "outputs", default=None, metavar="NAME[,NAME]",
              help="keep only these graph outputs (default: every output the model has); the others, and what "
                   "only they need, are dropped before fusion (as Polygraphy's --onnx-outputs)")
@quiet_option
def command(onnx_path, output, precision, profile, save_onnx, tf32, gelu, ln_input, outputs, quiet):
    """Build an engine plan from MODEL.onnx.

    \b
    Precision: fp32 (all fp32), fp16 (naive full fp16: shows where fp16 overflows), hybrid (fp16
    GEMMs with fp32 accumulation; LayerNorm and softmax in fp32; fp32 outputs).
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
        plan = build(src, precision=precision, profile=profile, save_onnx=save_onnx, progress=progress,
                     gelu=gelu, tf32=tf32, ln_input=ln_input, outputs=outputs)
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
    pooled = [o["outputs"][0] for o in plan.ops if o["type"] == "Pool"]
    if pooled:
        rest = [o["name"] for o in plan.outputs if o["name"] not in pooled]
        status(f"note: output(s) {', '.join(pooled)} come from a Pool op, which the reference backend runs but the "
               f"GPU runtime does not yet" + (f"; for the GPU build with --outputs {','.join(rest)}" if rest else ""),
               quiet)
    if save_onnx:
        status(f"wrote {save_onnx} (rewritten ONNX)", quiet)
