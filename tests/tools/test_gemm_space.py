"""tools/gemm_space.py: subsets of cuBLASLt's configuration space against its best (reads gemm_explore --dump)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gemm_space.py"
HEAD = "gemm,M,rank,algo,tile,stages,splitk,swizzle,cluster,custom,ws_k,quick_us,full_us,load_ms\n"


def _load():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gemm_space", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _table(tmp_path):
    """One GEMM group, algorithm 66 / stages 35 / swizzle 0 everywhere but one faster row of another algorithm.
    Tiles 10..15 at cluster 1x1 (2) with custom 1: tile t takes 25 - t us, so the 4 fastest are 15, 14, 13, 12.
    The best of the 66 space: tile 13, cluster 2x1 (3), custom 5 (9.0 us), which only stage 2 finds. A heuristic
    row (rank 0) must not count as a configuration."""
    rows = [HEAD]
    for t in range(10, 16):
        for cust in (1, 3):
            rows.append(f"qkv,4096,-100,66,{t},35,1,0,2,{cust},0,{25 - t + (0.5 if cust == 3 else 0)},-1,0.1\n")
    rows.append("qkv,4096,-100,66,13,35,1,0,3,5,0,9.0,-1,0.1\n")      # stage 2: tile 13 is among the 4 fastest
    rows.append("qkv,4096,-100,66,10,35,1,0,3,5,0,8.5,-1,0.1\n")      # tile 10 is not: stage 2 never sees this
    rows.append("qkv,4096,-100,66,12,35,1,0,6,0,0,8.0,-1,0.1\n")      # cluster 2x2: outside the focused space
    rows.append("qkv,4096,0,66,11,35,1,0,2,1,0,1.0,5.0,-1\n")          # a heuristic row: ignored
    rows.append("qkv,4096,-100,21,11,35,1,0,2,1,0,7.0,-1,0.1\n")      # another algorithm, the fastest of all
    for i in range(20):  # make (66, 35, 0) the most common algorithm/stages/swizzle by a wide margin
        rows.append(f"qkv,4096,-100,66,{30 + i},35,1,0,2,0,0,50,-1,0.1\n")
    p = tmp_path / "configs.csv"
    p.write_text("".join(rows))
    return p


def test_two_stage_finds_the_variant_of_a_top_tile_only(tmp_path):
    gs = _load()
    rows = gs.read(str(_table(tmp_path)))[("qkv", 4096)]
    assert all(r["rank"] == -100 for r in rows)  # the heuristic row is not a configuration
    picked = gs.two_stage(rows, 4, (1, 3))
    best = min(picked, key=lambda r: r["quick_us"])
    assert (best["tile"], best["cluster"], best["custom"]) == (13, 3, 5)
    assert not any(r["tile"] == 10 and r["cluster"] == 3 for r in picked)  # tile 10 is not among the 4 fastest
    assert not any(r["cluster"] == 6 for r in picked)
    assert all(r["algo"] == 66 for r in picked)
    # the exhaustive-like subset holds every algorithm-66 row, so its best is the 2x2 cluster's 8.0
    assert min(r["quick_us"] for r in gs.base_of(rows)) == 8.0


def test_report_and_bad_files(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(_table(tmp_path))], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("focused: 2 stages"))
    # best of the subset 9.0 against the best of all rows 7.0 (algorithm 21): +28.6%
    assert "+28.6%" in line, line
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = subprocess.run([sys.executable, str(SCRIPT), str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not a gemm_explore --dump table" in r.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text(HEAD)
    r = subprocess.run([sys.executable, str(SCRIPT), str(empty)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "no timed configurations" in r.stderr
