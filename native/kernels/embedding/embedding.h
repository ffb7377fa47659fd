// native/kernels/embedding/embedding.h: word + position + token-type gather, LayerNorm optionally fused
// (docs/plan-format.md, Embedding op).
#pragma once

#include <cuda_runtime.h>

#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace trtrun {

// e[b,s,:] = word[ids[b,s]] + position[s + position_offset] + type_table[token_types ? token_types[b,s] : 0]
// (the position term only when position is not null: models with rotary or relative positions have none; the type
// term only when type_table is not null); y = LN(e) * gamma + beta when gamma is not null, else e.
// ids, token_types: int32 [batch, seq] on the device, already range-checked by the caller (this launcher
// does not know V, P or T). Tables [*, n] in table_t; gamma/beta [n] in param_t; y [batch, seq, n] in y_t.
// prec FP32/HYBRID: sums and statistics in fp32; FP16: sums and statistics in fp16 (each step rounded).
void launch_embedding(const int32_t* ids, const int32_t* token_types /*nullable*/,
                      const void* word, const void* position /*nullable*/, const void* type_table /*nullable*/,
                      DType table_t,
                      const void* gamma /*nullable*/, const void* beta, DType param_t,
                      void* y, DType y_t, int batch, int seq, int n, int position_offset,
                      float eps, Precision prec, cudaStream_t stream);

}  // namespace trtrun
