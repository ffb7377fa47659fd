// native/kernels/attention/attention.h: fused multi-head attention (docs/plan-format.md, Attention op).
#pragma once

#include <cuda_runtime.h>

#include "trtrun/errors.h"
#include "trtrun/types.h"

#include <string>

namespace trtrun {

// The head sizes the kernels are instantiated for (the Engine refuses an Attention of another before any device work).
constexpr bool attention_takes_head_size(int head_size) {
  return head_size == 32 || head_size == 64 || head_size == 80 || head_size == 96 || head_size == 128 ||
         head_size == 256;
}

// Whether the tensor-core kernels rotate Q and K themselves (AttentionExtras::rope_cos) for this head size and rotary
// width: instantiated for the head sizes of the rotary families measured (64: SmolLM2, ModernBERT, Pythia; 128: Llama,
// Qwen, Mistral); any other takes launch_rotary first.
constexpr bool attention_takes_rotary(int head_size, int rotary_dim) {
  return (head_size == 64 || head_size == 128) && rotary_dim >= 16 && rotary_dim % 16 == 0 && rotary_dim <= head_size;
}

// The longest sequence a score-bias table serves: its 2 * bias_max_seq - 1 entries a head must fit an int.
constexpr long long kAttentionBiasMaxSeq = 1LL << 30;

// qkv [batch, seq, 3*heads*head_size] (Q | K | V, head h at columns h*D:(h+1)*D of each), in qkv_t;
// mask int32 [batch, seq] (0 = key masked) or null; y [batch, seq, heads*head_size] in y_t.
// scores = scale * Q K^T; masked keys (mask == 0, or j > i when causal) get the float32 minimum, so a
// fully masked row is uniform over all keys; softmax over keys; y = P V. Never writes the seq x seq
// scores to memory (flash-attention style online softmax).
// prec HYBRID: QK^T and PV on tensor cores (fp16 operands, fp32 accumulation), softmax in fp32, P
//   rounded to fp16 for PV. FP16: same products, scores rounded to fp16 after scaling, softmax in fp16
//   (masked scores saturate to the fp16 minimum, -65504). FP32: everything in fp32 FFMA, no tensor cores.
// head_size must be 32, 64, 80, 96, 128 or 256 (attention_takes_head_size); qkv and y 16-byte aligned. Throws InputError /
// CudaError.
void launch_attention(const void* qkv, DType qkv_t, const int32_t* mask /*[B,S] nullable*/,
                      void* y, DType y_t, int batch, int seq, int heads, int head_size,
                      float scale, bool causal, Precision prec, cudaStream_t stream);

// What an Attention adds by distance, and the score cap (docs/plan-format.md: relative_bias, alibi_slopes, window,
// softcap).
// bias: fp32 device table [heads, 2*bias_max_seq - 1], null for none: bias[h][j - i + bias_max_seq - 1] is added to
//   the scaled score of query i and key j before masking (HYBRID and FP32 in fp32; FP16 rounds it to fp16 and adds in
//   fp16); bias_max_seq >= seq. A relative-position or ALiBi bias depends on j - i alone, so one table serves every
//   sequence length up to bias_max_seq.
// window: key j masked for query i when |i - j| > window, on top of the mask and causal; < 0 for none. A row whose
//   keys are then all masked is uniform over all seq keys, as any fully masked row.
// softcap: > 0 soft-caps the scaled scores to softcap * tanh(s / softcap) in fp32 before the bias (Gemma 2); 0 for none.
// rope_cos/rope_sin (null for none): the rotary of launch_rotary (rotary/rotary.h) applied to Q and K as the kernel
//   loads them, with the same arithmetic and rounding (half_math in FP16 precision), so the output is bit-identical to
//   launch_rotary followed by this launch, without the pass over qkv and without changing it. fp32 [>= seq, R/2]
//   tables, 16-byte aligned; attention_takes_rotary(head_size, rotary_dim); fp16 qkv in HYBRID or FP16 precision.
struct AttentionExtras {
  const float* bias = nullptr;
  int bias_max_seq = 0;
  int window = -1;
  float softcap = 0.f;
  const float* rope_cos = nullptr;
  const float* rope_sin = nullptr;
  int rotary_dim = 0;
};

// The same with grouped-query attention: qkv [batch, seq, (heads + 2*kv_heads)*head_size] (Q | K | V), query head h
// reading K/V head h / (heads / kv_heads) where they lie (no copy per head); kv_heads must divide heads.
// launch_attention is this with kv_heads = heads.
void launch_attention_gqa(const void* qkv, DType qkv_t, const int32_t* mask /*[B,S] nullable*/, void* y, DType y_t,
                          int batch, int seq, int heads, int kv_heads, int head_size, float scale, bool causal,
                          Precision prec, cudaStream_t stream, const AttentionExtras& extras = {});

// Whether rotating Q and K inside the kernel (AttentionExtras::rope_cos) is expected to beat launch_rotary's pass
// first, for these sizes on the current device: the kernel rotates every K tile it visits in every block, which
// lengthens each block's chain, against the pass's launch and its read and write of Q and K. Measured to pay only for
// short sequences whose grid fits the multiprocessors at once (attention.cu: rope_pays). False where the kernels do
// not take the rotary (attention_takes_rotary, FP32). TRTRUN_ATTN_ROPE=0|1 forces the answer (tuning and tests only).
bool attention_rotary_pays(int batch, int seq, int heads, int kv_heads, int head_size, int rotary_dim, bool causal,
                           Precision prec, const AttentionExtras& extras);

// The configuration launch_attention takes for these sizes on the current device, as text ("fp32", or
// "mt=M nw=N ks=K qb=Q": 16*M query rows a warp, N warps a key group, K key groups a block, Q query tiles a block
// over K/V staged once), with the TRTRUN_ATTN_CFG / TRTRUN_ATTN_QB overrides applied; `extras`: with a score bias or a
// window (never query tiles sharing K/V); `window` >= 0: that sliding window (implies extras). For tests and tuning.
std::string attention_config(int batch, int seq, int heads, int head_size, bool causal, Precision prec,
                             bool extras = false, int window = -1);

}  // namespace trtrun
