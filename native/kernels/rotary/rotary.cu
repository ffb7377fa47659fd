// native/kernels/rotary/rotary.cu: rotary embedding of Q and K in the packed qkv tensor, one thread per rotated pair.
#include "rotary.h"

#include "kernels/common/device.cuh"

#include <algorithm>
#include <string>

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

// One thread step: the pair (i, h2 + i) of one Q or K head of one token.
template <bool HALF>
__global__ void rotary_kernel(const void* src, DType src_t, void* dst, DType dst_t, const float* __restrict__ cos,
                              const float* __restrict__ sin, long long tokens, int seq, int qk_heads, int row_width,
                              int head_size, int h2) {
  const long long pairs = tokens * qk_heads * h2;
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < pairs;
       e += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(e % h2);
    const long long th = e / h2;
    const int head = static_cast<int>(th % qk_heads);
    const long long tok = th / qk_heads;
    const int s = static_cast<int>(tok % seq);
    const long long at = tok * row_width + static_cast<long long>(head) * head_size + i;
    const float x1 = load_f(src, src_t, at), x2 = load_f(src, src_t, at + h2);
    const float c = cos[static_cast<long long>(s) * h2 + i], n = sin[static_cast<long long>(s) * h2 + i];
    float o1, o2;
    if constexpr (HALF) {
      const __half a = __float2half_rn(x1), b = __float2half_rn(x2);
      const __half ch = __float2half_rn(c), nh = __float2half_rn(n);
      o1 = __half2float(__hsub_rn(__hmul_rn(a, ch), __hmul_rn(b, nh)));
      o2 = __half2float(__hadd_rn(__hmul_rn(b, ch), __hmul_rn(a, nh)));
    } else {
      o1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, n));
      o2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, n));
    }
    store_f(dst, dst_t, at, o1);
    store_f(dst, dst_t, at + h2, o2);
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
  TRTRUN_BOOL_SWITCH(half_math, HALF, [&] {
    rotary_kernel<HALF><<<grid_for(pairs), kThreads, 0, stream>>>(src, src_t, dst, dst_t, cos, sin, tokens, seq, qk,
                                                                 static_cast<int>(width), head_size, h2);
    TRTRUN_LAUNCH_CHECK();
  });
  if (src != dst) {
    rotary_copy_rest_kernel<<<grid_for(tokens * width), kThreads, 0, stream>>>(
        src, src_t, dst, dst_t, tokens, qk, static_cast<int>(width), head_size, rotary_dim);
    TRTRUN_LAUNCH_CHECK();
  }
}

}  // namespace trtrun
