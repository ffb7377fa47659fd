// native/kernels/common/rowops.cuh: row-wise building blocks shared by layernorm and embedding.
//
// A "row group" of G threads owns one row of n elements and keeps it in registers (ITEMS floats per
// thread), so every element is read from global memory once. G = 32 (one warp per row, several rows
// per block) when n <= 32 * ITEMS; otherwise the whole block (G = blockDim.x <= 1024) owns one row.
// VEC = 8 moves 8 consecutive elements per access (one 16-byte load for fp16, two for fp32) and is used
// when n % 8 == 0 and every pointer is 16-byte aligned; VEC = 1 handles any n.
#pragma once

#include "kernels/common/device.cuh"

#include <cstdint>
#include <type_traits>

namespace trtrun {
namespace rowops {

constexpr int ITEMS = 32;            // floats per thread kept in registers
constexpr int MAX_N = 1024 * ITEMS;  // largest row a 1024-thread block can hold

// ---- loads and stores of VEC consecutive elements of a tensor whose dtype is known only at run time ----
template <int VEC>
__device__ __forceinline__ void load_vec(const void* base, DType t, long long idx, float* out) {
  if constexpr (VEC == 8) {
    if (t == DType::F16) {
      const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const __half*>(base) + idx);
      const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
      }
    } else {
      const float4* p = reinterpret_cast<const float4*>(static_cast<const float*>(base) + idx);
      const float4 a = p[0], b = p[1];
      out[0] = a.x; out[1] = a.y; out[2] = a.z; out[3] = a.w;
      out[4] = b.x; out[5] = b.y; out[6] = b.z; out[7] = b.w;
    }
  } else {
    static_assert(VEC == 1, "VEC is 1 or 8");
    out[0] = (t == DType::F16) ? __half2float(static_cast<const __half*>(base)[idx])
                               : static_cast<const float*>(base)[idx];
  }
}

template <int VEC>
__device__ __forceinline__ void store_vec(void* base, DType t, long long idx, const float* v) {
  if constexpr (VEC == 8) {
    if (t == DType::F16) {
      uint4 raw;
      __half2* h = reinterpret_cast<__half2*>(&raw);
#pragma unroll
      for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
      *reinterpret_cast<uint4*>(static_cast<__half*>(base) + idx) = raw;
    } else {
      float4* p = reinterpret_cast<float4*>(static_cast<float*>(base) + idx);
      p[0] = make_float4(v[0], v[1], v[2], v[3]);
      p[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
  } else {
    if (t == DType::F16) static_cast<__half*>(base)[idx] = __float2half_rn(v[0]);
    else static_cast<float*>(base)[idx] = v[0];
  }
}

// ---- reductions over a row group ----
// WARP_ROWS: the group is one warp. Otherwise it is the whole block; `scratch` holds >= 32 entries.
template <bool WARP_ROWS>
__device__ __forceinline__ float group_sum(float v, float* scratch) {
  v = dev::warp_sum(v);
  if constexpr (WARP_ROWS) {
    return v;
  } else {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    __syncthreads();  // scratch may still be read from a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? scratch[lane] : 0.f;
    return dev::warp_sum(t);
  }
}

// Same in fp16: every addition rounded to half (the FP16 precision mode's statistics).
template <bool WARP_ROWS>
__device__ __forceinline__ __half group_sum_h(__half v, __half* scratch) {
  v = dev::warp_sum_h(v);
  if constexpr (WARP_ROWS) {
    return v;
  } else {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    __half t = lane < nwarps ? scratch[lane] : __float2half(0.f);
    return dev::warp_sum_h(t);
  }
}

// Element index of item c*VEC of this thread (thread t of a group of G threads).
template <int VEC>
__device__ __forceinline__ int item_index(int c, int t, int G) {
  return (c * G + t) * VEC;
}

// ---- LayerNorm of a row held in registers, written to y ----
// v[ITEMS]: the row's values (this thread's share; elements with index >= n are ignored).
// HALF_STATS: statistics in fp16 (Precision::FP16), each step rounded to half; else fp32.
// PREFETCH: gamma and beta are loaded into registers before the reductions, so their latency overlaps them
// instead of following them: worth it at a few hundred rows, where the kernel's time is a chain of such
// latencies; it doubles the registers of the one-warp-per-row variant (~70 -> ~140), which halves the resident
// blocks, so not where there are enough rows to fill the GPU (layernorm's launcher decides).
// NI: floats this thread holds (ITEMS, or fewer where dispatch_row_share sized the share to the row); NI / VEC
// chunks.
template <int VEC, bool WARP_ROWS, bool HALF_STATS, bool PREFETCH = false, int NI = ITEMS>
__device__ __forceinline__ void layernorm_row(float (&v)[NI], int n, int t, int G, float eps,
                                              const void* gamma, const void* beta, DType param_t,
                                              void* y_row, DType y_t, float* scratch) {
  static_assert(NI % VEC == 0 && NI <= ITEMS, "a thread's share is whole chunks, at most ITEMS floats");
  constexpr int C = NI / VEC;
  constexpr int GB = PREFETCH ? NI : VEC;  // registers for gamma/beta: the whole row share, or one chunk
  float g[GB], b[GB];
  if constexpr (PREFETCH) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
        load_vec<VEC>(gamma, param_t, idx, &g[c * VEC]);
        load_vec<VEC>(beta, param_t, idx, &b[c * VEC]);
      }
    }
  }
  // gamma/beta of chunk c: from the prefetched registers, or loaded now into g/b[0..VEC)
  auto params = [&](int c, int idx) -> int {
    if constexpr (PREFETCH) {
      return c * VEC;
    } else {
      load_vec<VEC>(gamma, param_t, idx, g);
      load_vec<VEC>(beta, param_t, idx, b);
      return 0;
    }
  };
  if constexpr (!HALF_STATS) {
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) s += v[c * VEC + k];
      }
    }
    const float mean = group_sum<WARP_ROWS>(s, scratch) / static_cast<float>(n);
    float q = 0.f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = v[c * VEC + k] - mean;
          q = fmaf(d, d, q);
        }
      }
    }
    const float var = group_sum<WARP_ROWS>(q, scratch) / static_cast<float>(n);
    const float rstd = rsqrtf(var + eps);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
        const int p = params(c, idx);
        float o[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) o[k] = fmaf((v[c * VEC + k] - mean) * rstd, g[p + k], b[p + k]);
        store_vec<VEC>(y_row, y_t, idx, o);
      }
    }
  } else {
    // Every step in half: the sum, the mean, the deviations, their squares, the variance, sqrt, /,
    // the normalised value, * gamma, + beta. Overflow (|deviation| > 256 squares past 65504) shows as
    // inf/NaN, which is what the FP16 mode is for.
    __half* hscratch = reinterpret_cast<__half*>(scratch);
    __half s = __float2half(0.f);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) s = __hadd(s, __float2half_rn(v[c * VEC + k]));
      }
    }
    s = group_sum_h<WARP_ROWS>(s, hscratch);
    // mean = sum / n rounded once to half (n exact, as numpy's float16 division does)
    // n itself as fp16 (exact up to 2048), as the reference divides by float16(n)
    const float n_h = __half2float(__float2half_rn(static_cast<float>(n)));
    const __half mean = __hdiv(s, __float2half_rn(n_h));
    __half q = __float2half(0.f);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const __half d = __hsub(__float2half_rn(v[c * VEC + k]), mean);
          q = __hadd(q, __hmul(d, d));
        }
      }
    }
    q = group_sum_h<WARP_ROWS>(q, hscratch);
    const __half var = __hdiv(q, __float2half_rn(n_h));
    // var + eps with eps rounded to fp16 first (BERT's 1e-12 becomes 0: naive fp16 as it is)
    const __half ve = __hadd(var, __float2half_rn(eps));
    const __half sd = hsqrt(ve);
#pragma unroll
    for (int c = 0; c < C; ++c) {
      const int idx = item_index<VEC>(c, t, G);
      if (idx < n) {
        const int p = params(c, idx);
        float o[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const __half d = __hsub(__float2half_rn(v[c * VEC + k]), mean);
          const __half nrm = __hdiv(d, sd);
          const __half r = __hadd(__hmul(nrm, __float2half_rn(g[p + k])), __float2half_rn(b[p + k]));
          o[k] = __half2float(r);
        }
        store_vec<VEC>(y_row, y_t, idx, o);
      }
    }
  }
}

// ---- host side: how a row of n elements is split ----
struct RowLaunch {
  bool warp_rows;  // one warp per row (rows_per_block rows per block) or one block per row
  int threads;     // block size
  int rows_per_block;
  long long blocks;
};

inline RowLaunch plan_rows(long long rows, int n) {
  RowLaunch r{};
  if (n <= 32 * ITEMS) {
    r.warp_rows = true;
    r.rows_per_block = 4;
    r.threads = 128;
    r.blocks = (rows + 3) / 4;
  } else {
    r.warp_rows = false;
    r.rows_per_block = 1;
    int g = 64;
    while (g * ITEMS < n) g *= 2;  // n <= MAX_N checked by the caller, so g <= 1024
    r.threads = g;
    r.blocks = rows;
  }
  return r;
}

inline bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Calls f(VecC, ChunksC, WarpC) with std::integral_constant<int, VEC>, std::integral_constant<int, CH> and
// std::bool_constant<WARP_ROWS>: the thread's share of a row is CH chunks of VEC elements (CH * VEC floats of
// registers). A warp per row with 16-byte accesses holds only the 256-element chunks its row needs (n = 768:
// 3 chunks, 24 floats); with the full ITEMS = 32 floats the row kernels took ~70 registers, 7 blocks of 128
// threads a multiprocessor, so BERT-base's 4096 rows (1024 blocks) needed a second wave on 132 multiprocessors.
// Other layouts keep ITEMS floats a thread.
template <typename F>
void dispatch_row_share(bool vec, bool warp_rows, int n, F&& f) {
  using V1 = std::integral_constant<int, 1>;
  using V8 = std::integral_constant<int, 8>;
  using Warp = std::true_type;
  using Block = std::false_type;
  if (!vec) {
    if (warp_rows) f(V1{}, std::integral_constant<int, ITEMS>{}, Warp{});
    else f(V1{}, std::integral_constant<int, ITEMS>{}, Block{});
  } else if (!warp_rows) {
    f(V8{}, std::integral_constant<int, ITEMS / 8>{}, Block{});
  } else if (n <= 256) {
    f(V8{}, std::integral_constant<int, 1>{}, Warp{});
  } else if (n <= 512) {
    f(V8{}, std::integral_constant<int, 2>{}, Warp{});
  } else if (n <= 768) {
    f(V8{}, std::integral_constant<int, 3>{}, Warp{});
  } else {
    f(V8{}, std::integral_constant<int, ITEMS / 8>{}, Warp{});
  }
}

}  // namespace rowops
}  // namespace trtrun
