"""Slow and surplus clients against `trtrun serve` (loopback only, bounded): do trickling connections get cut
off within the server's timeouts while normal requests keep being answered, and does a connection beyond the
limit get a quick 503?

    trtrun serve m.plan --port 8101 --header-timeout 10 --body-timeout 30 --max-connections 1000 2> server.log &
    python bench/slow_clients.py --url http://127.0.0.1:8101 --trickle 1000 --over 200 --out slow.json

1. `--trickle N` connections (half trickle a request head, half send a head and trickle the body) send a byte
   every `--interval` seconds until the server answers or closes; each records when that happened and what
   the answer was (408 expected).
2. Meanwhile one client sends normal requests one after another (`--text`), every answer checked against the
   first one (cosine >= 0.99999: the same text, so the same vector up to batch-shape rounding); its latencies
   are reported.
3. `--over M`: while `--hold` idle connections (default: the server's --max-connections) are open, M more
   requests are sent: each should get a JSON 503 at once; their latency is reported.
Report: per kind, how many connections got a 408 / were closed / were still open at the end, the time to
close (p50/max), the normal requests' count, failures and latency; the 503s. Give `--server-log` to have
the size of the server's log reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

MAX_CONNECTIONS = 5000  # what this script opens at most, in all


def _loopback(url: str) -> tuple[str, int]:
    u = urlparse(url)
    host = u.hostname or ""
    if host != "localhost":
        try:
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError
        except ValueError:
            raise SystemExit(f"slow_clients: {url}: only loopback targets are allowed") from None
    return host, u.port or 80


async def _trickle(host, port, kind: str, interval: float, limit: float, body: bytes, head: bytes) -> dict:
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        return {"kind": kind, "result": f"connect failed: {e.strerror or e}", "seconds": time.monotonic() - t0}
    todo = head if kind == "head" else body
    if kind == "body":
        writer.write(head)
    got = b""
    result = "still open"
    read = asyncio.ensure_future(reader.read(65536))
    try:
        i = 0
        while time.monotonic() - t0 < limit:
            done, _ = await asyncio.wait({read}, timeout=interval)
            if done:
                chunk = read.result()
                if not chunk:
                    result = "closed without an answer" if not got else "answered"
                    break
                got += chunk
                read = asyncio.ensure_future(reader.read(65536))
                continue
            if i < len(todo):
                try:
                    writer.write(todo[i:i + 1])
                    await writer.drain()
                except (ConnectionError, OSError):
                    result = "reset"
                    break
                i += 1
    except (ConnectionError, OSError):
        result = "reset"
    finally:
        read.cancel()
        writer.close()
    status = got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/1.1 ") else None
    return {"kind": kind, "result": result, "status": status, "seconds": time.monotonic() - t0}


async def _normal(url: str, text: str, stop: asyncio.Event) -> dict:
    import httpx

    lat, fails, ref, cos_min = [], {}, None, 1.0
    async with httpx.AsyncClient(timeout=60) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = await c.post(url + "/v1/embeddings", json={"input": text})
            except Exception as e:  # noqa: BLE001 - counted
                fails[type(e).__name__] = fails.get(type(e).__name__, 0) + 1
                await asyncio.sleep(0.05)
                continue
            if r.status_code != 200:
                fails[f"HTTP {r.status_code}"] = fails.get(f"HTTP {r.status_code}", 0) + 1
                await asyncio.sleep(0.05)
                continue
            v = np.asarray(r.json()["data"][0]["embedding"], np.float64)
            v /= np.linalg.norm(v)
            if ref is None:
                ref = v
            cos = float(v @ ref)
            cos_min = min(cos_min, cos)
            if cos < 0.99999:
                fails["mismatch"] = fails.get("mismatch", 0) + 1
            lat.append(time.monotonic() - t0)
    q = (lambda p: round(float(np.percentile(lat, p)) * 1e3, 2)) if lat else (lambda p: None)
    return {"answered": len(lat), "failures": fails, "min_cosine": round(cos_min, 7),
            "latency_ms": {"p50": q(50), "p99": q(99), "max": q(100)}}


async def _over(host, port, url, hold: int, n: int) -> dict:
    import httpx

    held = []
    for _ in range(hold):
        try:
            held.append(await asyncio.open_connection(host, port))
        except OSError:
            break
    await asyncio.sleep(0.3)
    codes, lat = {}, []
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        for _ in range(n):
            t0 = time.monotonic()
            try:
                r = await c.post(url + "/v1/embeddings", json={"input": "a"})
                k = str(r.status_code) + ("" if r.headers.get("content-type", "").startswith("application/json")
                                          else " (not JSON)")
            except Exception as e:  # noqa: BLE001
                k = type(e).__name__
            codes[k] = codes.get(k, 0) + 1
            lat.append(time.monotonic() - t0)
    for _, w in held:
        w.close()
    return {"held": len(held), "requests": n, "answers": codes,
            "latency_ms": {"p50": round(float(np.percentile(lat, 50)) * 1e3, 2),
                           "max": round(max(lat) * 1e3, 2)} if lat else None}


async def main_async(a) -> dict:
    host, port = _loopback(a.url)
    url = a.url.rstrip("/")
    body = json.dumps({"input": "a slowly sent text"}).encode()
    head = (f"POST /v1/embeddings HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    stop = asyncio.Event()
    normal = asyncio.ensure_future(_normal(url, a.text, stop))
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    tasks = []
    for i in range(a.trickle):
        tasks.append(asyncio.ensure_future(_trickle(host, port, "head" if i % 2 == 0 else "body", a.interval,
                                                    a.limit, body, head)))
        if i % 50 == 49:
            await asyncio.sleep(0)  # let the connects go out
    trick = await asyncio.gather(*tasks)
    stop.set()
    out = {"trickle": {}, "normal_during_trickle": await normal, "trickle_wall_s": round(time.monotonic() - t0, 2)}
    for kind in ("head", "body"):
        rs = [r for r in trick if r["kind"] == kind]
        if not rs:
            continue
        res = {}
        for r in rs:
            k = r["result"] + (f" ({r['status']})" if r.get("status") else "")
            res[k] = res.get(k, 0) + 1
        secs = np.array([r["seconds"] for r in rs if r["result"] != "still open"])
        out["trickle"][kind] = {"connections": len(rs), "outcomes": res,
                                "seconds_to_close": {"p50": round(float(np.median(secs)), 2),
                                                     "max": round(float(secs.max()), 2)} if secs.size else None}
    if a.over:
        out["over_limit"] = await _over(host, port, url, a.hold, a.over)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--trickle", type=int, default=100, help="trickling connections (half head, half body)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between a trickling client's bytes")
    ap.add_argument("--limit", type=float, default=90.0, help="give up on a connection after this many seconds")
    ap.add_argument("--text", default="a fine film about slow clients", help="the normal client's text")
    ap.add_argument("--over", type=int, default=0, help="requests sent while --hold connections are open")
    ap.add_argument("--hold", type=int, default=1000, help="idle connections held open for --over")
    ap.add_argument("--server-log", type=Path, default=None, help="report this file's size (the server's log)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.trickle + a.hold > MAX_CONNECTIONS or a.trickle < 0 or a.hold < 0 or a.over < 0:
        ap.error(f"--trickle + --hold must be at most {MAX_CONNECTIONS}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.trickle + a.hold + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    log0 = a.server_log.stat().st_size if a.server_log and a.server_log.exists() else None
    out = asyncio.run(main_async(a))
    if log0 is not None:
        out["server_log_bytes_added"] = a.server_log.stat().st_size - log0
    out["args"] = {k: str(v) for k, v in vars(a).items()}
    print(json.dumps(out, indent=2))
    if a.out:
        a.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
