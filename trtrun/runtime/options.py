"""A GPU context's options: one dataclass with their defaults, checked once when it is made, and the one place
that hands them to the extension.

Everything that makes a context (Engine.create_context, the Embedder, `trtrun run`, `trtrun serve`, `trtrun bench`)
takes its defaults and its checks from ContextOptions; an entry point that wants another default (the
Embedder's gemm_search) says so by value, from trtrun.types.GEMM_SEARCH_DEFAULTS. The measurements behind the
defaults are in docs/performance.md; native/include/trtrun/context_options.h states the same defaults for C++
callers (tests/runtime/test_native_host.py checks they agree).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from ..errors import InputError
from ..types import GEMM_SEARCH_DEFAULTS, check_gemm_search


_INT32_MAX, _INT64_MAX = 2**31 - 1, 2**63 - 1


@dataclass(frozen=True)
class ContextOptions:
    """How a Context runs its engine.

    use_graphs: capture each (batch, sequence bucket) shape into a CUDA graph on its first run.
    bucket: pad sequences up to bucket_seq(S) (pad keys masked, pad rows sliced off) so few graphs
        serve all lengths; False runs at the exact length.
    workspace_bytes: cuBLASLt workspace (default 4 MiB; the fastest algorithms here need at most 768 KiB).
    max_graphs: captured CUDA graphs a context keeps.
    ffn_chunks: feed-forward blocks run in row chunks of ceil(rows_max / ffn_chunks) rows, so their
        wide intermediate takes 1/ffn_chunks of its full size in the arena (1: off). Results are the
        same row for row; shapes up to rows_max / ffn_chunks rows run unchunked. Only where a chunk has at
        least ffn_chunk_min_rows rows (default 4096): below that every extra GEMM adds 5-10 us of mostly
        fixed cost (GPT-2 at 1 x 512 in 256-row chunks: ~+0.14 ms expected).
    fuse_residual: where an fp16 GEMM's Linear feeds a LayerNorm whose residual is fp32 (GPT-2's residual
        stream in hybrid plans), the GEMM adds the residual in its epilogue and the LayerNorm reads the sum:
        the same fp32 arithmetic in another order, fewer bytes moved. Used at runs of at least
        fuse_residual_min_rows tokens (batch x sequence bucket, default 1024); below that it was slower (GPT-2 at
        512 rows on an H200; docs/runtime.md).
    gemm_search: how each GEMM shape's cuBLASLt algorithm is chosen on its first run (once per process,
        shared by every context). "heuristic": cuBLASLt's top 8 proposals, timed (~0.1 s). "focused"
        (default): those, plus ~300 configurations of the heuristic's algorithm, each timed after an L2 flush
        with the GEMM's inputs read back into the L2: 3-5 s for the first shape in a process, up to ~2 s for
        each later one. "exhaustive": every configuration cuBLASLt accepts for the heuristic's algorithms
        (about a minute for the first shape, seconds after). docs/runtime.md and docs/performance.md ("GEMMs")
        have what each costs and gains; save_gemm_cache / load_gemm_cache keep the choices across processes.
    split_ln_max_rows: at runs of at most this many tokens (batch x sequence bucket), a Linear whose output
        only a LayerNorm reads (fp16 operands, fp32 statistics: hybrid plans) runs as K slices of
        split_ln_slice in one batched cuBLASLt call, and the LayerNorm sums the fp32 slices and adds the
        bias: more thread blocks for a GEMM of few rows and one kernel less (no split-K reduction). The
        Linear's output is then not rounded to fp16 before the LayerNorm (one rounding fewer than the
        plan's hybrid contract; results differ from the unsplit path by about that rounding). 0: never.
    split_ln_slice: the depth of those slices (K = 3072: 4 slices; K = 768: not split).

    Bad values raise InputError naming the option.
    """

    use_graphs: bool = True
    bucket: bool = True
    workspace_bytes: int = 4 << 20
    max_graphs: int = 256
    ffn_chunks: int = 2  # halves the FFN intermediate at the largest shapes
    fuse_residual: bool = True
    fuse_residual_min_rows: int = 1024
    ffn_chunk_min_rows: int = 4096
    gemm_search: str = GEMM_SEARCH_DEFAULTS["runtime"]
    split_ln_max_rows: int = 384
    split_ln_slice: int = 768

    def __post_init__(self):
        check_gemm_search(self.gemm_search, InputError)
        # each integer within its C++ field's range (native/include/trtrun/context_options.h: ffn_chunks an int,
        # the others 64-bit), so a huge value is this error rather than the binding's type mismatch
        for name, lo, hi in (("ffn_chunks", 1, _INT32_MAX), ("fuse_residual_min_rows", 1, _INT64_MAX),
                             ("ffn_chunk_min_rows", 1, _INT64_MAX), ("workspace_bytes", 0, _INT64_MAX),
                             ("split_ln_max_rows", 0, _INT64_MAX), ("max_graphs", 0, _INT64_MAX)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, got {v!r}")
            if v > hi:
                raise InputError(f"{name} must be at most {hi}, got {v!r}")
            object.__setattr__(self, name, int(v))  # numpy integers as Python's
        v = self.split_ln_slice
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 8 or v % 8:
            raise InputError(f"split_ln_slice must be a multiple of 8 (>= 8), got {v!r}")
        if v > _INT64_MAX:
            raise InputError(f"split_ln_slice must be at most {_INT64_MAX}, got {v!r}")
        object.__setattr__(self, "split_ln_slice", int(v))
        # the switches are taken as the extension's bool
        for name in ("use_graphs", "bucket", "fuse_residual"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    def replace(self, **overrides) -> "ContextOptions":
        """These options with some changed (checked again); TypeError for a name that is no option."""
        return dataclasses.replace(self, **overrides) if overrides else self


# The options the extension's Context takes (trtrun._C.ContextOptions, native/include/trtrun/context_options.h),
# set there by name: every field but `bucket`, which is Python's own (Context pads to the bucket before the run).
NATIVE_FIELDS = tuple(f.name for f in dataclasses.fields(ContextOptions) if f.name != "bucket")


def native_options(options: ContextOptions, ext):
    """The options as the extension `ext` (trtrun._C) takes them: its ContextOptions, each field set by name."""
    return ext.ContextOptions(**{name: getattr(options, name) for name in NATIVE_FIELDS})
