// native/runtime/runtime_ops.cu: the runtime's own small kernels (see runtime_ops.h).
#include <cuda_fp16.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "runtime/runtime_ops.h"

namespace trtrun {
namespace {

constexpr int kThreads = 256;

inline unsigned grid_for(size_t count) {
  size_t blocks = (count + kThreads - 1) / kThreads;
  // grid-stride loops below: cap the grid, the loop covers the rest
  if (blocks > 65535ull * 8) blocks = 65535ull * 8;
  if (blocks == 0) blocks = 1;
  return static_cast<unsigned>(blocks);
}

template <typename T> __device__ __forceinline__ float load_f32(const T* p, size_t i);
template <> __device__ __forceinline__ float load_f32<float>(const float* p, size_t i) { return p[i]; }
template <> __device__ __forceinline__ float load_f32<__half>(const __half* p, size_t i) {
  return __half2float(p[i]);
}
template <typename T> __device__ __forceinline__ void store_f32(T* p, size_t i, float v);
template <> __device__ __forceinline__ void store_f32<float>(float* p, size_t i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void store_f32<__half>(__half* p, size_t i, float v) {
  p[i] = __float2half_rn(v);
}
template <typename T> __device__ __forceinline__ float round_to(float v);
template <> __device__ __forceinline__ float round_to<float>(float v) { return v; }
template <> __device__ __forceinline__ float round_to<__half>(float v) { return __half2float(__float2half_rn(v)); }

template <typename S, typename D>
__global__ void cast_kernel(const S* __restrict__ src, D* __restrict__ dst, size_t count) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x)
    store_f32<D>(dst, i, load_f32<S>(src, i));
}

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

// v = acc (times sx[r] * sw[c] for an unscaled fp8 product: the scale product first, as launch_fp8_rescale and
// trtrun/fp8.py do), + bias, rounded to Y, activation in fp32 from that. __fmul_rn/__fadd_rn keep the multiply
// and the add two roundings (no FMA contraction), so the fused pass gives the two separate passes' bits.
template <typename B, typename Y>
__device__ __forceinline__ float bias_act_one(float v, const B* __restrict__ bias, int64_t c, const float* sx,
                                              const float* sw, bool sw_per_channel, int64_t r, int act) {
  if (sx != nullptr) v = __fmul_rn(v, __fmul_rn(sx[r], sw[sw_per_channel ? c : 0]));
  if (bias != nullptr) v = __fadd_rn(v, load_f32<B>(bias, static_cast<size_t>(c)));
  v = round_to<Y>(v);
  if (act == static_cast<int>(Activation::GeluErf)) v = gelu_erf(v);
  else if (act == static_cast<int>(Activation::GeluTanh)) v = gelu_tanh(v);
  return v;
}

template <typename B, typename Y>
__global__ void bias_act_kernel(const float* __restrict__ acc, const B* __restrict__ bias, Y* __restrict__ y,
                                int64_t rows, int64_t cols, int act, const float* __restrict__ sx,
                                const float* __restrict__ sw, bool sw_per_channel) {
  size_t count = (size_t)rows * (size_t)cols;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
    const int64_t r = static_cast<int64_t>(i / (size_t)cols), c = static_cast<int64_t>(i % (size_t)cols);
    store_f32<Y>(y, i, bias_act_one<B, Y>(acc[i], bias, c, sx, sw, sw_per_channel, r, act));
  }
}

// Four columns a thread (cols % 4 == 0, acc 16-byte and y 8/16-byte aligned): one 16-byte load and one 8- or
// 16-byte store, one row/column division per four values.
template <typename B, typename Y>
__global__ void bias_act_vec4_kernel(const float* __restrict__ acc, const B* __restrict__ bias, Y* __restrict__ y,
                                     int64_t rows, int64_t cols, int act, const float* __restrict__ sx,
                                     const float* __restrict__ sw, bool sw_per_channel) {
  const size_t quads = (size_t)rows * (size_t)cols / 4;
  const size_t qcols = (size_t)cols / 4;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < quads; i += (size_t)gridDim.x * blockDim.x) {
    const int64_t r = static_cast<int64_t>(i / qcols), c = static_cast<int64_t>(i % qcols) * 4;
    const float4 a = reinterpret_cast<const float4*>(acc)[i];
    float v[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = bias_act_one<B, Y>(v[j], bias, c + j, sx, sw, sw_per_channel, r, act);
    if constexpr (sizeof(Y) == 4) {
      reinterpret_cast<float4*>(y)[i] = make_float4(v[0], v[1], v[2], v[3]);
    } else {
      union {
        uint2 u;
        __half2 h[2];
      } out;
      out.h[0] = __floats2half2_rn(v[0], v[1]);
      out.h[1] = __floats2half2_rn(v[2], v[3]);
      reinterpret_cast<uint2*>(y)[i] = out.u;
    }
  }
}

struct StageJobs {
  StageJob job[kMaxStageJobs];
};

// One grid-stride pass over [batch, seq_bucket], every job at each position.
__global__ void stage_inputs_kernel(StageJobs jobs, int n_jobs, int batch, int seq, int seq_bucket,
                                    int32_t* error_flag) {
  const size_t count = (size_t)batch * (size_t)seq_bucket;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
    const int b = static_cast<int>(i / seq_bucket);
    const int s = static_cast<int>(i % seq_bucket);
    for (int j = 0; j < n_jobs; ++j) {
      const StageJob& jb = jobs.job[j];
      int32_t out = 0;
      if (s < seq) {
        if (jb.kind == StageKind::ValidMask) {
          out = 1;
        } else if (jb.kind != StageKind::Zeros) {
          const size_t at = (size_t)b * jb.src_row_stride + s;
          const int64_t v = jb.src_is_int64 ? static_cast<const int64_t*>(jb.src)[at]
                                            : static_cast<int64_t>(static_cast<const int32_t*>(jb.src)[at]);
          if (jb.kind == StageKind::Mask) {
            out = v != 0 ? 1 : 0;
          } else if (v < 0 || v >= jb.limit) {
            if (error_flag != nullptr) *error_flag = 1;
          } else {
            out = static_cast<int32_t>(v);
          }
        }
      }
      jb.dst[i] = out;
    }
  }
}

__global__ void probe_kernel(int* p) {
  if (p != nullptr) *p = 0;
}

}  // namespace

void launch_cast(const void* src, DType src_t, void* dst, DType dst_t, size_t count, cudaStream_t stream) {
  require(is_float(src_t) && is_float(dst_t), "cast", "float32/float16 only");
  if (count == 0) return;
  if (src_t == dst_t) {
    TRTRUN_CUDA_CHECK(cudaMemcpyAsync(dst, src, count * elem_size(src_t), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  if (src_t == DType::F32)
    cast_kernel<float, __half><<<grid_for(count), kThreads, 0, stream>>>(static_cast<const float*>(src),
                                                                          static_cast<__half*>(dst), count);
  else
    cast_kernel<__half, float><<<grid_for(count), kThreads, 0, stream>>>(static_cast<const __half*>(src),
                                                                          static_cast<float*>(dst), count);
  TRTRUN_LAUNCH_CHECK();
}

void launch_bias_act(const float* acc, const void* bias, DType bias_t, void* y, DType y_t, int64_t rows,
                     int64_t cols, Activation act, cudaStream_t stream, const float* sx, const float* sw,
                     bool sw_per_channel) {
  require(is_float(y_t), "bias_act", "output must be float32/float16");
  require(bias == nullptr || is_float(bias_t), "bias_act", "bias must be float32/float16");
  require((sx == nullptr) == (sw == nullptr), "bias_act", "fp8 scales come as a pair (sx and sw) or not at all");
  size_t count = (size_t)rows * (size_t)cols;
  if (count == 0) return;
  const int a = static_cast<int>(act);
  const auto at = [](const void* p, uintptr_t n) { return (reinterpret_cast<uintptr_t>(p) & (n - 1)) == 0; };
  const bool vec = cols % 4 == 0 && at(acc, 16) && at(y, y_t == DType::F32 ? 16 : 8);
  const unsigned g = grid_for(vec ? count / 4 : count);
  const bool b16 = bias != nullptr && bias_t == DType::F16;
  auto go = [&](auto* bias_p, auto* y_p) {
    using Bt = std::remove_const_t<std::remove_pointer_t<decltype(bias_p)>>;
    using Yt = std::remove_pointer_t<decltype(y_p)>;
    if (vec)
      bias_act_vec4_kernel<Bt, Yt><<<g, kThreads, 0, stream>>>(acc, bias_p, y_p, rows, cols, a, sx, sw,
                                                               sw_per_channel);
    else
      bias_act_kernel<Bt, Yt><<<g, kThreads, 0, stream>>>(acc, bias_p, y_p, rows, cols, a, sx, sw, sw_per_channel);
  };
  if (y_t == DType::F32) {
    if (b16) go(static_cast<const __half*>(bias), static_cast<float*>(y));
    else go(static_cast<const float*>(bias), static_cast<float*>(y));
  } else {
    if (b16) go(static_cast<const __half*>(bias), static_cast<__half*>(y));
    else go(static_cast<const float*>(bias), static_cast<__half*>(y));
  }
  TRTRUN_LAUNCH_CHECK();
}

void launch_stage_inputs(const StageJob* jobs, int n_jobs, int batch, int seq, int seq_bucket, int32_t* error_flag,
                         cudaStream_t stream) {
  if (n_jobs < 0 || n_jobs > kMaxStageJobs)
    throw InputError("launch_stage_inputs: " + std::to_string(n_jobs) + " jobs (at most " +
                                std::to_string(kMaxStageJobs) + ")");
  const size_t count = (size_t)batch * (size_t)seq_bucket;
  if (count == 0 || n_jobs == 0) return;
  StageJobs js;
  for (int j = 0; j < n_jobs; ++j) {
    if (jobs[j].dst == nullptr || ((jobs[j].kind == StageKind::Ids || jobs[j].kind == StageKind::Mask) &&
                                   (jobs[j].src == nullptr || jobs[j].src_row_stride < seq)))
      throw InputError("launch_stage_inputs: job " + std::to_string(j) +
                                  " has a null buffer or a row stride below seq");
    js.job[j] = jobs[j];
  }
  stage_inputs_kernel<<<grid_for(count), kThreads, 0, stream>>>(js, n_jobs, batch, seq, seq_bucket, error_flag);
  TRTRUN_LAUNCH_CHECK();
}

cudaError_t probe_kernel_image() {
  cudaFuncAttributes attr;
  cudaError_t e = cudaFuncGetAttributes(&attr, probe_kernel);
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e;
}

}  // namespace trtrun
