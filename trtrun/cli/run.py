"""`trtrun run`: execute a plan on text or token ids, on the GPU runtime or the numpy reference backend."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from ._ui import status
from ..types import POOLINGS
from .options import backend_option, quiet_option, text_input_options

DEFAULT_SAMPLES = 8
POOLING_CHOICES = ("auto", *POOLINGS, "none")  # the Embedder's poolings, plus auto and none (the token states)


# ------------------------------------------------------------------------------------------ helpers
# (plain functions over a Plan's header, reusable by other commands)

def plan_limits(plan) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    prof = plan.header["profile"]
    return tuple(prof["batch"]), tuple(prof["seq"])


def fit_feeds(plan, feeds: dict) -> dict:
    """Keep only the inputs the plan takes (a BERT tokenizer's token_type_ids for a plan without them);
    Plan.check_feeds fills absent attention_mask / token_type_ids."""
    names = {i["name"] for i in plan.header["inputs"]}
    return {k: v for k, v in feeds.items() if k in names}


def pad_to(feeds: dict, seq: int | None = None, batch: int | None = None) -> dict:
    """Right-pad every feed to `seq` columns (masked) and/or `batch` rows (copies of row 0, discarded later)."""
    import numpy as np

    out = dict(feeds)
    b, s = out["input_ids"].shape
    if seq is not None and s < seq:
        out = {k: np.pad(v, ((0, 0), (0, seq - s))) for k, v in out.items()}  # zeros: mask 0 = padding
    if batch is not None and b < batch:
        out = {k: np.concatenate([v, np.repeat(v[:1], batch - b, axis=0)]) for k, v in out.items()}
    return out


def per_sample_cosine(out, ref, mask, token_axis: bool | None = None):
    """Cosine similarity per sample over its valid (mask = 1) tokens (an output without a token axis, one vector a
    sample [B, N]: over all of it), with trtrun.check.metrics.cosine's conventions (float64; NaN where either side has
    a NaN or Inf; two all-zero vectors agree). token_axis: whether axis 1 is the tokens (None: rank 3 or more)."""
    import numpy as np

    from ..check.metrics import cosine

    per_token = mask is not None and (out.ndim >= 3 if token_axis is None else token_axis)
    keep = [np.asarray(mask[b]).astype(bool) if per_token else slice(None) for b in range(out.shape[0])]
    return np.array([cosine(out[b][k], ref[b][k]) for b, k in enumerate(keep)])


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def compare_reference(plan, onnx_path, chunks, n_rows, out_name: str, quiet: bool):
    """The original graph's output on the same batches, by onnxruntime (fp32, CPU). A file onnxruntime
    cannot load, a model taking other inputs or failing on these ones is a TrtrunError in one line (was
    onnxruntime's or numpy's own message)."""
    import hashlib

    import numpy as np

    from .._ort import session as ort_session
    from ..errors import TrtrunError

    try:
        sess = ort_session(onnx_path)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
        raise TrtrunError(f"--compare {onnx_path}: not an ONNX model onnxruntime can load "
                          f"({_first_line(e)})") from None
    want = {i.name for i in sess.get_inputs()}
    missing = want - set(chunks[0])
    if missing:
        raise TrtrunError(f"--compare {onnx_path}: it needs inputs the plan does not take ({', '.join(sorted(missing))}): "
                          f"not the model this plan was built from")
    src = (plan.header.get("source") or {}).get("sha256")
    if src:
        h = hashlib.sha256()
        with open(onnx_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != src:
            status(f"note: --compare {onnx_path} is not the file this plan was built from (its SHA-256 differs "
                   f"from the one the plan records); comparing anyway", quiet)
    try:
        ref = [sess.run(None, {k: v for k, v in c.items() if k in want}) for c in chunks]
    except Exception as e:  # noqa: BLE001 - onnxruntime's own classes
        raise TrtrunError(f"--compare {onnx_path}: onnxruntime cannot run it on these inputs ({_first_line(e)}): "
                          f"is it the model this plan was built from?") from None
    out_names = [o.name for o in sess.get_outputs()]
    j = out_names.index(out_name) if out_name in out_names else 0
    return np.concatenate([r[j][:n] for r, n in zip(ref, n_rows)])


def select_backend(plan, plan_path: str, backend: str, quiet: bool):
    """-> (name, runner) where runner(feeds) -> outputs dict: the GPU runtime, or the reference backend."""
    from ..backends import choose_backend
    from ..types import GEMM_SEARCH_DEFAULTS

    name, reason = choose_backend(backend, plan=plan)
    if name == "gpu":
        from .. import runtime

        engine = runtime.Engine.load(plan_path, device=0)
        # one run: cuBLASLt's proposals, timed (~0.1 s), not the default focused search (3-5 s of tuning
        # on first use, which only pays off over many runs; docs/runtime.md)
        ctx = engine.create_context(gemm_search=GEMM_SEARCH_DEFAULTS["run"])
        return "gpu", ctx.run
    if backend != "reference":
        status(f"GPU runtime not usable ({reason}); using the reference backend", quiet)
    from ..reference import ReferenceBackend

    return "reference", ReferenceBackend(plan).run


def resolve_pooling(plan, pooling: str, out_ndim: int, dirs) -> tuple[str, str]:
    """(pooling, why) for what -o writes: "none" keeps the token states. auto: an encoder's
    sentence-transformers pooling config in one of `dirs` (tokenizer, source model folder), else mean; a
    decoder (or an output that is not [B, S, N]) keeps its token states."""
    from ..embed import read_st_pooling

    if pooling != "auto":
        return pooling, "--pooling " + pooling
    if out_ndim != 3:
        return "none", f"the output has {out_ndim} dimensions, not [batch, sequence, hidden]"
    if (plan.header.get("model") or {}).get("arch") != "encoder":
        return "none", "a decoder's token states (--pooling last|mean for one vector a text)"
    for d in dirs:
        if d is not None and Path(d).is_dir():
            mode, where = read_st_pooling(d)
            if mode is not None:
                return mode, f"from {where}"
    return "mean", "an encoder's default (no sentence-transformers pooling config beside the model or tokenizer)"


def _texts_from_options(texts, text_file, data_set, max_samples):
    from .. import data

    if texts:
        return list(texts)
    if text_file:
        lines = data.load_text_file(text_file)
        return lines[:max_samples] if max_samples else lines
    if data_set:
        return data.load_texts(data_set, n=max_samples or DEFAULT_SAMPLES, seed=0)
    return None


def _write_output(path: Path, outputs: dict, feeds: dict, meta: dict, embeddings=None) -> str:
    """Write -o; returns what was written, for the status line. With `embeddings` (pooled [B, N]): .npy holds
    them alone, .npz and .json hold them as "embeddings" beside the outputs; without, the outputs."""
    import numpy as np

    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        if embeddings is None and len(outputs) != 1:
            raise click.UsageError(f"the plan has {len(outputs)} outputs ({', '.join(outputs)}); write them to a .npz")
        arr = embeddings if embeddings is not None else next(iter(outputs.values()))
        with open(path, "wb") as f:  # a file object: np.save would append ".npy" to "out.NPY"
            np.save(f, arr)
        what = (f"embeddings {list(arr.shape)} {arr.dtype}" if embeddings is not None else
                f"{next(iter(outputs))} {list(arr.shape)} {arr.dtype} (token states)")
    elif suffix == ".npz":
        arrays = dict(outputs)
        if embeddings is not None:
            arrays = {"embeddings": embeddings, **arrays, "attention_mask": feeds["attention_mask"]}
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        what = ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items())
    elif suffix == ".json":
        doc = dict(meta)
        doc["inputs"] = {k: v.tolist() for k, v in feeds.items()}
        if embeddings is not None:
            doc["embeddings"] = embeddings.tolist()
        doc["outputs"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "data": v.tolist()}
                          for k, v in outputs.items()}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        what = (f"embeddings {list(embeddings.shape)}, " if embeddings is not None else "") + \
            ", ".join(f"{k} {list(v.shape)}" for k, v in outputs.items()) + ", inputs, settings"
    else:
        raise click.UsageError(f"-o {path}: the output file must end in .npy, .npz or .json")
    return what


@click.command("run")
@click.argument("plan_path", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
@backend_option
@text_input_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="write the results: .npy (one vector a text, or the token states with --pooling none), "
                   ".npz (the vectors as 'embeddings', every output, the attention mask) or .json (also the inputs)")
@click.option("--pooling", type=click.Choice(POOLING_CHOICES), default="auto", show_default=True,
              help="what -o holds: one vector a text pooled over its tokens (mean, cls, max, mean_sqrt_len; last: the last valid token, "
                   "for decoder embedders), or none: the token states [batch, sequence, hidden] as the plan outputs them, padding included. "
                   "auto: for an encoder the sentence-transformers pooling config beside the tokenizer or the "
                   "source model, else mean; for a decoder none")
@click.option("--no-normalize", is_flag=True, help="pooled vectors are not L2-normalized (default: they are, as "
                                                    "sentence-transformers' Normalize does)")
@click.option("--compare", "compare_onnx", type=click.Path(exists=True, dir_okay=False), default=None,
              help="also run this ONNX in onnxruntime (fp32, CPU) and print per-sample cosine similarity")
@click.option("--min-cosine", type=float, default=None,
              help="with --compare: fail (exit 1) if any sample's cosine is below this or NaN")
@quiet_option
def command(plan_path, backend, texts, text_file, data_set, max_samples, ids_file, tokenizer, max_length,
            output, pooling, no_normalize, compare_onnx, min_cosine, quiet):
    """Run PLAN on texts or token ids and print (or write) the outputs.

    \b
    Inputs, one of:
      --text "..." (repeatable), --text-file F (one text a line), --data rt|wiki|imdb [-n N]
      --ids ids.npy|ids.npz|ids.json (token ids, checked against the plan's profile and vocabulary)
    Texts are tokenized with --tokenizer DIR, or the tokenizer beside the source model, or the data
    folder's tokenizer for the plan's vocabulary; batches larger than the profile allows are split.
    """
    import numpy as np

    from .. import data
    from ..errors import TrtrunError
    from ..plan import load_plan

    given = [n for n, v in (("--text", texts), ("--text-file", text_file), ("--data", data_set), ("--ids", ids_file)) if v]
    if len(given) != 1:
        raise click.UsageError("give exactly one input: --text, --text-file, --data or --ids"
                               + (f" (got {', '.join(given)})" if given else ""))
    if min_cosine is not None and not compare_onnx:
        raise click.UsageError("--min-cosine needs --compare MODEL.onnx")
    if output:  # before any work, and never over an input
        if Path(output).suffix.lower() not in (".npy", ".npz", ".json"):
            raise click.UsageError(f"-o {output}: the output file must end in .npy, .npz or .json")
        for flag, src in (("--ids", ids_file), ("--text-file", text_file), ("PLAN", plan_path),
                          ("--compare", compare_onnx)):
            if src and Path(src).exists() and Path(output).exists() and os.path.samefile(output, src):
                raise click.UsageError(f"-o {output} is the {flag} input file; write the outputs elsewhere")

    plan = load_plan(plan_path)
    (bmin, _, bmax), (smin, _, smax) = plan_limits(plan)

    sample_texts = None
    tok_dir = None
    if ids_file:
        if tokenizer or max_length:
            raise click.UsageError("--tokenizer/--max-length apply to text input, not --ids")
        feeds = data.load_ids(ids_file)
        chunks = [feeds]  # as given: a shape outside the profile or an unknown input name is an error
        n_rows = [feeds["input_ids"].shape[0]]
    else:
        sample_texts = _texts_from_options(texts, text_file, data_set, max_samples)
        tok = data.load_tokenizer(tokenizer) if tokenizer else data.tokenizer_for(plan)
        tok_dir = tokenizer or getattr(tok, "name_or_path", None)
        feeds = fit_feeds(plan, data.encode(tok, sample_texts, max_length or smax))
        feeds = pad_to(feeds, seq=smin)
        chunks, n_rows = [], []
        for i in range(0, feeds["input_ids"].shape[0], bmax):  # split batches larger than the profile
            part = {k: v[i:i + bmax] for k, v in feeds.items()}
            n_rows.append(part["input_ids"].shape[0])
            chunks.append(pad_to(part, batch=bmin))
    chunks = [plan.check_feeds(c) for c in chunks]

    name, runner = select_backend(plan, plan_path, backend, quiet)
    t0 = time.perf_counter()
    results = [runner(c) for c in chunks]
    elapsed = time.perf_counter() - t0
    outputs = {k: np.concatenate([r[k][:n] for r, n in zip(results, n_rows)]) for k in results[0]}
    used = {k: np.concatenate([c[k][:n] for c, n in zip(chunks, n_rows)]) for k in chunks[0]}
    mask = used.get("attention_mask")
    b, s = used["input_ids"].shape

    cos = None
    if compare_onnx:
        ref0 = compare_reference(plan, compare_onnx, chunks, n_rows, next(iter(outputs)), quiet)
        first = next(iter(outputs))
        if ref0.shape != outputs[first].shape:
            raise TrtrunError(f"--compare {compare_onnx}: its output has shape {list(ref0.shape)}, the plan's "
                              f"{first} {list(outputs[first].shape)}: not the model this plan was built from")
        shape = next(o["shape"] for o in plan.outputs if o["name"] == first)
        cos = per_sample_cosine(outputs[first], ref0, mask, token_axis=len(shape) >= 2 and shape[1] == "S")

    meta = {"plan": str(plan_path), "precision": plan.header.get("precision"), "backend": name,
            "seconds": round(elapsed, 6)}
    if sample_texts is not None:
        meta["texts"] = sample_texts
    if cos is not None:
        meta["cosine_vs_onnxruntime_fp32"] = [float(c) for c in cos]
    if output:
        first = next(iter(outputs))
        src = (plan.header.get("source") or {}).get("path")
        how, why = resolve_pooling(plan, pooling, outputs[first].ndim,
                                   [tok_dir, Path(src).parent if src else None, Path(plan_path).parent])
        emb = None
        if how != "none":
            if outputs[first].ndim != 3:
                raise click.UsageError(f"--pooling {how}: the plan's output {first} is "
                                       f"{list(outputs[first].shape)}, not [batch, sequence, hidden]")
            from ..embed import pool

            emb = pool(outputs[first], mask if mask is not None else np.ones((b, s), np.int64), how,
                       normalize=not no_normalize)
            meta["pooling"] = {"mode": how, "normalized": not no_normalize, "why": why}
        what = _write_output(Path(output), outputs, used, meta, embeddings=emb)
        if emb is not None:
            status(f"wrote {output}: {what}: one vector a text, {how}-pooled over its tokens"
                   f"{'' if no_normalize else ', L2-normalized'} ({why}); --pooling none writes the token states",
                   quiet)
        else:
            status(f"wrote {output}: {what} ({why})", quiet)

    click.echo(f"backend {name}, precision {meta['precision']}: {b} sample(s), batch {b} x sequence {s}"
               f"{f' in {len(chunks)} runs' if len(chunks) > 1 else ''}, {elapsed * 1e3:.1f} ms")
    for k, v in outputs.items():
        bad_nan, bad_inf = int(np.isnan(v).sum()), int(np.isinf(v).sum())
        click.echo(f"{k}: shape {list(v.shape)} {v.dtype}, NaN {bad_nan}, Inf {bad_inf}")
    first = next(iter(outputs.values()))
    out0 = plan.outputs[0]["shape"]
    token_scores = len(out0) == 2 and out0[1] == "S"  # one value a token ([B, S]: question answering's scores)
    show = min(b, 16)
    for i in range(show):
        n_tok = int(mask[i].sum()) if mask is not None else s
        m = mask[i].astype(bool) if mask is not None else slice(None)
        line = f"  {f'[{i}]':>{len(str(show - 1)) + 2}} tokens {n_tok:4d}  "
        if first.ndim == 2 and first.shape[1] <= 8 and not token_scores:  # a classifier's logits: values, top one
            vals = " ".join(f"{x:9.4f}" for x in first[i])
            line += f"{vals}  top {int(np.argmax(first[i]))}" if first.shape[1] > 1 else vals
        elif token_scores:  # the best-scoring valid token
            row = np.where(mask[i].astype(bool), first[i], -np.inf) if mask is not None else first[i]
            line += f"top token {int(np.argmax(row)):4d} ({float(np.max(row)):9.4f})"
        else:  # token states: mean over the valid tokens; one vector a sample: itself
            pooled = first[i][m].astype(np.float64).mean(axis=0) if first.ndim == 3 else first[i]
            line += f"{'mean-pooled ' if first.ndim == 3 else ''}norm {np.linalg.norm(pooled):9.4f}"
        if cos is not None:
            line += f"  cosine {cos[i]:.7f}"
        if sample_texts is not None:
            t = sample_texts[i]
            line += f"  {t[:48] + '...' if len(t) > 48 else t!r}"
        click.echo(line)
    if b > show:
        click.echo(f"  ... {b - show} more")
    if cos is not None:
        nan = int(np.isnan(cos).sum())
        click.echo(f"cosine vs onnxruntime fp32 ({Path(compare_onnx).name}), per sample over valid tokens: "
                   f"min {np.nanmin(cos) if nan < len(cos) else float('nan'):.7f}, "
                   f"mean {np.nanmean(cos) if nan < len(cos) else float('nan'):.7f}, NaN {nan}")
        if min_cosine is not None:
            worst = int(np.argmin(np.where(np.isnan(cos), -np.inf, cos)))
            if nan or cos[worst] < min_cosine:
                raise TrtrunError(f"sample {worst}: cosine {cos[worst]:.7f} is below --min-cosine {min_cosine}")
