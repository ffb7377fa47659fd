// native/include/trtrun/plan.h: the plan as the runtime takes it (Engine's input), already validated by
// trtrun.plan and lowered by trtrun/runtime/lower.py (lower_plan); the Python binding fills these structs from names.
// No CUDA and no Python in here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "trtrun/types.h"

namespace trtrun {

// A dimension is a fixed size (> 0) or a symbol: DIM_B (batch) or DIM_S (sequence).
constexpr int64_t DIM_B = -1;
constexpr int64_t DIM_S = -2;

struct TensorDesc {
  std::string name;
  DType type = DType::F32;  // on the device: graph inputs of int64 are stored as I32
  std::vector<int64_t> dims;
  // Elements at a given (batch, seq); throws on overflow.
  size_t numel(int64_t batch, int64_t seq) const;
};

constexpr int NO_TENSOR = -1;
constexpr int NO_WEIGHT = -1;

struct OpDesc {
  OpType type = OpType::Linear;
  std::string name;
  std::vector<int> inputs;   // tensor indices, NO_TENSOR for an absent optional input
  std::vector<int> outputs;  // tensor indices, NO_TENSOR for an absent optional output
  std::map<std::string, int> weights;  // role -> weight index
  Precision precision = Precision::HYBRID;
  // attributes (the ones an op type does not use stay at their defaults)
  Activation activation = Activation::None;
  float epsilon = 1e-5f;
  int position_offset = 0;
  int num_heads = 0;
  int head_size = 0;
  float scale = 1.0f;
  bool causal = false;
  // Llama-family attributes (Linear: gated = [gate | up] halves, y = act(gate) * up; Attention: grouped-query K/V
  // heads, 0 = num_heads; rotary_dim: leading dims of each Q/K head rotated by the rotary_cos/rotary_sin tables)
  bool gated = false;
  int num_kv_heads = 0;
  int rotary_dim = 0;
  // Attention: keys further than `window` from the query masked (< 0: none); a relative-position or ALiBi bias
  // comes as the "score_bias" weight, fp32 [num_heads, 2*seq_max - 1] by distance (trtrun/runtime/lower.py)
  int window = -1;
  // Attention: scaled scores soft-capped to softcap * tanh(s / softcap) before any bias (Gemma 2); 0: none
  float softcap = 0.f;
  // RMSNorm: y = residual + norm(x) instead of norm(x + residual) (OLMo-2's and EXAONE 4's post-norm blocks)
  bool residual_after = false;
  // Attention with the "q_norm" and "k_norm" weights: Q and K normalised with this epsilon before the rotary, an
  // RMSNorm, or a LayerNorm (qk_norm_layer; biases "q_norm_bias"/"k_norm_bias", optional). Gains of [head_size] are
  // shared by the heads (Qwen3, Persimmon); gains of [num_heads * head_size] / [kv_heads * head_size]
  // (qk_norm_per_column) are one row per head for a LayerNorm (StableLM-2) and, for an RMSNorm, one norm over each
  // token's whole Q / K part (OLMo-2).
  float qk_norm_epsilon = 1e-6f;
  bool qk_norm_layer = false;
  bool qk_norm_after_rotary = false;  // per-head forms: rotated first, normalised after (HunYuan)

  int weight(const std::string& role) const {
    auto it = weights.find(role);
    return it == weights.end() ? NO_WEIGHT : it->second;
  }
};

struct WeightDesc {
  std::string name;
  DType type = DType::F32;
  std::vector<int64_t> shape;
  const void* host = nullptr;  // valid only while the Engine is being built
  size_t nbytes = 0;
};

// Whether an Attention's q_norm has a gain per column of its heads ([num_heads * head_size], more than one head)
// rather than [head_size] shared by them: OpDesc::qk_norm_epsilon says what each means.
inline bool qk_norm_per_column(const OpDesc& op, const WeightDesc& q_norm) {
  return op.num_heads > 1 && q_norm.shape.size() == 1 &&
         q_norm.shape[0] == static_cast<int64_t>(op.num_heads) * op.head_size;
}

struct EngineDesc {
  std::vector<TensorDesc> tensors;
  std::vector<OpDesc> ops;
  std::vector<WeightDesc> weights;
  std::vector<int> inputs;   // graph inputs (tensor indices)
  std::vector<int> outputs;  // graph outputs (tensor indices)
  int64_t batch_max = 1;
  int64_t seq_max = 1;       // the largest sequence (bucket) a context must hold
  bool tf32 = false;
};

// Overflow-checked arithmetic for sizes computed from user shapes (InputError on overflow).
size_t checked_mul(size_t a, size_t b, const char* what);
size_t checked_add(size_t a, size_t b, const char* what);
inline size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace trtrun
