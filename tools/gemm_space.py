"""Which part of cuBLASLt's configuration space do the fastest GEMM configurations come from?

Reads the table `gemm_explore --configs --dump FILE` writes (one line per timed configuration: algorithm, tile,
stages, split-K, swizzle, cluster shape, custom option, quick-pass time) and, for each (GEMM, rows) group, prints
how close the best configuration of a candidate subset comes to the best of all, and how many configurations
the subset holds. That is how the runtime's "focused" search (native/runtime/gemm.cpp) was chosen: a subset small enough
to time on a shape's first run, whose best is near the exhaustive best.

    python3 tools/gemm_space.py configs.csv

Times are gemm_explore's quick pass (the minimum of 5 samples of 5 back-to-back launches, weights rotated
past the L2): differences under ~1-2% are within its noise.
"""
from __future__ import annotations

import argparse
import collections
import csv
import sys

CLUSTER_1x1, CLUSTER_2x1, CLUSTER_1x2 = 2, 3, 5  # cublasLtClusterShape_t
INT_FIELDS = ("M", "rank", "algo", "tile", "stages", "splitk", "swizzle", "cluster", "custom")


def read(path: str) -> dict:
    groups = collections.defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                for k in INT_FIELDS:
                    row[k] = int(row[k])
                row["quick_us"] = float(row["quick_us"])
            except (KeyError, ValueError) as e:
                raise SystemExit(f"{path}: not a gemm_explore --dump table ({e})")
            if row["rank"] == -100 and row["quick_us"] > 0:  # a configuration that ran (not a heuristic entry)
                groups[(row["gemm"], row["M"])].append(row)
    if not groups:
        raise SystemExit(f"{path}: no timed configurations")
    return groups


def base_of(rows: list) -> list:
    """The configurations with the most common algorithm, stages and swizzle (the heuristic's, on an H200:
    algorithm 66, its stages, no swizzle), i.e. what the runtime varies."""
    key = collections.Counter((r["algo"], r["stages"], r["swizzle"]) for r in rows).most_common(1)[0][0]
    return [r for r in rows if (r["algo"], r["stages"], r["swizzle"]) == key]


def two_stage(rows: list, n_tiles: int, customs: tuple) -> list:
    """The runtime's focused search: every tile at cluster 1x1 with `customs`, then the n_tiles fastest tiles
    with clusters 1x1/2x1/1x2 and every custom option."""
    base = base_of(rows)
    first = [r for r in base if r["cluster"] == CLUSTER_1x1 and r["custom"] in customs]
    tiles = []
    for r in sorted(first, key=lambda r: r["quick_us"]):
        if r["tile"] not in tiles:
            tiles.append(r["tile"])
    tiles = tiles[:n_tiles]
    second = [r for r in base if r["tile"] in tiles and r["cluster"] in (CLUSTER_1x1, CLUSTER_2x1, CLUSTER_1x2)]
    return list({id(r): r for r in first + second}.values())


SUBSETS = {
    "all tiles, cluster 1x1, every custom": lambda rows: [r for r in base_of(rows) if r["cluster"] == CLUSTER_1x1],
    "all tiles, clusters 1x1/2x1, customs 1,3": lambda rows: [
        r for r in base_of(rows) if r["cluster"] in (CLUSTER_1x1, CLUSTER_2x1) and r["custom"] in (1, 3)],
    "focused: 2 stages, 4 tiles, customs 1,3": lambda rows: two_stage(rows, 4, (1, 3)),
    "2 stages, 4 tiles, custom 1": lambda rows: two_stage(rows, 4, (1,)),
    "2 stages, 3 tiles, customs 1,3": lambda rows: two_stage(rows, 3, (1, 3)),
    "algorithm/stages/swizzle of the heuristic (exhaustive)": base_of,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    a = ap.parse_args(argv)
    groups = read(a.file)
    names = list(groups)
    print("subset".ljust(56) + "".join(f"{g}@{m}".rjust(18) for g, m in names))
    for label, pick in SUBSETS.items():
        cells = []
        for g in names:
            rows = groups[g]
            best = min(r["quick_us"] for r in rows)
            sub = pick(rows)
            b = min((r["quick_us"] for r in sub), default=float("nan"))
            cells.append(f"{len(sub):5d} {100 * (b / best - 1):+6.1f}%")
        print(label.ljust(56) + "".join(c.rjust(18) for c in cells))
    print("\n(cell: configurations in the subset, and its best quick-pass time against the best of all "
          f"{', '.join(str(len(groups[g])) for g in names)} configurations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
