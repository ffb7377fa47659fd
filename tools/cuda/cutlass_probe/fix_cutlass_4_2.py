"""CUTLASS 4.2's stream-K tile scheduler binds a const member to a non-const reference in a const method
(PersistentTileSchedulerSm90StreamK::is_last_tile), which nvcc 13 rejects. The probe's build patches its
extracted copy of the headers (never anything installed): the method gets a local copy of the value, which is
what it needs anyway (its comment says the argument must not be modified)."""
import sys
from pathlib import Path

if len(sys.argv) != 2:
    sys.exit("usage: fix_cutlass_4_2.py CUTLASS_INCLUDE_DIR (the folder holding cutlass/ and cute/)")
path = Path(sys.argv[1]) / "cutlass/gemm/kernel/sm90_tile_scheduler_stream_k.hpp"
if not path.is_file():
    sys.exit(f"{path}: not found; give the CUTLASS include folder (the one holding cutlass/ and cute/)")
src = path.read_text()
old = """    return not get_current_work_for_linear_idx(
        unit_iter_start_,"""
new = """    uint32_t unit_iter_start_copy = unit_iter_start_;
    return not get_current_work_for_linear_idx(
        unit_iter_start_copy,"""
if new in src:
    print("already patched:", path)
elif src.count(old) == 1:
    path.write_text(src.replace(old, new))
    print("patched:", path)
else:
    sys.exit(f"{path}: the expected code was not found; this patch is for CUTLASS 4.2.0")
