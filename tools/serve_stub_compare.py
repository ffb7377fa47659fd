"""Interleaved A/B runs of `trtrun serve` on the stub engine: requests/s and CPU per request (bench only).

    python tools/serve_stub_compare.py --rounds 3 --duration 10 \\
        --config "batched=" --config "unbatched=--no-batching" \\
        [--config "old-batched@/path/to/old/checkout="] [--procs 1] [--out results.json]

Each config is NAME[@REPO]=SERVER_ARGS: bench/serve_stub.py from REPO (default: this checkout) with those
arguments. Every round runs each config once, in order (so slow drifts of a shared machine hit all of
them alike): start the server on a free port, wait for /health, run bench/loadgen.py (64 clients, 1 text
per request, this checkout's version) against it, stop the server with SIGTERM and check it exits 0.
Reported per config: the median over rounds of requests/s and latency, and of the CPU time per request
of the server (all its processes and threads, read from /proc, so it works for any version) and of the
load generator (its own report). On a machine with few cores the server and the load generator share
them, so requests/s says little; the CPU per request is what carries over to a bigger machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (worker processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all threads), children not counted (they are in pids)."""
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            t += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return t / TICK


def wait_healthy(url: str, name: str, timeout: float = 120.0) -> None:
    """Poll url/health until it answers 200 (SystemExit naming `name` after `timeout` seconds)."""
    end = time.time() + timeout
    while time.time() < end:
        try:
            if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{name}: server did not become healthy")


def stop_server(srv: subprocess.Popen):
    """SIGTERM (the server's clean shutdown), then kill after 60 s; the exit code, or "killed"."""
    srv.send_signal(signal.SIGTERM)
    try:
        return srv.wait(60)
    except subprocess.TimeoutExpired:
        srv.kill()
        return "killed"


def _run(name: str, repo: Path, args: list[str], a) -> dict:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    srv = subprocess.Popen([sys.executable, "bench/serve_stub.py", "--port", str(port), *args], cwd=repo,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(url, name)
        time.sleep(0.5)  # every worker up (with --workers, /health answers as soon as one is)
        pids = _tree(srv.pid)
        c0, w0 = _cpu_seconds(pids), time.monotonic()
        out = Path(a.tmp) / f"load-{name}.json"
        lg = subprocess.run([sys.executable, str(HERE.parent / "bench" / "loadgen.py"), "--target", f"{name}={url}",
                             "--clients", str(a.clients), "--duration", str(a.duration), "--warmup", str(a.warmup),
                             "--procs", str(a.procs), "--n-texts", str(a.n_texts), "--out", str(out)],
                            capture_output=True, text=True)
        c1, w1 = _cpu_seconds(pids), time.monotonic()
        if lg.returncode != 0:
            raise SystemExit(f"{name}: loadgen failed:\n{lg.stdout[-2000:]}\n{lg.stderr[-2000:]}")
        doc = json.loads(out.read_text())
        r = doc["targets"][0]
        answered = r["checked_requests"] + r["failed"] + doc["texts"]  # + the single-text reference requests
        return {"req_s": r["requests_per_s"], "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"],
                "server_cpu_us": (c1 - c0) / answered * 1e6, "server_cores": (c1 - c0) / (w1 - w0),
                "client_cpu_us": r.get("client_cpu_us_per_request"), "client_busy": r.get("client_busy"),
                "mbatch": r["server_mean_requests_per_microbatch"], "bad": r["failed"] + r["mismatched"]}
    finally:
        rc = stop_server(srv)
        if rc != 0:
            print(f"  {name}: server exit code {rc}: {srv.stderr.read()[-1000:]}", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", required=True, metavar="NAME[@REPO]=ARGS")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--n-texts", type=int, default=300)
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    configs = []
    for c in a.config:
        head, _, args = c.partition("=")
        name, _, repo = head.partition("@")
        configs.append((name, Path(repo) if repo else HERE.parent, shlex.split(args)))
    runs: dict[str, list[dict]] = {n: [] for n, _, _ in configs}
    for k in range(a.rounds):
        for name, repo, args in configs:
            r = _run(name, repo, args, a)
            runs[name].append(r)
            print(f"round {k + 1} {name:24s} {r['req_s']:7.0f} req/s  server {r['server_cpu_us']:5.0f} us/req "
                  f"({r['server_cores']:.2f} cores)  client {r['client_cpu_us']} us/req (busy {r['client_busy']})  "
                  f"mbatch {r['mbatch']}  bad {r['bad']}", flush=True)
    print(f"\nmedians over {a.rounds} rounds ({os.cpu_count()} CPUs, {a.clients} clients, {a.procs} client "
          f"process(es), {a.duration:g} s each):")
    print(f"{'config':24s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} {'srv us/req':>10s} {'cli us/req':>10s} "
          f"{'reqs/mbatch':>11s}")
    summary = {}
    for name, _, args in configs:
        med = {k: statistics.median(r[k] for r in runs[name]) for k in
               ("req_s", "p50_ms", "p99_ms", "server_cpu_us", "client_cpu_us", "mbatch")}
        summary[name] = {"args": args, "median": med, "runs": runs[name]}
        print(f"{name:24s} {med['req_s']:7.0f} {med['p50_ms']:7.1f} {med['p99_ms']:7.1f} {med['server_cpu_us']:10.0f} "
              f"{med['client_cpu_us']:10.0f} {med['mbatch']:11.1f}")
    if a.out:
        a.out.write_text(json.dumps(summary, indent=2))
    return 0 if all(r["bad"] == 0 for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
