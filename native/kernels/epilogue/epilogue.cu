// native/kernels/epilogue/epilogue.cu: the Linear's elementwise tail after a GEMM (gate product, silu, relu,
// quick_gelu, residual).
#include "epilogue.h"

#include "kernels/common/rowops.cuh"

#include <algorithm>
#include <string>

namespace trtrun {
namespace {

using rowops::load_vec;
using rowops::store_vec;

__device__ __forceinline__ float round_to(float v, DType t) {
  return t == DType::F16 ? __half2float(__float2half_rn(v)) : v;
}

// ACT a template argument: the kernel holds one activation's arithmetic and no per-element dispatch
template <Activation ACT>
__device__ __forceinline__ float activate(float x) {
  if constexpr (ACT == Activation::Silu) {
    return x / (1.0f + expf(-x));
  } else if constexpr (ACT == Activation::Relu) {
    return fmaxf(x, 0.0f);
  } else if constexpr (ACT == Activation::Relu2) {  // squared ReLU (Nemotron, Arcee)
    const float r = fmaxf(x, 0.0f);
    return r * r;
  } else if constexpr (ACT == Activation::QuickGelu) {  // CLIP: x * sigmoid(1.702 x), 1.702 in fp32 as exported
    return x / (1.0f + expf(-1.702f * x));
  } else if constexpr (ACT == Activation::GeluErf) {
    return 0.5f * x * erfcf(-x * 0.70710678118654752f);
  } else if constexpr (ACT == Activation::GeluTanh) {
    const float a = 0.79788456080286536f * (x + 0.044715f * x * x * x);
    return x / (1.0f + expf(-2.0f * a));
  } else {
    return x;
  }
}

// One thread step = VEC consecutive output columns of one row (VEC = 8: 16-byte accesses, m % 8 == 0 and every
// pointer 16-byte aligned). src and y may alias (not gated): each element is read before the same thread writes it.
// Idx: the step index's type, 32-bit wherever the steps and one grid's stride fit (a 64-bit division is a library
// routine of ~70 instructions, a 32-bit one a handful).
template <int VEC, bool GATED, Activation ACT, typename Idx>
__global__ void linear_epilogue_kernel(const void* src, DType src_t, const void* __restrict__ bias, DType bias_t,
                                       const void* __restrict__ residual, DType r_t, void* y, DType y_t,
                                       long long rows, int m, bool round_h) {
  const Idx per_row = static_cast<Idx>(m / VEC);
  const Idx steps = static_cast<Idx>(rows) * per_row;
  const long long width = GATED ? 2LL * m : m;
  for (Idx e = blockIdx.x * static_cast<Idx>(blockDim.x) + threadIdx.x; e < steps;
       e += static_cast<Idx>(gridDim.x) * blockDim.x) {
    const Idx row_e = e / per_row;
    const long long r = static_cast<long long>(row_e);
    const int c = static_cast<int>(e - row_e * per_row) * VEC;
    float g[VEC], u[VEC], b[VEC];
    load_vec<VEC>(src, src_t, r * width + c, g);
    if constexpr (GATED) load_vec<VEC>(src, src_t, r * width + m + c, u);
    if (bias != nullptr) {
      load_vec<VEC>(bias, bias_t, c, b);
#pragma unroll
      for (int k = 0; k < VEC; ++k) g[k] += b[k];
      if constexpr (GATED) {
        load_vec<VEC>(bias, bias_t, m + c, b);
#pragma unroll
        for (int k = 0; k < VEC; ++k) u[k] += b[k];
      }
    }
    float v[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      float gk = g[k];
      if (round_h) gk = round_to(gk, y_t);
      if constexpr (GATED) {
        const float uk = round_h ? round_to(u[k], y_t) : u[k];
        v[k] = __fmul_rn(activate<ACT>(gk), uk);  // the product rounded to fp32 once, as the reference's a * u
      } else {
        v[k] = activate<ACT>(gk);
      }
    }
    if (residual != nullptr) {
      float rr[VEC];
      load_vec<VEC>(residual, r_t, r * m + c, rr);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v[k] += rr[k];
    }
    store_vec<VEC>(y, y_t, r * m + c, v);
  }
}

template <int VEC, bool GATED, Activation ACT>
void launch_impl(const void* src, DType src_t, const void* bias, DType bias_t, const void* residual, DType r_t,
                 void* y, DType y_t, long long rows, int m, bool round_h, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const long long steps = rows * (m / VEC);
  // enough blocks to fill an H200 several times over; the grid-stride loop covers the rest
  const long long blocks = std::min<long long>((steps + kThreads - 1) / kThreads, 132LL * 16);
  if (steps + blocks * kThreads < (1LL << 31))  // 32-bit steps: no wraparound within one grid's stride
    linear_epilogue_kernel<VEC, GATED, ACT, unsigned><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m, round_h);
  else
    linear_epilogue_kernel<VEC, GATED, ACT, unsigned long long><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m, round_h);
  TRTRUN_LAUNCH_CHECK();
}

template <int VEC, bool GATED>
void launch_act(const void* src, DType src_t, const void* bias, DType bias_t, const void* residual, DType r_t,
                void* y, DType y_t, long long rows, int m, Activation act, bool round_h, cudaStream_t stream) {
  switch (act) {
    case Activation::GeluErf:
      return launch_impl<VEC, GATED, Activation::GeluErf>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m,
                                                          round_h, stream);
    case Activation::GeluTanh:
      return launch_impl<VEC, GATED, Activation::GeluTanh>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m,
                                                           round_h, stream);
    case Activation::Silu:
      return launch_impl<VEC, GATED, Activation::Silu>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m,
                                                       round_h, stream);
    case Activation::Relu:
      return launch_impl<VEC, GATED, Activation::Relu>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m,
                                                       round_h, stream);
    case Activation::Relu2:
      return launch_impl<VEC, GATED, Activation::Relu2>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m,
                                                        round_h, stream);
    case Activation::QuickGelu:
      return launch_impl<VEC, GATED, Activation::QuickGelu>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows,
                                                            m, round_h, stream);
    default:
      return launch_impl<VEC, GATED, Activation::None>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m,
                                                       round_h, stream);
  }
}

}  // namespace

void launch_linear_epilogue(const void* src, DType src_t, const void* bias, DType bias_t, const void* residual,
                            DType r_t, void* y, DType y_t, long long rows, int m, bool gated, Activation act,
                            bool round_h, cudaStream_t stream) {
  const char* op = "linear_epilogue";
  require(rows >= 0, op, "rows must be >= 0, got " + std::to_string(rows));
  require(m >= 1, op, "m (output width) must be >= 1, got " + std::to_string(m));
  require(act == Activation::None || act == Activation::GeluErf || act == Activation::GeluTanh ||
              act == Activation::Silu || act == Activation::Relu || act == Activation::Relu2 ||
              act == Activation::QuickGelu,
          op, "activation must be " + valid_names<Activation>() + ", got " + to_string(act));
  require(src != nullptr && y != nullptr, op, "src and y must not be null");
  require(!gated || src != y, op, "a gated epilogue reads [rows, 2m] and writes [rows, m]: src and y must differ");
  check_dtype(src_t, op, "src");
  check_dtype(y_t, op, "y");
  if (bias) check_dtype(bias_t, op, "bias");
  if (residual) check_dtype(r_t, op, "residual");
  if (rows == 0) return;
  const bool vec = m % 8 == 0 && rowops::aligned16(src) && rowops::aligned16(bias) && rowops::aligned16(residual) &&
                   rowops::aligned16(y);
  TRTRUN_BOOL_SWITCH(gated, GATED, [&] {
    if (vec) launch_act<8, GATED>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m, act, round_h, stream);
    else launch_act<1, GATED>(src, src_t, bias, bias_t, residual, r_t, y, y_t, rows, m, act, round_h, stream);
  });
}

}  // namespace trtrun
