"""Option groups shared by several subcommands, as reusable click decorators (Polygraphy's way).

Each group is one decorator: `@precision_option()`, `@profile_options`, `@text_input_options`, ...
so `build`, `run`, and later `bench`/`check`/`serve` spell the same option the same way. Nothing here
imports more than click, the standard library, trtrun.types (where the choices are named) and trtrun.errors.
"""

from __future__ import annotations

import functools

import click

from ..errors import ModelTooLargeError
from ..types import BACKEND_CHOICES as BACKENDS, EXPORT_ARCHS, NAMED_ARCHS, POOLINGS, PRECISIONS, TEXT_SETS

# A file or folder named on the command line that does not exist is a bad command line (exit code 2, as
# click.Path(exists=True) has it), like any other value that is wrong before anything is read; an input that
# exists but is wrong (not ONNX, a damaged plan, ids beyond the vocabulary) is bad input (exit code 1).
EXISTING_FILE = click.Path(exists=True, dir_okay=False)
EXISTING_DIR = click.Path(exists=True, file_okay=False)

# Sizes of a named architecture a command may override (model_size_options), as (option, config key, help).
# Keys are BERT's config names; trtrun.export maps them to GPT-2's (n_embd, n_layer, ...).
MODEL_SIZE_OPTIONS = (
    ("--hidden-size", "hidden_size", "hidden size N"),
    ("--layers", "num_hidden_layers", "number of transformer layers"),
    ("--heads", "num_attention_heads", "number of attention heads"),
    ("--kv-heads", "num_key_value_heads", "key/value heads of grouped-query attention (llama, qwen2)"),
    ("--vocab-size", "vocab_size", "vocabulary size"),
    ("--intermediate-size", "intermediate_size",
     "MLP inner size (default: the named architecture's own, which --hidden-size does not change; gpt2: 4N)"),
    ("--max-position", "max_position_embeddings", "maximum sequence length (position table size)"),
)


def compose(*decorators):
    """Apply several click decorators as one (first listed = first in --help)."""

    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


# ------------------------------------------------------------------------------------------ value parsers

def parse_pair(text: str, what: str = "value") -> tuple[int, int]:
    """'B,S' (or 'BxS') -> (B, S), both positive ints."""
    parts = text.replace("x", ",").replace("X", ",").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        b, s = (int(p.strip()) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{what} must be BATCH,SEQ (two integers, e.g. 8,128), got {text!r}") from None
    if b < 1 or s < 1:
        raise click.BadParameter(f"{what} must be positive, got {text!r}")
    return b, s


def parse_int_list(text: str, what: str = "value") -> list[int]:
    """'1,2,4' -> [1, 2, 4] (positive ints, duplicates kept in order given)."""
    try:
        vals = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise click.BadParameter(f"{what} must be one or more positive integers, got {text!r}")
    return vals


def parse_choice_list(text: str, choices, what: str = "value") -> list[str]:
    """'fp16,hybrid' -> ['fp16', 'hybrid'], each checked against `choices`."""
    vals = [p.strip() for p in text.split(",") if p.strip()]
    bad = [v for v in vals if v not in choices]
    if not vals or bad:
        raise click.BadParameter(f"{what}: unknown {bad or [text]}; choose from {', '.join(choices)}")
    return vals


def model_source(kinds: str = "an ONNX file or a Hugging Face model folder", names=NAMED_ARCHS):
    """Callback for a MODEL/SOURCE argument: a named architecture or an existing path (one value or a tuple)."""
    from pathlib import Path

    def check(ctx, param, value):
        for v in (value if isinstance(value, tuple) else (value,)):
            if v is not None and v not in names and not Path(v).exists():
                raise click.BadParameter(f"{v!r} does not exist, and is not a named architecture "
                                         f"({', '.join(names)}); expected {kinds}", ctx, param)
        return value

    return check


class PairType(click.ParamType):
    name = "B,S"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return parse_pair(value, param.opts[0] if param else "value")
        except click.BadParameter as e:
            self.fail(e.message, param, ctx)


PAIR = PairType()


# ------------------------------------------------------------------------------------------ option groups

def precision_option(default: str = "hybrid", multiple: bool = False, choices=PRECISIONS, extra_help: str = ""):
    """--precision fp32|fp16|hybrid (or `choices`; a comma list when multiple=True), plus --hybrid as a shorthand."""
    if multiple:
        return click.option(
            "--precision", "precision", default=default, show_default=True,
            callback=lambda ctx, p, v: parse_choice_list(v, choices, "--precision"),
            help="comma-separated precisions: " + ", ".join(choices) + extra_help,
        )

    def decorator(f):
        @functools.wraps(f)
        def wrapper(*args, precision, hybrid, **kw):
            if hybrid and precision not in (None, "hybrid"):
                raise click.UsageError(f"--hybrid contradicts --precision {precision}")
            return f(*args, precision="hybrid" if hybrid else (precision or default), **kw)

        wrapper = click.option("--hybrid", is_flag=True, help="short for --precision hybrid")(wrapper)
        wrapper = click.option(
            "--precision", type=click.Choice(choices), default=None,
            help=f"fp32: all fp32; fp16: naive full fp16; hybrid: fp16 GEMMs with fp32 accumulation, "
                 f"fp32 LayerNorm and softmax{extra_help}  [default: {default}]",
        )(wrapper)
        return wrapper

    return decorator


def profile_options(f):
    """--min/--opt/--max B,S  ->  profile={"batch": (min,opt,max), "seq": (...)} or None (builder default)."""

    @functools.wraps(f)
    def wrapper(*args, min_shape, opt_shape, max_shape, **kw):
        return f(*args, profile=make_profile(min_shape, opt_shape, max_shape), **kw)

    for name, dest, helptext in (
        ("--max", "max_shape", "largest batch,sequence a run may use"),
        ("--opt", "opt_shape", "batch,sequence to tune for"),
        ("--min", "min_shape", "smallest batch,sequence (default 1,1)"),
    ):
        wrapper = click.option(name, dest, type=PAIR, default=None, metavar="B,S", help=helptext)(wrapper)
    return wrapper


# the builder's defaults (HELPERS.md contract); seq max is capped by the model's positions in the builder
DEFAULT_PROFILE = {"batch": (1, 8, 32), "seq": (1, 128, 512)}


def make_profile(mn, opt, mx) -> dict | None:
    """Fill what was not given from the defaults and check min <= opt <= max on each axis."""
    if mn is None and opt is None and mx is None:
        return None
    prof = {}
    for axis, i in (("batch", 0), ("seq", 1)):
        d_min, d_opt, d_max = DEFAULT_PROFILE[axis]
        lo = mn[i] if mn else d_min
        hi = mx[i] if mx else max(d_max, lo)
        mid = opt[i] if opt else min(max(d_opt, lo), hi)
        if not lo <= mid <= hi:
            raise click.BadParameter(
                f"{axis}: need min <= opt <= max, got min {lo}, opt {mid}, max {hi}",
                param_hint="--min/--opt/--max",
            )
        prof[axis] = (lo, mid, hi)
    return prof


def backend_option(f):
    return click.option(
        "--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
        help="gpu: the CUDA runtime; reference: the numpy backend on the CPU; auto: gpu where one is usable",
    )(f)


text_input_options = compose(
    click.option("--text", "texts", multiple=True, metavar="TEXT", help="a text to embed (repeatable)"),
    click.option("--text-file", type=EXISTING_FILE, help="texts, one a line (.tsv: text after the last tab)"),
    click.option("--data", "data_set", type=click.Choice(TEXT_SETS), help="real texts from the data folder"),
    click.option("--max-samples", "-n", type=click.IntRange(min=1), default=None, metavar="N",
                 help="with --data: how many texts (a seeded sample; default 8)"),
    click.option("--ids", "ids_file", type=EXISTING_FILE,
                 help="token ids instead of text: .npy [B,S], .npz (input_ids, attention_mask, ...) or .json"),
    click.option("--tokenizer", type=EXISTING_DIR,
                 help="tokenizer folder (default: beside the source model, or by vocabulary size in the data folder)"),
    click.option("--max-length", type=click.IntRange(min=1), default=None, metavar="TOKENS",
                 help="truncate texts to this many tokens (default: the plan's largest sequence)"),
)


def model_size_options(f):
    """The size of a named architecture built with random weights, for every command that exports one
    (export, check, bench): --hidden-size/--layers/... -> overrides={config key: int} (only the ones given),
    and --allow-large -> allow_large (for trtrun.export.export_model). A shape refused for its size
    (ModelTooLargeError) is told in the options of the command that was run."""

    @functools.wraps(f)
    def wrapper(*args, **kw):
        overrides = {key: kw.pop(key) for _, key, _ in MODEL_SIZE_OPTIONS}
        try:
            return f(*args, overrides={k: v for k, v in overrides.items() if v is not None}, **kw)
        except ModelTooLargeError as e:
            if e.command is not None:
                raise
            raise e.for_command(click.get_current_context().command_path) from e

    wrapper = click.option(
        "--allow-large", is_flag=True,
        help="build a named architecture whose random fp32 weights exceed 4 GiB (refused otherwise: exporting it "
             "needs that much RAM several times over, and the disk)")(wrapper)
    for opt, key, helptext in reversed(MODEL_SIZE_OPTIONS):
        wrapper = click.option(opt, key, type=click.IntRange(min=1), default=None, help=helptext)(wrapper)
    return wrapper


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")(f)


# the Embedder's pooling, as `trtrun embed` and `trtrun serve` take it
pooling_options = compose(
    click.option("--pooling", type=click.Choice(POOLINGS), default=None,
                 help="default: the model folder's sentence-transformers pooling config, else mean"),
    click.option("--no-normalize", is_flag=True, help="do not L2-normalize the embeddings"),
)

# the plan an Embedder builds from an .onnx MODEL (`trtrun embed`, `trtrun serve`)
onnx_precision_option = click.option("--precision", type=click.Choice(PRECISIONS), default="hybrid",
                                     show_default=True, help="for an .onnx MODEL: the plan to build (cached beside it)")


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="no progress or status lines on stderr")(f)
