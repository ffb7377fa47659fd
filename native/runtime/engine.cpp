// native/runtime/engine.cpp: see engine.h.
#include <string>
#include <utility>
#include <vector>
#include "trtrun/engine.h"

#include "kernels/attention/attention.h"  // attention_takes_head_size, kAttentionBiasMaxSeq
#include "kernels/rotary/rotary.h"        // kQkNormMaxHead: the largest head its normed pass takes

#include <algorithm>
#include <cmath>
#include <limits>

namespace trtrun {

namespace {
std::string where(const OpDesc& op) { return "op '" + op.name + "'"; }
}  // namespace

const void* Engine::weight(int index) const {
  if (index == NO_WEIGHT) return nullptr;
  return static_cast<const char*>(weights_.get()) + offsets_.at(static_cast<size_t>(index));
}

// The Python side validated the plan (trtrun.plan); these checks guard the kernels against a description that
// would make them read out of bounds, and name what the runtime cannot run.
void Engine::check() {
  const auto& T = desc_.tensors;
  const auto& W = desc_.weights;
  auto tensor_ok = [&](int t) { return t >= 0 && static_cast<size_t>(t) < T.size(); };
  auto weight_ok = [&](int w) { return w >= 0 && static_cast<size_t>(w) < W.size(); };
  if (desc_.batch_max < 1 || desc_.seq_max < 1) throw InputError("profile maxima must be >= 1");
  if (desc_.batch_max > std::numeric_limits<int>::max() || desc_.seq_max > std::numeric_limits<int>::max())
    throw ShapeError("profile maxima exceed 2^31-1");
  for (const auto& t : T) {
    if (t.dims.size() < 2 || t.dims[0] != DIM_B || t.dims[1] != DIM_S)
      throw InputError("tensor '" + t.name + "': the runtime needs every activation shaped [B, S, ...]");
    for (size_t i = 2; i < t.dims.size(); ++i)
      if (t.dims[i] <= 0) throw InputError("tensor '" + t.name + "': inner dimensions must be positive");
  }
  for (const auto& w : W) {
    size_t n = elem_size(w.type);
    for (int64_t d : w.shape) {
      if (d < 0) throw InputError("weight '" + w.name + "': negative dimension");
      n = checked_mul(n, static_cast<size_t>(d), w.name.c_str());
    }
    if (n != w.nbytes) throw InputError("weight '" + w.name + "': byte count does not match dtype and shape");
    if (!is_float(w.type) && w.type != DType::F8E4M3)
      throw InputError("weight '" + w.name + "': must be float32, float16 or float8_e4m3fn");
  }
  for (int t : desc_.inputs)
    if (!tensor_ok(t) || T[t].type != DType::I32)
      throw InputError("graph inputs must be integer tensors (stored as int32 on the device)");
  for (int t : desc_.outputs)
    if (!tensor_ok(t) || !is_float(T[t].type)) throw InputError("graph outputs must be float tensors");

  auto inner = [&](int t) -> int64_t {  // product of the dims after [B, S]; dims are positive (checked above)
    size_t n = 1;
    const std::string what = "the inner size of tensor '" + T[t].name + "'";
    for (size_t i = 2; i < T[t].dims.size(); ++i) n = checked_mul(n, static_cast<size_t>(T[t].dims[i]), what.c_str());
    if (n > static_cast<size_t>(std::numeric_limits<int64_t>::max()))
      throw InputError("tensor '" + T[t].name + "': inner dimensions too large");
    return static_cast<int64_t>(n);
  };
  auto need_float = [&](const OpDesc& op, int t, const char* what) {
    if (!tensor_ok(t) || !is_float(T[t].type))
      throw InputError(where(op) + ": " + what + " must be a float tensor");
  };
  auto need_weight = [&](const OpDesc& op, const char* role, std::vector<int64_t> shape) {
    int w = op.weight(role);
    if (!weight_ok(w)) throw InputError(where(op) + ": missing weight '" + role + "'");
    if (W[w].shape != shape) throw InputError(where(op) + ": weight '" + role + "' (" + W[w].name + ") has the wrong shape");
    return w;
  };

  // the normalisations' launchers refuse it at the first run otherwise (a NaN epsilon is no number >= 0)
  auto need_epsilon = [&](const OpDesc& op) {
    if (!(op.epsilon >= 0.f) || !std::isfinite(op.epsilon))
      throw InputError(where(op) + ": epsilon must be finite and >= 0");
  };

  input_info_.assign(desc_.inputs.size(), InputInfo{});
  for (size_t i = 0; i < desc_.inputs.size(); ++i) input_info_[i].tensor = desc_.inputs[i];
  auto mark_input = [&](const OpDesc& op, int t, bool is_mask, int64_t limit) {
    for (auto& info : input_info_) {
      if (info.tensor != t) continue;
      if (info.used && info.is_mask != is_mask)
        throw InputError(where(op) + ": input '" + T[t].name + "' is used both as ids and as a mask");
      info.limit = info.used ? std::min(info.limit, limit) : limit;
      info.used = true;
      info.is_mask = is_mask;
      return;
    }
    throw InputError(where(op) + ": integer input '" + T[t].name + "' is not a graph input");
  };

  for (const auto& op : desc_.ops) {
    auto in = [&](size_t j) { return j < op.inputs.size() ? op.inputs[j] : NO_TENSOR; };
    auto out = [&](size_t j) { return j < op.outputs.size() ? op.outputs[j] : NO_TENSOR; };
    for (int t : op.inputs)
      if (t != NO_TENSOR && !tensor_ok(t)) throw InputError(where(op) + ": input index out of range");
    for (int t : op.outputs)
      if (t != NO_TENSOR && !tensor_ok(t)) throw InputError(where(op) + ": output index out of range");
    for (const auto& kv : op.weights)
      if (kv.second != NO_WEIGHT && !weight_ok(kv.second)) throw InputError(where(op) + ": weight index out of range");
    need_float(op, out(0), "output");
    // float8 weights are an fp8 Linear's weight only (no other kernel reads them), and only a Linear is fp8
    const bool fp8 = op.type == OpType::Linear && op.precision == Precision::FP8;
    if (op.precision == Precision::FP8 && op.type != OpType::Linear)
      throw InputError(where(op) + ": precision fp8 is a Linear's only");
    for (const auto& kv : op.weights)
      if (kv.second != NO_WEIGHT && W[kv.second].type == DType::F8E4M3 && !(fp8 && kv.first == "weight"))
        throw InputError(where(op) + ": weight '" + kv.first + "' (" + W[kv.second].name +
                         ") is float8_e4m3fn, which only an fp8 Linear's weight may be");
    switch (op.type) {
      case OpType::Embedding: {
        int word = op.weight("word");
        if (!weight_ok(word) || W[word].shape.size() != 2) throw InputError(where(op) + ": word table must be 2-D");
        const int64_t V = W[word].shape[0], N = W[word].shape[1];
        int pos = op.weight("position");  // absent: rotary or relative positions, applied in attention
        if (op.position_offset < 0) throw InputError(where(op) + ": position_offset must be >= 0");
        if (pos != NO_WEIGHT) {
          if (!weight_ok(pos) || W[pos].shape.size() != 2 || W[pos].shape[1] != N)
            throw InputError(where(op) + ": position table must be [P, N]");
          if (desc_.seq_max + op.position_offset > W[pos].shape[0])
            throw ShapeError(where(op) + ": max sequence + position offset exceeds the position table");
        }
        int tt = op.weight("token_type");
        if (tt != NO_WEIGHT && (W[tt].shape.size() != 2 || W[tt].shape[1] != N || W[tt].shape[0] < 1))
          throw InputError(where(op) + ": token_type table must be [T, N]");
        if ((pos != NO_WEIGHT && W[pos].type != W[word].type) || (tt != NO_WEIGHT && W[tt].type != W[word].type))
          throw InputError(where(op) + ": embedding tables must share one dtype");
        int g = op.weight("gamma"), b = op.weight("beta");
        if ((g == NO_WEIGHT) != (b == NO_WEIGHT)) throw InputError(where(op) + ": gamma and beta come together");
        if (g != NO_WEIGHT) {
          need_epsilon(op);
          need_weight(op, "gamma", {N});
          need_weight(op, "beta", {N});
          if (W[g].type != W[b].type) throw InputError(where(op) + ": gamma and beta must share one dtype");
        }
        if (!tensor_ok(in(0))) throw InputError(where(op) + ": needs input_ids");
        mark_input(op, in(0), false, V);
        if (in(1) != NO_TENSOR) {
          if (tt == NO_WEIGHT) throw InputError(where(op) + ": token_type_ids given without a token_type table");
          mark_input(op, in(1), false, W[tt].shape[0]);
        }
        if (inner(out(0)) != N) throw InputError(where(op) + ": output must be [B, S, N]");
        if (N > std::numeric_limits<int>::max()) throw InputError(where(op) + ": hidden size too large");
        break;
      }
      case OpType::Linear: {
        need_float(op, in(0), "input x");
        int w = op.weight("weight");
        if (!weight_ok(w) || W[w].shape.size() != 2)
          throw InputError(where(op) + (fp8 ? ": weight must be [N, K] (transposed)" : ": weight must be [K, N]"));
        // fp8: uploaded transposed, [N, K] (native/runtime/gemm.cpp: cuBLASLt's fp8 GEMMs take A transposed)
        const int64_t K = W[w].shape[fp8 ? 1 : 0], N = W[w].shape[fp8 ? 0 : 1];
        if (K < 1 || N < 1) throw InputError(where(op) + ": weight must have K >= 1 and N >= 1");
        // cuBLASLt's fp8 GEMMs take 16-byte aligned leading dimensions of the E4M3 operands (K bytes a row of x's codes
        // and of the transposed weight) and refuse other shapes; the runtime asks K and N multiples of 16, as
        // docs/runtime.md says (PyTorch's scaled_mm asks the same)
        if (fp8 && (K % 16 != 0 || N % 16 != 0))
          throw InputError(where(op) + ": an fp8 Linear needs K and N multiples of 16 (cuBLASLt's fp8 GEMMs), got K=" +
                           std::to_string(K) + " N=" + std::to_string(N) +
                           "; build this Linear in another precision or run the plan on the reference backend");
        if (inner(in(0)) % K != 0 || T[in(0)].dims.back() != K)
          throw InputError(where(op) + ": input's last dimension must be K");
        if (op.gated && N % 2 != 0) throw InputError(where(op) + ": a gated weight needs an even width N");
        const int64_t n_out = op.gated ? N / 2 : N;  // gated: [gate | up] -> act(gate) * up
        if (T[out(0)].dims.back() != n_out || inner(out(0)) / n_out != inner(in(0)) / K)
          throw InputError(where(op) + (op.gated ? ": output must be [..., N/2]" : ": output must be [..., N]"));
        if (in(1) != NO_TENSOR) {  // residual added to the result (GPT-NeoX's parallel branches)
          need_float(op, in(1), "residual");
          if (T[in(1)].dims != T[out(0)].dims) throw InputError(where(op) + ": residual must match the output");
        }
        const DType want = op.precision == Precision::FP32 ? DType::F32
                           : fp8                             ? DType::F8E4M3
                                                             : DType::F16;
        if (W[w].type != want)
          throw InputError(where(op) + ": weight must be " + to_string(want) + " for precision " +
                           to_string(op.precision));
        if (op.weight("bias") != NO_WEIGHT) need_weight(op, "bias", {N});
        if (fp8) {
          // weight_scale [N] (one per output channel, or a per-tensor scale broadcast by the lowering) or [1] with
          // a static x_scale [1]: the GEMM's scales (gemm.h), read by no other kernel
          const int ws = op.weight("weight_scale"), xs = op.weight("x_scale");
          if (!weight_ok(ws) || W[ws].type != DType::F32 || W[ws].shape.size() != 1 ||
              !(W[ws].shape[0] == N || (W[ws].shape[0] == 1 && xs != NO_WEIGHT)))
            throw InputError(where(op) + ": weight_scale must be float32 [N], or [1] with an x_scale");
          if (xs != NO_WEIGHT && (!weight_ok(xs) || W[xs].type != DType::F32 || W[xs].shape != std::vector<int64_t>{1}))
            throw InputError(where(op) + ": x_scale must be float32 [1]");
        } else if (op.weight("weight_scale") != NO_WEIGHT || op.weight("x_scale") != NO_WEIGHT) {
          throw InputError(where(op) + ": weight_scale and x_scale belong to fp8 Linears");
        }
        break;
      }
      case OpType::Attention: {
        need_float(op, in(0), "qkv");
        if (op.num_heads < 1 || op.head_size < 1) throw InputError(where(op) + ": num_heads/head_size must be >= 1");
        if (!attention_takes_head_size(op.head_size))
          throw InputError(where(op) + ": the attention kernel takes head_size 32, 64, 80, 96, 128 or 256, got " +
                           std::to_string(op.head_size) + "; run this plan on the reference backend");
        const int kvh = op.num_kv_heads > 0 ? op.num_kv_heads : op.num_heads;
        if (op.num_heads % kvh != 0) throw InputError(where(op) + ": num_kv_heads must divide num_heads");
        const int64_t hd = static_cast<int64_t>(op.num_heads) * op.head_size;
        if (inner(in(0)) != hd + 2LL * kvh * op.head_size)
          throw InputError(where(op) + ": qkv must be [B, S, (H + 2*Hkv)*D]");
        if (op.rotary_dim != 0) {
          if (op.rotary_dim < 0 || op.rotary_dim % 2 != 0 || op.rotary_dim > op.head_size)
            throw InputError(where(op) + ": rotary_dim must be even and at most head_size");
          for (const char* role : {"rotary_cos", "rotary_sin"}) {
            const int w = op.weight(role);
            if (!weight_ok(w) || W[w].type != DType::F32 || W[w].shape.size() != 2 ||
                W[w].shape[1] != op.rotary_dim / 2 || W[w].shape[0] < desc_.seq_max)
              throw InputError(where(op) + ": weight '" + role + "' must be float32 [>= max sequence, rotary_dim/2]");
          }
        }
        if (op.weight("score_bias") != NO_WEIGHT) {  // the bias by distance j - i, -(seq_max-1) .. seq_max-1
          const int w = op.weight("score_bias");
          if (desc_.seq_max > kAttentionBiasMaxSeq)
            throw InputError(where(op) + ": a score bias serves sequences up to 2^30, the profile's maximum is " +
                             std::to_string(desc_.seq_max));
          if (W[w].type != DType::F32 || W[w].shape != std::vector<int64_t>{op.num_heads, 2 * desc_.seq_max - 1})
            throw InputError(where(op) + ": weight 'score_bias' (" + W[w].name + ") must be float32 [num_heads " +
                             std::to_string(op.num_heads) + ", 2 * max sequence - 1 = " +
                             std::to_string(2 * desc_.seq_max - 1) + "]");
        }
        if (op.window < -1) throw InputError(where(op) + ": window must be >= 0, or -1 for none");
        if (!std::isfinite(op.softcap) || op.softcap < 0.f)
          throw InputError(where(op) + ": softcap must be a finite float > 0, or 0 for none");
        const int qn = op.weight("q_norm"), kn = op.weight("k_norm");
        if ((qn == NO_WEIGHT) != (kn == NO_WEIGHT))
          throw InputError(where(op) + ": a query/key norm needs both 'q_norm' and 'k_norm'");
        if (qn == NO_WEIGHT && (op.weight("q_norm_bias") != NO_WEIGHT || op.weight("k_norm_bias") != NO_WEIGHT))
          throw InputError(where(op) + ": q_norm_bias/k_norm_bias need q_norm and k_norm");
        if (qn != NO_WEIGHT) {  // native/kernels/rotary: QkNorm's forms
          if (!weight_ok(qn) || !weight_ok(kn)) throw InputError(where(op) + ": q_norm/k_norm out of range");
          const bool per_column = qk_norm_per_column(op, W[qn]);
          const int64_t D = op.head_size;
          auto shape_of = [&](int w) {
            std::string got;
            for (int64_t v : W[w].shape) got += (got.empty() ? "" : ", ") + std::to_string(v);
            return "[" + got + "]";
          };
          if (!per_column && W[qn].shape != std::vector<int64_t>{D})
            throw InputError(where(op) + ": weight 'q_norm' (" + W[qn].name + ") must be [head_size " +
                             std::to_string(D) + "] (shared by the heads) or [num_heads * head_size " +
                             std::to_string(op.num_heads * D) + "] (a gain per column), got " + shape_of(qn));
          auto need_shape = [&](const char* role, int w, int64_t n) {  // the other weights follow q_norm's form
            if (W[w].shape != std::vector<int64_t>{n})
              throw InputError(where(op) + ": weight '" + role + "' (" + W[w].name + ") must be [" +
                               std::to_string(n) + "] as q_norm's " + shape_of(qn) + " says, got " + shape_of(w));
          };
          need_shape("k_norm", kn, per_column ? kvh * D : D);
          for (const char* role : {"q_norm_bias", "k_norm_bias"}) {
            const int w = op.weight(role);
            if (w == NO_WEIGHT) continue;
            if (!op.qk_norm_layer) throw InputError(where(op) + ": '" + role + "' belongs to a query/key LayerNorm");
            if (!weight_ok(w)) throw InputError(where(op) + ": '" + role + "' out of range");
            need_shape(role, w, W[role[0] == 'q' ? qn : kn].shape[0]);
            if (W[w].type != W[qn].type)
              throw InputError(where(op) + ": '" + role + "' must have q_norm's dtype");
          }
          if (W[qn].type != W[kn].type) throw InputError(where(op) + ": q_norm and k_norm must share one dtype");
          if (!(per_column && !op.qk_norm_layer) && op.head_size > kQkNormMaxHead)
            throw InputError(where(op) + ": a per-head query/key norm needs head_size <= " +
                             std::to_string(kQkNormMaxHead) + ", got " + std::to_string(op.head_size));
          if (!(op.qk_norm_epsilon >= 0.f) || !std::isfinite(op.qk_norm_epsilon))
            throw InputError(where(op) + ": qk_norm_epsilon must be finite and >= 0");
          if (op.qk_norm_after_rotary && (op.rotary_dim == 0 || (per_column && !op.qk_norm_layer)))
            throw InputError(where(op) + ": a query/key norm after the rotary needs a rotary and a per-head norm");
        } else if (op.qk_norm_after_rotary) {
          throw InputError(where(op) + ": qk_norm_after_rotary needs 'q_norm' and 'k_norm'");
        }
        if (inner(out(0)) != hd) throw InputError(where(op) + ": output must be [B, S, H*D]");
        if (in(1) != NO_TENSOR) {
          if (!tensor_ok(in(1)) || T[in(1)].type != DType::I32 || inner(in(1)) != 1)
            throw InputError(where(op) + ": attention_mask must be an integer [B, S] input");
          mark_input(op, in(1), true, 0);
        }
        break;
      }
      case OpType::LayerNorm:
      case OpType::RMSNorm: {
        need_float(op, in(0), "input x");
        need_epsilon(op);
        const int64_t N = T[in(0)].dims.back();
        need_weight(op, "gamma", {N});
        if (op.type == OpType::LayerNorm) {
          need_weight(op, "beta", {N});
          if (W[op.weight("gamma")].type != W[op.weight("beta")].type)
            throw InputError(where(op) + ": gamma and beta must share one dtype");
        }
        if (in(1) != NO_TENSOR) {
          need_float(op, in(1), "residual");
          if (T[in(1)].dims != T[in(0)].dims) throw InputError(where(op) + ": residual must match x");
        }
        if (T[out(0)].dims != T[in(0)].dims) throw InputError(where(op) + ": output must match x");
        if (out(1) != NO_TENSOR) {
          need_float(op, out(1), "sum output");
          if (T[out(1)].dims != T[in(0)].dims) throw InputError(where(op) + ": sum output must match x");
        }
        if (op.residual_after && (op.type != OpType::RMSNorm || in(1) == NO_TENSOR || out(1) != NO_TENSOR))
          throw InputError(where(op) + ": residual_after is an RMSNorm's, with a residual input and no sum output");
        break;
      }
    }
  }
}

Engine::Engine(EngineDesc desc, int device) : desc_(std::move(desc)), device_(device) {
  check();
  require_usable_device(device_);
  DeviceGuard guard(device_);
  // one allocation for every weight, each at a 256-byte aligned offset (cuBLASLt and vector loads want it)
  size_t total = 0;
  offsets_.resize(desc_.weights.size());
  for (size_t i = 0; i < desc_.weights.size(); ++i) {
    offsets_[i] = total;
    total = checked_add(total, align_up(desc_.weights[i].nbytes, 256), "weight bytes");
  }
  weights_ = DeviceBuffer(std::max<size_t>(total, 256), "the plan's weights");
  for (size_t i = 0; i < desc_.weights.size(); ++i) {
    auto& w = desc_.weights[i];
    if (w.nbytes > 0) {
      if (w.host == nullptr) throw InputError("weight '" + w.name + "': no data");
      TRTRUN_CUDA_CHECK(cudaMemcpy(static_cast<char*>(weights_.get()) + offsets_[i], w.host, w.nbytes,
                                   cudaMemcpyHostToDevice));
    }
    w.host = nullptr;  // the host copy belongs to the caller
  }
}

}  // namespace trtrun
