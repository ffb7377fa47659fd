// tools/cuda/mma_tools.cuh: the tensor-core and asynchronous-copy wrappers the standalone GEMM probes share
// (smallm_stream.cu, persistent_chain.cu). PTX as written in NVIDIA's ISA guide; sm_80 and later.
#pragma once

#include <cuda_fp16.h>

#include <cstddef>
#include <cstdint>

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared through the L2 only (.cg); src_bytes < 16 fills the rest with zeros
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
// d += a (16x16, row) * b (16x8, col), fp16 in, fp32 accumulation
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// the tanh form, as cuBLASLt's GELU epilogue
__device__ __forceinline__ float gelu_tanh(float v) {
  return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

// Host side, for weights packed once in B-fragment order: the four halves lane (g, t) holds of w[K][N] (row-major)
// for the k16 step at row kb0 and the n8 tile at column n0 (b0 = rows kb0 + 2t, +1; b1 = rows kb0 + 2t + 8, +9;
// column n0 + g), appended at out[o..o+3]; returns o + 4.
inline size_t put_b_fragment(__half* out, size_t o, const __half* w, int N, int kb0, int n0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const size_t n = static_cast<size_t>(n0 + g), kb = static_cast<size_t>(kb0 + 2 * t);
  out[o++] = w[kb * N + n];
  out[o++] = w[(kb + 1) * N + n];
  out[o++] = w[(kb + 8) * N + n];
  out[o++] = w[(kb + 9) * N + n];
  return o;
}
