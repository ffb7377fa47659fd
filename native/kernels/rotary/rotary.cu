// native/kernels/rotary/rotary.cu: rotary embedding of Q and K in the packed qkv tensor, four rotated pairs a thread
// where the shapes allow (vector loads), else one; and the query/key norms that come before it.
#include "rotary.h"

#include "kernels/common/device.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

namespace trtrun {
namespace {

constexpr int kThreads = 256;
constexpr long long kMaxBlocks = 132LL * 16;  // an H200 several times over; grid-stride loops cover the rest

__device__ __forceinline__ float load_f(const void* p, DType t, long long i) {
  return t == DType::F16 ? __half2float(static_cast<const __half*>(p)[i]) : static_cast<const float*>(p)[i];
}
__device__ __forceinline__ void store_f(void* p, DType t, long long i, float v) {
  if (t == DType::F16) static_cast<__half*>(p)[i] = __float2half_rn(v);
  else static_cast<float*>(p)[i] = v;
}

// V consecutive elements at i (V = 4: i a multiple of 4 and the address 8-byte (fp16) / 16-byte (fp32) aligned).
template <int V>
__device__ __forceinline__ void load_v(const void* p, DType t, long long i, float (&v)[V]) {
  if constexpr (V == 4) {
    if (t == DType::F16) {
      const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const __half*>(p) + i);
      const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
      const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
      v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
    } else {
      const float4 f = *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = load_f(p, t, i + j);
  }
}
template <int V>
__device__ __forceinline__ void store_v(void* p, DType t, long long i, const float (&v)[V]) {
  if constexpr (V == 4) {
    if (t == DType::F16) {
      union {
        uint2 u;
        __half2 h[2];
      } out;
      out.h[0] = __floats2half2_rn(v[0], v[1]);
      out.h[1] = __floats2half2_rn(v[2], v[3]);
      *reinterpret_cast<uint2*>(static_cast<__half*>(p) + i) = out.u;
    } else {
      *reinterpret_cast<float4*>(static_cast<float*>(p) + i) = make_float4(v[0], v[1], v[2], v[3]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) store_f(p, t, i + j, v[j]);
  }
}

// One thread step: the pairs (i + j, h2 + i + j), j < V, of one Q or K head of one token. V = 4 where h2, the head
// size and the row width are multiples of 4 and the buffers 16-byte aligned: one vector access per operand instead
// of four, and the index arithmetic once per four pairs; the same arithmetic per pair. Idx: the step index's type,
// 32-bit wherever the steps (plus one grid's stride) fit, since the three divisions that split it into token, head
// and pair are a library routine of ~70 instructions each in 64 bits against a handful in 32.
template <bool HALF, int V, typename Idx>
__global__ void rotary_kernel(const void* src, DType src_t, void* dst, DType dst_t, const float* __restrict__ cos,
                              const float* __restrict__ sin, long long tokens, int seq, int qk_heads, int row_width,
                              int head_size, int h2) {
  const Idx hv = static_cast<Idx>(h2 / V), qk = static_cast<Idx>(qk_heads), sq = static_cast<Idx>(seq);
  const Idx steps = static_cast<Idx>(tokens) * qk * hv;
  for (Idx e = blockIdx.x * static_cast<Idx>(blockDim.x) + threadIdx.x; e < steps;
       e += static_cast<Idx>(gridDim.x) * blockDim.x) {
    const Idx th = e / hv;
    const int i = static_cast<int>(e - th * hv) * V;
    const Idx tok = th / qk;
    const int head = static_cast<int>(th - tok * qk);
    const int s = static_cast<int>(tok - tok / sq * sq);
    const long long at =
        static_cast<long long>(tok) * row_width + static_cast<long long>(head) * head_size + i;
    float x1[V], x2[V], c[V], n[V], o1[V], o2[V];
    load_v<V>(src, src_t, at, x1);
    load_v<V>(src, src_t, at + h2, x2);
    load_v<V>(cos, DType::F32, static_cast<long long>(s) * h2 + i, c);
    load_v<V>(sin, DType::F32, static_cast<long long>(s) * h2 + i, n);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if constexpr (HALF) {
        const __half a = __float2half_rn(x1[j]), b = __float2half_rn(x2[j]);
        const __half ch = __float2half_rn(c[j]), nh = __float2half_rn(n[j]);
        o1[j] = __half2float(__hsub_rn(__hmul_rn(a, ch), __hmul_rn(b, nh)));
        o2[j] = __half2float(__hadd_rn(__hmul_rn(b, ch), __hmul_rn(a, nh)));
      } else {
        o1[j] = __fsub_rn(__fmul_rn(x1[j], c[j]), __fmul_rn(x2[j], n[j]));
        o2[j] = __fadd_rn(__fmul_rn(x2[j], c[j]), __fmul_rn(x1[j], n[j]));
      }
    }
    store_v<V>(dst, dst_t, at, o1);
    store_v<V>(dst, dst_t, at + h2, o2);
  }
}

// Out of place: every element the rotation does not write, copied (converted to dst_t).
__global__ void rotary_copy_rest_kernel(const void* __restrict__ src, DType src_t, void* __restrict__ dst,
                                        DType dst_t, long long tokens, int qk_heads, int row_width, int head_size,
                                        int rotary_dim) {
  const long long count = tokens * row_width;
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int col = static_cast<int>(e % row_width);
    if (col / head_size < qk_heads && col % head_size < rotary_dim) continue;
    store_f(dst, dst_t, e, load_f(src, src_t, e));
  }
}

unsigned grid_for(long long work) {
  return static_cast<unsigned>(std::max(1LL, std::min((work + kThreads - 1) / kThreads, kMaxBlocks)));
}

// ---- the per-head normed pass (q_norm / k_norm of D values, RMS or LayerNorm): one warp per (token, Q or K head)
// row, lane l holding the row's elements l, 32 + l, 64 + l, ... (kNormSlots of them, zeros past D), so a head of up to
// kQkNormMaxHead values is read once, reduced in registers and written once.
constexpr int kNormWarps = 4;  // rows per 128-thread block
constexpr int kNormSlots = kQkNormMaxHead / 32;
static_assert(kNormSlots == 8, "the fp16 sum below halves 8 slots");

// The fp16 sum of a warp's row as the reference's pairwise tree (_tree_sum_fp16: halves added) wherever D is a power
// of two >= 16: the slots halve first (slot c + slot c + w: elements 32c + l and 32(c + w) + l, the reference's first
// levels), then the warp's xor tree halves the 32 lanes; adding the zero slots past D is exact. Other D: another
// order of the same fp16 additions. a is consumed.
__device__ __forceinline__ float half_row_sum(__half (&a)[kNormSlots]) {
#pragma unroll
  for (int w = kNormSlots / 2; w >= 1; w >>= 1) {
#pragma unroll
    for (int c = 0; c < w; ++c) a[c] = __hadd_rn(a[c], a[c + w]);
  }
  return __half2float(dev::warp_sum_h(a[0]));
}

// The division, mean and sqrt as numpy's float16 computes them: in fp32, rounded once to fp16 (correctly rounded fp16
// results; __hdiv and hsqrt go through approximate fp32 instructions and can miss by an ulp). n is exact in fp16.
__device__ __forceinline__ __half half_div(float a, float b) { return __float2half_rn(__fdiv_rn(a, b)); }
__device__ __forceinline__ float half_sd(__half var, float eps) {
  return __half2float(__float2half_rn(__fsqrt_rn(__half2float(__hadd_rn(var, __float2half_rn(eps))))));
}

// Column i of a head row y (shared memory) after the rotation, as rotary_kernel computes it (the same products and
// sums, rounded the same way); columns from 2 * h2 on pass unchanged.
template <bool HALF>
__device__ __forceinline__ float rotated(const float* y, int i, int h2, int s, const float* __restrict__ cos,
                                         const float* __restrict__ sin) {
  if (i >= 2 * h2) return y[i];
  const int j = i < h2 ? i : i - h2;  // the table column; the pair is (j, h2 + j)
  const float x1 = y[j], x2 = y[h2 + j];
  const float cs = cos[static_cast<long long>(s) * h2 + j], sn = sin[static_cast<long long>(s) * h2 + j];
  if constexpr (HALF) {
    const __half a = __float2half_rn(x1), b = __float2half_rn(x2);
    const __half ch = __float2half_rn(cs), nh = __float2half_rn(sn);
    return i < h2 ? __half2float(__hsub_rn(__hmul_rn(a, ch), __hmul_rn(b, nh)))
                  : __half2float(__hadd_rn(__hmul_rn(b, ch), __hmul_rn(a, nh)));
  } else {
    return i < h2 ? __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn)) : __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
  }
}

// AFTER: the row rotated first and normalised after (HunYuan's order); else normalised, then rotated.
template <bool HALF, bool LAYER, bool AFTER>
__global__ void __launch_bounds__(kNormWarps * 32)
    rotary_qk_norm_kernel(const void* src, DType src_t, void* dst, DType dst_t, const float* __restrict__ cos,
                          const float* __restrict__ sin, QkNorm norm, long long rows, int seq, int heads,
                          int qk_heads, int row_width, int head_size, int h2) {
  // The normalised row: the rotation pairs column i with column i +- R/2, which another lane holds.
  __shared__ float normed[kNormWarps][kQkNormMaxHead];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* y = normed[warp];
  const long long step = static_cast<long long>(gridDim.x) * kNormWarps;
  const float n = static_cast<float>(head_size);
  // r is the same for the warp's 32 lanes: the loop, the shuffles and __syncwarp are warp-uniform
  for (long long r = static_cast<long long>(blockIdx.x) * kNormWarps + warp; r < rows; r += step) {
    const int head = static_cast<int>(r % qk_heads);
    const long long tok = r / qk_heads;
    const int s = static_cast<int>(tok % seq);
    const long long base = tok * row_width + static_cast<long long>(head) * head_size;
    const bool is_q = head < heads;
    // gains (and biases) shared by the heads, or this head's row of them
    const long long goff = norm.gains_per_head ? static_cast<long long>(is_q ? head : head - heads) * head_size : 0;
    const void* gamma = is_q ? norm.q_gamma : norm.k_gamma;
    const void* beta = is_q ? norm.q_beta : norm.k_beta;
    float v[kNormSlots];
#pragma unroll
    for (int c = 0; c < kNormSlots; ++c) {
      const int i = c * 32 + lane;
      v[c] = i < head_size ? load_f(src, src_t, base + i) : 0.f;
    }
    if constexpr (AFTER) {  // the stored values rotated (rotated() reads the pair's other lane from y), then normed
#pragma unroll
      for (int c = 0; c < kNormSlots; ++c)
        if (c * 32 + lane < head_size) y[c * 32 + lane] = v[c];
      __syncwarp();
#pragma unroll
      for (int c = 0; c < kNormSlots; ++c)
        if (c * 32 + lane < head_size) v[c] = rotated<HALF>(y, c * 32 + lane, h2, s, cos, sin);
      __syncwarp();  // every lane has read y before the norm writes it
    }
    if constexpr (!HALF) {
      // fp32 statistics as the rmsnorm and layernorm kernels' (their contract with ref_rmsnorm / ref_layernorm): sums
      // by the warp's xor tree (another order than numpy's pairwise sum: a few ulps), squares by fmaf, the means by a
      // true division, sqrt correctly rounded, then d / sd * gamma (+ beta) in the reference's order, each rounded.
      float mean = 0.f;
      if constexpr (LAYER) {
        float t = 0.f;
#pragma unroll
        for (int c = 0; c < kNormSlots; ++c) t += v[c];  // the zeros past D add nothing
        mean = __fdiv_rn(dev::warp_sum(t), n);
#pragma unroll
        for (int c = 0; c < kNormSlots; ++c) v[c] = c * 32 + lane < head_size ? __fsub_rn(v[c], mean) : 0.f;
      }
      float q = 0.f;
#pragma unroll
      for (int c = 0; c < kNormSlots; ++c) q = fmaf(v[c], v[c], q);
      const float sd = __fsqrt_rn(__fadd_rn(__fdiv_rn(dev::warp_sum(q), n), norm.eps));
#pragma unroll
      for (int c = 0; c < kNormSlots; ++c) {
        const int i = c * 32 + lane;
        if (i < head_size) {
          float o = __fmul_rn(__fdiv_rn(v[c], sd), load_f(gamma, norm.gamma_t, goff + i));
          if (LAYER && beta != nullptr) o = __fadd_rn(o, load_f(beta, norm.gamma_t, goff + i));
          y[i] = o;
        }
      }
    } else {
      // Every step in fp16 (ref_rmsnorm's / ref_layernorm's fp16 mode): x rounded, (the sum, the mean, each
      // deviation,) each square, their sum, the mean (/ half(D)), + eps, sqrt, the division, * gamma (, + beta).
      __half x[kNormSlots], t[kNormSlots];
#pragma unroll
      for (int c = 0; c < kNormSlots; ++c) x[c] = __float2half_rn(v[c]);
      if constexpr (LAYER) {
#pragma unroll
        for (int c = 0; c < kNormSlots; ++c) t[c] = x[c];
        const __half mean = half_div(half_row_sum(t), n);
#pragma unroll
        for (int c = 0; c < kNormSlots; ++c)
          x[c] = c * 32 + lane < head_size ? __hsub_rn(x[c], mean) : __float2half_rn(0.f);
      }
#pragma unroll
      for (int c = 0; c < kNormSlots; ++c) t[c] = __hmul_rn(x[c], x[c]);
      const float sd = half_sd(half_div(half_row_sum(t), n), norm.eps);
#pragma unroll
      for (int c = 0; c < kNormSlots; ++c) {
        const int i = c * 32 + lane;
        if (i < head_size) {
          const __half g = __float2half_rn(load_f(gamma, norm.gamma_t, goff + i));
          __half o = __hmul_rn(half_div(__half2float(x[c]), sd), g);
          if (LAYER && beta != nullptr) o = __hadd_rn(o, __float2half_rn(load_f(beta, norm.gamma_t, goff + i)));
          y[i] = __half2float(o);
        }
      }
    }
    __syncwarp();
    // The rotation of the normalised values (columns from R on pass as normalised), or, AFTER, those values as they are
#pragma unroll
    for (int c = 0; c < kNormSlots; ++c) {
      const int i = c * 32 + lane;
      if (i < head_size) store_f(dst, dst_t, base + i, AFTER ? y[i] : rotated<HALF>(y, i, h2, s, cos, sin));
    }
    __syncwarp();  // y is this warp's next row's
  }
}

// ---- the whole-part RMSNorm (OLMo-2): one block per (token, Q or K part) row of n = heads*D or kv_heads*D values,
// read twice (the sum of squares, then the scaling; the second read mostly from L1/L2), written once into dst. The
// rotation follows as its own pass on dst (rotary_kernel in place): it needs the normalised values of other heads'
// threads.
constexpr int kWholeThreads = 256;

template <bool HALF>
__global__ void __launch_bounds__(kWholeThreads)
    qk_rms_whole_kernel(const void* src, DType src_t, void* dst, DType dst_t, QkNorm norm, int heads, int kv_heads,
                        int row_width, int head_size) {
  __shared__ float part_sums[kWholeThreads / 32];
  const long long tok = blockIdx.x >> 1;
  const bool is_q = (blockIdx.x & 1) == 0;
  const int n = (is_q ? heads : kv_heads) * head_size;
  const long long base = tok * row_width + (is_q ? 0 : static_cast<long long>(heads) * head_size);
  const void* gamma = is_q ? norm.q_gamma : norm.k_gamma;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float total;
  if constexpr (!HALF) {
    // fp32: squares by fmaf per thread, then the warp and block trees (another order than numpy's pairwise sum)
    float q = 0.f;
    for (int i = threadIdx.x; i < n; i += kWholeThreads) {
      const float x = load_f(src, src_t, base + i);
      q = fmaf(x, x, q);
    }
    q = dev::warp_sum(q);
    if (lane == 0) part_sums[warp] = q;
    __syncthreads();
    total = 0.f;
#pragma unroll
    for (int w = 0; w < kWholeThreads / 32; ++w) total += part_sums[w];
    const float sd = __fsqrt_rn(__fadd_rn(__fdiv_rn(total, static_cast<float>(n)), norm.eps));
    for (int i = threadIdx.x; i < n; i += kWholeThreads)
      store_f(dst, dst_t, base + i, __fmul_rn(__fdiv_rn(load_f(src, src_t, base + i), sd),
                                              load_f(gamma, norm.gamma_t, i)));
  } else {
    // fp16: every square and every addition an fp16 operation (per thread in order, then the trees), the mean,
    // + eps, sqrt, the division and * gamma each rounded to fp16, as the rmsnorm kernel's fp16 mode
    __half q = __float2half_rn(0.f);
    for (int i = threadIdx.x; i < n; i += kWholeThreads) {
      const __half x = __float2half_rn(load_f(src, src_t, base + i));
      q = __hadd_rn(q, __hmul_rn(x, x));
    }
    q = dev::warp_sum_h(q);
    if (lane == 0) part_sums[warp] = __half2float(q);  // exact: an fp16 value
    __syncthreads();
    __half t = __float2half_rn(0.f);
#pragma unroll
    for (int w = 0; w < kWholeThreads / 32; ++w) t = __hadd_rn(t, __float2half_rn(part_sums[w]));
    const float sd = half_sd(half_div(__half2float(t), static_cast<float>(n)), norm.eps);
    for (int i = threadIdx.x; i < n; i += kWholeThreads) {
      const __half x = __float2half_rn(load_f(src, src_t, base + i));
      const __half g = __float2half_rn(load_f(gamma, norm.gamma_t, i));
      store_f(dst, dst_t, base + i, __half2float(__hmul_rn(half_div(__half2float(x), sd), g)));
    }
  }
}

}  // namespace

void launch_rotary(const void* src, DType src_t, void* dst, DType dst_t, const float* cos, const float* sin,
                   int batch, int seq, int heads, int kv_heads, int head_size, int rotary_dim, bool half_math,
                   cudaStream_t stream) {
  const char* op = "rotary";
  require(batch >= 0 && seq >= 0, op,
          "batch and seq must be >= 0, got batch=" + std::to_string(batch) + " seq=" + std::to_string(seq));
  require(heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0, op,
          "heads must be a multiple of kv_heads (both >= 1), got heads=" + std::to_string(heads) +
              " kv_heads=" + std::to_string(kv_heads));
  require(head_size >= 2, op, "head_size must be >= 2, got " + std::to_string(head_size));
  require(rotary_dim >= 2 && rotary_dim % 2 == 0 && rotary_dim <= head_size, op,
          "rotary_dim must be even, >= 2 and at most head_size " + std::to_string(head_size) + ", got " +
              std::to_string(rotary_dim));
  check_dtype(src_t, op, "src");
  check_dtype(dst_t, op, "dst");
  const long long tokens = static_cast<long long>(batch) * seq;
  if (tokens == 0) return;
  require(src != nullptr && dst != nullptr && cos != nullptr && sin != nullptr, op,
          "src, dst, cos and sin must not be null");
  require(src != dst || src_t == dst_t, op, "in place needs one dtype for src and dst");
  const long long width = static_cast<long long>(heads + 2 * kv_heads) * head_size;
  require(width <= 0x7fffffffLL, op, "row too wide");
  const int qk = heads + kv_heads, h2 = rotary_dim / 2;
  const long long pairs = tokens * qk * h2;
  const auto a16 = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) == 0; };
  const bool vec = h2 % 4 == 0 && head_size % 4 == 0 && width % 4 == 0 && a16(src) && a16(dst) && a16(cos) && a16(sin);
  // 32-bit step indices where the steps and one grid's stride stay below 2^31 (no wraparound in the loop)
  const bool narrow = pairs + 1LL * kThreads * kMaxBlocks < (1LL << 31);
  TRTRUN_BOOL_SWITCH(half_math, HALF, [&] {
    TRTRUN_BOOL_SWITCH(narrow, NARROW, [&] {
      using Idx = std::conditional_t<NARROW, unsigned, unsigned long long>;
      if (vec)
        rotary_kernel<HALF, 4, Idx><<<grid_for(pairs / 4), kThreads, 0, stream>>>(
            src, src_t, dst, dst_t, cos, sin, tokens, seq, qk, static_cast<int>(width), head_size, h2);
      else
        rotary_kernel<HALF, 1, Idx><<<grid_for(pairs), kThreads, 0, stream>>>(
            src, src_t, dst, dst_t, cos, sin, tokens, seq, qk, static_cast<int>(width), head_size, h2);
      TRTRUN_LAUNCH_CHECK();
    });
  });
  if (src != dst) {
    rotary_copy_rest_kernel<<<grid_for(tokens * width), kThreads, 0, stream>>>(
        src, src_t, dst, dst_t, tokens, qk, static_cast<int>(width), head_size, rotary_dim);
    TRTRUN_LAUNCH_CHECK();
  }
}


void launch_rotary_qk_norm(const void* src, DType src_t, void* dst, DType dst_t, const float* cos, const float* sin,
                           const QkNorm& norm, int batch, int seq, int heads, int kv_heads, int head_size,
                           int rotary_dim, bool half_math, cudaStream_t stream) {
  const char* op = "rotary_qk_norm";
  require(batch >= 0 && seq >= 0, op,
          "batch and seq must be >= 0, got batch=" + std::to_string(batch) + " seq=" + std::to_string(seq));
  require(heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0, op,
          "heads must be a multiple of kv_heads (both >= 1), got heads=" + std::to_string(heads) +
              " kv_heads=" + std::to_string(kv_heads));
  require(!(norm.whole && (norm.layer || norm.gains_per_head)), op,
          "the whole-part form is an RMSNorm with one gain per column (not layer, not gains_per_head)");
  require(norm.layer || (norm.q_beta == nullptr && norm.k_beta == nullptr), op, "biases belong to the layer form");
  require(!(norm.after_rotary && norm.whole), op, "a norm after the rotary is per head (not the whole-part form)");
  if (norm.whole)
    require(head_size >= 1, op, "head_size must be >= 1, got " + std::to_string(head_size));
  else
    require(head_size >= 1 && head_size <= kQkNormMaxHead, op,
            "head_size must be 1.." + std::to_string(kQkNormMaxHead) + " (one warp holds a head), got " +
                std::to_string(head_size));
  require(rotary_dim == 0 || (rotary_dim >= 2 && rotary_dim % 2 == 0 && rotary_dim <= head_size), op,
          "rotary_dim must be 0 (no rotation) or even, >= 2 and at most head_size " + std::to_string(head_size) +
              ", got " + std::to_string(rotary_dim));
  require(std::isfinite(norm.eps) && norm.eps >= 0.f, op, "epsilon must be finite and >= 0");
  check_dtype(src_t, op, "src");
  check_dtype(dst_t, op, "dst");
  check_dtype(norm.gamma_t, op, "gamma");
  const long long width = static_cast<long long>(heads + 2 * kv_heads) * head_size;
  require(width <= 0x7fffffffLL, op, "row too wide");
  const long long tokens = static_cast<long long>(batch) * seq;
  if (tokens == 0) return;
  require(src != nullptr && dst != nullptr && norm.q_gamma != nullptr && norm.k_gamma != nullptr, op,
          "src, dst, q_gamma and k_gamma must not be null");
  require(rotary_dim == 0 || (cos != nullptr && sin != nullptr), op,
          "cos and sin must not be null when rotary_dim > 0");
  require(src != dst || src_t == dst_t, op, "in place needs one dtype for src and dst");
  const int qk = heads + kv_heads;
  if (norm.whole) {
    require(tokens <= 0x3fffffffLL, op, "too many tokens for one block per Q and K part");
    TRTRUN_BOOL_SWITCH(half_math, HALF, [&] {
      qk_rms_whole_kernel<HALF><<<static_cast<unsigned>(2 * tokens), kWholeThreads, 0, stream>>>(
          src, src_t, dst, dst_t, norm, heads, kv_heads, static_cast<int>(width), head_size);
      TRTRUN_LAUNCH_CHECK();
    });
    if (rotary_dim > 0) launch_rotary(dst, dst_t, dst, dst_t, cos, sin, batch, seq, heads, kv_heads, head_size,
                                      rotary_dim, half_math, stream);
  } else {
    const long long rows = tokens * qk;
    const unsigned blocks = static_cast<unsigned>(std::max(
        1LL, std::min((rows + kNormWarps - 1) / kNormWarps, kMaxBlocks * (kThreads / (kNormWarps * 32)))));
    TRTRUN_BOOL_SWITCH(half_math, HALF, [&] {
      TRTRUN_BOOL_SWITCH(norm.layer, LAYER, [&] {
        TRTRUN_BOOL_SWITCH(norm.after_rotary, AFTER, [&] {
          rotary_qk_norm_kernel<HALF, LAYER, AFTER><<<blocks, kNormWarps * 32, 0, stream>>>(
              src, src_t, dst, dst_t, cos, sin, norm, rows, seq, heads, qk, static_cast<int>(width), head_size,
              rotary_dim / 2);
          TRTRUN_LAUNCH_CHECK();
        });
      });
    });
  }
  if (src != dst) {  // V: every Q and K column was written above
    rotary_copy_rest_kernel<<<grid_for(tokens * width), kThreads, 0, stream>>>(
        src, src_t, dst, dst_t, tokens, qk, static_cast<int>(width), head_size, head_size);
    TRTRUN_LAUNCH_CHECK();
  }
}

}  // namespace trtrun
