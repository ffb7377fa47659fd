// native/kernels/gelu/gelu.cu: elementwise GELU, 16-byte accesses where the pointer allows, grid-stride loop.
#include "gelu.h"

#include "kernels/common/device.cuh"

#include <cstdint>
#include <algorithm>
#include <string>

namespace trtrun {
namespace {

template <bool TANH>
__device__ __forceinline__ float gelu(float x) {
  if constexpr (TANH) {
    // full-precision tanhf (not tanh.approx): the op is specified in fp32
    const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
    const float k1 = 0.044715f;
    return 0.5f * x * (1.f + tanhf(k0 * (x + k1 * x * x * x)));
  } else {
    return 0.5f * x * (1.f + erff(x * 0.7071067811865476f));
  }
}

// 8 elements per thread per step: one 16-byte access (fp16) or two (fp32).
template <typename T, bool TANH>
__global__ void gelu_vec_kernel(T* __restrict__ y, long long nvec) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < nvec; i += stride) {
    if constexpr (sizeof(T) == 2) {
      uint4* p = reinterpret_cast<uint4*>(y) + i;
      uint4 raw = *p;
      __half2* h = reinterpret_cast<__half2*>(&raw);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 f = __half22float2(h[k]);
        h[k] = __floats2half2_rn(gelu<TANH>(f.x), gelu<TANH>(f.y));
      }
      *p = raw;
    } else {
      float4* p = reinterpret_cast<float4*>(y) + 2 * i;
      float4 a = p[0], b = p[1];
      a = make_float4(gelu<TANH>(a.x), gelu<TANH>(a.y), gelu<TANH>(a.z), gelu<TANH>(a.w));
      b = make_float4(gelu<TANH>(b.x), gelu<TANH>(b.y), gelu<TANH>(b.z), gelu<TANH>(b.w));
      p[0] = a;
      p[1] = b;
    }
  }
}

template <typename T, bool TANH>
__global__ void gelu_scalar_kernel(T* __restrict__ y, long long begin, long long count) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = begin + static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    y[i] = dev::from_f32<T>(gelu<TANH>(dev::to_f32<T>(y[i])));
  }
}

template <typename T, bool TANH>
void run(void* yv, long long count, cudaStream_t stream) {
  T* y = static_cast<T*>(yv);
  constexpr int threads = 256;
  const bool aligned = (reinterpret_cast<uintptr_t>(y) & 15u) == 0;
  const long long nvec = aligned ? count / 8 : 0;
  // enough blocks to fill the GPU several times over; the loops stride past that
  const long long max_blocks = 132LL * 16;
  if (nvec > 0) {
    const long long blocks = std::min((nvec + threads - 1) / threads, max_blocks);
    gelu_vec_kernel<T, TANH><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(y, nvec);
    TRTRUN_LAUNCH_CHECK();
  }
  const long long rest = count - nvec * 8;
  if (rest > 0) {
    const long long blocks = std::min((rest + threads - 1) / threads, max_blocks);
    gelu_scalar_kernel<T, TANH><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(y, nvec * 8, count);
    TRTRUN_LAUNCH_CHECK();
  }
}

}  // namespace

void launch_gelu(void* y, DType y_t, long long count, bool tanh_approx, cudaStream_t stream) {
  const char* op = "gelu";
  require(count >= 0, op, "count must be >= 0, got " + std::to_string(count));
  check_dtype(y_t, op, "y");
  if (count == 0) return;
  require(y != nullptr, op, "y must not be null");
  TRTRUN_BOOL_SWITCH(tanh_approx, TANH, [&] {
    if (y_t == DType::F16) run<__half, TANH>(y, count, stream);
    else run<float, TANH>(y, count, stream);
  });
}

}  // namespace trtrun
