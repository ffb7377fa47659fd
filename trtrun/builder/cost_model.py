"""What a Linear costs in each precision: a measured table, or an estimate from its FLOPs.

The precision search (builder/precision_search.py) needs each Linear's time in fp8, fp16 (hybrid) and fp32.
Those are GPU timings; without a GPU the default is an estimate, labelled so wherever it is shown: a roofline of
the kernels the GPU runtime runs for the Linear on Hopper, each the longer of its FLOPs at the dense peak rate
(H100 SXM datasheet: fp8 1979, fp16 989.5 TFLOP/s; fp32 without tensor cores 67, TF32 being off in trtrun's fp32)
and its bytes at the HBM bandwidth (3.35 TB/s), M = the profile's opt batch x opt sequence. An fp8 Linear is
what the runtime runs on Hopper for its scale kind (docs/precision.md, "Measured: speed on an H100"): with a scale
per weight channel or per token, which cuBLASLt does not offer, the activation quantization, the GEMM into an fp32
accumulator, then one pass over it (rescale, bias, activation, fp16 out); with one weight scale and a static
activation scale ("tensor-static"), the quantization and one GEMM that applies both scalars, the bias and the
activation and writes fp16. fp8 wins in the first only for deep GEMMs. The "flops" estimate (FLOPs alone, what the
search used before) is kept for tests of the search's mechanics. A table measured on the card replaces both.

A cost table is a JSON file (scripts/gpu/cost_table.py writes one on the GPU machine; docs/precision.md):

    {"format": "trtrun-cost-table", "version": 1, "device": "NVIDIA H200",
     "entries": [{"m": 1024, "k": 384, "n": 1152, "precision": "fp8", "fp8_scales": "channel-dynamic", "us": 6.1},
                 ...]}

keyed by the GEMM's shape (m, k, n), the Linear's precision (fp8, hybrid, fp32) and, for fp8, its scale kind
(fp8_scales: FP8_SCALE_KINDS, default channel-dynamic, the builder's default).
"""

from __future__ import annotations

import math
from pathlib import Path

from .._io import read_json_file
from ..errors import InputError
from .quantize_fp8 import LINEAR_CHOICES

FP8_SCALE_KINDS = ("channel-dynamic", "channel-static", "tensor-dynamic", "tensor-static")
COST_TABLE_FORMAT = "trtrun-cost-table"
COST_TABLE_VERSION = 1
# dense peak TFLOP/s and HBM bandwidth, H100 SXM (NVIDIA's datasheet)
HOPPER_TFLOPS = {"fp8": 1979.0, "hybrid": 989.5, "fp32": 67.0}
HOPPER_HBM_TBS = 3.35
ESTIMATES = ("roofline", "flops")
ESTIMATE_NOTE = ("estimate, not measured: a roofline of the runtime's kernels on an H100 SXM (FLOPs at fp8 1979, "
                 "fp16 989.5, fp32 67 TFLOP/s; bytes at 3.35 TB/s; fp8 with its quantization, fp32 accumulator "
                 "and rescale-bias pass); a GPU-measured --cost-table replaces it")
FLOPS_NOTE = ("estimate, not measured: GEMM FLOPs at H100 SXM dense peak (fp8 1979, fp16 989.5, fp32 67 TFLOP/s), "
              "no memory traffic or quantization cost")


def fp8_scale_kind(weight_scale: str = "channel", activations: str = "dynamic") -> str:
    """The cost model's name of an fp8 scale choice (FP8_SCALE_KINDS): "tensor-static" where the GEMM can apply both
    scales itself (one per weight, a calibrated one for the activations), else the kernels' name of the choice."""
    return f"{'tensor' if weight_scale == 'tensor' else 'channel'}-{'static' if activations == 'static' else 'dynamic'}"


def roofline_us(m: int, k: int, n: int, precision: str, fp8_scales: str = "channel-dynamic") -> float:
    """The roofline estimate of one Linear [m, k] x [k, n] in `precision`, in microseconds (module docstring)."""
    def kernel(flops, nbytes, tflops=None):
        return max(flops / (tflops * 1e12) if tflops else 0.0, nbytes / (HOPPER_HBM_TBS * 1e12)) * 1e6

    flops = 2.0 * m * k * n
    if precision == "hybrid":  # fp16 x and w, the epilogue fused, fp16 y
        return kernel(flops, 2.0 * (m * k + k * n + m * n), HOPPER_TFLOPS["hybrid"])
    if precision == "fp32":
        return kernel(flops, 4.0 * (m * k + k * n + m * n), HOPPER_TFLOPS["fp32"])
    quantize = kernel(0, 2.0 * m * k + m * k + 4.0 * m)  # fp16 x in; E4M3 codes and a scale per row out
    if fp8_scales == "tensor-static":  # scalar scales, bias and activation in the GEMM's epilogue, fp16 y
        return quantize + kernel(flops, m * k + k * n + 2.0 * m * n, HOPPER_TFLOPS["fp8"])
    gemm = kernel(flops, m * k + k * n + 4.0 * m * n, HOPPER_TFLOPS["fp8"])  # into the fp32 accumulator
    finish = kernel(0, 6.0 * m * n)  # one pass: the accumulator rescaled, bias and activation, fp16 y
    return quantize + gemm + finish
MAX_TABLE_BYTES = 16 << 20


def gemm_shape(op: dict, profile: dict, weights: dict) -> tuple[int, int, int]:
    """(m, k, n) of a Linear op (its weight [K, N] in `weights`) at the profile's opt batch and sequence."""
    m = int(profile["batch"][1]) * int(profile["seq"][1])
    k, n = (int(d) for d in weights[op["weights"]["weight"]].shape)
    return m, k, n


class CostModel:
    """cost(m, k, n, precision) -> microseconds; `source` says where the numbers come from."""

    def __init__(self, table: dict | None = None, source: str | None = None, device: str | None = None,
                 estimate: str = "roofline"):
        if estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {', '.join(ESTIMATES)}, got {estimate!r}")
        self.table = table
        self.estimate = estimate
        self.source = source or (ESTIMATE_NOTE if estimate == "roofline" else FLOPS_NOTE)
        self.device = device
        self.estimated = table is None

    def cost(self, m: int, k: int, n: int, precision: str, fp8_scales: str = "channel-dynamic") -> float:
        """Microseconds of one Linear [m, k] x [k, n] in `precision` (fp8: with the scale kind fp8_scales)."""
        if precision not in LINEAR_CHOICES:
            raise ValueError(f"precision must be one of {', '.join(LINEAR_CHOICES)}, got {precision!r}")
        if fp8_scales not in FP8_SCALE_KINDS:
            raise ValueError(f"fp8_scales must be one of {', '.join(FP8_SCALE_KINDS)}, got {fp8_scales!r}")
        if self.table is None:
            if self.estimate == "roofline":
                return roofline_us(m, k, n, precision, fp8_scales)
            return 2.0 * m * k * n / (HOPPER_TFLOPS[precision] * 1e12) * 1e6
        key = (m, k, n, precision, fp8_scales if precision == "fp8" else "")
        if key not in self.table:
            kind = f"{precision} ({fp8_scales} scales)" if precision == "fp8" else precision
            raise InputError(f"cost table {self.source}: no entry for a {kind} GEMM of m={m}, k={k}, n={n} "
                             f"(measure this model's shapes at the plan's opt batch x sequence, with its fp8 scales)")
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
            scales = e.get("fp8_scales", "channel-dynamic") if e["precision"] == "fp8" else ""
            if e["precision"] == "fp8" and scales not in FP8_SCALE_KINDS:
                raise InputError(f"{f}: fp8_scales {str(scales)[:20]!r} is not one of {', '.join(FP8_SCALE_KINDS)}")
            us = e.get("us")
            if isinstance(us, bool) or not isinstance(us, (int, float)) or not math.isfinite(us) or us <= 0:
                raise InputError(f"{f}: us must be a positive finite number of microseconds, got {str(us)[:20]}")
            table[(*dims, e["precision"], scales)] = float(us)
        dev = doc.get("device") if isinstance(doc.get("device"), str) else None
        return cls(table, source=f"{p}" + (f" (measured on {dev[:80]})" if dev else " (measured)"), device=dev)
