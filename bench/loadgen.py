"""A bounded load generator for `trtrun serve`: N concurrent clients for T seconds, every response checked.

    python bench/loadgen.py --target batched=http://127.0.0.1:8101 --target unbatched=http://127.0.0.1:8102 \\
        --clients 64 --duration 60 --texts rt --n-texts 2000 --procs 4 --out load.json

1. References: each distinct text is sent alone (one text per request, one request at a time, so no
   batching can touch it) to the first target; that single-request embedding is what every later response
   for the text must match.
2. Load, per target in turn: `--clients` clients (spread over `--procs` processes, asyncio + aiohttp,
   httpx where aiohttp is missing), each sending its next request as soon as the last one is answered:
   `--inputs` random texts per request (e.g. 1, or 1-4). After `--warmup` seconds, `--duration` seconds
   are measured. EVERY response is checked: HTTP 200, one item per text with index i at position i, and
   cosine(embedding, reference) >= --min-cosine for each. Anything else is a failure, counted and shown.
   `--poison-every N`: every N-th request (counted over all clients of a process) carries one text that is not valid Unicode (a lone
   surrogate escape, "\ud800", valid JSON) at a random position j; its answer must be HTTP 400 naming
   `input[j]` (anything else is a failure), and it must not disturb the other requests: they are checked
   as above, so a batch mate failed by it shows up as a failure or mismatch. Poisoned requests are not
   counted in the throughput and latency figures.
3. Report: requests/s, texts/s, latency p50/p90/p99/max (requests that started inside the measured
   window), failures, the lowest cosine seen, and from the server's /metrics the mean micro-batch and
   engine batch sizes; the throughput ratio of the first target to each other one. Exit code 1 if any
   response failed or mismatched.

Bounded on purpose: loopback targets only, at most 1024 clients, 600 s per target, 60 s per request.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

try:  # parsing 384-float responses is the clients' main CPU cost; orjson is ~10x faster where installed
    from orjson import dumps as _dumps
    from orjson import loads as _loads
except ImportError:
    _loads = json.loads

    def _dumps(obj) -> bytes:
        return json.dumps(obj).encode()

MAX_CLIENTS = 1024
MAX_DURATION = 600.0
REQUEST_TIMEOUT = 60.0


# ------------------------------------------------------------------------------------------------ helpers

def _check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"loadgen: {url}: only loopback targets (127.0.0.0/8, ::1, localhost) are allowed")


def _parse_inputs(text: str) -> tuple[int, int]:
    a, _, b = text.partition("-")
    lo, hi = int(a), int(b or a)
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"--inputs must be N or LO-HI with 1 <= LO <= HI, got {text!r}")
    return lo, hi


def _payload(endpoint: str, texts: list[str]) -> bytes:
    key = "inputs" if endpoint == "/embed" else "input"
    return _dumps({key: texts})


def _vectors(endpoint: str, body: bytes, n: int) -> tuple[np.ndarray | None, str]:
    """Embeddings [n, dim] from a response body, or (None, why) when its shape is wrong."""
    try:
        obj = _loads(body)
    except ValueError:
        return None, "response is not JSON"
    if endpoint == "/embed":
        rows = obj
    else:
        data = obj.get("data") if isinstance(obj, dict) else None
        if not isinstance(data, list):
            return None, "no 'data' list"
        if not all(isinstance(d, dict) for d in data):
            return None, "a 'data' item is not an object"
        if [d.get("index") for d in data] != list(range(len(data))):
            return None, "indices out of order"
        rows = [d.get("embedding") for d in data]
    if not isinstance(rows, list) or len(rows) != n:
        return None, f"{len(rows) if isinstance(rows, list) else '?'} embeddings for {n} texts"
    try:
        return np.asarray(rows, dtype=np.float64), ""
    except (TypeError, ValueError):
        return None, "embeddings are not numbers"


def _unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    n = np.sqrt((a * a).sum(axis=1, keepdims=True))
    return a / np.where(n > 0, n, 1.0)


def _min_nan(values) -> float:
    """The smallest value, NaN if any is NaN (Python's min() would hide a NaN after the first element), 1.0 for none."""
    return float(np.min(np.asarray(list(values), np.float64), initial=1.0))


def _cosines(vecs: np.ndarray, unit_refs: np.ndarray) -> np.ndarray:
    """Cosine of each row of vecs with the same row of unit_refs (references already of length 1; a zero
    row on either side gives 0)."""
    return (_unit_rows(vecs) * unit_refs).sum(axis=1)


class _Client:
    """One HTTP session: aiohttp where installed (faster), else httpx."""

    def __init__(self, limit: int):
        try:
            import aiohttp

            self.kind = "aiohttp"
            self._s = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        except ImportError:
            import httpx

            self.kind = "httpx"
            self._s = httpx.AsyncClient(timeout=REQUEST_TIMEOUT,
                                        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit))

    async def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        if self.kind == "aiohttp":
            async with self._s.post(url, data=body, headers=headers) as r:
                return r.status, await r.read()
        r = await self._s.post(url, content=body, headers=headers)
        return r.status_code, r.content

    async def get(self, url: str) -> tuple[int, bytes]:
        if self.kind == "aiohttp":
            async with self._s.get(url) as r:
                return r.status, await r.read()
        r = await self._s.get(url)
        return r.status_code, r.content

    async def close(self) -> None:
        if self.kind == "aiohttp":
            await self._s.close()
        else:
            await self._s.aclose()


# ------------------------------------------------------------------------------------------------ phases

async def _references(url: str, endpoint: str, texts: list[str]) -> np.ndarray:
    """Single-request embedding of each text, one request at a time."""
    c = _Client(1)
    try:
        out = []
        for i, t in enumerate(texts):
            status, body = await c.post(url + endpoint, _payload(endpoint, [t]))
            if status != 200:
                raise SystemExit(f"loadgen: reference request for text {i} got HTTP {status}: {body[:300]!r}")
            v, why = _vectors(endpoint, body, 1)
            if v is None:
                raise SystemExit(f"loadgen: reference response for text {i}: {why}")
            out.append(v[0])
        return np.stack(out)
    finally:
        await c.close()


async def _load(spec: dict, t_go: float) -> dict:
    """Run spec['clients'] clients against one target; returns raw per-request records and failures."""
    url, endpoint = spec["url"], spec["endpoint"]
    texts, refs = spec["texts"], spec["refs"]
    lo, hi = spec["inputs"]
    t_measure, t_end = t_go + spec["warmup"], t_go + spec["warmup"] + spec["duration"]
    c = _Client(spec["clients"])
    lat, n_in = [], []
    fails: dict[str, int] = {}
    examples: list[str] = []
    stats = {"checked_requests": 0, "checked_inputs": 0, "min_cos": 1.0, "sent": 0, "issued": 0, "poisoned": 0,
             "poisoned_refused": 0}
    poison_every = spec.get("poison_every") or 0
    key = "inputs" if endpoint == "/embed" else "input"
    cpu0, wall0 = time.process_time(), time.monotonic()

    def fail(kind: str, detail: str) -> None:
        fails[kind] = fails.get(kind, 0) + 1
        if len(examples) < 5:
            examples.append(f"{kind}: {detail}")

    async def poisoned(rng, idx) -> None:
        """One request with a lone surrogate at a random place: it must get 400 naming that place."""
        batch = [texts[i] for i in idx]
        j = rng.randrange(len(batch) + 1)
        batch.insert(j, "poison \ud800 " + batch[0][:20])
        body = json.dumps({key: batch}).encode()  # json escapes the surrogate as \ud800 (orjson refuses it)
        stats["poisoned"] += 1
        try:
            status, resp = await c.post(url + endpoint, body)
        except Exception as e:  # noqa: BLE001
            fail(f"poisoned: exception {type(e).__name__}", str(e)[:200])
            return
        want = f"'{key}[{j}]'"
        if status == 400 and want.encode() in resp:
            stats["poisoned_refused"] += 1
        else:
            fail(f"poisoned: HTTP {status}", f"expected 400 naming {want}: {resp[:200]!r}")

    async def client(k: int) -> None:
        rng = random.Random(spec["seed"] * 100_003 + k)  # ~10x cheaper per draw than numpy's choice
        pool = range(len(texts))
        while True:
            t0 = time.monotonic()
            if t0 >= t_end:
                return
            idx = rng.sample(pool, rng.randint(lo, hi))
            stats["issued"] += 1
            if poison_every and stats["issued"] % poison_every == 0:
                await poisoned(rng, idx)
                continue
            stats["sent"] += 1
            try:
                status, body = await c.post(url + endpoint, _payload(endpoint, [texts[i] for i in idx]))
            except Exception as e:  # noqa: BLE001 - every failure is counted, none ends the run
                fail(f"exception {type(e).__name__}", str(e)[:200])
                await asyncio.sleep(0.01)
                continue
            t1 = time.monotonic()
            if status != 200:
                fail(f"HTTP {status}", body[:200].decode("utf-8", "replace"))
                await asyncio.sleep(0.01)  # as after an exception: no tight retry loop against an overloaded server
                continue
            v, why = _vectors(endpoint, body, len(idx))
            stats["checked_requests"] += 1
            stats["checked_inputs"] += len(idx)
            if v is None:
                fail("bad response", why)
                continue
            cos = _cosines(v, refs[idx])
            stats["min_cos"] = _min_nan((stats["min_cos"], cos.min()))
            if not (cos >= spec["min_cosine"]).all():
                j = int(np.argmin(cos))
                fail("mismatch", f"text {int(idx[j])} at index {j}: cosine {cos[j]:.6f} < {spec['min_cosine']}")
                continue
            if t_measure <= t0 and t1 <= t_end:
                lat.append(t1 - t0)
                n_in.append(len(idx))

    try:
        await asyncio.gather(*(client(k) for k in range(spec["clients"])))
    finally:
        await c.close()
    return {"lat": lat, "n_in": n_in, "fails": fails, "examples": examples, "client": c.kind, **stats,
            "cpu_s": time.process_time() - cpu0, "wall_s": time.monotonic() - wall0}


def _use_uvloop() -> None:
    try:
        import uvloop  # faster event loop where installed

        uvloop.install()
    except ImportError:
        pass


def _worker(spec: dict, ready, go, results) -> None:
    _use_uvloop()
    ready.put(os.getpid())
    go.wait()
    results.put(asyncio.run(_load(spec, time.monotonic())))


def _run_target(spec: dict, procs: int) -> list[dict]:
    if procs <= 1:
        _use_uvloop()
        return [asyncio.run(_load(spec, time.monotonic()))]
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [spec["clients"] // procs + (1 if i < spec["clients"] % procs else 0) for i in range(procs)]
    ps = []
    for i, n in enumerate(s for s in shares if s > 0):
        ps.append(ctx.Process(target=_worker, args=(dict(spec, clients=n, seed=spec["seed"] + 7919 * i),
                                                    ready, go, results), daemon=True))
    for p in ps:
        p.start()
    for _ in ps:
        ready.get(timeout=120)
    go.set()
    out = [results.get(timeout=spec["warmup"] + spec["duration"] + 2 * REQUEST_TIMEOUT + 60) for _ in ps]
    for p in ps:
        p.join(30)
    return out


def _metrics(url: str) -> dict[str, float]:
    """Sums and counts of the server's batch histograms (empty if /metrics is not reachable)."""
    async def fetch():
        c = _Client(1)
        try:
            return await c.get(url + "/metrics")
        finally:
            await c.close()

    try:
        status, body = asyncio.run(fetch())
    except Exception:  # noqa: BLE001
        return {}
    if status != 200:
        return {}
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, val = line.rsplit(" ", 1)
        if name.startswith("trtrun_requests_total"):  # summed over endpoints and status codes
            out["trtrun_requests_total"] = out.get("trtrun_requests_total", 0.0) + float(val)
        elif name.split("{")[0] in ("trtrun_batch_requests_sum", "trtrun_batch_requests_count",
                                  "trtrun_batch_inputs_sum", "trtrun_engine_batch_size_sum",
                                  "trtrun_engine_batch_size_count", "trtrun_padding_tokens_total",
                                  "trtrun_tokens_total", "trtrun_process_cpu_seconds_total"):
            out[name] = float(val)
    return out


def _summarize(name: str, url: str, parts: list[dict], spec: dict, m0: dict, m1: dict) -> dict:
    lat = np.concatenate([np.asarray(p["lat"], np.float64) for p in parts]) if parts else np.zeros(0)
    n_in = sum(int(np.sum(p["n_in"])) for p in parts)
    fails: dict[str, int] = {}
    for p in parts:
        for k, v in p["fails"].items():
            fails[k] = fails.get(k, 0) + v
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}

    def ratio(a, b):
        return round(d[a] / d[b], 2) if d.get(b) else None

    q = (lambda p: round(float(np.percentile(lat, p)) * 1e3, 3)) if lat.size else (lambda p: None)
    sent = sum(p["sent"] for p in parts)
    client_cpu = sum(p["cpu_s"] for p in parts)
    client_wall = sum(p["wall_s"] for p in parts)
    server_cpu, server_reqs = d.get("trtrun_process_cpu_seconds_total"), d.get("trtrun_requests_total")
    return {
        "target": name, "url": url, "endpoint": spec["endpoint"], "clients": spec["clients"],
        "inputs_per_request": list(spec["inputs"]), "warmup_s": spec["warmup"], "duration_s": spec["duration"],
        "client_library": parts[0]["client"] if parts else None,
        "requests": int(lat.size), "inputs": n_in,
        "requests_per_s": round(lat.size / spec["duration"], 1), "inputs_per_s": round(n_in / spec["duration"], 1),
        "latency_ms": {"p50": q(50), "p90": q(90), "p99": q(99),
                       "max": round(float(lat.max()) * 1e3, 3) if lat.size else None,
                       "mean": round(float(lat.mean()) * 1e3, 3) if lat.size else None},
        "checked_requests": sum(p["checked_requests"] for p in parts),
        "checked_inputs": sum(p["checked_inputs"] for p in parts),
        "failed": sum(v for k, v in fails.items() if k != "mismatch"), "mismatched": fails.get("mismatch", 0),
        "poisoned_requests": sum(p.get("poisoned", 0) for p in parts),
        "poisoned_refused_400": sum(p.get("poisoned_refused", 0) for p in parts),
        "innocent_failures": sum(v for k, v in fails.items() if not k.startswith("poisoned")),
        "failures": fails, "failure_examples": [e for p in parts for e in p["examples"]][:10],
        "min_cosine": round(_min_nan(p["min_cos"] for p in parts), 7),
        "server_mean_requests_per_microbatch": ratio("trtrun_batch_requests_sum", "trtrun_batch_requests_count"),
        "server_mean_engine_batch_rows": ratio("trtrun_engine_batch_size_sum", "trtrun_engine_batch_size_count"),
        # the share of the token slots the engine computed that were padding: padding / (padding + real tokens)
        "server_padding_fraction": (round(d["trtrun_padding_tokens_total"] / (d["trtrun_padding_tokens_total"]
                                                                               + d["trtrun_tokens_total"]), 3)
                                    if d.get("trtrun_padding_tokens_total", 0) + d.get("trtrun_tokens_total", 0)
                                    else None),
        # CPU per request, over the whole load (warm-up included): the server's from its /metrics (all its
        # worker processes and threads), the load generator's own (all its processes). busy = CPU time per
        # wall-clock second per client process: near 1.0 means the load generator itself is the limit.
        "server_cpu_us_per_request": round(server_cpu / server_reqs * 1e6, 1) if server_cpu and server_reqs else None,
        "client_cpu_us_per_request": round(client_cpu / sent * 1e6, 1) if sent else None,
        "client_busy": round(client_cpu / client_wall, 2) if client_wall else None,
    }


def _table(rows: list[dict]) -> str:
    head = ("target", "clients", "req/s", "texts/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "checked",
            "failed", "mismatch", "min cos", "reqs/mbatch", "rows/engine", "srv us/req", "cli us/req", "cli busy")
    lines = [head]
    for r in rows:
        L = r["latency_ms"]
        lines.append((r["target"], str(r["clients"]), f"{r['requests_per_s']:.0f}", f"{r['inputs_per_s']:.0f}",
                      str(L["p50"]), str(L["p90"]), str(L["p99"]), str(L["max"]), str(r["checked_requests"]),
                      str(r["failed"]), str(r["mismatched"]), f"{r['min_cosine']:.6f}",
                      str(r["server_mean_requests_per_microbatch"]), str(r["server_mean_engine_batch_rows"]),
                      str(r["server_cpu_us_per_request"]), str(r["client_cpu_us_per_request"]), str(r["client_busy"])))
    w = [max(len(x[i]) for x in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w[i]) for i, c in enumerate(x)) for x in lines)


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", action="append", required=True, metavar="NAME=URL",
                    help="a server to load (repeatable; the first one gives the reference embeddings)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds per target")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    ap.add_argument("--procs", type=int, default=1, help="client processes (spread the clients' CPU work)")
    ap.add_argument("--inputs", type=_parse_inputs, default=(1, 1), metavar="N|LO-HI", help="texts per request")
    ap.add_argument("--endpoint", choices=("/v1/embeddings", "/embed"), default="/v1/embeddings")
    ap.add_argument("--texts", default="rt", help="data set (rt, wiki, imdb) or a text file, one text a line")
    ap.add_argument("--n-texts", type=int, default=2000, help="distinct texts (each gets a reference)")
    ap.add_argument("--max-chars", type=int, default=2000, help="cut texts to this many characters")
    ap.add_argument("--min-cosine", type=float, default=0.9999)
    ap.add_argument("--poison-every", type=int, default=0, metavar="N",
                    help="every N-th request carries a text that is not valid Unicode; it must get "
                         "400 naming its index, and the others must be unaffected (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)

    targets = []
    for t in a.target:
        name, sep, url = t.partition("=")
        if not sep or not name or not url:
            ap.error(f"--target must be NAME=URL, got {t!r}")
        _check_loopback(url)
        targets.append((name, url.rstrip("/")))
    if not 1 <= a.clients <= MAX_CLIENTS:
        ap.error(f"--clients must be 1..{MAX_CLIENTS}")
    if not 0 < a.duration <= MAX_DURATION or not 0 <= a.warmup <= MAX_DURATION:
        ap.error(f"--duration must be in (0, {MAX_DURATION}] s and --warmup in [0, {MAX_DURATION}] s")
    if not 1 <= a.procs <= a.clients:
        ap.error("--procs must be 1..clients")
    if a.poison_every < 0 or a.poison_every == 1:
        ap.error("--poison-every must be 0 (none) or >= 2")

    if Path(a.texts).is_file():
        texts = [ln.rstrip("\n") for ln in open(a.texts, encoding="utf-8") if ln.strip()][: a.n_texts]
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from trtrun.data import load_texts

        texts = load_texts(a.texts, n=a.n_texts, seed=a.seed)
    texts = [t[: a.max_chars] for t in texts]
    texts = list(dict.fromkeys(t for t in texts if t.strip()))  # distinct, non-empty

    ref_name, ref_url = targets[0]
    t0 = time.perf_counter()
    refs = _unit_rows(asyncio.run(_references(ref_url, a.endpoint, texts)))
    print(f"loadgen: {len(texts)} single-request reference embeddings from {ref_name} "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)

    rows = []
    for name, url in targets:
        spec = {"url": url, "endpoint": a.endpoint, "texts": texts, "refs": refs, "inputs": a.inputs,
                "clients": a.clients, "warmup": a.warmup, "duration": a.duration, "min_cosine": a.min_cosine,
                "seed": a.seed, "poison_every": a.poison_every}
        print(f"loadgen: {name}: {a.clients} clients x {a.duration:g} s (+{a.warmup:g} s warm-up), "
              f"{a.inputs[0]}-{a.inputs[1]} texts per request, {a.procs} process(es)", flush=True)
        m0 = _metrics(url)
        parts = _run_target(spec, a.procs)
        rows.append(_summarize(name, url, parts, spec, m0, _metrics(url)))
        r = rows[-1]
        print(f"loadgen: {name}: {r['requests_per_s']:.0f} req/s, p50 {r['latency_ms']['p50']} ms, "
              f"p99 {r['latency_ms']['p99']} ms, {r['failed']} failed, {r['mismatched']} mismatched"
              + (f"; poisoned {r['poisoned_requests']}, refused with 400 naming the index "
                 f"{r['poisoned_refused_400']}, innocent failures {r['innocent_failures']}" if a.poison_every else ""),
              flush=True)
        for ex in r["failure_examples"]:
            print(f"    {ex}", flush=True)

    print()
    print(_table(rows))
    result = {"targets": rows, "texts": len(texts), "reference_target": ref_name, "min_cosine": a.min_cosine}
    if len(rows) > 1 and rows[0]["requests_per_s"]:
        result["throughput_ratio"] = {
            f"{rows[0]['target']}/{r['target']}": round(rows[0]["requests_per_s"] / r["requests_per_s"], 2)
            for r in rows[1:] if r["requests_per_s"]}
        for k, v in result["throughput_ratio"].items():
            print(f"throughput {k}: {v}x")
    bad = sum(r["failed"] + r["mismatched"] for r in rows)
    result["ok"] = bad == 0 and all(r["requests"] > 0 for r in rows)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
    print("loadgen: " + ("every response matched its single-request embedding" if result["ok"]
                         else f"{bad} failed or mismatched responses"))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
