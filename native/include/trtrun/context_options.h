// native/include/trtrun/context_options.h: a Context's options, each with its default and the measurement behind
// it. trtrun/runtime/options.py (ContextOptions) states the same defaults (tests/runtime/test_native_host.py checks
// they agree) and sets these fields by name (the binding: trtrun._C.ContextOptions). No CUDA and no Python in here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "trtrun/types.h"

namespace trtrun {

struct ContextOptions {
  bool use_graphs = true;
  // cuBLASLt workspace. 4 MiB: on an H200 the fastest algorithms for BERT-base/GPT-2 shapes (M = 128..16384)
  // needed at most 768 KiB of it (tools/cuda/gemm_explore.cpp, docs/performance.md); 32 MiB bought no speed.
  size_t workspace_bytes = size_t(4) << 20;
  size_t max_graphs = 256;  // captured graphs kept (least recently used dropped)
  // Feed-forward blocks (a Linear whose output only feeds the next Linear) run in row chunks of
  // ceil(rows_max / ffn_chunks) rows, so the wide intermediate [rows, 4*hidden] is planned at chunk size:
  // at most this many chunks at the profile's largest shape, one chunk (no change) up to half of it. 1: off.
  int ffn_chunks = 2;
  // ...but only where a chunk holds at least this many rows: smaller GEMMs cost more than the memory is worth.
  // At 128-512 rows a cuBLASLt GEMM takes 5-10 us, mostly fixed cost, so two 256-row chunks cost ~+6 us per
  // Linear over one 512-row GEMM, ~+0.14 ms for GPT-2 at 1 x 512. Seen on an H200: 0.76-0.80 ms chunked, in a
  // process that also had the old GEMM tuning, against 0.59 ms unchunked. At 8192-row chunks the time was
  // unchanged (docs/performance.md, "GEMMs").
  int64_t ffn_chunk_min_rows = 4096;
  // Linear -> LayerNorm with an fp32 residual in a plan with fp16 GEMM operands: the residual is added in the GEMM
  // epilogue, at runs of at least fuse_residual_min_rows rows (below that, cuBLASLt's out-of-place kernels cost
  // more than the LayerNorm saves: GPT-2 1x512 +19 us, 32x128 -105 us on an H200; ModernBERT-base 8x128, 1024 rows,
  // -5% on an H100; docs/runtime.md).
  bool fuse_residual = true;
  int64_t fuse_residual_min_rows = 1024;
  // How each GEMM shape's cuBLASLt algorithm is chosen on its first run (native/runtime/gemm.h, GemmSearch).
  GemmSearch gemm_search = GemmSearch::Focused;
  // Linear -> LayerNorm at runs of at most split_ln_max_rows tokens (0: never): the GEMM runs as split_ln_slice-deep
  // K slices in one strided-batched cuBLASLt call writing unsummed fp32 slices, and the LayerNorm sums them and
  // adds the bias (launch_layernorm_parts): more thread blocks for a GEMM of few rows, and no separate split-K
  // reduction kernel or bias epilogue. fp16 GEMM operands and fp32 LayerNorm statistics only.
  int64_t split_ln_max_rows = 384;
  int64_t split_ln_slice = 768;
};

// InputError naming the option when a value cannot work (ffn_chunks < 1). Context's binding calls it before any
// device work; the Python side checks every option before that, with its own messages.
void check_options(const ContextOptions& o);

}  // namespace trtrun
