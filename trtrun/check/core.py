"""`run_check`: build each precision's plan, run it and the fp32 reference on the same inputs, and gather
everything the report holds (fidelity, NaN/Inf, random vs real, overflow headroom, downstream)."""

from __future__ import annotations

import datetime as _dt
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, TrtrunError
from ..types import NAMED_ARCHS
from . import metrics
from .backends import OnnxRuntimeFp32, ReferencePlan, choose_backend, plan_runner
from .headroom import HeadroomAccumulator, why_hybrid_is_safe
from .inputs import SampleSet, batches, check_data_spec, random_like, random_samples, real_samples

# The downstream head's default sizes scale with --max-samples (N): max(256, 16 N) train and max(128, 4 N)
# test sentences, so `-n 8` embeds 256 + 128 per precision rather than all 8,530 Rotten Tomatoes sentences,
# and from N = 427 on the whole 80/20 split is used (6,824 train, 1,706 test).
DOWNSTREAM_TRAIN_PER_SAMPLE, DOWNSTREAM_TRAIN_MIN = 16, 256
DOWNSTREAM_TEST_PER_SAMPLE, DOWNSTREAM_TEST_MIN = 4, 128


class BudgetError(TrtrunError):
    """A --min-cosine or --max-nan-rate budget was broken (the reports are written before it is raised)."""

    def __init__(self, failures: list[str]):
        self.failures = list(failures)
        super().__init__("budget broken: " + "; ".join(self.failures))


@dataclass
class CheckOptions:
    model: str
    out_dir: Path
    precisions: list[str] = field(default_factory=lambda: ["fp16", "hybrid"])
    data: str = "rt,wiki"
    max_samples: int = 256
    backend: str = "auto"
    min_cosine: float | None = None
    max_nan_rate: float | None = None
    gate: list[str] | None = None          # precisions the budgets apply to (default: all checked)
    compare_random: bool = True
    headroom_samples: int | None = None    # None: every sample on the reference backend, 64 on the GPU
    downstream: str = "auto"               # auto | on | off
    downstream_train: int | None = None
    downstream_test: int | None = None
    fp32: str = "onnxruntime"              # onnxruntime | plan
    batch_size: int = 16
    max_length: int | None = None
    tokenizer: str | None = None
    overrides: dict | None = None
    allow_large: bool = False              # a named architecture over 4 GiB of fp32 weights (export_model)
    seed: int = 0
    work_dir: Path | None = None
    plots: bool = True
    per_sample: bool = True


# ------------------------------------------------------------------------------------------- model

def resolve_model(model: str, work: Path, overrides: dict | None, seed: int, log,
                  allow_large: bool = False) -> tuple[Path, dict, Path | None]:
    """(ONNX path, description, tokenizer folder or None): an .onnx is used as it is; a Hugging Face model
    folder or a named architecture is exported first (trtrun.export.export_model, with allow_large)."""
    p = Path(model)
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise InputError(f"model {p} does not exist")
        if overrides:
            raise InputError("size options (--hidden-size, --layers, ...) apply to a named architecture, not an .onnx")
        from ..data import is_tokenizer_dir

        tok = p.parent if is_tokenizer_dir(p.parent) else None
        return p, {"source": str(p), "kind": "onnx", "weights": "as in the file"}, tok
    if model in NAMED_ARCHS or p.is_dir():
        from ..export import export_model

        name = model if model in NAMED_ARCHS else (p.resolve().name or "model")
        out = work / f"{name}.onnx"
        log(f"exporting {model} to {out}" + (f" (overrides {overrides})" if overrides else ""))
        t = time.perf_counter()
        export_model(model, out, overrides=overrides or None, seed=seed, allow_large=allow_large)
        desc = {"source": model, "kind": "named architecture" if model in NAMED_ARCHS else "model folder",
                "weights": f"random (seed {seed})" if model in NAMED_ARCHS else "real (from the folder)",
                "overrides": overrides or {}, "export_s": round(time.perf_counter() - t, 2)}
        tok = p if p.is_dir() else None
        stored = _stored_dtypes(p) if p.is_dir() else None
        if stored:
            desc["stored_dtypes"] = stored
            if stored == ["F16"] or stored == ["BF16"]:
                desc["weights"] = (f"real, stored in {stored[0].lower()} (rounded from the original fp32): the fp32 "
                                   "reference runs these same rounded values in fp32, so fp16 weight rounding costs "
                                   "nothing here and the differences come from activations and arithmetic alone")
        return out, desc, tok
    raise InputError(f"model {model!r}: expected an .onnx file, a Hugging Face model folder, or one of "
                     f"{', '.join(NAMED_ARCHS)}")


def _stored_dtypes(folder: Path) -> list[str] | None:
    """The dtypes in a model folder's safetensors files (read from their JSON headers), e.g. ["F32"]."""
    import json
    import struct

    found = set()
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                head = json.loads(fh.read(n))
        except (OSError, ValueError, struct.error):
            return None
        found |= {v["dtype"] for k, v in head.items() if k != "__metadata__" and isinstance(v, dict)
                  and str(v.get("dtype", "")).startswith(("F", "BF"))}  # float tensors (not position ids)
    return sorted(found) or None


def _onnx_word_table(onnx_path: Path, vocab: int, hidden: int) -> np.ndarray | None:
    """The fp32 [vocab, hidden] initializer of the original ONNX (GPT-2's tied wte), if exactly one."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    found = [numpy_helper.to_array(t) for t in m.graph.initializer if list(t.dims) == [vocab, hidden]]
    return found[0].astype(np.float32) if len(found) == 1 else None


# ------------------------------------------------------------------------------------------- helpers

def downstream_sizes(opts: CheckOptions) -> tuple[int, int]:
    """(train, test) caps of the downstream head: the options' when given, else scaled with max_samples."""
    n = int(opts.max_samples)
    train = opts.downstream_train or max(DOWNSTREAM_TRAIN_MIN, DOWNSTREAM_TRAIN_PER_SAMPLE * n)
    test = opts.downstream_test or max(DOWNSTREAM_TEST_MIN, DOWNSTREAM_TEST_PER_SAMPLE * n)
    return int(train), int(test)


def _profile_for(opts: CheckOptions) -> dict | None:
    prof = {}
    if opts.max_length:
        L = int(opts.max_length)
        prof["seq"] = (1, min(128, L), L)
        if opts.batch_size > 32:
            prof["batch"] = (1, 8, int(opts.batch_size))
    return prof or None


def _feed_fitter(names: set[str]):
    """Feeds with exactly the inputs the models take: token_type_ids added as zeros where needed, dropped
    where no model takes it."""
    def fit(feeds: dict) -> dict:
        out = {k: v for k, v in feeds.items() if k in names}
        if "token_type_ids" in names and "token_type_ids" not in out:
            out["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        if "attention_mask" in names and "attention_mask" not in out:
            out["attention_mask"] = np.ones_like(feeds["input_ids"])
        return out
    return fit


def _length_summary(s: SampleSet) -> dict:
    L = s.lengths
    src: dict[str, int] = {}
    for x in s.sources:
        src[x] = src.get(x, 0) + 1
    return {"samples": s.n, "tokens": int(L.sum()), "length": metrics.distribution(L), "sources": src,
            "note": s.note, "length_buckets": {b: int(sum(1 for x in L if metrics.bucket_label(int(x)) == b))
                                               for b in metrics.bucket_labels()
                                               if any(metrics.bucket_label(int(x)) == b for x in L)}}


def _pick_headroom(s: SampleSet, k: int, worst_cos: np.ndarray | None, seed: int) -> np.ndarray:
    """k sample indices for the headroom runs: up to k/2 with the lowest worst-token cosine on the engine
    (NaN first: NaN/Inf outputs; then silent fp16 overflows, which show as a collapsed token), the 4
    longest, then a seeded random draw."""
    if k >= s.n:
        return np.arange(s.n)
    chosen: list[int] = []
    if worst_cos is not None:
        score = np.where(np.isnan(worst_cos), -np.inf, worst_cos)
        chosen = [int(i) for i in np.argsort(score, kind="stable")[: k // 2]]
    for i in np.argsort(-s.lengths, kind="stable")[:4]:
        if len(chosen) < k and int(i) not in chosen:
            chosen.append(int(i))
    rest = np.setdiff1d(np.arange(s.n), chosen)
    rng = np.random.default_rng(seed)
    chosen += [int(i) for i in rng.choice(rest, size=max(0, k - len(chosen)), replace=False)]
    return np.sort(np.asarray(chosen, dtype=np.int64))


# ------------------------------------------------------------------------------------------- main

def run_check(opts: CheckOptions, log=None) -> dict:
    """Run every check; return the report dict (report.write_reports writes it out). Raises TrtrunError
    subclasses on bad input; budget failures are listed in report["failures"], not raised here."""
    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    precisions = list(dict.fromkeys(opts.precisions))
    if not precisions:
        raise InputError("--precision needs at least one of fp32, fp16, hybrid, fp8")
    if opts.fp32 not in ("onnxruntime", "plan"):
        raise InputError(f"--fp32-reference must be onnxruntime or plan, got {opts.fp32!r}")
    if opts.downstream not in ("auto", "on", "off"):
        raise InputError(f"--downstream must be auto, on or off, got {opts.downstream!r}")
    gate = list(opts.gate) if opts.gate else precisions
    bad_gate = [g for g in gate if g not in precisions]
    if bad_gate:
        raise InputError(f"--gate {','.join(bad_gate)}: not among the checked precisions {','.join(precisions)}")
    if opts.max_samples < 1:
        raise InputError("--max-samples must be >= 1")
    # before the export and the builds (minutes): inputs that name nothing, or data not fetched
    check_data_spec(opts.data)

    tmp = None
    if opts.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="trtrun-check-")
        work = Path(tmp.name)
    else:
        work = Path(opts.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(opts, precisions, gate, work, log, timing, t_start)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(opts, precisions, gate, work, log, timing, t_start) -> dict:
    from .. import data
    from ..builder import build

    given_tokenizer = data.load_tokenizer(opts.tokenizer) if opts.tokenizer else None  # its errors before any work
    t = time.perf_counter()
    onnx_path, model_desc, tok_dir = resolve_model(opts.model, work, opts.overrides, opts.seed, log,
                                                   opts.allow_large)
    timing["export_s"] = round(time.perf_counter() - t, 2)

    backend, why = choose_backend(opts.backend)  # (no usable GPU for --backend gpu: said before any build)

    need = list(precisions)
    if opts.fp32 == "plan" and "fp32" not in need:
        need.append("fp32")
    profile = _profile_for(opts)
    plans = {}
    t = time.perf_counter()
    for p in need:
        log(f"building the {p} plan")
        plans[p] = build(onnx_path, precision=p, profile=profile)
    timing["build_s"] = round(time.perf_counter() - t, 2)
    for plan in plans.values():  # a plan the GPU runtime cannot run (an op, head size, ...): auto takes the reference
        if backend != "gpu":
            break
        backend, why = choose_backend(opts.backend, plan=plan)
    log(f"backend: {backend} ({why})")
    plan0 = plans[precisions[0]]
    mdl = plan0.header["model"]
    arch = mdl["arch"]
    (bmin, _, bmax), (smin, _, smax) = plan0.profile["batch"], plan0.profile["seq"]
    bs = max(bmin, min(opts.batch_size, bmax))
    max_len = min(opts.max_length or smax, smax)
    out_name = plan0.outputs[0]["name"]
    sentence_output = len(plan0.outputs[0]["shape"]) < 2 or plan0.outputs[0]["shape"][1] != "S"  # [B, N]
    model_desc.update({"onnx": str(onnx_path), "arch": arch, "hidden": mdl["hidden"], "layers": mdl["num_layers"],
                       "heads": mdl["num_heads"], "vocab_size": mdl["vocab_size"],
                       "max_position": mdl["max_position"], "output": out_name})

    tokenizer = None
    tok_note = None
    try:
        if given_tokenizer is not None:
            tokenizer = given_tokenizer
        elif tok_dir is not None and data.is_tokenizer_dir(tok_dir):
            tokenizer = data.load_tokenizer(tok_dir)
        else:
            tokenizer = data.tokenizer_for(plan0)
    except TrtrunError as e:
        if opts.tokenizer:
            raise
        tok_note = str(e)
    if tokenizer is not None:
        tok_note = f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '')})"

    # ------------------------------------------------------------------ runners
    if opts.fp32 == "onnxruntime":
        ref = OnnxRuntimeFp32(onnx_path)
        fp32_names = set(ref.input_names)
    else:
        ref = plan_runner(plans["fp32"], backend)
        fp32_names = {i["name"] for i in plans["fp32"].inputs}
    runners = {}
    for p in precisions:
        runners[p] = plan_runner(plans[p], backend)
    names = fp32_names | {i["name"] for i in plan0.inputs}
    fit = _feed_fitter(names)

    # ------------------------------------------------------------------ inputs
    sets: dict[str, SampleSet] = {}
    if opts.data == "random":
        sets["random"] = random_samples(opts.max_samples, mdl["vocab_size"], max_len=max_len, seed=opts.seed + 1,
                                        token_types="token_type_ids" in names)
    else:
        real = real_samples(opts.data, opts.max_samples, tokenizer=tokenizer, max_len=max_len, seed=opts.seed)
        sets["real"] = real
        if opts.compare_random:
            sets["random"] = random_like(real, mdl["vocab_size"], tokenizer=tokenizer, seed=opts.seed + 1)
    for s in sets.values():
        s.feeds = fit(s.feeds)
        if s.feeds["input_ids"].shape[1] > smax:
            raise InputError(f"{s.name} samples have {s.feeds['input_ids'].shape[1]} tokens, more than the plan's "
                             f"largest sequence {smax}")

    # ------------------------------------------------------------------ headroom set-up
    capture_main = all(getattr(r, "can_capture", False) for r in runners.values())
    if opts.headroom_samples is None:
        hk = None if backend == "reference" else 64
    else:
        hk = int(opts.headroom_samples)
    head_acc = {sn: {p: HeadroomAccumulator(plans[p]) for p in precisions} for sn in sets}
    head_sel: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ LM accumulator (decoders)
    lm = None
    lm_set = "real" if "real" in sets else "random"
    lm_note = None
    if arch == "decoder" and opts.downstream != "off":
        from .downstream import LanguageModelAccumulator, word_embedding

        wte = _onnx_word_table(onnx_path, mdl["vocab_size"], mdl["hidden"])
        wte_src = "the original ONNX's fp32 initializer"
        if wte is None:
            wte = np.asarray(word_embedding(plans.get("fp32", plan0)), np.float32)
            wte_src = f"the {plans.get('fp32', plan0).precision} plan's Embedding table"
        lm = LanguageModelAccumulator(wte, precisions)
        lm_note = wte_src

    # ------------------------------------------------------------------ main loop
    per_sample: dict[str, dict[str, list]] = {sn: {p: [None] * s.n for p in precisions} for sn, s in sets.items()}
    t = time.perf_counter()
    for sn, s in sets.items():
        if capture_main:
            head_sel[sn] = np.arange(s.n) if hk is None else _pick_headroom(s, hk, None, opts.seed)
            in_head = np.zeros(s.n, bool)
            in_head[head_sel[sn]] = True
        log(f"{sn}: {s.n} samples ({s.note}), batches of {bs}")
        done = 0
        t_set = t_said = time.perf_counter()
        for idx, feeds in batches(s, bs, seq_min=smin, batch_min=bmin):
            nb = len(idx)
            mask = feeds["attention_mask"][:nb]
            r = ref.run(feeds)
            r = (r[out_name] if out_name in r else next(iter(r.values())))[:nb]
            outs = {}
            for p, run in runners.items():
                if capture_main and in_head[idx].any():
                    o, env = run.run(feeds, capture=True)
                    keep = in_head[idx]
                    if keep.all():
                        head_acc[sn][p].update(feeds, env, nb)
                    else:  # only some rows are in the headroom set: pass those rows alone
                        sel = np.flatnonzero(keep)
                        head_acc[sn][p].update({k: v[sel] for k, v in feeds.items()},
                                               {k: v[sel] for k, v in env.items()}, len(sel))
                    del env
                else:
                    o = run.run(feeds)
                o = o[out_name][:nb]
                outs[p] = o
                # one vector a sample ([B, N]: a classifier's logits, a pooled embedding) is compared whole
                whole = sentence_output
                cmp = metrics.compare_batch(o[:, None], r[:, None]) if whole else metrics.compare_batch(o, r, mask)
                for j, m in zip(idx, cmp):
                    per_sample[sn][p][j] = m
            if lm is not None and sn == lm_set:
                lm.update(feeds["input_ids"][:nb], mask, r, outs)
            done += nb
            now = time.perf_counter()
            if now - t_said > 15 or done == s.n:
                t_said = now
                log(f"  {sn}: {done}/{s.n} samples, {now - t_set:.0f}s")
    timing["main_s"] = round(time.perf_counter() - t, 2)

    # ------------------------------------------------------------------ headroom on the reference backend
    headroom_source = ("captured in the main runs (reference backend)" if capture_main else
                       "re-run on the numpy reference backend: the GPU runtime exposes no intermediate tensors")
    if not capture_main:
        t = time.perf_counter()
        refs = {p: ReferencePlan(plans[p]) for p in precisions}
        for sn, s in sets.items():
            worst = np.array([min(per_sample[sn][p][i]["cos_worst_token"] if math.isfinite(
                per_sample[sn][p][i]["cos_worst_token"]) else -np.inf for p in precisions) for i in range(s.n)])
            k = s.n if hk is None else hk
            head_sel[sn] = _pick_headroom(s, k, worst, opts.seed)
            sub = s.subset(head_sel[sn])
            log(f"headroom: {sn}, {sub.n} samples on the reference backend")
            for idx, feeds in batches(sub, bs, seq_min=smin, batch_min=bmin):
                for p in precisions:
                    _, env = refs[p].run(feeds, capture=True)
                    head_acc[sn][p].update(feeds, env, len(idx))
                    del env
        timing["headroom_s"] = round(time.perf_counter() - t, 2)

    # ------------------------------------------------------------------ downstream (encoders)
    downstream = {}
    real_weights = model_desc["kind"] != "named architecture"
    if arch == "encoder":
        want = opts.downstream == "on" or (opts.downstream == "auto" and real_weights)
        if want and tokenizer is None:
            if opts.downstream == "on":
                raise InputError("--downstream on needs a tokenizer (pass --tokenizer DIR)")
            downstream["classification"] = {"skipped": f"no tokenizer: {tok_note}"}
        elif want:
            from .downstream import classification_check

            t = time.perf_counter()
            n_train, n_test = downstream_sizes(opts)
            try:
                cls = classification_check(
                    tokenizer, ref.run, {p: r.run for p, r in runners.items()}, max_len=min(max_len, 128),
                    batch_size=bs, seq_min=smin, batch_min=bmin, max_train=n_train,
                    max_test=n_test, fit_feeds=fit, log=log,
                    scaled=not (opts.downstream_train and opts.downstream_test))
                if not real_weights:
                    cls["note"] = ("the model has RANDOM weights: these accuracies say nothing about a trained "
                                   "model; only the differences between precisions carry information")
                downstream["classification"] = cls
            except TrtrunError as e:
                if opts.downstream == "on":
                    raise
                downstream["classification"] = {"skipped": str(e)}
            timing["downstream_s"] = round(time.perf_counter() - t, 2)
        else:
            downstream["classification"] = {"skipped": "the model has random weights (a named architecture): a "
                                            "sentiment head on it would measure nothing; --downstream on forces it"
                                            if not real_weights else "--downstream off"}
    if lm is not None:
        note = (f"next-token check on the {lm_set} samples; logits from {lm_note}. ")
        if not real_weights:
            note += ("The model has RANDOM weights: agreement and log-likelihood numbers carry no meaning for a "
                     "trained model; they only show how far each precision moves this random model's logits.")
        downstream["language_model"] = lm.result(note)

    # ------------------------------------------------------------------ assemble
    results = {p: {sn: metrics.summarize(per_sample[sn][p]) for sn in sets} for p in precisions}
    rvr = {}
    if "real" in sets and "random" in sets:
        for p in precisions:
            a, b = results[p]["real"]["rates"], results[p]["random"]["rates"]
            rvr[p] = {"real": a, "random": b,
                      "nan_sample": metrics.nan_ratio(a["nan_rate_sample"], b["nan_rate_sample"]),
                      "nan_token": metrics.nan_ratio(a["nan_rate_token"], b["nan_rate_token"]),
                      "nonfinite_sample": metrics.nan_ratio(a["nonfinite_rate_sample"], b["nonfinite_rate_sample"]),
                      "cos_min": {"real": results[p]["real"]["cos"]["min"],
                                  "random": results[p]["random"]["cos"]["min"]},
                      "cos_worst_token_min": {"real": results[p]["real"]["cos_worst_token"]["min"],
                                              "random": results[p]["random"]["cos_worst_token"]["min"]}}
    headroom = {"source": headroom_source,
                "samples": {sn: int(len(head_sel.get(sn, []))) for sn in sets},
                "by_set": {sn: {p: head_acc[sn][p].result() for p in precisions} for sn in sets}}
    safety = {}
    if "hybrid" in precisions:
        for sn in sets:
            f16 = headroom["by_set"][sn].get("fp16")
            safety[sn] = why_hybrid_is_safe(f16, headroom["by_set"][sn]["hybrid"])
    headroom["hybrid_safety"] = safety

    failures = []
    for p in gate:
        for sn in sets:
            smp = per_sample[sn][p]
            if opts.min_cosine is not None:
                bad = [(i, m) for i, m in enumerate(smp) if not (m["cos"] >= opts.min_cosine)]
                if bad:
                    i, m = min(bad, key=lambda x: x[1]["cos"] if math.isfinite(x[1]["cos"]) else -2.0)
                    undefined = sum(1 for _, m2 in bad if not math.isfinite(m2["cos"]))
                    failures.append(f"{p} on {sn}: {len(bad)} of {len(smp)} samples have cosine below "
                                    f"--min-cosine {opts.min_cosine} (worst {m['cos']:.7f} at sample {i}, "
                                    f"{m['tokens']} tokens; {undefined} undefined by NaN/Inf)")
            if opts.max_nan_rate is not None:
                rt = results[p][sn]["rates"]
                if rt["nonfinite_rate_sample"] > opts.max_nan_rate:
                    failures.append(f"{p} on {sn}: {rt['nonfinite_samples']} of {rt['samples']} samples "
                                    f"({rt['nonfinite_rate_sample']:.4%}) have NaN/Inf output, above "
                                    f"--max-nan-rate {opts.max_nan_rate}")

    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    from .._version import __version__

    report = {
        "report": "trtrun check", "format": 1, "trtrun_version": __version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": model_desc,
        "backend": {"name": backend, "why": why, "device": _device_name() if backend == "gpu" else "CPU",
                    "runners": {p: r.describe for p, r in runners.items()}},
        "fp32_reference": ref.describe,
        "tokenizer": tok_note,
        "precisions": precisions,
        "settings": {"data": opts.data, "max_samples": opts.max_samples, "batch_size": bs, "max_length": max_len,
                     "profile": plan0.profile, "seed": opts.seed, "min_cosine": opts.min_cosine,
                     "max_nan_rate": opts.max_nan_rate, "gate": gate, "compare_random": opts.compare_random,
                     "headroom_samples": opts.headroom_samples, "downstream": opts.downstream,
                     "downstream_train": opts.downstream_train, "downstream_test": opts.downstream_test},
        "data": {sn: _length_summary(s) for sn, s in sets.items()},
        "results": results,
        "random_vs_real": rvr,
        "headroom": headroom,
        "downstream": downstream,
        "failures": failures,
        "verdict": "fail" if failures else "pass",
        "timing": timing,
    }
    if opts.per_sample:
        report["per_sample"] = {
            "columns": ["tokens", "cos", "cos_worst_token", "max_abs", "max_rel", "nan_tokens", "inf_tokens"],
            "sources": {sn: s.sources for sn, s in sets.items()},
            "data": {p: {sn: [[m["tokens"], m["cos"], m["cos_worst_token"], m["max_abs"], m["max_rel"],
                               m["nan_tokens"], m["inf_tokens"]] for m in per_sample[sn][p]] for sn in sets}
                     for p in precisions}}
    return report


def _device_name() -> str:
    import subprocess

    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "GPU (name unknown)"
    except (OSError, subprocess.SubprocessError):
        return "GPU (name unknown)"

