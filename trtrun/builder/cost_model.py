"""What a Linear costs in each precision: a measured table, or an estimate from its FLOPs.

The precision search (builder/precision_search.py) needs each Linear's time in fp8, fp16 (hybrid) and fp32.
Those are GPU timings; without a GPU the default is an estimate, labelled so wherever it is shown: the GEMM's
2*M*K*N FLOPs at Hopper's dense tensor-core peak rates (H100 SXM datasheet: fp8 1979, fp16 989.5 TFLOP/s) and
fp32 without tensor cores (67 TFLOP/s, TF32 being off in trtrun's fp32), M = the profile's opt batch x opt
sequence. It ignores memory traffic, the activation quantization and the epilogues, so it flatters fp8 on
small GEMMs; a table measured on the card replaces it.

A cost table is a JSON file (what a GPU run writes; docs/precision.md):

    {"format": "trtrun-cost-table", "version": 1, "device": "NVIDIA H200",
     "entries": [{"m": 1024, "k": 384, "n": 1152, "precision": "fp8", "us": 6.1}, ...]}

keyed by the GEMM's shape (m, k, n) and the Linear's precision (fp8, hybrid, fp32).
"""

from __future__ import annotations

import math
from pathlib import Path

from .._io import read_json_file
from ..errors import InputError
from .quantize_fp8 import LINEAR_CHOICES

COST_TABLE_FORMAT = "trtrun-cost-table"
COST_TABLE_VERSION = 1
# dense peak TFLOP/s, H100 SXM (NVIDIA's datasheet): the rate ratios are what matter (fp8 = 2 x fp16)
HOPPER_TFLOPS = {"fp8": 1979.0, "hybrid": 989.5, "fp32": 67.0}
ESTIMATE_NOTE = ("estimate, not measured: GEMM FLOPs at H100 SXM dense peak (fp8 1979, fp16 989.5, fp32 67 "
                 "TFLOP/s), no memory traffic or quantization cost; a GPU-measured --cost-table replaces it")
MAX_TABLE_BYTES = 16 << 20


def gemm_shape(op: dict, profile: dict, weights: dict) -> tuple[int, int, int]:
    """(m, k, n) of a Linear op (its weight [K, N] in `weights`) at the profile's opt batch and sequence."""
    m = int(profile["batch"][1]) * int(profile["seq"][1])
    k, n = (int(d) for d in weights[op["weights"]["weight"]].shape)
    return m, k, n


class CostModel:
    """cost(m, k, n, precision) -> microseconds; `source` says where the numbers come from."""

    def __init__(self, table: dict | None = None, source: str = ESTIMATE_NOTE, device: str | None = None):
        self.table = table
        self.source = source
        self.device = device
        self.estimated = table is None

    def cost(self, m: int, k: int, n: int, precision: str) -> float:
        if precision not in LINEAR_CHOICES:
            raise ValueError(f"precision must be one of {', '.join(LINEAR_CHOICES)}, got {precision!r}")
        if self.table is None:
            return 2.0 * m * k * n / (HOPPER_TFLOPS[precision] * 1e12) * 1e6
        key = (m, k, n, precision)
        if key not in self.table:
            raise InputError(f"cost table {self.source}: no entry for a {precision} GEMM of m={m}, k={k}, n={n} "
                             f"(measure this model's shapes at the plan's opt batch x sequence)")
        return self.table[key]

    @classmethod
    def load(cls, path) -> "CostModel":
        """Read a cost table file; InputError naming the file and the field when it is not one."""
        p = Path(path)
        where = f"cost table {p}"
        doc = read_json_file(p, what="cost table", format=COST_TABLE_FORMAT, version=COST_TABLE_VERSION,
                             max_bytes=MAX_TABLE_BYTES, size_hint="a cost table takes kilobytes")
        entries = doc.get("entries")
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{where}: entries: must be a non-empty list")
        table = {}
        for i, e in enumerate(entries):
            f = f"{where}: entries[{i}]"
            if not isinstance(e, dict):
                raise InputError(f"{f}: must be an object {{m, k, n, precision, us}}")
            dims = [e.get(k) for k in ("m", "k", "n")]
            if not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 2 ** 31 - 1 for d in dims):
                raise InputError(f"{f}: m, k, n must be integers in [1, 2^31-1], got {str(dims)[:60]}")
            if e.get("precision") not in LINEAR_CHOICES:
                raise InputError(f"{f}: precision {str(e.get('precision'))[:20]!r} is not one of "
                                 f"{', '.join(LINEAR_CHOICES)}")
            us = e.get("us")
            if isinstance(us, bool) or not isinstance(us, (int, float)) or not math.isfinite(us) or us <= 0:
                raise InputError(f"{f}: us must be a positive finite number of microseconds, got {str(us)[:20]}")
            table[(*dims, e["precision"])] = float(us)
        dev = doc.get("device") if isinstance(doc.get("device"), str) else None
        return cls(table, source=f"{p}" + (f" (measured on {dev[:80]})" if dev else " (measured)"), device=dev)
