// native/kernels/rmsnorm/rmsnorm.cu: residual add + RMSNorm, one warp (n <= 1024) or one block per row (rowops layout).
#include "rmsnorm.h"

#include "kernels/common/rowops.cuh"

#include <string>

namespace trtrun {
namespace {

using namespace rowops;

// CH: chunks of VEC elements a thread holds (rowops::dispatch_row_share picks them).
// AFTER: the residual is added to the normalised value (y = residual + RMSNorm(x)) instead of to x before it.
template <int VEC, int CH, bool WARP_ROWS, bool HALF_STATS, bool AFTER>
__global__ void rmsnorm_kernel(const void* __restrict__ x, DType x_t, const void* __restrict__ residual, DType r_t,
                               const void* __restrict__ gamma, DType gamma_t, void* __restrict__ y, DType y_t,
                               void* __restrict__ sum_out, DType sum_t, long long rows, int n, float eps) {
  __shared__ float scratch[32];
  long long row;
  int t, G;
  if constexpr (WARP_ROWS) {
    row = static_cast<long long>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
    t = threadIdx.x & 31;
    G = 32;
    if (row >= rows) return;  // no block-wide barrier in this mode
  } else {
    row = blockIdx.x;
    t = threadIdx.x;
    G = blockDim.x;
  }
  constexpr int C = CH;
  constexpr int NI = CH * VEC;
  static_assert(NI <= ITEMS, "at most ITEMS floats a thread");
  const long long base = row * static_cast<long long>(n);
  float v[NI];
#pragma unroll
  for (int c = 0; c < C; ++c) {
    const int idx = item_index<VEC>(c, t, G);
    if (idx < n) load_vec<VEC>(x, x_t, base + idx, &v[c * VEC]);
  }
  if (!AFTER && residual != nullptr) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
        float r[VEC];
        load_vec<VEC>(residual, r_t, base + idx, r);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          if constexpr (HALF_STATS) {
            v[c * VEC + k] = __half2float(__hadd(__float2half_rn(v[c * VEC + k]), __float2half_rn(r[k])));
          } else {
            v[c * VEC + k] += r[k];
          }
        }
      }
    }
  } else if constexpr (HALF_STATS) {
#pragma unroll
    for (int i = 0; i < NI; ++i) v[i] = __half2float(__float2half_rn(v[i]));
  }
  if (sum_out != nullptr) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) store_vec<VEC>(sum_out, sum_t, base + idx, &v[c * VEC]);
    }
  }
  char* yrow = static_cast<char*>(y) + base * (y_t == DType::F16 ? 2 : 4);
  if constexpr (!HALF_STATS) {
    float q = 0.f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) q = fmaf(v[c * VEC + k], v[c * VEC + k], q);
      }
    }
    const float ms = group_sum<WARP_ROWS>(q, scratch) / static_cast<float>(n);
    // sqrt then a division, as the reference computes s / sqrt(ms + eps) (rsqrt would differ by an ulp or two)
    const float d = sqrtf(ms + eps);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
        float g[VEC], o[VEC];
        load_vec<VEC>(gamma, gamma_t, idx, g);
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = __fmul_rn(__fdiv_rn(v[c * VEC + k], d), g[k]);
        if constexpr (AFTER) {  // the fp32 norm plus the residual, one fp32 add, then the one rounding to y
          float r[VEC];
          load_vec<VEC>(residual, r_t, base + idx, r);
#pragma unroll
          for (int k = 0; k < VEC; ++k) o[k] = __fadd_rn(o[k], r[k]);
        }
        store_vec<VEC>(yrow, y_t, idx, o);
      }
    }
  } else {
    // Every step in half: the squares, their sum, the mean, + eps, sqrt, the division, * gamma. A sum of squares
    // beyond 65504 is inf and the row becomes 0 (s / inf), as naive fp16 gives and the reference shows.
    __half* hscratch = reinterpret_cast<__half*>(scratch);
    __half q = __float2half(0.f);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const __half s = __float2half_rn(v[c * VEC + k]);
          q = __hadd_rn(q, __hmul_rn(s, s));  // _rn: no contraction into an fma (each step rounded)
        }
      }
    }
    q = group_sum_h<WARP_ROWS>(q, hscratch);
    // n as fp16 (exact up to 2048), as the reference divides by float16(n)
    const __half ms = __hdiv(q, __float2half_rn(static_cast<float>(n)));
    const __half sd = hsqrt(__hadd(ms, __float2half_rn(eps)));
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
        float g[VEC], o[VEC];
        load_vec<VEC>(gamma, gamma_t, idx, g);
        float r[VEC];
        if constexpr (AFTER) load_vec<VEC>(residual, r_t, base + idx, r);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          __half h = __hmul_rn(__hdiv(__float2half_rn(v[c * VEC + k]), sd), __float2half_rn(g[k]));
          if constexpr (AFTER) h = __hadd_rn(h, __float2half_rn(r[k]));  // the fp16 norm plus the residual in fp16
          o[k] = __half2float(h);
        }
        store_vec<VEC>(yrow, y_t, idx, o);
      }
    }
  }
}

}  // namespace

void launch_rmsnorm(const void* x, DType x_t, const void* residual, DType r_t, const void* gamma, DType gamma_t,
                    void* y, DType y_t, void* sum_out, DType sum_t, int rows, int n, float eps, Precision prec,
                    cudaStream_t stream, bool residual_after) {
  const char* op = "rmsnorm";
  require(rows >= 0, op, "rows must be >= 0, got " + std::to_string(rows));
  require(n >= 1, op, "n (hidden size) must be >= 1, got " + std::to_string(n));
  require(n <= MAX_N, op, "n (hidden size) must be <= " + std::to_string(MAX_N) + ", got " + std::to_string(n));
  require(eps >= 0.f, op, "epsilon must be >= 0");
  require(x != nullptr && gamma != nullptr && y != nullptr, op, "x, gamma and y must not be null");
  check_dtype(x_t, op, "x");
  check_dtype(gamma_t, op, "gamma");
  check_dtype(y_t, op, "y");
  if (residual) check_dtype(r_t, op, "residual");
  if (sum_out) check_dtype(sum_t, op, "sum");
  check_precision(prec, op);
  require(!residual_after || (residual != nullptr && sum_out == nullptr), op,
          "residual_after needs a residual and no sum output");
  if (rows == 0) return;

  const RowLaunch L = plan_rows(rows, n);
  const bool vec = (n % 8 == 0) && aligned16(x) && aligned16(residual) && aligned16(gamma) && aligned16(y) &&
                   aligned16(sum_out);
  const bool half_stats = prec == Precision::FP16;
  dispatch_row_share(vec, L.warp_rows, n, [&](auto vec_c, auto ch_c, auto warp_c) {
    constexpr int V = decltype(vec_c)::value, CH = decltype(ch_c)::value;
    constexpr bool WARP_ROWS = decltype(warp_c)::value;
    TRTRUN_BOOL_SWITCH(half_stats, HALF, [&] {
      TRTRUN_BOOL_SWITCH(residual_after, AFTER, [&] {
        rmsnorm_kernel<V, CH, WARP_ROWS, HALF, AFTER><<<static_cast<unsigned>(L.blocks), L.threads, 0, stream>>>(
            x, x_t, residual, r_t, gamma, gamma_t, y, y_t, sum_out, sum_t, rows, n, eps);
        TRTRUN_LAUNCH_CHECK();
      });
    });
  });
}

}  // namespace trtrun
