"""The real all-MiniLM-L6-v2 in every producer variant: `trtrun build` + the Embedder on real text, against
onnxruntime fp32 on the fp32 original (and, for int8 files, onnxruntime on that same file).

    python scripts/producers_minilm.py [--precision hybrid] [--rt 256] [--wiki 128] [--work DIR] [--json OUT]
                                       [--backend reference|gpu|auto] [--time BxS]

Variants are made by the public tools in tests/producers_corpus.py from `trtrun export .data/minilm`.
Per variant it prints the worst and mean per-text cosine of the Embedder's (mean-pooled, normalized)
vectors against the same pooling of onnxruntime's token states, and the NaN count. With `--time 32x128` (GPU
backend) it then times every variant's plan at that shape in the same run (Context.run, CUDA graphs, the plans
taken in turn over rounds so that drift hits all alike): a file another tool fused must run as fast as the plain
export, because lowering reaches the same kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def ort_embeddings(path, tok, texts, max_len, batch=32):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], padding=True, truncation=True, max_length=max_len, return_tensors="np")
        feeds = {k: np.asarray(v, np.int64) for k, v in enc.items() if k in names}
        h = s.run(None, feeds)[0].astype(np.float64)
        m = feeds["attention_mask"][..., None].astype(np.float64)
        e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        out.append(e / np.linalg.norm(e, axis=1, keepdims=True))
    return np.concatenate(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="hybrid")
    ap.add_argument("--rt", type=int, default=256, help="Rotten Tomatoes sentences")
    ap.add_argument("--wiki", type=int, default=128, help="Wikipedia paragraphs")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--variants", default=None, help="comma-separated subset")
    ap.add_argument("--backend", default="reference", choices=["reference", "gpu", "auto"],
                    help="the Embedder's backend (the acceptance on the GPU machine: gpu)")
    ap.add_argument("--time", default=None, metavar="BxS", help="time each variant's plan at this shape (GPU)")
    ap.add_argument("--rounds", type=int, default=5, help="--time: rounds over the plans")
    a = ap.parse_args(argv)
    if a.time is not None:
        try:
            tb, ts = (int(x) for x in a.time.lower().split("x"))
        except ValueError:
            ap.error(f"--time takes BxS, e.g. 32x128; got {a.time!r}")
        if a.backend == "reference":
            ap.error("--time measures the GPU runtime: use --backend gpu")

    import trtrun
    from producers_corpus import (OPTIMUM_VARIANTS, QUANTIZED, ST_ONNX_VARIANTS, VARIANTS, make_variant, optimum_env,
                                  optimum_export, sentence_transformers_export, st_onnx_export)
    from trtrun.data import data_dir, load_texts, load_tokenizer
    from trtrun.export import export_model

    minilm = data_dir() / "minilm"
    work = Path(a.work or tempfile.mkdtemp(prefix="minilm-producers-"))
    work.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(minilm)
    texts = load_texts("rt", a.rt, seed=0) + load_texts("wiki", a.wiki, seed=0)
    src = work / "plain" / "model.onnx"
    if not src.exists():
        src.parent.mkdir(parents=True, exist_ok=True)
        export_model(minilm, src)
    ref = ort_embeddings(src, tok, texts, a.max_len)
    variants = {"torchscript": None, "dynamo": None, **{v: None for v, (_, archs) in VARIANTS.items()
                                                        if "minilm" in archs}, "sentence-transformers": None}
    if optimum_env() is not None:  # Optimum's own files (scripts/optimum-env.sh), and sentence-transformers' through it
        variants.update({v: None for v in (*OPTIMUM_VARIANTS, *ST_ONNX_VARIANTS)})
    else:
        print("Optimum's environment is missing (bash scripts/optimum-env.sh): its variants are left out", flush=True)
    if a.variants:
        variants = {v: None for v in a.variants.split(",")}
    results, optimum_files, st_files, plans = {}, None, None, {}
    int8 = (*QUANTIZED, *(v for v in ST_ONNX_VARIANTS if "qint8" in v))  # compared with their own file too
    for v in variants:
        path = work / v / "model.onnx"
        t0 = time.time()
        try:  # making the file too: a tool missing on this machine (sentence-transformers) costs its line only
            if not path.exists():
                if v == "torchscript":
                    path = src
                elif v == "dynamo":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    export_model(minilm, path, exporter="dynamo")
                elif v == "sentence-transformers":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    sentence_transformers_export(minilm, path)
                elif v in OPTIMUM_VARIANTS:  # one export writes them all
                    optimum_files = optimum_files or optimum_export(minilm, work / "optimum")
                    path = optimum_files[v]
                elif v in ST_ONNX_VARIANTS:  # sentence-transformers' ONNX backend: one export, plain and int8
                    st_files = st_files or st_onnx_export(minilm, work / "st")
                    path = st_files[v]
                else:
                    make_variant(v, src, path, "minilm")
            plan = trtrun.build(path, precision=a.precision)
            plan_path = path.with_suffix(f".{a.precision}.plan")
            plan.save(plan_path)
            embedder = trtrun.Embedder(plan_path, minilm, backend=a.backend, max_seq_len=a.max_len,
                                       truncation="truncate")
            emb = embedder.embed(texts).astype(np.float64)
            plans[v] = plan_path
        except Exception as e:  # noqa: BLE001 - a report, every variant gets its line
            results[v] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
            print(f"{v:>18}: FAILED {results[v]['error']}", flush=True)
            continue
        cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1)
        r = {"worst": float(cos.min()), "mean": float(cos.mean()), "nan": int(np.isnan(emb).sum()),
             "n": len(texts), "seconds": round(time.time() - t0, 1), "backend": embedder.backend}
        if v in int8:
            same = ort_embeddings(path, tok, texts, a.max_len)
            c2 = (emb * same).sum(1) / np.linalg.norm(emb, axis=1)
            c3 = (same * ref).sum(1)
            r.update(worst_vs_same_file=float(c2.min()), ort_int8_worst_vs_original=float(c3.min()))
        results[v] = r
        print(f"{v:>18}: worst {r['worst']:.7f} mean {r['mean']:.7f} NaN {r['nan']}"
              + (f" | vs the int8 file in onnxruntime {r['worst_vs_same_file']:.7f} (onnxruntime int8 vs fp32 "
                 f"original {r['ort_int8_worst_vs_original']:.7f})" if v in int8 else "")
              + f" ({r['seconds']} s)", flush=True)
    timing = time_plans(plans, tb, ts, a.rounds) if a.time is not None and plans else None
    if a.json:
        doc = {"precision": a.precision, "texts": len(texts), "results": results, "timing": timing}
        if any(r.get("backend") == "gpu" for r in results.values()):
            from trtrun.runtime import gpu_available

            doc["device"] = gpu_available()[1].split(" (")[0]  # the card's name, as the driver gives it
        Path(a.json).write_text(json.dumps(doc, indent=1))
    return 0


def time_plans(plans: dict, B: int, S: int, rounds: int, iters: int = 50) -> dict:
    """p50 latency (ms) of each plan's Context.run at [B, S] (random ids, no padding), the plans taken in turn
    each round; printed beside the first plan's (the plain export)."""
    import trtrun
    from trtrun.runtime import Engine

    ctxs = {}
    for v, p in plans.items():
        ctxs[v] = Engine(trtrun.load_plan(p)).create_context()
    ids = np.random.default_rng(0).integers(1000, 20000, (B, S))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    samples: dict = {v: [] for v in ctxs}
    for _ in range(rounds):
        for v, ctx in ctxs.items():
            f = {i["name"]: feeds[i["name"]] for i in ctx.engine.plan.inputs}
            for _ in range(5):
                ctx.run(f)
            for _ in range(iters):
                t0 = time.perf_counter()
                ctx.run(f)
                samples[v].append((time.perf_counter() - t0) * 1e3)
    out = {v: float(np.median(s)) for v, s in samples.items()}
    base = next(iter(out))
    print(f"Context.run p50 at {B}x{S} ({rounds} rounds x {iters} runs each, plans in turn):", flush=True)
    for v, ms in out.items():
        print(f"{v:>18}: {ms:.3f} ms ({ms / out[base]:.3f}x {base})", flush=True)
    return {"shape": [B, S], "rounds": rounds, "iters": iters, "p50_ms": out}


if __name__ == "__main__":
    sys.exit(main())
