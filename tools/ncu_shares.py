"""Where one forward pass's GPU time goes, from an ncu CSV of one graph replay (gpu__time_duration per kernel).

    ncu --profile-from-start off --clock-control none --cache-control none --metrics gpu__time_duration.sum \\
        --csv python3 tools/profile_point.py --model bert-base --point 1x128 --ncu > ncu.csv
    python3 tools/ncu_shares.py ncu.csv [--families]

Prints the sum of kernel times, then per kernel name (or, with --families, per kind: cuBLASLt GEMM, LayerNorm,
attention, embedding, input staging, other) the total, the count and the time of one. ncu serializes the kernels:
read shares, not the graph's time (docs/performance.md). Lines ncu or the program print around the CSV are skipped.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import sys

_UNITS_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}


def family(kernel: str) -> str:
    k = kernel.lower()
    if "nvjet" in k or "gemm" in k or "cublas" in k or "xmma" in k:
        return "cuBLASLt GEMM"
    for key, name in (("layernorm", "LayerNorm"), ("attention", "attention"), ("embedding", "embedding"),
                      ("stage_input", "input staging"), ("quantize", "fp8 quantize"), ("rescale", "fp8 rescale"),
                      ("bias_act", "bias and activation")):
        if key in k:
            return name
    return "other"


def read(path: str) -> list[tuple[str, float]]:
    """(kernel name, microseconds) of every gpu__time_duration row, in launch order."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if line.startswith('"')]
    rows = list(csv.DictReader(io.StringIO("".join(lines))))
    if not rows or "Kernel Name" not in rows[0] or "Metric Value" not in rows[0]:
        raise ValueError(f"{path}: not an ncu --csv table (no 'Kernel Name' / 'Metric Value' columns)")
    out = []
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "nsecond")
        if unit not in _UNITS_US:
            raise ValueError(f"{path}: unknown time unit {unit!r} for kernel {r['Kernel Name'][:60]!r}")
        out.append((r["Kernel Name"], float(r["Metric Value"].replace(",", "")) * _UNITS_US[unit]))
    if not out:
        raise ValueError(f"{path}: no gpu__time_duration.sum rows (profile with --metrics gpu__time_duration.sum)")
    return out


def shares(kernels: list[tuple[str, float]], families: bool) -> list[tuple[str, int, float]]:
    """(name or family, count, total us), largest total first."""
    by: dict[str, list] = collections.OrderedDict()
    for name, us in kernels:
        key = family(name) if families else name[:70]
        c = by.setdefault(key, [0, 0.0])
        c[0] += 1
        c[1] += us
    return sorted(((k, n, us) for k, (n, us) in by.items()), key=lambda t: -t[2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", help="ncu --csv output of one replay (profile_point.py --ncu)")
    ap.add_argument("--families", action="store_true", help="group kernels by kind instead of by name")
    a = ap.parse_args(argv)
    try:
        kernels = read(a.csv)
    except (OSError, ValueError) as e:
        print(f"ncu_shares: {e}", file=sys.stderr)
        return 2
    total = sum(us for _, us in kernels)
    print(f"{a.csv}: {len(kernels)} kernels, sum of kernel times {total:.1f} us")
    for key, n, us in shares(kernels, a.families):
        print(f"  {us:8.1f} us {100 * us / total:5.1f}%  {n:3d}x  {us / n:6.2f} us/each  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
