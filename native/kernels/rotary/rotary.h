// native/kernels/rotary/rotary.h: rotary position embeddings applied to the Q and K heads of a packed qkv tensor
// (docs/plan-format.md, Attention: inv_freq / rotary_dim / rotary_scale), before the attention kernel reads them.
#pragma once

#include <cuda_runtime.h>

#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace trtrun {

// src, dst: [batch, seq, (heads + 2*kv_heads) * head_size] (Q heads, then K heads, then V heads; head h at columns
// h*D:(h+1)*D of its part). For every token (b, s), every Q and K head and i < R/2 (R = rotary_dim, h2 = R/2):
//   x1 = x[i], x2 = x[h2 + i], c = cos[s, i], n = sin[s, i]
//   x'[i] = x1 c - x2 n,  x'[h2 + i] = x2 c + x1 n
// Columns from R on (partial rotary, GPT-NeoX) and the V heads pass unchanged. cos/sin: fp32 [>= seq, R/2] (the
// rope variant's scaling and attention factor already in them: trtrun.reference.rotary_tables).
// half_math false: fp32 arithmetic on the values as stored (each product and sum rounded to fp32, nothing contracted
// into an fma), as trtrun.reference.rotate on float32; true (Precision::FP16): x, c and n rounded to fp16 and each
// product and sum an fp16 operation. The result is stored in dst_t.
// In place (dst == src, same dtype): only the rotated columns are written. Otherwise every
// other column is copied (converted to dst_t) too. Throws trtrun::InputError / trtrun::CudaError.
void launch_rotary(const void* src, DType src_t, void* dst, DType dst_t, const float* cos, const float* sin,
                   int batch, int seq, int heads, int kv_heads, int head_size, int rotary_dim, bool half_math,
                   cudaStream_t stream);

// A query/key norm before the rotary (docs/plan-format.md, Attention: q_norm / k_norm / q_norm_bias / k_norm_bias /
// qk_norm_epsilon / qk_norm_kind), in one of three forms:
//   per head, RMS (Qwen3, Gemma 3): every Q head RMS-normalised over its D values and scaled by q_gamma [D], every K
//     head likewise with k_gamma [D];
//   per head, LayerNorm (layer; Persimmon, StableLM-2): every head LayerNorm-ed over its D values, gains and biases
//     [D] shared by the heads, or one row of D per head ([heads*D] for Q, [kv_heads*D] for K: gains_per_head);
//   whole (OLMo-2, OLMo 3): each token's whole Q part (heads*D values) RMS-normalised with q_gamma [heads*D], its
//     whole K part (kv_heads*D) with k_gamma [kv_heads*D].
// Then rotated as launch_rotary does (rotary_dim 0: no rotation, cos/sin unused). V passes unchanged.
struct QkNorm {
  const void* q_gamma = nullptr;  // [head_size] or [heads * head_size] (gains_per_head, whole)
  const void* k_gamma = nullptr;  // [head_size] or [kv_heads * head_size]
  const void* q_beta = nullptr;   // layer only, nullable (zero): the shape of q_gamma
  const void* k_beta = nullptr;   // layer only, nullable (zero): the shape of k_gamma
  DType gamma_t = DType::F32;     // one dtype for gains and biases
  float eps = 1e-6f;
  bool layer = false;           // LayerNorm (mean subtracted, biased variance, + beta) instead of RMSNorm
  bool gains_per_head = false;  // layer: one row of gains (and biases) per head
  bool whole = false;           // RMSNorm over each token's whole Q and whole K part (not with layer)
  bool after_rotary = false;    // per-head forms: each head rotated first, normalised after (HunYuan)
};

// The largest head the per-head forms take: one warp holds a (token, head) row, 8 values a lane.
constexpr int kQkNormMaxHead = 256;

// The normed pass of launch_rotary: per (token, Q or K head) row x [D] (whole: per (token, Q or K part) row),
//   RMS:   y = x / sqrt(mean(x^2) + eps) * gamma                       (trtrun.reference.ref_rmsnorm's rules)
//   layer: y = (x - mean(x)) / sqrt(mean((x - mean)^2) + eps) * gamma + beta   (ref_layernorm's rules)
// then y's first rotary_dim columns of every head rotated by the formula above, on the normalised values (never
// rounded in between where the reference keeps them in fp32). half_math false: fp32 statistics and arithmetic (sums
// by a warp or block tree, squares by fmaf, sqrtf, true divisions); true (Precision::FP16): every step an fp16
// operation. Every Q and K column is written (in place: the whole Q and K parts; out of place: V copied too). Per-head
// forms: head_size <= kQkNormMaxHead. Throws trtrun::InputError / trtrun::CudaError.
void launch_rotary_qk_norm(const void* src, DType src_t, void* dst, DType dst_t, const float* cos, const float* sin,
                           const QkNorm& norm, int batch, int seq, int heads, int kv_heads, int head_size,
                           int rotary_dim, bool half_math, cudaStream_t stream);

}  // namespace trtrun
