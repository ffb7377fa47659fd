"""Where a multi-process run's samples went, from py-spy's raw output (`py-spy record --subprocesses --threads
--format raw`, as scripts/gpu/ray.sh's PYSPY=1 writes them; .xz read as is).

    python3 tools/pyspy_summary.py pyspy-ray.txt.xz [--rate 100] [--top 8] [--match EmbedActor]

Per process (the innermost `process PID:"CMD"` frame of a stack): its samples and seconds at --rate, and per thread;
then, for the processes whose stacks mention --match (default: every one of the --top busiest), the seconds spent
importing at module level, by the chain of top-level packages whose `<module>` frames are on the stack
("ray > pandas": pandas imported while ray was), and the seconds under each `trtrun` function nearest the root.
py-spy samples every thread of every process each tick, so seconds are per thread, and a sampler that fell behind
(py-spy says so) makes them approximate.
"""

from __future__ import annotations

import argparse
import collections
import lzma
import re
import sys
from pathlib import Path

PROC = re.compile(r'process (\d+):"([^"]*)"?')
FILE = re.compile(r"\(([^:()]+):\d+\)")


def read(path: Path) -> list[tuple[list[str], int]]:
    opener = lzma.open if path.suffix == ".xz" else open
    out = []
    with opener(path, "rt", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            stack, _, n = line.rpartition(" ")
            out.append((stack.split(";"), int(n)))
    return out


def package(frame: str) -> str:
    m = FILE.search(frame)
    if not m:
        return "?"
    f = m.group(1)
    return f.rsplit("/", 1)[-1] if f.startswith(("/", "<")) else f.split("/", 1)[0]


def summarize(rows, rate: float, top: int, match: str | None) -> str:
    procs: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    names, frames_of = {}, collections.defaultdict(list)
    for frames, n in rows:
        found = [PROC.match(f) for f in frames if f.startswith("process ")]
        found = [m for m in found if m]
        pid = found[-1].group(1) if found else "?"
        names[pid] = found[-1].group(2)[:90] if found else ""
        thread = next((f for f in frames if f.startswith("thread ")), "thread ?")
        procs[pid][thread] += n
        frames_of[pid].append(([f for f in frames if not f.startswith(("process ", "thread "))], n))
    L = []
    busiest = sorted(procs, key=lambda p: -sum(procs[p].values()))
    for pid in busiest[:top]:
        tot = sum(procs[pid].values())
        L.append(f"process {pid}: {tot} samples, {tot / rate:.2f} s  {names[pid]}")
        for t, n in procs[pid].most_common(6):
            L.append(f"    {n / rate:7.2f} s  {t}")
    chosen = [p for p in busiest if match and any(match in f for fr, _ in frames_of[p] for f in fr)] if match \
        else busiest[:top]
    for pid in chosen:
        imports, trtrun_fns = collections.Counter(), collections.Counter()
        for fr, n in frames_of[pid]:
            chain = []
            for f in fr:
                if f.startswith("<module>"):
                    p = package(f)
                    if p not in chain:
                        chain.append(p)
            if chain:
                imports[" > ".join(chain[:3])] += n
            tf = next((f for f in fr if "trtrun/" in f and not f.startswith("<module>")), None)
            if tf:
                trtrun_fns[tf.split(" (")[0]] += n
        L.append(f"\nprocess {pid}: importing {sum(imports.values()) / rate:.2f} s")
        for k, n in imports.most_common(8):
            L.append(f"    {n / rate:7.2f} s  {k}")
        L.append(f"process {pid}: under trtrun functions {sum(trtrun_fns.values()) / rate:.2f} s")
        for k, n in trtrun_fns.most_common(8):
            L.append(f"    {n / rate:7.2f} s  {k}")
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path, help="py-spy --format raw output (.txt or .txt.xz)")
    ap.add_argument("--rate", type=float, default=100.0, help="py-spy's --rate (samples a second)")
    ap.add_argument("--top", type=int, default=8, help="processes listed, busiest first")
    ap.add_argument("--match", default=None, help="break down the processes whose stacks contain this text")
    a = ap.parse_args(argv)
    if not a.raw.is_file():
        print(f"pyspy_summary: no such file: {a.raw}", file=sys.stderr)
        return 2
    print(summarize(read(a.raw), a.rate, a.top, a.match))
    return 0


if __name__ == "__main__":
    sys.exit(main())
