// native/kernels/embedding/embedding.cu: one row group (warp or block) per token: three gathers, the sum, LN.
#include "embedding.h"

#include "kernels/common/rowops.cuh"

#include <string>

namespace trtrun {
namespace {

using namespace rowops;

// CH: chunks of VEC elements a thread holds (rowops::dispatch_row_share picks them).
template <int VEC, int CH, bool WARP_ROWS, bool HALF_MATH, bool LN>
__global__ void embedding_kernel(const int32_t* __restrict__ ids, const int32_t* __restrict__ token_types,
                                 const void* __restrict__ word, const void* __restrict__ position,
                                 const void* __restrict__ type_table, DType table_t,
                                 const void* __restrict__ gamma, const void* __restrict__ beta, DType param_t,
                                 void* __restrict__ y, DType y_t, long long rows, int seq, int n,
                                 int position_offset, float eps) {
  __shared__ float scratch[32];
  long long row;
  int t, G;
  if constexpr (WARP_ROWS) {
    row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
    t = threadIdx.x & 31;
    G = 32;
    if (row >= rows) return;
  } else {
    row = blockIdx.x;
    t = threadIdx.x;
    G = blockDim.x;
  }
  constexpr int C = CH;
  static_assert(CH * VEC <= ITEMS, "at most ITEMS floats a thread");
  const long long wrow = static_cast<long long>(ids[row]) * n;
  const long long prow = static_cast<long long>(row % seq + position_offset) * n;
  long long trow = -1;
  if (type_table != nullptr) trow = token_types != nullptr ? static_cast<long long>(token_types[row]) * n : 0;

  float v[CH * VEC];
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int idx = item_index<VEC>(c, t, G);
    if (idx < n) {
      float p[VEC], q[VEC];
      load_vec<VEC>(word, table_t, wrow + idx, &v[c * VEC]);
      // no position table (rotary or relative positions, applied in attention): the term is absent, not + 0
      if (position != nullptr) load_vec<VEC>(position, table_t, prow + idx, p);
      if (trow >= 0) load_vec<VEC>(type_table, table_t, trow + idx, q);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        if constexpr (HALF_MATH) {
          // word + position, rounded; + type, rounded (left to right, as the formula reads)
          __half e = __float2half_rn(v[c * VEC + k]);
          if (position != nullptr) e = __hadd(e, __float2half_rn(p[k]));
          if (trow >= 0) e = __hadd(e, __float2half_rn(q[k]));
          v[c * VEC + k] = __half2float(e);
        } else {
          float e = v[c * VEC + k];
          if (position != nullptr) e += p[k];
          if (trow >= 0) e += q[k];
          v[c * VEC + k] = e;
        }
      }
    }
  }
  const long long base = row * static_cast<long long>(n);
  if constexpr (LN) {
    char* yrow = static_cast<char*>(y) + base * (y_t == DType::F16 ? 2 : 4);
    layernorm_row<VEC, WARP_ROWS, HALF_MATH>(v, n, t, G, eps, gamma, beta, param_t, yrow, y_t, scratch);
  } else {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) store_vec<VEC>(y, y_t, base + idx, &v[c * VEC]);
    }
  }
}

}  // namespace

void launch_embedding(const int32_t* ids, const int32_t* token_types, const void* word, const void* position,
                      const void* type_table, DType table_t, const void* gamma, const void* beta, DType param_t,
                      void* y, DType y_t, int batch, int seq, int n, int position_offset, float eps,
                      Precision prec, cudaStream_t stream) {
  const char* op = "embedding";
  require(batch >= 0 && seq >= 0, op,
          "batch and seq must be >= 0, got batch=" + std::to_string(batch) + " seq=" + std::to_string(seq));
  require(n >= 1 && n <= MAX_N, op,
          "n (hidden size) must be in [1, " + std::to_string(MAX_N) + "], got " + std::to_string(n));
  require(position_offset >= 0, op, "position_offset must be >= 0, got " + std::to_string(position_offset));
  require(ids != nullptr && word != nullptr && y != nullptr, op, "ids, word and y must not be null");
  require(gamma == nullptr || beta != nullptr, op, "beta must be given with gamma");
  check_dtype(table_t, op, "table");
  check_dtype(y_t, op, "y");
  if (gamma) check_dtype(param_t, op, "gamma/beta");
  check_precision(prec, op);
  const long long rows = static_cast<long long>(batch) * seq;
  if (rows == 0) return;
  require(rows <= 0x7fffffffLL, op, "batch * seq too large");

  const RowLaunch L = plan_rows(rows, n);
  const bool vec = (n % 8 == 0) && aligned16(word) && aligned16(position) && aligned16(type_table) &&
                   aligned16(gamma) && aligned16(beta) && aligned16(y);
  const bool half_math = prec == Precision::FP16;
  dispatch_row_share(vec, L.warp_rows, n, [&](auto vec_c, auto ch_c, auto warp_c) {
    constexpr int V = decltype(vec_c)::value, CH = decltype(ch_c)::value;
    constexpr bool WARP_ROWS = decltype(warp_c)::value;
    TRTRUN_BOOL_SWITCH(half_math, HALF, [&] {
      TRTRUN_BOOL_SWITCH(gamma != nullptr, LN, [&] {
        embedding_kernel<V, CH, WARP_ROWS, HALF, LN><<<static_cast<unsigned>(L.blocks), L.threads, 0, stream>>>(
            ids, token_types, word, position, type_table, table_t, gamma, beta, param_t, y, y_t, rows, seq, n,
            position_offset, eps);
        TRTRUN_LAUNCH_CHECK();
      });
    });
  });
}

}  // namespace trtrun
