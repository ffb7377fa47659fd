"""The builder: an ONNX transformer in, a trtrun Plan out.

    load (+ an empty key/value cache) -> inputs by role (+ position_ids as arange, fixed dims made symbolic) -> [other producers' forms: upcast fp16 -> dequantize int8 -> lower com.microsoft ops]
         -> simplify -> select outputs -> probe -> remove no-op layout ops
         -> fold embedding projections -> unflatten [B*S, H] row regions -> unflatten [B*H, S, *] attention
         -> fuse LayerNorm -> fuse RMSNorm -> fuse Linear (+bias, +GELU/SiLU/ReLU) -> fuse gated MLPs
         -> fuse attention (+ merged QKV Linear, rotary, grouped K/V heads)
         -> fuse embeddings (+LayerNorm) -> fuse residual Adds into LayerNorm/RMSNorm
         -> fuse the Adds left of a Linear's output into its residual input -> fuse pooled outputs
         -> split per-token score columns into single-column Linears (question answering's start/end)
         -> check only IR ops are left -> pin precision -> lower to a Plan

Each graph pass is one function taking (graph, facts), ending in cleanup().toposort(). See
docs/builder.md for the patterns each pass recognizes and what it rejects.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BuildError, TrtrunError
from .check import check_supported
from .dequantize import dequantize
from .fuse_attention import fuse_attention
from .fuse_embedding import fuse_embedding
from .fuse_gated import fuse_gated
from .fuse_layernorm import fuse_layernorm
from .fuse_linear import fuse_linear
from .fuse_linear_residual import fuse_linear_residual
from .fuse_pooling import fuse_pooling
from .fuse_residual import fuse_residual
from .fuse_token_scores import fuse_token_scores
from .fuse_rmsnorm import fuse_rmsnorm
from .gelu_form import GELU_CHOICES, choose_gelu_form
from .input_roles import assign_input_roles, fixed_dims, reexport_hint
from .load import default_opset, is_ort_onnx_op, load_model
from .lower import lower, resolve_profile
from .lower_contrib import lower_contrib
from .precision import LN_INPUTS, PRECISIONS, pin_precision
from .probe import probe
from .save_onnx import precision_onnx
from .select_outputs import drop_passthrough, select_outputs
from .simplify import decouple_shapes, fold_embedding_projection, remove_noop_layout, simplify
from .unflatten_heads import unflatten_heads
from .unflatten_rows import unflatten_rows
from .upcast_fp16 import upcast_fp16

__all__ = ["build", "load_model", "upcast_fp16", "dequantize", "lower_contrib", "simplify", "select_outputs",
           "probe", "decouple_shapes", "remove_noop_layout", "fold_embedding_projection", "unflatten_rows",
           "unflatten_heads",
           "fuse_layernorm", "fuse_rmsnorm", "fuse_linear", "fuse_gated", "fuse_attention", "fuse_embedding",
           "fuse_residual", "fuse_linear_residual", "fuse_pooling", "fuse_token_scores", "check_supported", "pin_precision", "lower",
           "precision_onnx", "resolve_profile", "PRECISIONS"]

# Other producers' spellings, rewritten into what a plain fp32 export would be before anything else runs
# (each one a graph pass: gs graph in, counts of what it rewrote out; skipped when the file has none).
PRODUCER_PASSES = (
    ("upcast_fp16", upcast_fp16),
    ("dequantize", dequantize),
    ("lower_contrib", lower_contrib),
)
FUSIONS = (
    ("fuse_layernorm", fuse_layernorm),
    ("fuse_rmsnorm", fuse_rmsnorm),
    ("fuse_linear", fuse_linear),
    ("fuse_gated", fuse_gated),
    ("fuse_attention", fuse_attention),
    ("fuse_embedding", fuse_embedding),
    ("fuse_residual", fuse_residual),
    ("fuse_linear_residual", fuse_linear_residual),
    ("fuse_pooling", fuse_pooling),
    ("fuse_token_scores", fuse_token_scores),
)
STEPS = ("load", "producer forms", "simplify", "select_outputs", "probe", "decouple_shapes+remove_noop_layout", *(n for n, _ in FUSIONS),
         "check_supported", "pin_precision", "lower", "plan")


def build(onnx_path, *, precision: str = "hybrid", profile=None, save_onnx=None, progress=None,
          gelu: str = "auto", tf32: bool = False, ln_input: str = "fp16", prenorm_input: str = "fp32", outputs=None,
          fp8_weights: str = "channel", fp8_activations: str = "dynamic", calib=None, calib_name=None, holdout=None,
          holdout_name=None, min_cosine=None, cost_table=None, log=None, min_top1=None, worst_of=None):
    """Build a Plan from an ONNX model.

    precision: "fp32", "fp16" or "hybrid" (docs/plan-format.md says what each means), "fp8" (every Linear fp8
        E4M3, the rest as hybrid) or "auto" (each Linear fp8, fp16 or fp32 by a search under min_cosine); both
        described in docs/precision.md.
    fp8_weights: "channel" or "tensor" (fp8/auto: one weight scale per output channel, or one per weight).
    fp8_activations: "dynamic" (per-token scales at run time) or "static" (calibrated on `calib`).
    calib, holdout: lists of token-id batches (dicts as trtrun.data.encode gives): the calibration text (static
        scales; the search's sensitivities) and the held-apart text the search's choice is checked on;
        calib_name, holdout_name say what they are in the plan's builder record.
    min_cosine: auto only: the worst-sample cosine against the fp32 plan the chosen plan must reach on holdout,
        extrapolated to the worst of `worst_of` such texts (default precision_search.WORST_OF).
    min_top1: auto only, instead of min_cosine, for a decoder whose output is logits: the fraction of holdout
        positions whose argmax agrees with the fp32 plan's.
    cost_table: auto only: a cost table file (builder/cost_model.py) or CostModel; default a roofline estimate of
        the runtime's kernels on an H100.
    log: callable(str) for the fp8 calibration's and the search's progress lines.
    profile: {"batch": (min, opt, max), "seq": (min, opt, max)}; default batch (1, 8, 32) and
        seq (1, 128, 512) capped by the model's positions.
    save_onnx: also write the precision-pinned graph in standard ONNX ops (with Casts) there; it
        is written only when the whole build succeeded.
    progress: callable(step: str, done: int, total: int), called as each step finishes (and
        within the long ones).
    gelu: "auto" (default: exact-erf GELU becomes the tanh form in fp16/hybrid plans, so it fuses into
        the GEMM epilogue; fp32 keeps erf), "exact" or "tanh". See builder/gelu_form.py for why.
    tf32: let fp32 GEMMs use TF32 on the GPU (recorded in the plan; off by default).
    ln_input: hybrid plans only: "fp16" (default) or "fp32", the dtype of a Linear output read by a post-norm
        LayerNorm (BERT's attention and FFN outputs). fp16 is what an fp16 linear layer writes (TensorRT, and
        the save_onnx graph); fp32 keeps one rounding fewer for 2 more bytes an element written and read.
        The LayerNorm computes in fp32 either way. See docs/plan-format.md.
    prenorm_input: hybrid plans only: "fp32" (default) or "fp16", the dtype of a Linear output that a pre-norm
        LayerNorm/RMSNorm adds into the fp32 residual stream (GPT-2, Llama, ModernBERT: attention and MLP outputs).
        The stream, the sum and the statistics stay fp32 either way.
    outputs: names of the model's graph outputs to keep (default: all of them); the others, and whatever
        only they need, are dropped before anything is fused. An unknown name is a ValueError.
    Raises ModelError (unreadable or malformed model), UnsupportedOpError (an op the IR cannot
    express, named with its node), BuildError (a pattern that could not be lowered), ValueError
    (bad arguments). Nothing is written on error.
    """
    from ..plan import Plan
    from ..types import BUILD_PRECISIONS

    if precision not in BUILD_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(BUILD_PRECISIONS)}, got {precision!r}")
    mixed = precision in ("fp8", "auto")
    if mixed or calib is not None or min_cosine is not None or cost_table is not None or min_top1 is not None:
        from .precision_search import check_options
        cost_table = check_options(precision, fp8_weights, fp8_activations, calib, holdout, min_cosine, cost_table,
                                   min_top1=min_top1, worst_of=worst_of)
        if save_onnx is not None:
            raise ValueError(f"save_onnx: the rewritten ONNX has no {precision} form (it would be the hybrid graph); "
                             f"build a hybrid plan for it")
    for name, v in (("ln_input", ln_input), ("prenorm_input", prenorm_input)):
        if v not in LN_INPUTS:
            raise ValueError(f"{name} must be one of {', '.join(LN_INPUTS)}, got {v!r}")
    if gelu not in GELU_CHOICES:
        raise ValueError(f"gelu must be one of {', '.join(GELU_CHOICES)}, got {gelu!r}")
    if profile is not None:
        resolve_profile(profile, 1 << 30)  # argument errors before any work
    if outputs is not None:
        if isinstance(outputs, str) or not all(isinstance(o, str) and o for o in outputs) or not outputs:
            raise ValueError(f"outputs must be a non-empty list of output names, got {outputs!r}")
        outputs = list(dict.fromkeys(outputs))
    if save_onnx is not None and same_file(onnx_path, save_onnx):
        raise ValueError(f"save_onnx {save_onnx} is the source model itself: writing the rewritten graph there "
                         f"would replace {onnx_path}; choose another path")

    total = len(STEPS)
    done = 0

    def step(name):
        nonlocal done
        done += 1
        if progress:
            progress(name, done, total)

    load_notes = []
    model = load_model(onnx_path, notes=load_notes)
    opset = default_opset(model)
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x)
    role_notes, took_positions = assign_input_roles(model, onnx_path)
    input_notes = load_notes + role_notes
    fixed = fixed_dims(model, onnx_path)
    step("load")
    model, conversions = producer_forms(model)
    passes = ["load"] + [name for name, _ in PRODUCER_PASSES if name in conversions]
    step("producer forms")
    graph = simplify(model)
    del model
    step("simplify")
    kept = select_outputs(graph, outputs)
    passes += ["simplify", "select_outputs"]
    step("select_outputs")
    try:
        facts = probe(graph, progress=(lambda s, d, t: progress(s + " (onnxruntime)", d, t)) if progress else None)
        step("probe")
        decouple_shapes(graph, facts)
        remove_noop_layout(graph, facts)
        passes += ["probe", "decouple_shapes", "remove_noop_layout"]
        if fold_embedding_projection(graph, facts):
            passes.append("fold_embedding_projection")
        if unflatten_rows(graph, facts):
            remove_noop_layout(graph, facts)  # the Reshapes back to [B, S, H] are no-ops now
            passes.append("unflatten_rows")
        if unflatten_heads(graph, facts):
            decouple_shapes(graph, facts)  # the sizes read off the lifted tensors, now [B, H, S, *]
            remove_noop_layout(graph, facts)
            passes.append("unflatten_heads")
        simplified = graph.copy() if save_onnx is not None else None
        step("decouple_shapes+remove_noop_layout")
        for name, fn in FUSIONS:
            fn(graph, facts)
            passes.append(name)
            step(name)
    except BuildError as e:
        if not fixed:
            raise
        # the probes run at other sizes than the file's fixed ones: a graph with those sizes baked into its
        # reshapes fails here, and only a re-export helps
        raise BuildError(f"{reexport_hint(fixed)} ({str(e).splitlines()[0]})") from e
    passthrough = drop_passthrough(graph)
    check_supported(graph)
    passes.append("check_supported")
    step("check_supported")
    pinned = "hybrid" if mixed else precision  # fp8/auto: a hybrid plan whose Linears then get their precision
    if mixed:  # the fp32 lowering: the reference the search measures against, and the weights fp8 quantizes
        t32, w32 = pin_precision(graph, "fp32", ln_input, prenorm_input)
        header32, weights32 = lower(graph, facts, t32, w32, precision="fp32", profile=profile, source_path=onnx_path,
                                    opset=opset, producer=producer, passes=passes + ["lower"])
    tensor_dtypes, weight_dtypes = pin_precision(graph, pinned, ln_input, prenorm_input)
    passes.append("pin_precision")
    if choose_gelu_form(graph, pinned, gelu):
        passes.append("gelu_tanh")
    step("pin_precision")
    header, weights = lower(graph, facts, tensor_dtypes, weight_dtypes, precision=pinned,
                            profile=profile, source_path=onnx_path, opset=opset, producer=producer,
                            passes=passes + ["lower"],
                            progress=(lambda s, d, t: progress("lower (weights)", d, t)) if progress else None)
    header["tf32"] = bool(tf32)
    input_notes += clamp_profile(header["profile"], fixed, profile)
    header["source"].update(source_notes(conversions, input_notes + passthrough +
                                         graph.__dict__.get("_trtrun_notes", [])))
    if took_positions:
        header["source"]["position_ids"] = "arange"  # Plan.check_feeds checks given positions against it
    if mixed:
        from .precision_search import finish_fp8, search

        header32["profile"], header32["source"] = header["profile"], header["source"]
        if precision == "fp8":
            header, weights = finish_fp8(header, weights, weights32, weight_scale=fp8_weights,
                                         activations=fp8_activations, calib=calib, calib_name=calib_name, log=log)
        else:
            search_kw = {"worst_of": worst_of} if worst_of is not None else {}
            header, weights = search(header, weights, header32, weights32, min_cosine=min_cosine, calib=calib,
                                     holdout=holdout, min_top1=min_top1, **search_kw, weight_scale=fp8_weights,
                                     activations=fp8_activations,
                                     cost_model=cost_table, calib_name=calib_name, holdout_name=holdout_name, log=log)
        header["builder"]["passes"] = header["builder"]["passes"] + [f"precision_{precision}"]
        del header32, weights32
    step("lower")
    try:
        plan = Plan.from_parts(header, weights)
    except TrtrunError as e:
        raise BuildError(f"the lowered plan is not valid (a builder bug): {e}") from e
    if save_onnx is not None:
        rewritten = precision_onnx(simplified, pinned)
        _save_model(rewritten, save_onnx)
    step("plan")
    return plan


def clamp_profile(prof: dict, fixed: dict, asked) -> list[str]:
    """Clamp the plan's profile (in place) to the file's fixed dims -> notes. ValueError when the profile the
    caller asked for excludes them."""
    notes = []
    for axis, n in fixed.items():
        lo, _, hi = prof[axis]
        if asked is not None and axis in asked and not lo <= n <= hi:
            raise ValueError(f"profile {axis} {prof[axis]} excludes the file's fixed {axis} {n}")
        if prof[axis] != [n, n, n]:
            prof[axis] = [n, n, n]
        notes.append(f"the file fixes {'the batch' if axis == 'batch' else 'the sequence length'} at {n}: "
                     f"profile {axis} clamped to [{n}, {n}, {n}]")
    return notes


def producer_forms(model):
    """Run PRODUCER_PASSES on the model if it holds any of their forms -> (model, {pass: counts}).

    A plain fp32 export is returned as it is (no copy, no re-serialization)."""
    if not _needs_producer_passes(model):
        return model, {}
    from . import _graph as G

    keep = {k: getattr(model, k) for k in ("producer_name", "producer_version")}
    graph = G.gs().import_onnx(model)
    conversions = {}
    for name, fn in PRODUCER_PASSES:
        done = fn(graph)
        if done:
            conversions[name] = done
    out = G.gs().export_onnx(graph)
    del out.opset_import[:]
    out.opset_import.extend(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for k, v in keep.items():
        setattr(out, k, v)
    return out, conversions


def _needs_producer_passes(model) -> bool:
    import onnx

    quant = {"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"}
    opset = default_opset(model)
    onnx_fused = {"Attention", "RotaryEmbedding"}  # ONNX's own (opset 23+), lowered with onnxruntime's
    if any(n.domain == "com.microsoft" or n.op_type in quant or is_ort_onnx_op(n, opset) or
           (n.domain in ("", "ai.onnx") and n.op_type in onnx_fused) or
           (n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute))
           for n in model.graph.node):
        return True
    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def source_notes(conversions: dict, notes_extra=()) -> dict:
    """What the plan's header.source says about a file that was not a plain fp32 export."""
    notes = []
    weights = "float32"
    if "upcast_fp16" in conversions:
        weights = "float16"
        notes.append(f"fp16 file: {conversions['upcast_fp16'].get('fp16_weights', 0)} fp16 weights read as the fp32 "
                     f"numbers they hold, then stored at the plan's precision")
    if "dequantize" in conversions:
        done = conversions["dequantize"]
        weights = "int4" if any("4-bit" in k for k in done) else "int8"
        what = ", ".join(f"{v} {k}" for k, v in sorted(done.items()))
        notes.append(f"{weights} file dequantized at build time ({what}); run-time activation quantization is not "
                     f"reproduced")
    if "lower_contrib" in conversions:
        done = conversions["lower_contrib"]
        ort = ", ".join(f"{v} {k}" for k, v in sorted(done.items()) if not k.startswith("ONNX "))
        own = ", ".join(f"{v} {k[5:]}" for k, v in sorted(done.items()) if k.startswith("ONNX "))
        if ort:
            notes.append(f"onnxruntime com.microsoft ops lowered to IR ops ({ort})")
        if own:
            notes.append(f"ONNX's fused ops lowered to IR ops ({own})")
    notes += list(notes_extra)
    out = {}
    if weights != "float32":
        out["weights"] = weights
    if notes:
        out["conversions"] = notes
    return out


def same_file(a, b) -> bool:
    """Whether paths `a` and `b` name the same file (also through symlinks or hard links)."""
    import os

    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _save_model(model, path) -> Path:
    import onnx

    from .._io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path
