"""The Python steps of scripts/gpu/ray.sh (issue 22's GPU acceptance), one subcommand each; every one adds
its numbers to one results file (--results, JSON) that `summary` turns into a table.

    model     a BERT model of all-MiniLM-L6-v2's shape with random weights (seeded), its tokenizer beside
    corpus    IMDB's reviews (label<TAB>text, optionally .xz) as JSON lines {"id": i, "text": ...}
    embed     one `trtrun embed` run (a child process): wall time, the job's own time from its summary line,
              texts and tokens from its Parquet output
    baseline  sentence-transformers-style PyTorch: AutoModel in fp16, texts sorted by length, fixed-size
              batches tokenized per batch with the same truncation, mean pooling, L2 normalization
    compare   the vectors of the runs (in-process against Ray, run against rerun, PyTorch against trtrun)
    serve     the load generator's results (bench/loadgen.py --out) into the results file
    summary   the table (markdown) of everything, with Ray's overhead

Heavy imports (torch, pyarrow, trtrun) happen inside the subcommands, so importing this module is cheap (the
CI test imports it and runs the pieces that need no GPU).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# the files a sentence-transformers model folder keeps beside its weights (tokenizer, pooling, max length)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "sentence_bert_config.json", "config_sentence_transformers.json", "modules.json")
# a model small enough for the reference backend on a CI-sized machine (the dry run): MiniLM's vocabulary
# and positions, 2 layers of 32
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# `trtrun embed`'s last line: "OUT: 25,000 texts embedded in 7 shard(s) in 12.3 s (2,032.5 texts/s, ...) WHERE"
SUMMARY_RE = re.compile(r"texts embedded in (\d+) shard\(s\) in ([0-9.]+) s \(([0-9,.]+) texts/s, ([0-9,.]+) "
                        r"tokens/s\) (.*)$")


# ------------------------------------------------------------------------------------------------ results

def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_results(path: Path, res: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2, default=str))
    os.replace(tmp, path)


def update(path: Path, key: str, value, append: bool = False) -> dict:
    res = load_results(path)
    if append:
        res.setdefault(key, []).append(value)
    else:
        res[key] = value
    save_results(path, res)
    return res


# ------------------------------------------------------------------------------------------------ model, corpus

def make_model(tokenizer_dir: Path, out: Path, tiny: bool, seed: int) -> dict:
    """A BertModel of the config in tokenizer_dir (all-MiniLM-L6-v2's: 6 layers of 384, 12 heads) with random
    weights, saved as a Hugging Face folder with the tokenizer and sentence-transformers files beside it.
    Random weights run at the real model's speed (the same shapes, kernels and token counts: none of the
    GPU work depends on the values), and both sides of every comparison here load this same folder."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig.from_pretrained(tokenizer_dir)
    if tiny:
        for k, v in TINY.items():
            setattr(cfg, k, v)
    torch.manual_seed(seed)
    model = BertModel(cfg).eval()  # with the pooler, as the published checkpoint (unused: mean pooling)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
    if (tokenizer_dir / "1_Pooling").is_dir():
        shutil.copytree(tokenizer_dir / "1_Pooling", out / "1_Pooling", dirs_exist_ok=True)
    params = sum(p.numel() for p in model.parameters())
    return {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
            "intermediate": cfg.intermediate_size, "params": params, "weights": f"random (seed {seed})"}


def open_text(path: Path):
    return lzma.open(path, "rt", encoding="utf-8") if path.suffix == ".xz" else open(path, encoding="utf-8")


def make_corpus(imdb: Path, out: Path, n: int | None, repeat: int = 1) -> dict:
    """IMDB's label<TAB>text lines -> JSON lines {"id": row, "text": review} (the first n; all when None), the
    whole list `repeat` times over (ids go on counting): a job long enough that a Ray actor's start and the
    per-shard costs show apart."""
    texts = []
    with open_text(imdb) as f:
        for line in f:
            if n is not None and len(texts) >= n:
                break
            line = line.rstrip("\n")
            if line:
                texts.append(line.partition("\t")[2])
    rows = chars = 0
    with open(out, "w", encoding="utf-8") as g:
        for _ in range(repeat):
            for text in texts:
                g.write(json.dumps({"id": rows, "text": text}, ensure_ascii=False) + "\n")
                rows += 1
                chars += len(text)
    return {"texts": rows, "chars": chars, "bytes": out.stat().st_size, "source": str(imdb), "repeat": repeat}


def read_corpus(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# ------------------------------------------------------------------------------------------------ trtrun embed

def parse_summary(stderr: str) -> dict | None:
    """The job's own numbers from `trtrun embed`'s summary line (None when it printed none)."""
    for line in reversed(stderr.splitlines()):
        m = SUMMARY_RE.search(line)
        if m:
            return {"shards": int(m.group(1)), "job_s": float(m.group(2)),
                    "texts_per_s_printed": float(m.group(3).replace(",", "")),
                    "tokens_per_s_printed": float(m.group(4).replace(",", "")), "where": m.group(5).strip()}
    return None


def output_counts(out_dir: Path) -> dict:
    from trtrun.corpus import read_output

    t = read_output(out_dir)
    import numpy as np

    return {"texts": t.num_rows, "tokens": int(np.asarray(t.column("num_tokens")).sum()),
            "truncated": int(np.asarray(t.column("truncated")).sum())}


def shard_rates(out_dir: Path) -> dict:
    """Throughput between the first and the last shard written (part files' modification times), the rows and
    tokens of every shard but the first: the rate once the job runs, without its start (the actor's start and
    Ray's pipeline filling, or the in-process first shard), measured the same way for both."""
    import numpy as np
    import pyarrow.parquet as pq

    parts = sorted(out_dir.glob("part-*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    if len(parts) < 2:
        return {}
    span = (parts[-1].stat().st_mtime_ns - parts[0].stat().st_mtime_ns) / 1e9
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts[1:])
    tokens = sum(int(np.asarray(pq.read_table(p, columns=["num_tokens"]).column(0)).sum()) for p in parts[1:])
    if span <= 0:
        return {}
    return {"steady_s": round(span, 3), "steady_texts_per_s": round(rows / span, 1),
            "steady_tokens_per_s": round(tokens / span, 0)}


def run_embed(name: str, out_dir: Path, args: list[str], log, timeout: float) -> dict:
    """One `trtrun embed ... -o out_dir` in a child process (a fresh one, as a user runs it): every first-use
    cost of the run is in its wall time. texts/s and tokens/s on the job's time are the ones `trtrun embed`
    prints (computed from its unrounded time; job_s is the printed, rounded one)."""
    cmd = [sys.executable, "-m", "trtrun", "embed", *args, "-o", str(out_dir)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, err, out = p.returncode, p.stderr, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, err, out = 124, (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or ""), ""
    wall = time.perf_counter() - t0
    log.write(f"---- {name}: {' '.join(cmd)}\n{out}{err}\n")
    log.flush()
    row = {"name": name, "rc": rc, "wall_s": round(wall, 3), "output": str(out_dir)}
    s = parse_summary(err)
    if s:
        row.update(s)
    if rc == 0:
        row.update(output_counts(out_dir))
        if s:
            row["texts_per_s"] = s["texts_per_s_printed"]
            row["tokens_per_s"] = s["tokens_per_s_printed"]
        row["texts_per_s_wall"] = round(row["texts"] / wall, 1)
        row["tokens_per_s_wall"] = round(row["tokens"] / wall, 0)
        row.update(shard_rates(out_dir))
    else:
        row["error"] = (err.strip().splitlines() or ["(nothing on stderr)"])[-1][:500]
    return row


# ------------------------------------------------------------------------------------------------ PyTorch baseline

def baseline(model_dir: Path, texts: list[str], batch: int, max_seq_len: int, device: str, dtype: str):
    """sentence-transformers' encode, written out: texts sorted by length (longest first, by characters as
    SentenceTransformer.encode sorts), `batch` a batch, each batch tokenized with truncation at max_seq_len
    and padded to its longest, AutoModel's last_hidden_state mean-pooled over the attention mask in the
    model's dtype, L2-normalized, copied to the host batch by batch. One warm-up batch first (CUDA context,
    cuBLAS handles), then the timed pass over every text, tokenization included. -> (row, vectors)."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    dt = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    if dt == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=dt).to(device).eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")
    vecs = np.zeros((len(texts), model.config.hidden_size), np.float32)

    def encode(idx) -> int:
        enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_seq_len,
                  return_tensors="pt").to(device)
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        v = torch.nn.functional.normalize(v, p=2, dim=1)
        vecs[idx] = v.float().cpu().numpy()
        return int(enc["attention_mask"].sum())

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        encode(order[:batch])
        sync()
        t0 = time.perf_counter()
        tokens = sum(encode(order[i:i + batch]) for i in range(0, len(texts), batch))
        sync()
        t = time.perf_counter() - t0
    row = {"name": f"pytorch-{dtype}-b{batch}", "device": device, "dtype": dtype, "batch": batch,
           "texts": len(texts), "tokens": tokens, "seconds": round(t, 3), "texts_per_s": round(len(texts) / t, 1),
           "tokens_per_s": round(tokens / t, 0), "torch": torch.__version__,
           "attention": getattr(model.config, "_attn_implementation", None)}
    return row, vecs


# ------------------------------------------------------------------------------------------------ compare

def read_vectors(out_dir: Path):
    import numpy as np
    from trtrun.corpus import read_output

    t = read_output(out_dir)
    ids = np.asarray(t.column("id").to_pylist())
    vec = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return ids, vec, np.asarray(t.column("num_tokens"))


def vector_diff(a, b) -> dict:
    import numpy as np

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-30)
    return {"rows": int(len(a)), "max_abs_diff": float(np.abs(a64 - b64).max()) if len(a) else 0.0,
            "identical": bool(np.array_equal(a, b)), "min_cosine": float(cos.min()) if len(a) else 1.0,
            "mean_cosine": float(cos.mean()) if len(a) else 1.0}


def compare(results: dict, baseline_npy: Path | None) -> dict:
    """In-process against Ray (first of each), each kind against its rerun, PyTorch against in-process."""
    import numpy as np

    runs = {r["name"]: r for r in results.get("embed", []) if r.get("rc") == 0}
    pairs = [(a, b) for a, b in (("inproc-1", "ray-1"), ("inproc-2", "ray-2"), ("inproc-1", "inproc-2"),
                                 ("ray-1", "ray-2"), ("inproc-1", "rayb-1")) if a in runs and b in runs]
    cache: dict = {}

    def get(name):
        if name not in cache:
            cache[name] = read_vectors(Path(runs[name]["output"]))
        return cache[name]

    out: dict = {}
    for a, b in pairs:
        ia, va, na = get(a)
        ib, vb, nb = get(b)
        d = {"same_ids_in_order": bool(np.array_equal(ia, ib)), "same_num_tokens": bool(np.array_equal(na, nb))}
        d.update(vector_diff(va, vb) if d["same_ids_in_order"] else {"error": "ids differ"})
        out[f"{a} vs {b}"] = d
    if baseline_npy is not None and baseline_npy.is_file() and "inproc-1" in runs:
        ia, va, _ = get("inproc-1")
        pv = np.load(baseline_npy)
        if len(pv) == len(va):
            out["pytorch vs inproc-1"] = vector_diff(pv[ia.astype(np.int64)], va)
    return out


# ------------------------------------------------------------------------------------------------ summary

def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def overhead(results: dict) -> dict:
    """Ray's overhead: 1 - Ray's texts/s over in-process's (means over the runs of each), on three bases: the
    job's own time (what `trtrun embed` reports: in-process from the first shard read, with the engine loaded;
    on Ray from the cluster connected, so the actor's start and its engine load are in it), the steady rate
    between the first and the last shard written (neither start in it), and the command's wall time (process
    start, plan load and, for Ray, the cluster's start too)."""
    ok = [r for r in results.get("embed", []) if r.get("rc") == 0]
    kind = lambda r: r["name"].rsplit("-", 1)[0]  # noqa: E731  ("ray-1" -> "ray", "rayb-2" -> "rayb")
    res = {}
    for group in sorted({kind(r) for r in ok} - {"inproc"}):
        for basis, key in (("job", "texts_per_s"), ("steady", "steady_texts_per_s"), ("wall", "texts_per_s_wall")):
            a = _mean([r.get(key) for r in ok if kind(r) == "inproc"])
            b = _mean([r.get(key) for r in ok if kind(r) == group])
            if a and b:  # the default Ray runs keep the plain basis name; a variant's is suffixed with its group
                res[basis if group == "ray" else f"{basis}, {group}"] = {
                    "inproc_texts_per_s": round(a, 1), "ray_texts_per_s": round(b, 1),
                    "overhead_pct": round(100.0 * (1.0 - b / a), 2), "within_10pct": bool(b >= 0.9 * a)}
    return res


def _f(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def summary(results: dict) -> str:
    L = ["# Issue 22 on the GPU machine: `trtrun embed` with and without Ray, PyTorch, Ray Serve", ""]
    L.append(f"- card: {results.get('gpu', '-')}; mode: {results.get('mode', '-')}")
    s = results.get("settings", {})
    if s:
        L.append("- " + "; ".join(f"{k}: {v}" for k, v in s.items()))
    m = results.get("model")
    if m:
        L.append(f"- model: {m.get('layers')} layers x {m.get('hidden')} ({m.get('heads')} heads, FFN "
                 f"{m.get('intermediate')}), {m.get('params', 0):,} parameters, weights {m.get('weights')}")
    c = results.get("corpus")
    if c:
        times = f" ({c['repeat']} times over)" if c.get("repeat", 1) > 1 else ""
        L.append(f"- corpus: {c['texts']:,} IMDB reviews{times}, {c['chars']:,} characters")
    if results.get("embed") or results.get("baseline"):
        L += ["", "| run | where | job s | wall s | texts | tokens | texts/s (job) | tokens/s (job) | texts/s (steady) | "
              "tokens/s (steady) | texts/s (wall) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("embed", []):
        if r.get("rc") != 0:
            L.append(f"| {r['name']} | failed (exit {r.get('rc')}): {r.get('error', '')[:120]} | | {_f(r.get('wall_s'))} "
                     "| | | | | | | |")
            continue
        L.append(f"| {r['name']} | {r.get('where', '-')} | {_f(r.get('job_s'), 2)} | {_f(r.get('wall_s'), 2)} | "
                 f"{_f(r.get('texts'))} | {_f(r.get('tokens'))} | {_f(r.get('texts_per_s'))} | "
                 f"{_f(r.get('tokens_per_s'), 0)} | {_f(r.get('steady_texts_per_s'))} | "
                 f"{_f(r.get('steady_tokens_per_s'), 0)} | {_f(r.get('texts_per_s_wall'))} |")
    for r in results.get("baseline", []):
        L.append(f"| {r['name']} | PyTorch {r['torch']} {r['dtype']} on {r['device']}, batch {r['batch']}, "
                 f"{r.get('attention')} attention | {_f(r['seconds'], 2)} | | {_f(r['texts'])} | {_f(r['tokens'])} | "
                 f"{_f(r['texts_per_s'])} | {_f(r['tokens_per_s'], 0)} | | | |")
    ov = overhead(results)
    if ov:
        L.append("")
        for basis, o in ov.items():
            L.append(f"- Ray's overhead ({basis} time): Ray {o['ray_texts_per_s']:,} texts/s against in-process "
                     f"{o['inproc_texts_per_s']:,}: {abs(o['overhead_pct']):.1f}% "
                     f"{'fewer' if o['overhead_pct'] >= 0 else 'more'} ("
                     f"{'within' if o['within_10pct'] else 'NOT within'} the 10% allowed)")
    v = results.get("vectors", {})
    if v:
        L += ["", "| vectors | rows | identical | max abs diff | min cosine |", "|---|---|---|---|---|"]
        for k, d in v.items():
            L.append(f"| {k} | {_f(d.get('rows'))} | {d.get('identical', '-')} | {d.get('max_abs_diff', '-'):.3g} | "
                     f"{d.get('min_cosine', 0):.7f} |" if "max_abs_diff" in d else f"| {k} | {d} | | | |")
    sv = results.get("serve")
    if sv:
        L += ["", f"Serving: {sv.get('clients')} loopback clients, {sv.get('duration')} s measured (+{sv.get('warmup')} s "
              f"warm-up) per target, 1 Rotten Tomatoes sentence a request, every answer checked against its "
              f"single-request embedding from {sv.get('reference')}", "",
              "| target | req/s | p50 ms | p99 ms | checked | failed | mismatched | min cos |", "|---|---|---|---|---|---|---|---|"]
        for t in sv.get("targets", []):
            lat = t.get("latency_ms", {})
            L.append(f"| {t['target']} | {_f(t.get('requests_per_s'), 0)} | {lat.get('p50', '-')} | {lat.get('p99', '-')} | "
                     f"{_f(t.get('checked_requests'))} | {_f(t.get('failed'))} | {_f(t.get('mismatched'))} | "
                     f"{t.get('min_cosine', '-')} |")
    for k in results.get("skipped", []):
        L.append(f"- SKIPPED: {k}")
    st = results.get("steps", [])
    if st:
        L += ["", "Steps (s): " + ", ".join(f"{x['name']} {x['seconds']}" + ("" if x.get('rc', 0) == 0 else
                                                                           f" (exit {x['rc']})") for x in st)]
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, required=True, help="the results file (JSON), created or updated")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("set")
    p.add_argument("key")
    p.add_argument("value", help="JSON (or a plain string)")
    p.add_argument("--append", action="store_true")
    p = sub.add_parser("model")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("corpus")
    p.add_argument("--imdb", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("-n", type=int, default=None)
    p.add_argument("--repeat", type=int, default=1)
    p = sub.add_parser("embed")
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, required=True, help="the job's output folder (must not hold another job)")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- then trtrun embed's arguments")
    p = sub.add_parser("baseline")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--batch", type=int, action="append", required=True)
    p.add_argument("--max-seq-len", type=int, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    p.add_argument("--vectors", type=Path, default=None, help="save the first batch size's vectors here (.npy)")
    p = sub.add_parser("compare")
    p.add_argument("--baseline-vectors", type=Path, default=None)
    p = sub.add_parser("serve")
    p.add_argument("--load", type=Path, required=True, help="bench/loadgen.py's --out")
    p = sub.add_parser("summary")
    p.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    R = a.results

    if a.cmd == "set":
        try:
            v = json.loads(a.value)
        except ValueError:
            v = a.value
        update(R, a.key, v, append=a.append)
    elif a.cmd == "model":
        d = make_model(a.tokenizer, a.out, a.tiny, a.seed)
        update(R, "model", d)
        print(json.dumps(d))
    elif a.cmd == "corpus":
        d = make_corpus(a.imdb, a.out, a.n, a.repeat)
        update(R, "corpus", d)
        print(json.dumps(d))
    elif a.cmd == "embed":
        args = a.args[1:] if a.args[:1] == ["--"] else a.args
        with open(a.log, "a") as log:
            row = run_embed(a.name, a.out, args, log, a.timeout)
        update(R, "embed", row, append=True)
        print(json.dumps(row))
        return 0 if row["rc"] == 0 else 1
    elif a.cmd == "baseline":
        import numpy as np

        texts = read_corpus(a.corpus)
        for i, b in enumerate(a.batch):
            row, vecs = baseline(a.model, texts, b, a.max_seq_len, a.device, a.dtype)
            update(R, "baseline", row, append=True)
            print(json.dumps(row), flush=True)
            if i == 0 and a.vectors is not None:
                np.save(a.vectors, vecs)
    elif a.cmd == "compare":
        d = compare(load_results(R), a.baseline_vectors)
        update(R, "vectors", d)
        print(json.dumps(d, indent=1))
    elif a.cmd == "serve":
        d = json.loads(a.load.read_text())
        keep = ("target", "requests_per_s", "inputs_per_s", "latency_ms", "requests", "checked_requests",
                "failed", "mismatched", "min_cosine", "server_cpu_us_per_request", "client_busy",
                "server_mean_requests_per_microbatch", "failure_examples")
        t0 = (d.get("targets") or [{}])[0]
        update(R, "serve", {"clients": t0.get("clients"), "duration": t0.get("duration_s"),
                            "warmup": t0.get("warmup_s"), "ok": d.get("ok"), "reference": d.get("reference_target"),
                            "targets": [{k: t.get(k) for k in keep} for t in d.get("targets", [])]})
    elif a.cmd == "summary":
        text = summary(load_results(R))
        if a.out is not None:
            a.out.write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
