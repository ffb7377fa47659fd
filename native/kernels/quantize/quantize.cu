// native/kernels/quantize/quantize.cu: per-row E4M3 quantization (one block per row, grid-stride over rows; the row
// is read twice, the second time from L1/L2) and the elementwise rescale of an unscaled fp8 GEMM product.
#include "quantize.h"

#include <cuda_fp8.h>

#include "kernels/common/rowops.cuh"

#include <algorithm>
#include <cstdint>
#include <string>

namespace trtrun {
namespace {

constexpr float kE4M3Max = 448.0f;  // the largest finite float8_e4m3fn
constexpr int kThreads = 128;

// max that keeps a NaN once met (fmaxf drops it): trtrun/fp8.py takes np.max, which propagates NaN, so a row holding
// a NaN gets a NaN scale and every code of that row is NaN there too.
__device__ __forceinline__ float nan_max(float m, float a) { return (a > m || a != a) ? a : m; }

__device__ __forceinline__ float block_amax(float v, float* shared) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? shared[lane] : 0.0f;  // 0 is neutral: every |x| >= 0
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) shared[32] = v;
  }
  __syncthreads();
  v = shared[32];
  __syncthreads();  // every thread has read it before the next row's reduction writes shared again
  return v;
}

// cvt.rn.satfinite.e4m3: round to nearest even, finite values and infinities past 448 saturate, NaN stays NaN.
// That is np.clip(v, -448, 448).astype(float8_e4m3fn) for every input, NaN included (a clip with fminf/fmaxf
// would turn NaN into 448).
__device__ __forceinline__ uint8_t to_e4m3(float v) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

// VEC = 8: 16-byte loads of fp16 (two of fp32) and 8-byte stores of codes (k % 8 == 0, pointers aligned); else 1.
template <int VEC>
__global__ void quantize_kernel(const void* __restrict__ x, DType x_t, const float* __restrict__ x_scale,
                                uint8_t* __restrict__ q, float* __restrict__ scales, long long rows, int k) {
  __shared__ float shared[33];
  const int nv = k / VEC;
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const long long base = r * k;
    uint8_t* qr = q + base;
    float s;
    if (x_scale != nullptr) {
      s = *x_scale;
    } else {
      float m = 0.0f;
      for (int i = threadIdx.x; i < nv; i += blockDim.x) {
        float v[VEC];
        rowops::load_vec<VEC>(x, x_t, base + static_cast<long long>(i) * VEC, v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) m = nan_max(m, fabsf(v[j]));
      }
      const float amax = block_amax(m, shared);
      s = amax == 0.0f ? 1.0f : amax / kE4M3Max;  // IEEE fp32 division (no fast-math in this build)
    }
    if (scales != nullptr && threadIdx.x == 0) scales[r] = s;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
      float v[VEC];
      rowops::load_vec<VEC>(x, x_t, base + static_cast<long long>(i) * VEC, v);
      if constexpr (VEC == 8) {
        union {
          uint2 u;
          uint8_t b[8];
        } out;
#pragma unroll
        for (int j = 0; j < 8; ++j) out.b[j] = to_e4m3(v[j] / s);
        *reinterpret_cast<uint2*>(qr + static_cast<long long>(i) * 8) = out.u;
      } else {
        qr[i] = to_e4m3(v[0] / s);
      }
    }
  }
}

__global__ void rescale_kernel(float* __restrict__ acc, const float* __restrict__ sx, const float* __restrict__ sw,
                               bool per_channel, long long rows, int n) {
  const long long total = rows * n;
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long r = e / n;
    const int c = static_cast<int>(e - r * n);
    acc[e] = acc[e] * (sx[r] * sw[per_channel ? c : 0]);
  }
}

bool aligned(const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

unsigned grid_for(long long items) {
  return static_cast<unsigned>(std::max<long long>(1, std::min<long long>(items, 132LL * 32)));
}

}  // namespace

void launch_quantize_fp8(const void* x, DType x_t, const float* x_scale, void* q, float* scales, long long rows,
                         int k, cudaStream_t stream) {
  const char* op = "quantize_fp8";
  check_dtype(x_t, op, "x");
  require(rows >= 0, op, "rows must be >= 0, got " + std::to_string(rows));
  require(k >= 1, op, "k must be >= 1, got " + std::to_string(k));
  require(x_scale != nullptr || scales != nullptr, op, "per-token scales (no x_scale) need a scales buffer");
  if (rows == 0) return;
  require(x != nullptr && q != nullptr, op, "x and q must not be null");
  const bool vec = k % 8 == 0 && aligned(x, 16) && aligned(q, 8);
  const unsigned grid = grid_for(rows);
  auto* qq = static_cast<uint8_t*>(q);
  if (vec) quantize_kernel<8><<<grid, kThreads, 0, stream>>>(x, x_t, x_scale, qq, scales, rows, k);
  else quantize_kernel<1><<<grid, kThreads, 0, stream>>>(x, x_t, x_scale, qq, scales, rows, k);
  TRTRUN_LAUNCH_CHECK();
}

void launch_fp8_rescale(float* acc, const float* sx, const float* sw, bool sw_per_channel, long long rows, int n,
                        cudaStream_t stream) {
  const char* op = "fp8_rescale";
  require(rows >= 0 && n >= 1, op, "rows must be >= 0 and n >= 1");
  if (rows == 0) return;
  require(acc != nullptr && sx != nullptr && sw != nullptr, op, "acc, sx and sw must not be null");
  const long long total = rows * n;
  rescale_kernel<<<grid_for((total + 255) / 256), 256, 0, stream>>>(acc, sx, sw, sw_per_channel, rows, n);
  TRTRUN_LAUNCH_CHECK();
}

}  // namespace trtrun
