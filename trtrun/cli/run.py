"""`trtrun run`: execute a plan on text or token ids, on the GPU runtime or the numpy reference backend."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from ._ui import status
from .options import backend_option, quiet_option, text_input_options

DEFAULT_SAMPLES = 8


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


def per_sample_cosine(out, ref, mask):
    """Cosine similarity per sample over its valid (mask = 1) tokens, in float64; NaN where either side has NaN."""
    import numpy as np

    cos = np.empty(out.shape[0])
    for b in range(out.shape[0]):
        keep = mask[b].astype(bool) if mask is not None else slice(None)
        a = np.asarray(out[b][keep], dtype=np.float64).ravel()
        r = np.asarray(ref[b][keep], dtype=np.float64).ravel()
        if not (np.isfinite(a).all() and np.isfinite(r).all()):
            cos[b] = np.nan
            continue
        denom = np.linalg.norm(a) * np.linalg.norm(r)
        # two all-zero vectors agree; one all-zero vector against a non-zero one does not
        cos[b] = float(a @ r / denom) if denom > 0 else (1.0 if not a.any() and not r.any() else 0.0)
    return cos


def select_backend(plan, plan_path: str, backend: str, quiet: bool):
    """-> (name, runner) where runner(feeds) -> outputs dict: the GPU runtime, or the reference backend."""
    from ..errors import RuntimeUnavailableError

    reason = ""
    if backend in ("auto", "gpu"):
        try:
            from .. import runtime

            ok, reason = runtime.gpu_available()
        except ImportError as e:
            ok, reason = False, f"trtrun.runtime cannot be imported: {e}"
        if ok:
            engine = runtime.Engine.load(plan_path, device=0)
            # one run: cuBLASLt's proposals, timed (~0.1 s), not the default focused search (3-5 s of tuning
            # on first use, which only pays off over many runs; docs/runtime.md)
            ctx = engine.create_context(gemm_search="heuristic")
            return "gpu", ctx.run
        if backend == "gpu":
            raise RuntimeUnavailableError(f"--backend gpu: the GPU runtime is not usable: {reason}")
        status(f"GPU runtime not usable ({reason}); using the reference backend", quiet)
    from ..reference import ReferenceBackend

    return "reference", ReferenceBackend(plan).run


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


def _write_output(path: Path, outputs: dict, feeds: dict, meta: dict) -> None:
    import numpy as np

    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        if len(outputs) != 1:
            raise click.UsageError(f"the plan has {len(outputs)} outputs ({', '.join(outputs)}); write them to a .npz")
        with open(path, "wb") as f:  # a file object: np.save would append ".npy" to "out.NPY"
            np.save(f, next(iter(outputs.values())))
    elif suffix == ".npz":
        with open(path, "wb") as f:
            np.savez(f, **outputs)
    elif suffix == ".json":
        doc = dict(meta)
        doc["inputs"] = {k: v.tolist() for k, v in feeds.items()}
        doc["outputs"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype), "data": v.tolist()}
                          for k, v in outputs.items()}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f)
    else:
        raise click.UsageError(f"-o {path}: the output file must end in .npy, .npz or .json")


@click.command("run")
@click.argument("plan_path", metavar="PLAN", type=click.Path(exists=True, dir_okay=False))
@backend_option
@text_input_options
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="write the outputs: .npy (the output), .npz (all outputs) or .json (with inputs)")
@click.option("--compare", "compare_onnx", type=click.Path(exists=True, dir_okay=False), default=None,
              help="also run this ONNX in onnxruntime (fp32, CPU) and print per-sample cosine similarity")
@click.option("--min-cosine", type=float, default=None,
              help="with --compare: fail (exit 1) if any sample's cosine is below this or NaN")
@quiet_option
def command(plan_path, backend, texts, text_file, data_set, max_samples, ids_file, tokenizer, max_length,
            output, compare_onnx, min_cosine, quiet):
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
    if ids_file:
        if tokenizer or max_length:
            raise click.UsageError("--tokenizer/--max-length apply to text input, not --ids")
        feeds = data.load_ids(ids_file)
        chunks = [feeds]  # as given: a shape outside the profile or an unknown input name is an error
        n_rows = [feeds["input_ids"].shape[0]]
    else:
        sample_texts = _texts_from_options(texts, text_file, data_set, max_samples)
        tok = data.load_tokenizer(tokenizer) if tokenizer else data.tokenizer_for(plan)
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
        import onnxruntime as ort

        sess = ort.InferenceSession(str(compare_onnx), providers=["CPUExecutionProvider"])
        want = {i.name for i in sess.get_inputs()}
        missing = want - set(chunks[0])
        if missing:
            raise TrtrunError(f"--compare {compare_onnx}: it needs inputs the plan does not take: {sorted(missing)}")
        ref = [sess.run(None, {k: v for k, v in c.items() if k in want}) for c in chunks]
        out_names = [o.name for o in sess.get_outputs()]
        first = next(iter(outputs))
        j = out_names.index(first) if first in out_names else 0
        ref0 = np.concatenate([r[j][:n] for r, n in zip(ref, n_rows)])
        cos = per_sample_cosine(outputs[first], ref0, mask)

    meta = {"plan": str(plan_path), "precision": plan.header.get("precision"), "backend": name,
            "seconds": round(elapsed, 6)}
    if sample_texts is not None:
        meta["texts"] = sample_texts
    if cos is not None:
        meta["cosine_vs_onnxruntime_fp32"] = [float(c) for c in cos]
    if output:
        _write_output(Path(output), outputs, used, meta)
        status(f"wrote {output}", quiet)

    click.echo(f"backend {name}, precision {meta['precision']}: {b} sample(s), batch {b} x sequence {s}"
               f"{f' in {len(chunks)} runs' if len(chunks) > 1 else ''}, {elapsed * 1e3:.1f} ms")
    for k, v in outputs.items():
        bad_nan, bad_inf = int(np.isnan(v).sum()), int(np.isinf(v).sum())
        click.echo(f"{k}: shape {list(v.shape)} {v.dtype}, NaN {bad_nan}, Inf {bad_inf}")
    first = next(iter(outputs.values()))
    show = min(b, 16)
    for i in range(show):
        n_tok = int(mask[i].sum()) if mask is not None else s
        m = mask[i].astype(bool) if mask is not None else slice(None)
        pooled = first[i][m].astype(np.float64).mean(axis=0) if first.ndim == 3 else first[i]
        line = f"  {f'[{i}]':>{len(str(show - 1)) + 2}} tokens {n_tok:4d}  mean-pooled norm {np.linalg.norm(pooled):9.4f}"
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
