// native/kernels/layernorm/layernorm.cu: residual add + LayerNorm, one warp (n <= 1024) or one block per row.
#include "layernorm.h"

#include "kernels/common/rowops.cuh"

#include <cstdio>
#include <cstdlib>
#include <string>

namespace trtrun {
namespace {

using namespace rowops;

// x as unsummed split-K slices (launch_layernorm_parts); count 0: x is a plain tensor.
struct Parts {
  const float* p = nullptr;
  int count = 0;
  long long stride = 0;
  const void* bias = nullptr;
  DType bias_t = DType::F32;
};

// CH: chunks of VEC elements a thread holds (rowops::dispatch_row_share picks them).
template <int VEC, int CH, bool WARP_ROWS, bool HALF_STATS, bool PREFETCH, bool PARTS>
__global__ void layernorm_kernel(const void* __restrict__ x, DType x_t, const void* __restrict__ residual,
                                 DType r_t, const void* __restrict__ gamma, const void* __restrict__ beta,
                                 DType param_t, void* __restrict__ y, DType y_t, void* __restrict__ sum_out,
                                 DType sum_t, long long rows, int n, float eps, Parts parts) {
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
  // Issue every load before using any (x and residual interleaved), so several are in flight.
  if constexpr (PARTS) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) load_vec<VEC>(parts.p, DType::F32, base + idx, &v[c * VEC]);
    }
    for (int s = 1; s < parts.count; ++s) {
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int idx = item_index<VEC>(c, t, G);
        if (idx < n) {
          float q[VEC];
          load_vec<VEC>(parts.p + s * parts.stride, DType::F32, base + idx, q);
#pragma unroll
          for (int k = 0; k < VEC; ++k) v[c * VEC + k] += q[k];
        }
      }
    }
    if (parts.bias != nullptr) {
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const int idx = item_index<VEC>(c, t, G);
        if (idx < n) {
          float q[VEC];
          load_vec<VEC>(parts.bias, parts.bias_t, idx, q);
#pragma unroll
          for (int k = 0; k < VEC; ++k) v[c * VEC + k] += q[k];
        }
      }
    }
  } else {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) load_vec<VEC>(x, x_t, base + idx, &v[c * VEC]);
    }
  }
  if (residual != nullptr) {
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
  layernorm_row<VEC, WARP_ROWS, HALF_STATS, PREFETCH>(v, n, t, G, eps, gamma, beta, param_t, yrow, y_t, scratch);
}

template <int VEC, int CH, bool WARP_ROWS, bool HALF_STATS, bool PREFETCH, bool PARTS>
void launch_impl(const RowLaunch& L, const void* x, DType x_t, const void* residual, DType r_t,
                 const void* gamma, const void* beta, DType param_t, void* y, DType y_t, void* sum_out,
                 DType sum_t, long long rows, int n, float eps, const Parts& parts, cudaStream_t stream) {
  layernorm_kernel<VEC, CH, WARP_ROWS, HALF_STATS, PREFETCH, PARTS>
      <<<static_cast<unsigned>(L.blocks), L.threads, 0, stream>>>(x, x_t, residual, r_t, gamma, beta, param_t, y,
                                                                  y_t, sum_out, sum_t, rows, n, eps, parts);
  TRTRUN_LAUNCH_CHECK();
}

void layernorm_common(const void* x, DType x_t, const void* residual, DType r_t, const void* gamma,
                      const void* beta, DType param_t, void* y, DType y_t, void* sum_out, DType sum_t, int rows,
                      int n, float eps, Precision prec, const Parts& parts, cudaStream_t stream) {
  const char* op = "layernorm";
  require(rows >= 0, op, "rows must be >= 0, got " + std::to_string(rows));
  require(n >= 1, op, "n (hidden size) must be >= 1, got " + std::to_string(n));
  require(n <= MAX_N, op, "n (hidden size) must be <= " + std::to_string(MAX_N) + ", got " + std::to_string(n));
  require(eps >= 0.f, op, "epsilon must be >= 0");
  require(x != nullptr && gamma != nullptr && beta != nullptr && y != nullptr, op,
          "x, gamma, beta and y must not be null");
  check_dtype(x_t, op, "x");
  check_dtype(param_t, op, "gamma/beta");
  check_dtype(y_t, op, "y");
  if (residual) check_dtype(r_t, op, "residual");
  if (sum_out) check_dtype(sum_t, op, "sum");
  check_precision(prec, op);
  if (rows == 0) return;
  require(rows <= 0x7fffffffLL, op, "too many rows");

  const bool with_parts = parts.count > 0;
  if (with_parts) {
    require(prec != Precision::FP16, op, "split-K slices need fp32 statistics (fp32 or hybrid precision)");
    require(parts.bias == nullptr || parts.bias_t == DType::F16 || parts.bias_t == DType::F32, op,
            "bias must be float32/float16");
    require(parts.stride >= static_cast<long long>(rows) * n, op, "slices overlap (part_stride < rows * n)");
  }
  const RowLaunch L = plan_rows(rows, n);
  const bool vec = (n % 8 == 0) && aligned16(x) && aligned16(residual) && aligned16(gamma) && aligned16(beta) &&
                   aligned16(y) && aligned16(sum_out) &&
                   (!with_parts || (aligned16(parts.p) && parts.stride % 4 == 0 && aligned16(parts.bias)));
  const bool half_stats = prec == Precision::FP16;
  // gamma/beta before the reductions (rowops::layernorm_row) up to 2048 rows: there one warp per row fills
  // at most ~4 blocks of 128 threads per multiprocessor, so the doubled registers cost no occupancy.
  // TRTRUN_LN_PREFETCH_ROWS overrides the 2048 (measurements only; read once).
  static const long long prefetch_rows = [] {
    const char* e = std::getenv("TRTRUN_LN_PREFETCH_ROWS");
    long long v = 2048;
    if (e != nullptr && std::sscanf(e, "%lld", &v) != 1) v = 2048;
    return v;
  }();
  const bool prefetch = rows <= prefetch_rows;
  dispatch_row_share(vec, L.warp_rows, n, [&](auto vec_c, auto ch_c, auto warp_c) {
    constexpr int V = decltype(vec_c)::value, CH = decltype(ch_c)::value;
    constexpr bool WARP_ROWS = decltype(warp_c)::value;
    TRTRUN_BOOL_SWITCH(prefetch, PREFETCH, [&] {
      if (with_parts) {
        launch_impl<V, CH, WARP_ROWS, false, PREFETCH, true>(L, x, x_t, residual, r_t, gamma, beta, param_t, y, y_t,
                                                             sum_out, sum_t, rows, n, eps, parts, stream);
      } else {
        TRTRUN_BOOL_SWITCH(half_stats, HALF, [&] {
          launch_impl<V, CH, WARP_ROWS, HALF, PREFETCH, false>(L, x, x_t, residual, r_t, gamma, beta, param_t, y,
                                                               y_t, sum_out, sum_t, rows, n, eps, parts, stream);
        });
      }
    });
  });
}

}  // namespace

void launch_layernorm(const void* x, DType x_t, const void* residual, DType r_t, const void* gamma,
                      const void* beta, DType param_t, void* y, DType y_t, void* sum_out, DType sum_t, int rows,
                      int n, float eps, Precision prec, cudaStream_t stream) {
  layernorm_common(x, x_t, residual, r_t, gamma, beta, param_t, y, y_t, sum_out, sum_t, rows, n, eps, prec, Parts{},
                   stream);
}

void launch_layernorm_parts(const float* parts, int n_parts, long long part_stride, const void* bias, DType bias_t,
                            const void* residual, DType r_t, const void* gamma, const void* beta, DType param_t,
                            void* y, DType y_t, void* sum_out, DType sum_t, int rows, int n, float eps,
                            Precision prec, cudaStream_t stream) {
  require(n_parts >= 1, "layernorm", "n_parts must be >= 1, got " + std::to_string(n_parts));
  Parts p;
  p.p = parts;
  p.count = n_parts;
  p.stride = part_stride;
  p.bias = bias;
  p.bias_t = bias_t;
  layernorm_common(parts, DType::F32, residual, r_t, gamma, beta, param_t, y, y_t, sum_out, sum_t, rows, n, eps, prec,
                   p, stream);
}

}  // namespace trtrun
