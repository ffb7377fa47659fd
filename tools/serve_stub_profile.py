"""Where a stub server's CPU goes, per thread (bench only): bench/serve_stub.py (one process) under
bench/loadgen.py's 64 clients; every thread's CPU time read from /proc before and after the measured
seconds; configs interleaved over rounds (A, B, A, B, ...) and the medians reported.

    python tools/serve_stub_profile.py --rounds 3 --duration 8 \\
        --config "new=" [--config "old@/path/to/old/checkout="] [--config "new-u=--no-batching"] \\
        [--pyspy out.txt] [--json out.json]

Each config is NAME[@REPO]=SERVER_ARGS as in serve_stub_compare.py (REPO's bench/serve_stub.py must be this
version's, for the thread names); an argument ENV:KEY=VALUE sets an environment variable of the server. The stub server, started with TRTRUN_STUB_THREAD_NAMES=1, gives every
Python thread its Python name at the OS level (prctl PR_SET_NAME) and lists their native ids
(TRTRUN_STUB_THREAD_LOG); any other thread is native (the tokenizer's rayon pool, which inherits its
creator's name). Reported per config: microseconds of CPU per answered request for each thread group
(event loop = the main thread) and how much of it was in the kernel. --pyspy records the first config's
first round with py-spy (raw collapsed stacks, all threads).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_stub_compare import TICK, _free_port, stop_server, wait_healthy  # noqa: E402

LOOP = "event loop (main thread)"


def _threads(pid: int) -> dict[int, tuple[str, float, float]]:
    """tid -> (name, CPU seconds user + system, system seconds)"""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / TICK, int(fields[12]) / TICK)
        except OSError:
            pass
    return out


def _group(tid: int, pid: int, comm: str, py: set) -> str:
    if tid == pid:
        return LOOP
    if tid not in py:
        return "native (tokenizer's rayon pool)"
    comm = re.sub(r"_\d+$", "", comm)
    if comm.startswith("trtrun-batcher"):
        return "gatherer"
    if comm.startswith("trtrun-batch"):
        return "batch workers (pack, engine, pool)"
    if comm.startswith("trtrun-embed"):
        return "engine fan-out"
    return "other python: " + comm


def _requests(url: str) -> float:
    body = urllib.request.urlopen(url + "/metrics").read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("trtrun_requests_total{"))


def _run(name: str, repo: Path, args: list[str], a, pyspy: str | None) -> dict:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    tlog = Path(a.tmp) / f"profile-threads-{port}.txt"
    tlog.unlink(missing_ok=True)
    env = dict(os.environ, TRTRUN_STUB_THREAD_NAMES="1", TRTRUN_STUB_THREAD_LOG=str(tlog))
    env.update(a.env_of.get(name, {}))
    srv = subprocess.Popen([sys.executable, "bench/serve_stub.py", "--port", str(port), *args], cwd=repo,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    spy = lg = None
    try:
        wait_healthy(url, name)
        out = Path(a.tmp) / f"profile-load-{port}.json"
        lg = subprocess.Popen([sys.executable, str(HERE.parent / "bench" / "loadgen.py"), "--target", f"{name}={url}", "--clients",
                               str(a.clients), "--duration", str(a.duration), "--warmup", str(a.warmup),
                               "--n-texts", str(a.n_texts), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in lg.stdout:  # the load starts after the single-request references: wait for its banner
            if "clients x" in line:
                break
        time.sleep(a.warmup + 0.3)
        t0, r0, w0 = _threads(srv.pid), _requests(url), time.monotonic()
        if pyspy:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(srv.pid), "--rate", str(a.pyspy_rate),
                                    "--format", "raw", "--threads", "--output", pyspy, "--nonblocking",
                                    "--duration", str(max(1, int(a.duration - 1.5)))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(a.duration - 1.0)
        t1, r1, w1 = _threads(srv.pid), _requests(url), time.monotonic()
        rest = lg.communicate()[0]
        if lg.returncode != 0:
            print(rest[-3000:])
            raise SystemExit(f"{name}: loadgen failed")
        if spy is not None:
            spy.wait(60)
        n = r1 - r0 - 2  # the two /metrics reads are not counted in trtrun_requests_total; /health is
        py = {int(line.split()[0]) for line in tlog.read_text().splitlines()} if tlog.exists() else set()
        cpu: dict[str, float] = defaultdict(float)
        ker: dict[str, float] = defaultdict(float)
        for tid, (comm, c1, s1) in t1.items():
            _, c0, s0 = t0.get(tid, (comm, 0.0, 0.0))
            g = _group(tid, srv.pid, comm, py)
            cpu[g] += c1 - c0
            ker[g] += s1 - s0
        doc = json.loads(out.read_text())["targets"][0]
        return {"req_s": n / (w1 - w0), "total_us": sum(cpu.values()) / n * 1e6,
                "threads_us": {g: c / n * 1e6 for g, c in cpu.items()},
                "kernel_us": {g: c / n * 1e6 for g, c in ker.items()},
                "mbatch": doc["server_mean_requests_per_microbatch"], "bad": doc["failed"] + doc["mismatched"]}
    finally:
        if spy is not None and spy.poll() is None:
            spy.terminate()
        if lg is not None and lg.poll() is None:
            lg.kill()
        stop_server(srv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=None, metavar="NAME[@REPO]=ARGS")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--n-texts", type=int, default=300)
    ap.add_argument("--pyspy", default=None, help="record the first run with py-spy to this file")
    ap.add_argument("--pyspy-rate", type=int, default=200)
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    configs = []
    a.env_of = {}
    for c in a.config or ["batched="]:
        head, _, args = c.partition("=")
        name, _, repo = head.partition("@")
        words = shlex.split(args)
        a.env_of[name] = dict(w[4:].split("=", 1) for w in words if w.startswith("ENV:"))
        configs.append((name, Path(repo) if repo else HERE.parent, [w for w in words if not w.startswith("ENV:")]))
    runs: dict[str, list[dict]] = {n: [] for n, _, _ in configs}
    for k in range(a.rounds):
        for j, (name, repo, args) in enumerate(configs):
            r = _run(name, repo, args, a, a.pyspy if k == 0 and j == 0 else None)
            runs[name].append(r)
            parts = "  ".join(f"{g.split(' (')[0]} {v:.0f}" for g, v in sorted(r["threads_us"].items(),
                                                                               key=lambda kv: -kv[1]) if v >= 0.5)
            print(f"round {k + 1} {name:16s} {r['req_s']:6.0f} req/s  server {r['total_us']:5.0f} us/req: {parts}"
                  f"  (mbatch {r['mbatch']}, bad {r['bad']})", flush=True)
    print(f"\nmedians over {a.rounds} round(s), us of server CPU per request ({os.cpu_count()} CPUs, {a.clients} "
          f"clients, {a.duration:g} s each):")
    groups = sorted({g for rs in runs.values() for r in rs for g in r["threads_us"]},
                    key=lambda g: (g != LOOP, g))
    names = [n for n, _, _ in configs]
    print(f"{'thread':40s} " + " ".join(f"{n:>16s}" for n in names))
    summary = {}
    for n in names:
        rs = runs[n]
        summary[n] = {"req_s": statistics.median(r["req_s"] for r in rs),
                      "total_us": statistics.median(r["total_us"] for r in rs),
                      "threads_us": {g: statistics.median(r["threads_us"].get(g, 0.0) for r in rs) for g in groups},
                      "kernel_us": {g: statistics.median(r["kernel_us"].get(g, 0.0) for r in rs) for g in groups},
                      "runs": rs}
    for g in groups:
        print(f"{g:40s} " + " ".join(f"{summary[n]['threads_us'][g]:16.1f}" for n in names))
    print(f"{'all threads':40s} " + " ".join(f"{summary[n]['total_us']:16.1f}" for n in names))
    print(f"{'req/s (2 shared cores: indicative)':40s} " + " ".join(f"{summary[n]['req_s']:16.0f}" for n in names))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    return 0 if all(r["bad"] == 0 for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
