// native/runtime/context.cpp: see context.h.
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>
#include "trtrun/context.h"

#include "runtime/gemm.h"

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "runtime/runtime_ops.h"
#include "trtrun/memory_plan.h"

#if __has_include("kernels/embedding/embedding.h")
#include "kernels/embedding/embedding.h"
#define TRTRUN_HAVE_EMBEDDING 1
#endif
#if __has_include("kernels/layernorm/layernorm.h")
#include "kernels/layernorm/layernorm.h"
#define TRTRUN_HAVE_LAYERNORM 1
#endif
#if __has_include("kernels/attention/attention.h")
#include "kernels/attention/attention.h"
#define TRTRUN_HAVE_ATTENTION 1
#endif
#if __has_include("kernels/gelu/gelu.h")
#include "kernels/gelu/gelu.h"
#define TRTRUN_HAVE_GELU 1
#endif
#if __has_include("kernels/rmsnorm/rmsnorm.h")
#include "kernels/rmsnorm/rmsnorm.h"
#define TRTRUN_HAVE_RMSNORM 1
#endif
#if __has_include("kernels/epilogue/epilogue.h")
#include "kernels/epilogue/epilogue.h"
#define TRTRUN_HAVE_EPILOGUE 1
#endif
#if __has_include("kernels/quantize/quantize.h")
#include "kernels/quantize/quantize.h"
#define TRTRUN_HAVE_QUANTIZE 1
#endif
#if __has_include("kernels/rotary/rotary.h")
#include "kernels/rotary/rotary.h"
#define TRTRUN_HAVE_ROTARY 1
#endif

namespace trtrun {

namespace {
constexpr size_t kNone = SIZE_MAX;

// The dtype a kernel is launched with for a tensor or weight the Engine checked to be float (F16 stays F16,
// anything else reads as F32, as the kernels' own dtype set had it).
DType float_dtype(DType t) { return t == DType::F16 ? DType::F16 : DType::F32; }

int64_t inner_elems(const TensorDesc& t) {
  int64_t n = 1;
  for (size_t i = 2; i < t.dims.size(); ++i) n *= t.dims[i];
  return n;
}

[[noreturn]] void missing_plugin(const OpDesc& op, const char* plugin) {
  throw DeviceError("op '" + op.name + "': this build has no " + plugin + " plugin (native/kernels/" + plugin + "/)");
}

bool is_fp8(const OpDesc& op) { return op.type == OpType::Linear && op.precision == Precision::FP8; }

// The GEMM of an fp8 Linear (gemm.h): E4M3 x and w, w uploaded transposed as [N, K], with these scales.
GemmKey fp8_key(const OpDesc& op, const EngineDesc& d, int64_t rows, DType out_t, GemmEpilogue epilogue,
                GemmScale scale) {
  const WeightDesc& w = d.weights[op.weight("weight")];
  GemmKey k;
  k.m = rows;
  k.n = w.shape[0];
  k.k = w.shape[1];
  k.operand_t = DType::F8E4M3;
  k.out_t = out_t;
  k.epilogue = epilogue;
  k.scale = scale;
  return k;
}

std::string shape_text(const GemmKey& k) {
  return std::to_string(k.m) + "x" + std::to_string(k.n) + "x" + std::to_string(k.k);
}

// The epilogue cuBLASLt can fuse for a Linear op, or None + unfused when the bias type differs from y's.
struct LinearChoice {
  GemmEpilogue epilogue = GemmEpilogue::None;
  bool fusable = true;     // false: GEMM into an fp32 accumulator, then the runtime's bias/activation kernel
  bool gelu_after = false; // gelu_erf: bias epilogue, then the gelu plugin in place on y (plan-format "hybrid")
};

// A Linear that cuBLASLt's epilogues do not finish: a gate (y = act(gate) * up, SwiGLU/GeGLU), silu, relu, relu2,
// quick_gelu, or a residual input. Its GEMM writes h and kernels/epilogue finishes y (linear_post); none of the fused
// paths below takes it. (cuBLASLt has a RELU_BIAS epilogue that would save relu's elementwise pass; not measured yet.)
bool needs_post(const OpDesc& op) {
  return op.gated || op.activation == Activation::Silu || op.activation == Activation::Relu ||
         op.activation == Activation::Relu2 || op.activation == Activation::QuickGelu ||
         (op.inputs.size() > 1 && op.inputs[1] != NO_TENSOR);
}

LinearChoice choose_linear(const OpDesc& op, const EngineDesc& d) {
  LinearChoice c;
  if (needs_post(op)) {  // plain_rows and the fusions read this: not fusable, the post path runs it
    c.fusable = false;
    return c;
  }
  const int bias = op.weight("bias");
  const DType y_t = d.tensors[op.outputs[0]].type;
  const bool has_bias = bias != NO_WEIGHT;
  if (has_bias && d.weights[bias].type != y_t) c.fusable = false;
  switch (op.activation) {
    case Activation::None: c.epilogue = has_bias ? GemmEpilogue::Bias : GemmEpilogue::None; break;
    // cuBLASLt's GELU epilogue is the tanh form, applied to the fp32 accumulator (allowed by plan-format.md)
    case Activation::GeluTanh: c.epilogue = has_bias ? GemmEpilogue::GeluBias : GemmEpilogue::Gelu; break;
    case Activation::GeluErf:
      c.epilogue = has_bias ? GemmEpilogue::Bias : GemmEpilogue::None;
      c.gelu_after = true;
      break;
    case Activation::Silu:
    case Activation::Relu:
    case Activation::Relu2:
    case Activation::QuickGelu: break;  // needs_post: not reached
  }
  return c;
}

GemmKey linear_key(const OpDesc& op, const EngineDesc& d, int64_t rows, const LinearChoice& c, bool unfused) {
  const WeightDesc& w = d.weights[op.weight("weight")];
  GemmKey k;
  k.m = rows;
  k.k = w.shape[0];
  k.n = w.shape[1];
  k.operand_t = w.type;
  k.out_t = unfused ? DType::F32 : d.tensors[op.outputs[0]].type;
  k.epilogue = unfused ? GemmEpilogue::None : c.epilogue;
  k.tf32 = d.tf32;
  return k;
}

// The GEMM of a Linear run split into `split` K slices (fp16 operands, unsummed fp32 slices out): one key for
// the plan-time check (m = the planned rows) and the run (m = the run's rows).
GemmKey split_linear_key(int64_t m, const WeightDesc& w, int split) {
  GemmKey key;
  key.m = m;
  key.n = w.shape[1];
  key.k = w.shape[0];
  key.operand_t = DType::F16;
  key.out_t = DType::F32;
  key.split = split;
  return key;
}

// How the GEMM of a needs_post Linear writes h, so that launch_linear_epilogue sees what trtrun.reference.ref_linear
// computes: h = x @ W + bias in fp32, rounded to y's dtype before an activation or gate reads it in fp16/hybrid ops;
// not rounded in fp32 ops, nor where only a residual follows (added before the one rounding). Direct: cuBLASLt's
// bias epilogue produces exactly that h (in y's dtype, or fp32), into y itself when not gated (the epilogue then runs
// in place) or into an [rows, 2m] scratch when gated. Otherwise the GEMM writes a plain fp32 accumulator and the
// epilogue kernel adds the bias and rounds. cuBLASLt has no gated epilogue, so a gate always costs the h scratch's
// write and read: one elementwise pass, instead of a second GEMM's worth of traffic for separate gate and up outputs.
LinearPost linear_post(const OpDesc& op, const EngineDesc& d) {
  LinearPost p;
  if (!needs_post(op)) return p;
  p.on = true;
  const DType y_t = d.tensors[op.outputs[0]].type;
  const bool h_rounded = (op.gated || op.activation != Activation::None) && op.precision != Precision::FP32;
  const DType ht = h_rounded ? y_t : DType::F32;
  const int bias = op.weight("bias");
  p.direct = (bias == NO_WEIGHT || d.weights[bias].type == ht) && (op.gated || ht == y_t);
  p.h_t = p.direct ? ht : DType::F32;
  p.round_h = h_rounded && !p.direct;
  return p;
}

GemmKey post_key(const OpDesc& op, const EngineDesc& d, int64_t rows, const LinearPost& p) {
  const WeightDesc& w = d.weights[op.weight("weight")];
  GemmKey k;
  k.m = rows;
  k.k = w.shape[0];
  k.n = w.shape[1];
  k.operand_t = w.type;
  k.out_t = p.h_t;
  k.epilogue = p.direct && op.weight("bias") != NO_WEIGHT ? GemmEpilogue::Bias : GemmEpilogue::None;
  k.tf32 = d.tf32;
  return k;
}

// The dtype the rotated copy of an Attention's qkv has: fp32 ops on an fp16 qkv rotate in fp32 and keep fp32 operands
// (the reference's rotate on float32), so that copy is fp32; otherwise the qkv's own dtype (the attention kernel
// rounds to fp16 where the reference does).
DType rotary_type(const OpDesc& op, const EngineDesc& d) {
  const DType q = d.tensors[op.inputs[0]].type;
  return op.precision == Precision::FP32 && q == DType::F16 ? DType::F32 : q;
}

// Whether an Attention rewrites Q and K before its kernel reads them: a rotary, a query/key norm (q_norm/k_norm, applied
// by the same launcher before the rotation), or both.
bool has_qk_norm(const OpDesc& op) { return op.weight("q_norm") != NO_WEIGHT; }
bool rewrites_qk(const OpDesc& op) { return op.rotary_dim > 0 || has_qk_norm(op); }

// Whether the attention kernel may rotate Q and K itself as it loads their tiles (AttentionExtras::rope_cos): a plain
// rotary (no q/k norm) the kernels take (attention_takes_rotary) on an fp16 qkv in hybrid or fp16 precision.
// Bit-identical to the separate pass (same arithmetic and rounding), which it then saves: a read and write of Q and K.
// Whether it does at a shape is attention_rotary_pays', at run time (the rotated copy stays planned for the others).
bool rotary_in_attention(const OpDesc& op, const EngineDesc& d) {
#ifdef TRTRUN_HAVE_ATTENTION
  return attention_takes_rotary(op.head_size, op.rotary_dim) && !has_qk_norm(op) && op.precision != Precision::FP32 &&
         d.tensors[op.inputs[0]].type == DType::F16;
#else
  return false;
#endif
}

}  // namespace

// ------------------------------------------------------------------------------------------------ construction
Context::Context(std::shared_ptr<const Engine> engine, ContextOptions options)
    : engine_(std::move(engine)), options_(options), device_(engine_->device()), graphs_on_(options.use_graphs) {
  DeviceGuard guard(device_);
  const char* sep = std::getenv("TRTRUN_STAGE_SEPARATE");
  separate_staging_ = sep != nullptr && sep[0] == '1';
  try {
    init();
  } catch (...) {
    // the destructor does not run for a constructor that throws: release the raw CUDA handles here (the
    // members that own memory free it themselves), so a failed context (out of memory) leaks nothing
    release_handles();
    throw;
  }
}

void Context::release_handles() noexcept {
  for (auto& kv : graphs_) TRTRUN_CUDA_IGNORE(cudaGraphExecDestroy(kv.second.first));
  graphs_.clear();
  lru_.clear();
  gemm_.reset();
  if (done_) TRTRUN_CUDA_IGNORE(cudaEventDestroy(done_));
  if (stream_) TRTRUN_CUDA_IGNORE(cudaStreamDestroy(stream_));
  done_ = nullptr;
  stream_ = nullptr;
}

void Context::init() {
  const EngineDesc& d = engine_->desc();
  const int64_t B = d.batch_max, S = d.seq_max;
  const int n_ops = static_cast<int>(d.ops.size());
  stage_jobs_.reserve(engine_->input_info().size() + 1);  // the inputs and the valid-column mask

  TRTRUN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  TRTRUN_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  gemm_ = std::make_unique<GemmRunner>(options_.workspace_bytes, options_.gemm_search);

  // ---- lifetimes of every tensor and scratch buffer, in op steps (-1: staged before the first op)
  std::vector<BufferLife> lives;
  std::vector<int> first(d.tensors.size(), std::numeric_limits<int>::max()), last(d.tensors.size(), -2);
  for (int t : d.inputs) first[t] = -1, last[t] = std::max(last[t], -1);
  for (int i = 0; i < n_ops; ++i) {
    for (int t : d.ops[i].inputs)
      if (t != NO_TENSOR) last[t] = std::max(last[t], i);
    for (int t : d.ops[i].outputs)
      if (t != NO_TENSOR) first[t] = std::min(first[t], i), last[t] = std::max(last[t], i);
  }
  for (int t : d.outputs) last[t] = n_ops;
  tensor_offset_.assign(d.tensors.size(), kNone);

  std::vector<int64_t> rows_cap(d.tensors.size(), -1);  // per tensor: rows planned (-1: all; chunks, caps)
  // Rows of Linear `op` at the profile's maxima when it takes the fused cuBLASLt path with no operand cast and
  // no separate GELU pass (with add_c: the residual added in the epilogue too), else -1.
  auto plain_rows = [&](const OpDesc& op, bool add_c) -> int64_t {
    if (is_fp8(op)) return -1;  // quantized first, its own GEMM: no chunking, splitting or residual fusion
    const WeightDesc& w = d.weights[op.weight("weight")];
    const TensorDesc& x = d.tensors[op.inputs[0]];
    if (x.type != w.type) return -1;
    LinearChoice c = choose_linear(op, d);
    if (!c.fusable || c.gelu_after) return -1;
    const int64_t rows = static_cast<int64_t>(x.numel(B, S) / static_cast<size_t>(w.shape[0]));
    GemmKey key = linear_key(op, d, std::min<int64_t>(rows, 4096), c, false);
    key.add_c = add_c;
    return gemm_->prepare(key) ? rows : -1;
  };
  // ---- Linear -> LayerNorm residual fusion (see context.h, resid_dst_)
  std::vector<int> uses(d.tensors.size(), 0);
  for (const OpDesc& op : d.ops)
    for (int t : op.inputs)
      if (t != NO_TENSOR) ++uses[t];
  for (int t : d.outputs) ++uses[t];
  resid_dst_.assign(n_ops, -1);
  if (options_.fuse_residual) {
    for (int i = 0; i + 1 < n_ops; ++i) {
      const OpDesc& a = d.ops[i];
      const OpDesc& ln = d.ops[i + 1];
      if (a.type != OpType::Linear || ln.type != OpType::LayerNorm || a.outputs.empty() || ln.inputs.size() < 2)
        continue;
      const int t = a.outputs[0], r = ln.inputs[1];
      if (t == NO_TENSOR || ln.inputs[0] != t || r == NO_TENSOR || r == t || uses[t] != 1) continue;
      if (ln.precision == Precision::FP16) continue;  // fp16 statistics round x and r before adding: not this
      const int sum = ln.outputs.size() > 1 ? ln.outputs[1] : NO_TENSOR;
      if (d.tensors[t].type != DType::F32 || d.tensors[r].type != DType::F32 ||
          (sum != NO_TENSOR && d.tensors[sum].type != DType::F32))
        continue;
      if (a.activation != Activation::None) continue;
      if (d.weights[a.weight("weight")].type != DType::F16) continue;  // fp32 GEMMs: measured slower (BERT-base
                                                                          // fp32 32x128 +1%)
      const int64_t rows = plain_rows(a, true);
      if (rows < 0) continue;  // e.g. no out-of-place algorithm: the plain path
      resid_dst_[i] = sum != NO_TENSOR ? sum : t;
      if (sum != NO_TENSOR) {
        first[sum] = std::min(first[sum], i);  // the sum is written by the GEMM at op i, not at op i+1
        // the Linear's own output is written only by the unfused runs (fewer than min_rows rows)
        const int64_t cap = std::max<int64_t>(options_.fuse_residual_min_rows - 1, 0);
        if (cap == 0) last[t] = -2;  // never: no arena space
        else rows_cap[t] = std::min(cap, rows);
      }
      // the residual is read by the GEMM at op i now (it was read at op i+1): it is live from before op i anyway
    }
  }

  // ---- Linear -> LayerNorm pairs split into K slices at few rows (ContextOptions::split_ln_max_rows)
  split_.assign(n_ops, 0);
  split_offset_.assign(n_ops, kNone);
  std::vector<std::pair<int, size_t>> split_bytes;  // (op, bytes) planned below
  if (options_.split_ln_max_rows > 0 && options_.split_ln_slice > 0) {
    for (int i = 0; i + 1 < n_ops; ++i) {
      const OpDesc& a = d.ops[i];
      const OpDesc& ln = d.ops[i + 1];
      if (a.type != OpType::Linear || ln.type != OpType::LayerNorm || a.outputs.empty() || ln.inputs.empty()) continue;
      const int t = a.outputs[0];
      if (t == NO_TENSOR || ln.inputs[0] != t || uses[t] != 1) continue;  // only the LayerNorm reads it
      if (ln.precision == Precision::FP16 || a.activation != Activation::None || needs_post(a)) continue;
      const WeightDesc& w = d.weights[a.weight("weight")];
      if (w.type != DType::F16 || d.tensors[a.inputs[0]].type != DType::F16) continue;
      const int bias = a.weight("bias");
      if (bias != NO_WEIGHT && !is_float(d.weights[bias].type)) continue;
      const int64_t k = w.shape[0], n = w.shape[1], slice = options_.split_ln_slice;
      if (k % slice != 0 || k / slice < 2 || slice % 8 != 0) continue;
      const int64_t rows = static_cast<int64_t>(d.tensors[a.inputs[0]].numel(B, S) / static_cast<size_t>(k));
      const int64_t cap = std::min(rows, options_.split_ln_max_rows);
      const GemmKey key = split_linear_key(cap, w, static_cast<int>(k / slice));
      if (!gemm_->prepare(key)) continue;
      split_[i] = key.split;
      split_bytes.emplace_back(i, checked_mul(checked_mul(static_cast<size_t>(key.split), static_cast<size_t>(cap),
                                                          "split slices"),
                                              checked_mul(static_cast<size_t>(n), 4, "split slices"), "split slices"));
    }
  }

  // ---- feed-forward pairs run in row chunks (ContextOptions::ffn_chunks): op i and i+1 are Linears, op i's
  // output feeds only op i+1 and is no graph output, and both take the fused cuBLASLt path with no cast and
  // no separate GELU pass. The intermediate is then planned at chunk size.
  ffn_first_.assign(n_ops, 0);
  if (options_.ffn_chunks > 1) {
    for (int i = 0; i + 1 < n_ops; ++i) {
      const OpDesc& a = d.ops[i];
      const OpDesc& b = d.ops[i + 1];
      if (a.type != OpType::Linear || b.type != OpType::Linear || a.outputs.empty() || b.inputs.empty()) continue;
      const int t = a.outputs[0];
      if (t == NO_TENSOR || b.inputs[0] != t || uses[t] != 1) continue;
      const int64_t rows = plain_rows(a, false);
      if (rows < 0 || plain_rows(b, false) < 0) continue;
      const int64_t chunk = (rows + options_.ffn_chunks - 1) / options_.ffn_chunks;
      if (chunk < options_.ffn_chunk_min_rows) continue;  // small chunks: slower GEMMs for little memory
      if (ffn_chunk_rows_ != 0 && ffn_chunk_rows_ != chunk) continue;  // one chunk size per context
      ffn_chunk_rows_ = chunk;
      ffn_first_[i] = 1;
      rows_cap[t] = chunk;
      // the first Linear reads its input while the second one writes (chunk by chunk): the input must live
      // through op i+1, or the planner may place op i+1's output over it (seen on an H200: GPT-2's pre-norm
      // FFN input dies at c_fc, and chunk 2 read rows that chunk 1's c_proj had overwritten)
      last[a.inputs[0]] = std::max(last[a.inputs[0]], i + 1);
      ++i;  // pairs do not overlap
    }
  }

  std::vector<std::pair<int, int>> owners;  // (kind, index): 0 tensor, 1 cast scratch, 2 acc scratch, 3 mask,
                                            // 4 split slices, 5 rotated qkv copy, 6 fp8 codes and scales
  for (size_t t = 0; t < d.tensors.size(); ++t) {
    if (last[t] < -1) continue;  // untouched
    size_t elems = d.tensors[t].numel(B, S);
    if (rows_cap[t] >= 0) elems = checked_mul(static_cast<size_t>(rows_cap[t]),
                                              static_cast<size_t>(inner_elems(d.tensors[t])), "chunk elements");
    lives.push_back({checked_mul(elems, elem_size(d.tensors[t].type), "activation bytes"), first[t], last[t]});
    owners.emplace_back(0, static_cast<int>(t));
  }
  cast_offset_.assign(n_ops, kNone);
  acc_offset_.assign(n_ops, kNone);
  post_.assign(n_ops, LinearPost{});
  fp8_.assign(n_ops, Fp8Linear{});
  rotary_offset_.assign(n_ops, kNone);
  bool need_valid_mask = false;
  for (int i = 0; i < n_ops; ++i) {
    const OpDesc& op = d.ops[i];
    if (is_fp8(op)) {
#ifndef TRTRUN_HAVE_QUANTIZE
      missing_plugin(op, "quantize");
#endif
      // The scales cuBLASLt applies: scalar for a per-tensor weight scale with a static activation scale (the
      // Engine allows weight_scale [1] only then), else outer vectors (a weight scale per output channel, the
      // lowering broadcasting a per-tensor one; an activation scale per row). Whether cuBLASLt offers a scaled
      // algorithm depends on the output type: cuBLAS 13 on Hopper offers outer vectors into fp16 but not into an
      // fp32 D. So each path asks with the type it writes: the fused epilogue into y (or h) with the scales, and
      // the fp32 accumulator with the scales where offered, else the bare codes and launch_fp8_rescale (cuBLAS
      // before 12.9 has no outer vectors at all). Asked at a typical row count, as for the fused epilogues below.
      const WeightDesc& w = d.weights[op.weight("weight")];
      const int64_t k = w.shape[1], n = w.shape[0];
      const int64_t rows = static_cast<int64_t>(d.tensors[op.inputs[0]].numel(B, S) / static_cast<size_t>(k));
      const int64_t probe = std::min<int64_t>(rows, 4096);
      const GemmScale want =
          d.weights[op.weight("weight_scale")].shape[0] == 1 ? GemmScale::Scalar : GemmScale::OuterVec;
      auto offered = [&](DType out_t, GemmEpilogue epilogue, GemmScale scale) {
        return gemm_->prepare(fp8_key(op, d, probe, out_t, epilogue, scale));
      };
      // the fp32 accumulator path's scale mode
      auto acc_scale = [&]() {
        if (offered(DType::F32, GemmEpilogue::None, want)) return want;
        if (!offered(DType::F32, GemmEpilogue::None, GemmScale::None))
          throw DeviceError("op '" + op.name + "': cuBLASLt offers no fp8 (E4M3) GEMM for " +
                            shape_text(fp8_key(op, d, probe, DType::F32, GemmEpilogue::None, GemmScale::None)) +
                            " on this GPU (fp8 GEMMs need compute capability 8.9 or 9.0+)");
        return GemmScale::None;
      };
      Fp8Linear f;
      f.on = true;
      const size_t q_bytes = align_up(checked_mul(static_cast<size_t>(rows), static_cast<size_t>(k), "fp8 codes"), 256);
      f.scales_at = q_bytes;
      lives.push_back({checked_add(q_bytes, checked_mul(static_cast<size_t>(rows), 4, "fp8 scales"), "fp8 scratch"),
                       i, i});
      owners.emplace_back(6, i);
      const int bias = op.weight("bias");
      if (needs_post(op)) {
        LinearPost p = linear_post(op, d);
        if (p.direct &&
            offered(p.h_t, bias != NO_WEIGHT ? GemmEpilogue::Bias : GemmEpilogue::None, want)) {
          f.scale = want;
        } else {
          p = LinearPost{true, false, DType::F32, op.gated || op.activation != Activation::None};
          f.scale = acc_scale();
        }
        post_[i] = p;
        if (op.gated || !p.direct) {
          lives.push_back({checked_mul(checked_mul(static_cast<size_t>(rows), static_cast<size_t>(n), "h"),
                                       elem_size(p.h_t), "linear epilogue scratch"), i, i});
          owners.emplace_back(2, i);
        }
      } else {
        const LinearChoice c = choose_linear(op, d);
        f.fused = c.fusable && offered(d.tensors[op.outputs[0]].type, c.epilogue, want);
        if (f.fused) {
          f.scale = want;
        } else {
          f.scale = acc_scale();
          lives.push_back({checked_mul(checked_mul(static_cast<size_t>(rows), static_cast<size_t>(n), "acc"), 4,
                                       "accumulator scratch"), i, i});
          owners.emplace_back(2, i);
        }
      }
      fp8_[i] = f;
      continue;
    }
    if (op.type == OpType::Linear) {
      const WeightDesc& w = d.weights[op.weight("weight")];
      const TensorDesc& x = d.tensors[op.inputs[0]];
      const int64_t rows = static_cast<int64_t>(x.numel(B, S) / static_cast<size_t>(w.shape[0]));
      if (x.type != w.type) {  // GEMM operands in the weight's type (fp16 in hybrid/fp16, fp32 in fp32)
        lives.push_back({checked_mul(x.numel(B, S), elem_size(w.type), "cast scratch"), i, i});
        owners.emplace_back(1, i);
      }
      if (needs_post(op)) {  // h scratch for a gate, or an fp32 accumulator (linear_post)
        LinearPost p = linear_post(op, d);
        if (p.direct && !gemm_->prepare(post_key(op, d, std::min<int64_t>(rows, 4096), p))) {
          p = LinearPost{true, false, DType::F32,
                         (op.gated || op.activation != Activation::None) && op.precision != Precision::FP32};
        }
        post_[i] = p;
        if (op.gated || !p.direct) {
          lives.push_back({checked_mul(checked_mul(static_cast<size_t>(rows), static_cast<size_t>(w.shape[1]), "h"),
                                       elem_size(p.h_t), "linear epilogue scratch"), i, i});
          owners.emplace_back(2, i);
        }
        continue;
      }
      LinearChoice c = choose_linear(op, d);
      // The fused epilogue is used when cuBLASLt offers it for this dtype combination (asked at a typical row
      // count: support depends on the types and the epilogue, and asking at an absurd profile's row count
      // would fail for the wrong reason); otherwise an fp32 accumulator is planned for the unfused path.
      bool fused = c.fusable && gemm_->prepare(linear_key(op, d, std::min<int64_t>(rows, 4096), c, false));
      if (!fused) {
        lives.push_back({checked_mul(checked_mul(static_cast<size_t>(rows), static_cast<size_t>(w.shape[1]), "acc"),
                                     4, "accumulator scratch"), i, i});
        owners.emplace_back(2, i);
      }
    } else if (op.type == OpType::Attention) {
      if ((op.inputs.size() < 2 || op.inputs[1] == NO_TENSOR) && !op.causal) need_valid_mask = true;
      // rotary (and q/k norm) in place where this op is the qkv's only reader and keeps its dtype; else into a copy.
      // The normed pass overwrites every Q and K column, not only the rotated ones: in place that is still only this
      // op's own input (a warp reads its whole head before writing it; V is never written).
      const int q = op.inputs[0];
      const bool output = std::find(d.outputs.begin(), d.outputs.end(), q) != d.outputs.end();
      if (rewrites_qk(op) && (uses[q] != 1 || output || rotary_type(op, d) != d.tensors[q].type)) {
        lives.push_back({checked_mul(d.tensors[q].numel(B, S), elem_size(rotary_type(op, d)), "rotary copy"), i, i});
        owners.emplace_back(5, i);
      }
    }
  }
  if (need_valid_mask) {
    lives.push_back({checked_mul(static_cast<size_t>(B * S), 4, "mask bytes"), -1, n_ops});
    owners.emplace_back(3, 0);
  }
  for (const auto& sb : split_bytes) {  // written by the Linear at op i, summed by the LayerNorm at op i+1
    lives.push_back({sb.second, sb.first, sb.first + 1});
    owners.emplace_back(4, sb.first);
  }
  ArenaPlan plan = plan_arena(lives, 256);
  arena_naive_bytes_ = plan.naive_total;
  for (size_t j = 0; j < owners.size(); ++j) {
    const auto& o = owners[j];
    if (o.first == 0) tensor_offset_[o.second] = plan.offsets[j];
    else if (o.first == 1) cast_offset_[o.second] = plan.offsets[j];
    else if (o.first == 2) acc_offset_[o.second] = plan.offsets[j];
    else if (o.first == 4) split_offset_[o.second] = plan.offsets[j];
    else if (o.first == 5) rotary_offset_[o.second] = plan.offsets[j];
    else if (o.first == 6) fp8_[o.second].offset = plan.offsets[j];
    else valid_mask_offset_ = plan.offsets[j];
  }
  arena_ = DeviceBuffer(std::max<size_t>(plan.total, 256), "the activation arena (at the profile's maximum shapes)");

  // ---- pinned host staging: int32 inputs [B, S] and outputs [B, S, ...]
  const auto& info = engine_->input_info();
  host_in_.resize(info.size());
  for (size_t i = 0; i < info.size(); ++i)
    if (info[i].used)
      host_in_[i] = PinnedBuffer(checked_mul(static_cast<size_t>(B * S), 4, "input bytes"), "pinned input buffer");
  host_out_.resize(d.outputs.size());
  for (size_t i = 0; i < d.outputs.size(); ++i) {
    const TensorDesc& t = d.tensors[d.outputs[i]];
    host_out_[i] = PinnedBuffer(checked_mul(t.numel(B, S), elem_size(t.type), "output bytes"), "pinned output buffer");
  }
  input_flag_ = PinnedBuffer(sizeof(int32_t), "input flag", cudaHostAllocMapped);
  *static_cast<int32_t*>(input_flag_.get()) = 0;
  TRTRUN_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&input_flag_dev_), input_flag_.get(), 0));
}

Context::~Context() {
  // Never throws: wait for work still in flight (on any stream) before freeing what it uses.
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  TRTRUN_CUDA_IGNORE(cudaSetDevice(device_));
  if (done_ && have_done_) TRTRUN_CUDA_IGNORE(cudaEventSynchronize(done_));
  if (stream_) TRTRUN_CUDA_IGNORE(cudaStreamSynchronize(stream_));
  release_handles();
  arena_ = DeviceBuffer();
  host_in_.clear();
  host_out_.clear();
  input_flag_ = PinnedBuffer();
  if (previous >= 0 && previous != device_) TRTRUN_CUDA_IGNORE(cudaSetDevice(previous));
}

// ------------------------------------------------------------------------------------------------ accessors
int32_t* Context::host_input(size_t slot) const {
  return static_cast<int32_t*>(host_in_.at(slot).get());
}
size_t Context::host_input_elems(size_t slot) const { return host_in_.at(slot).size() / sizeof(int32_t); }
void* Context::host_output(size_t slot) const { return host_out_.at(slot).get(); }
size_t Context::host_output_bytes(size_t slot) const { return host_out_.at(slot).size(); }
size_t Context::graph_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return graphs_.size();
}
size_t Context::gemm_plans() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return gemm_->cached();
}
// Whether Linear op i adds its LayerNorm's residual at a run of `rows` tokens (batch x sequence bucket).
bool Context::resid_fused_at(size_t i, int64_t rows) const {
  return resid_dst_[i] >= 0 && rows >= options_.fuse_residual_min_rows && !split_at(i, rows);
}

// Whether Linear op i runs split into K slices summed by its LayerNorm at a run of `rows` tokens.
bool Context::split_at(size_t i, int64_t rows) const {
  if (split_[i] == 0 || rows > options_.split_ln_max_rows) return false;
  return !(i > 0 && ffn_first_[i - 1] && rows > ffn_chunk_rows_);  // the chunked FFN pair runs its own GEMMs
}

size_t Context::split_linears() const {
  return static_cast<size_t>(std::count_if(split_.begin(), split_.end(), [](int v) { return v > 0; }));
}

size_t Context::fused_residuals() const {
  return static_cast<size_t>(std::count_if(resid_dst_.begin(), resid_dst_.end(), [](int t) { return t >= 0; }));
}
std::string Context::graph_note() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return graph_note_;
}
char* Context::tensor_ptr(int t) const {
  if (t == NO_TENSOR) return nullptr;
  size_t off = tensor_offset_.at(static_cast<size_t>(t));
  if (off == kNone) throw std::logic_error("tensor without arena space");
  return static_cast<char*>(arena_.get()) + off;
}

// ------------------------------------------------------------------------------------------------ runs
void Context::check_shape(int batch, int seq, int seq_bucket) const {
  const EngineDesc& d = engine_->desc();
  if (batch < 1 || batch > d.batch_max)
    throw ShapeError("batch " + std::to_string(batch) + " is outside [1, " + std::to_string(d.batch_max) + "]");
  if (seq < 1 || seq_bucket < seq || seq_bucket > d.seq_max)
    throw ShapeError("sequence " + std::to_string(seq) + " (bucket " + std::to_string(seq_bucket) +
                     ") is outside [1, " + std::to_string(d.seq_max) + "]");
}

void Context::begin(cudaStream_t s) {
  // order after this context's previous run, whichever stream it was on (the arena is reused)
  if (have_done_) TRTRUN_CUDA_CHECK(cudaStreamWaitEvent(s, done_, 0));
}

void Context::finish(cudaStream_t s) {
  TRTRUN_CUDA_CHECK(cudaEventRecord(done_, s));
  have_done_ = true;
}

void Context::stage_common(int batch, int seq, int seq_bucket, cudaStream_t s) {
  std::vector<StageJob>& jobs = stage_jobs_;
  if (valid_mask_offset_ != kNone) {
    StageJob j;
    j.dst = reinterpret_cast<int32_t*>(static_cast<char*>(arena_.get()) + valid_mask_offset_);
    j.kind = StageKind::ValidMask;
    jobs.push_back(j);
  }
  // one launch for all (TRTRUN_STAGE_SEPARATE=1 at context creation: one launch each, to measure the difference)
  const size_t per = separate_staging_ ? 1 : static_cast<size_t>(kMaxStageJobs);
  for (size_t i = 0; i < jobs.size(); i += per)
    launch_stage_inputs(jobs.data() + i, static_cast<int>(std::min(per, jobs.size() - i)), batch, seq, seq_bucket,
                        input_flag_dev_, s);
}

void Context::run_host(int batch, int seq, int seq_bucket) {
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceGuard guard(device_);
  check_shape(batch, seq, seq_bucket);
  const EngineDesc& d = engine_->desc();
  const auto& info = engine_->input_info();
  cudaStream_t s = stream_;
  begin(s);
  stage_jobs_.clear();  // the host path copies its inputs as they are: only the valid-column mask is staged
  for (size_t i = 0; i < info.size(); ++i) {
    if (!info[i].used) continue;
    TRTRUN_CUDA_CHECK(cudaMemcpyAsync(tensor_ptr(info[i].tensor), host_in_[i].get(),
                                      static_cast<size_t>(batch) * seq_bucket * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, s));
  }
  stage_common(batch, seq, seq_bucket, s);
  execute(batch, seq_bucket, s);
  for (size_t i = 0; i < d.outputs.size(); ++i) {
    const TensorDesc& t = d.tensors[d.outputs[i]];
    const size_t row = static_cast<size_t>(inner_elems(t)) * elem_size(t.type);
    TRTRUN_CUDA_CHECK(cudaMemcpy2DAsync(host_out_[i].get(), row * seq, tensor_ptr(d.outputs[i]), row * seq_bucket,
                                        row * seq, batch, cudaMemcpyDeviceToHost, s));
  }
  finish(s);
  TRTRUN_CUDA_CHECK(cudaStreamSynchronize(s));
}

void Context::run_device(int batch, int seq, int seq_bucket, const std::vector<Feed>& feeds,
                         const std::vector<void*>& outputs, cudaStream_t stream, bool own_stream, bool sync) {
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceGuard guard(device_);
  check_shape(batch, seq, seq_bucket);
  const EngineDesc& d = engine_->desc();
  const auto& info = engine_->input_info();
  if (feeds.size() != info.size()) throw InputError("run_device: wrong number of inputs");
  if (outputs.size() != d.outputs.size()) throw InputError("run_device: wrong number of outputs");
  for (size_t i = 0; i < info.size(); ++i)
    if (info[i].used && feeds[i].ptr != nullptr && feeds[i].row_stride < seq)
      throw InputError("run_device: input '" + d.tensors[info[i].tensor].name + "' has a row stride below seq");
  for (void* p : outputs)
    if (p == nullptr) throw InputError("run_device: null output pointer");
  cudaStream_t s = own_stream ? stream_ : stream;
  begin(s);
  std::vector<StageJob>& jobs = stage_jobs_;
  jobs.clear();
  for (size_t i = 0; i < info.size(); ++i) {
    if (!info[i].used) continue;
    StageJob j;
    j.dst = reinterpret_cast<int32_t*>(tensor_ptr(info[i].tensor));
    if (feeds[i].ptr == nullptr) {  // not given: a mask of ones (zero padding), or token types 0
      j.kind = info[i].is_mask ? StageKind::ValidMask : StageKind::Zeros;
    } else {
      j.src = feeds[i].ptr;
      j.src_is_int64 = feeds[i].is_int64;
      j.src_row_stride = feeds[i].row_stride;
      j.kind = info[i].is_mask ? StageKind::Mask : StageKind::Ids;
      j.limit = info[i].limit;
    }
    jobs.push_back(j);
  }
  stage_common(batch, seq, seq_bucket, s);
  execute(batch, seq_bucket, s);
  for (size_t i = 0; i < d.outputs.size(); ++i) {
    const TensorDesc& t = d.tensors[d.outputs[i]];
    const size_t row = static_cast<size_t>(inner_elems(t)) * elem_size(t.type);
    TRTRUN_CUDA_CHECK(cudaMemcpy2DAsync(outputs[i], row * seq, tensor_ptr(d.outputs[i]), row * seq_bucket, row * seq,
                                        batch, cudaMemcpyDeviceToDevice, s));
  }
  finish(s);
  if (sync) {
    TRTRUN_CUDA_CHECK(cudaEventSynchronize(done_));
    check_input_flag();
  }
}

void Context::synchronize() {
  std::lock_guard<std::mutex> lock(mutex_);
  DeviceGuard guard(device_);
  if (have_done_) TRTRUN_CUDA_CHECK(cudaEventSynchronize(done_));
  TRTRUN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  check_input_flag();
}

void Context::check_input_flag() {
  volatile int32_t* flag = static_cast<volatile int32_t*>(input_flag_.get());
  if (*flag != 0) {
    *flag = 0;
    throw InputError(
        "a device-side input held a token id outside the vocabulary (or a token type outside the type table); "
        "those positions were computed with id 0: check the ids passed to run_device");
  }
}

// ------------------------------------------------------------------------------------------------ execution
void Context::execute(int batch, int seq_bucket, cudaStream_t s) {
  if (!graphs_on_) {
    enqueue_ops(batch, seq_bucket, s);
    return;
  }
  const GraphKey key{batch, seq_bucket};
  auto it = graphs_.find(key);
  if (it != graphs_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.second);
    TRTRUN_CUDA_CHECK(cudaGraphLaunch(it->second.first, s));
    return;
  }
  // First run at this shape: eagerly (this also runs cuBLASLt's heuristics and loads kernels outside any
  // capture), then capture the same sequence into a graph for the next runs. Capturing records, runs nothing.
  enqueue_ops(batch, seq_bucket, s);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  TRTRUN_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue_ops(batch, seq_bucket, stream_);
  } catch (const std::exception& e) {
    cudaGraph_t partial = nullptr;
    TRTRUN_CUDA_IGNORE(cudaStreamEndCapture(stream_, &partial));
    if (partial) TRTRUN_CUDA_IGNORE(cudaGraphDestroy(partial));
    graphs_on_ = false;
    graph_note_ = std::string("CUDA graph capture failed, running without graphs: ") + e.what();
    return;
  }
  cudaError_t e = cudaStreamEndCapture(stream_, &graph);
  if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, graph, 0);
  if (graph) TRTRUN_CUDA_IGNORE(cudaGraphDestroy(graph));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    graphs_on_ = false;
    graph_note_ = std::string("CUDA graph capture failed, running without graphs: ") + cudaGetErrorName(e) + ": " +
                  cudaGetErrorString(e);
    return;
  }
  if (graphs_.size() >= options_.max_graphs && !lru_.empty()) {
    auto victim = graphs_.find(lru_.back());
    TRTRUN_CUDA_IGNORE(cudaGraphExecDestroy(victim->second.first));
    graphs_.erase(victim);
    lru_.pop_back();
  }
  lru_.push_front(key);
  graphs_.emplace(key, std::make_pair(exec, lru_.begin()));
}

void Context::enqueue_ops(int batch, int seq_bucket, cudaStream_t s) {
  const EngineDesc& d = engine_->desc();
  const Engine& E = *engine_;
  const int rows = batch * seq_bucket;
  for (size_t i = 0; i < d.ops.size(); ++i) {
    const OpDesc& op = d.ops[i];
    auto in = [&](size_t j) { return j < op.inputs.size() ? op.inputs[j] : NO_TENSOR; };
    auto out = [&](size_t j) { return j < op.outputs.size() ? op.outputs[j] : NO_TENSOR; };
    auto dt = [&](int t) { return t == NO_TENSOR ? DType::F32 : float_dtype(d.tensors[t].type); };
    auto wt = [&](const char* role) {
      int w = op.weight(role);
      return w == NO_WEIGHT ? DType::F32 : float_dtype(d.weights[w].type);
    };
    switch (op.type) {
      case OpType::Embedding: {
#ifdef TRTRUN_HAVE_EMBEDDING
        const WeightDesc& word = d.weights[op.weight("word")];
        launch_embedding(reinterpret_cast<const int32_t*>(tensor_ptr(in(0))),
                         reinterpret_cast<const int32_t*>(tensor_ptr(in(1))), E.weight(op.weight("word")),
                         E.weight(op.weight("position")), E.weight(op.weight("token_type")), float_dtype(word.type),
                         E.weight(op.weight("gamma")), E.weight(op.weight("beta")), wt("gamma"),
                         tensor_ptr(out(0)), dt(out(0)), batch, seq_bucket, static_cast<int>(word.shape[1]),
                         op.position_offset, op.epsilon, op.precision, s);
#else
        missing_plugin(op, "embedding");
#endif
        break;
      }
      case OpType::Linear:
        if (split_at(i, rows)) {
          const WeightDesc& w = d.weights[op.weight("weight")];
          const GemmKey key = split_linear_key(
              static_cast<int64_t>(d.tensors[in(0)].numel(batch, seq_bucket) / static_cast<size_t>(w.shape[0])), w,
              split_[i]);
          if (!gemm_->prepare(key))
            throw DeviceError("op '" + op.name + "': cuBLASLt offers no algorithm for this split GEMM (" +
                              std::to_string(key.m) + "x" + std::to_string(key.n) + "x" + std::to_string(key.k) +
                              " in " + std::to_string(key.split) + " slices)");
          gemm_->run(key, tensor_ptr(in(0)), E.weight(op.weight("weight")), nullptr,
                     static_cast<char*>(arena_.get()) + split_offset_[i], s);
        } else if (ffn_first_[i] && rows > ffn_chunk_rows_) {
          enqueue_ffn_chunked(i, batch, seq_bucket, s);
          ++i;  // the pair's second Linear ran too
        } else if (resid_fused_at(i, rows)) {
          const int64_t k = d.weights[op.weight("weight")].shape[0];
          const int64_t r = static_cast<int64_t>(d.tensors[in(0)].numel(batch, seq_bucket) / static_cast<size_t>(k));
          enqueue_linear_rows(i, tensor_ptr(in(0)), tensor_ptr(resid_dst_[i]), r, s,
                              tensor_ptr(d.ops[i + 1].inputs[1]));
        } else {
          enqueue_linear(i, batch, seq_bucket, s);
        }
        break;
      case OpType::Attention: {
#ifdef TRTRUN_HAVE_ATTENTION
        const int32_t* mask = nullptr;
        if (in(1) != NO_TENSOR)
          mask = reinterpret_cast<const int32_t*>(tensor_ptr(in(1)));
        else if (!op.causal)
          mask = reinterpret_cast<const int32_t*>(static_cast<char*>(arena_.get()) + valid_mask_offset_);
        const int kv_heads = op.num_kv_heads > 0 ? op.num_kv_heads : op.num_heads;
        const void* qkv = tensor_ptr(in(0));
        DType qkv_t = dt(in(0));
        AttentionExtras extras;  // the bias by distance serves the bucket's length as the valid one's
        if (op.weight("score_bias") != NO_WEIGHT) {
          extras.bias = static_cast<const float*>(E.weight(op.weight("score_bias")));
          extras.bias_max_seq = static_cast<int>(d.seq_max);
        }
        extras.window = op.window;
        extras.softcap = op.softcap;
        const bool rope_inside = rotary_in_attention(op, d) &&
                                 attention_rotary_pays(batch, seq_bucket, op.num_heads, kv_heads, op.head_size,
                                                       op.rotary_dim, op.causal, op.precision, extras);
        if (rope_inside) {
          extras.rope_cos = static_cast<const float*>(E.weight(op.weight("rotary_cos")));
          extras.rope_sin = static_cast<const float*>(E.weight(op.weight("rotary_sin")));
          extras.rotary_dim = op.rotary_dim;
        } else if (rewrites_qk(op)) {
#ifdef TRTRUN_HAVE_ROTARY
          // rotated in place, or into the op's own copy (Context::rotary_offset_), positions 0..seq_bucket-1 (pad
          // positions come after the valid ones, so the valid tokens' angles are the reference's)
          void* dst = rotary_offset_[i] == kNone ? tensor_ptr(in(0))
                                                 : static_cast<char*>(arena_.get()) + rotary_offset_[i];
          const DType dst_t = float_dtype(rotary_type(op, d));
          const auto* cos_tab = static_cast<const float*>(E.weight(op.weight("rotary_cos")));  // null without rotary
          const auto* sin_tab = static_cast<const float*>(E.weight(op.weight("rotary_sin")));
          if (has_qk_norm(op)) {  // Q and K normalised (OpDesc::qk_norm_epsilon's forms), then rotated
            QkNorm norm;
            norm.q_gamma = E.weight(op.weight("q_norm"));
            norm.k_gamma = E.weight(op.weight("k_norm"));
            norm.q_beta = E.weight(op.weight("q_norm_bias"));  // null without one
            norm.k_beta = E.weight(op.weight("k_norm_bias"));
            norm.gamma_t = float_dtype(d.weights[op.weight("q_norm")].type);
            norm.eps = op.qk_norm_epsilon;
            norm.layer = op.qk_norm_layer;
            const bool per_column = qk_norm_per_column(op, d.weights[op.weight("q_norm")]);
            norm.gains_per_head = per_column && op.qk_norm_layer;
            norm.whole = per_column && !op.qk_norm_layer;
            norm.after_rotary = op.qk_norm_after_rotary;
            launch_rotary_qk_norm(qkv, qkv_t, dst, dst_t, cos_tab, sin_tab, norm, batch, seq_bucket, op.num_heads,
                                  kv_heads, op.head_size, op.rotary_dim, op.precision == Precision::FP16, s);
          } else {
            launch_rotary(qkv, qkv_t, dst, dst_t, cos_tab, sin_tab, batch, seq_bucket, op.num_heads, kv_heads,
                          op.head_size, op.rotary_dim, op.precision == Precision::FP16, s);
          }
          qkv = dst;
          qkv_t = dst_t;
#else
          missing_plugin(op, "rotary");
#endif
        }
        launch_attention_gqa(qkv, qkv_t, mask, tensor_ptr(out(0)), dt(out(0)), batch, seq_bucket, op.num_heads,
                             kv_heads, op.head_size, op.scale, op.causal, op.precision, s, extras);
#else
        missing_plugin(op, "attention");
#endif
        break;
      }
      case OpType::RMSNorm: {
#ifdef TRTRUN_HAVE_RMSNORM
        const int n = static_cast<int>(d.tensors[in(0)].dims.back());
        const int norm_rows = static_cast<int>(d.tensors[in(0)].numel(batch, seq_bucket) / static_cast<size_t>(n));
        launch_rmsnorm(tensor_ptr(in(0)), dt(in(0)), tensor_ptr(in(1)), dt(in(1)), E.weight(op.weight("gamma")),
                       wt("gamma"), tensor_ptr(out(0)), dt(out(0)), tensor_ptr(out(1)), dt(out(1)), norm_rows, n,
                       op.epsilon, op.precision, s, op.residual_after);
#else
        missing_plugin(op, "rmsnorm");
#endif
        break;
      }
      case OpType::LayerNorm: {
#ifdef TRTRUN_HAVE_LAYERNORM
        const int n = static_cast<int>(d.tensors[in(0)].dims.back());
        const int ln_rows = static_cast<int>(d.tensors[in(0)].numel(batch, seq_bucket) / static_cast<size_t>(n));
        if (i > 0 && split_at(i - 1, rows)) {  // the GEMM before wrote its unsummed K slices
          const OpDesc& lin = d.ops[i - 1];
          const int b = lin.weight("bias");
          launch_layernorm_parts(reinterpret_cast<const float*>(static_cast<char*>(arena_.get()) + split_offset_[i - 1]),
                                 split_[i - 1], static_cast<long long>(ln_rows) * n, E.weight(b),
                                 b == NO_WEIGHT ? DType::F32 : float_dtype(d.weights[b].type), tensor_ptr(in(1)),
                                 dt(in(1)), E.weight(op.weight("gamma")), E.weight(op.weight("beta")), wt("gamma"),
                                 tensor_ptr(out(0)), dt(out(0)), tensor_ptr(out(1)), dt(out(1)), ln_rows, n,
                                 op.epsilon, op.precision, s);
          break;
        }
        if (i > 0 && resid_fused_at(i - 1, rows)) {  // the GEMM before wrote x + residual to resid_dst_
          launch_layernorm(tensor_ptr(resid_dst_[i - 1]), DType::F32, nullptr, DType::F32,
                           E.weight(op.weight("gamma")), E.weight(op.weight("beta")), wt("gamma"), tensor_ptr(out(0)),
                           dt(out(0)), nullptr, DType::F32, ln_rows, n, op.epsilon, op.precision, s);
          break;
        }
        launch_layernorm(tensor_ptr(in(0)), dt(in(0)), tensor_ptr(in(1)), dt(in(1)), E.weight(op.weight("gamma")),
                         E.weight(op.weight("beta")), wt("gamma"), tensor_ptr(out(0)), dt(out(0)),
                         tensor_ptr(out(1)), dt(out(1)), ln_rows, n, op.epsilon, op.precision, s);
#else
        missing_plugin(op, "layernorm");
#endif
        break;
      }
    }
    (void)rows;
  }
}

void Context::enqueue_linear_rows(size_t i, const void* x, void* y, int64_t rows, cudaStream_t s, const void* c_in) {
  const EngineDesc& d = engine_->desc();
  const OpDesc& op = d.ops[i];
  LinearChoice c = choose_linear(op, d);
  GemmKey key = linear_key(op, d, rows, c, false);
  key.add_c = c_in != nullptr;
  if (!gemm_->prepare(key))
    throw DeviceError("op '" + op.name + "': cuBLASLt offers no algorithm for this GEMM (" + std::to_string(key.m) +
                      "x" + std::to_string(key.n) + "x" + std::to_string(key.k) + ")");
  gemm_->run(key, x, engine_->weight(op.weight("weight")), engine_->weight(op.weight("bias")), y, s, c_in);
}

// The feed-forward pair (op i, op i+1) over row chunks of at most ffn_chunk_rows_ rows: chunk c of the first
// Linear's output (in the intermediate's chunk-sized buffer) is consumed by the second Linear before chunk c+1
// overwrites it (stream order). Row r of the result depends on row r of the input only, so this is the
// unchunked computation, row for row.
void Context::enqueue_ffn_chunked(size_t i, int batch, int seq_bucket, cudaStream_t s) {
  const EngineDesc& d = engine_->desc();
  const OpDesc& a = d.ops[i];
  const OpDesc& b = d.ops[i + 1];
  const TensorDesc& xt = d.tensors[a.inputs[0]];
  const TensorDesc& yt = d.tensors[b.outputs[0]];
  const int64_t k1 = d.weights[a.weight("weight")].shape[0];
  const int64_t rows = static_cast<int64_t>(xt.numel(batch, seq_bucket) / static_cast<size_t>(k1));
  const size_t x_row = static_cast<size_t>(k1) * elem_size(xt.type);
  const size_t y_row = static_cast<size_t>(inner_elems(yt)) * elem_size(yt.type);
  const char* x = tensor_ptr(a.inputs[0]);
  char* mid = tensor_ptr(a.outputs[0]);
  // the second Linear may add the next LayerNorm's residual in its epilogue (resid_dst_): then it writes the sum
  const bool add = resid_fused_at(i + 1, batch * seq_bucket);
  char* y = add ? tensor_ptr(resid_dst_[i + 1]) : tensor_ptr(b.outputs[0]);
  const char* res = add ? tensor_ptr(d.ops[i + 2].inputs[1]) : nullptr;
  for (int64_t r0 = 0; r0 < rows; r0 += ffn_chunk_rows_) {
    const int64_t m = std::min<int64_t>(ffn_chunk_rows_, rows - r0);
    const size_t yo = static_cast<size_t>(r0) * y_row;
    enqueue_linear_rows(i, x + static_cast<size_t>(r0) * x_row, mid, m, s);
    enqueue_linear_rows(i + 1, mid, y + yo, m, s, add ? res + yo : nullptr);
  }
}

void Context::enqueue_linear(size_t i, int batch, int seq_bucket, cudaStream_t s) {
  if (fp8_[i].on) {
    enqueue_linear_fp8(i, batch, seq_bucket, s);
    return;
  }
  const EngineDesc& d = engine_->desc();
  const OpDesc& op = d.ops[i];
  const TensorDesc& xt = d.tensors[op.inputs[0]];
  const TensorDesc& yt = d.tensors[op.outputs[0]];
  const int wi = op.weight("weight"), bi = op.weight("bias");
  const WeightDesc& w = d.weights[wi];
  const size_t x_elems = xt.numel(batch, seq_bucket);
  const int64_t rows = static_cast<int64_t>(x_elems / static_cast<size_t>(w.shape[0]));
  const void* x = tensor_ptr(op.inputs[0]);
  void* y = tensor_ptr(op.outputs[0]);
  if (xt.type != w.type) {  // operands in the weight's type: x rounded to fp16 (hybrid/fp16) or widened (fp32)
    void* xc = static_cast<char*>(arena_.get()) + cast_offset_[i];
    launch_cast(x, xt.type, xc, w.type, x_elems, s);
    x = xc;
  }
  const void* bias = engine_->weight(bi);
  if (post_[i].on) {  // gate, silu or residual input: GEMM into h, then kernels/epilogue (linear_post)
#ifdef TRTRUN_HAVE_EPILOGUE
    const LinearPost& p = post_[i];
    const bool into_y = p.direct && !op.gated;
    void* h = into_y ? y : static_cast<char*>(arena_.get()) + acc_offset_[i];
    const GemmKey key = post_key(op, d, rows, p);
    if (!gemm_->prepare(key))
      throw DeviceError("op '" + op.name + "': cuBLASLt offers no algorithm for this GEMM (" + std::to_string(key.m) +
                        "x" + std::to_string(key.n) + "x" + std::to_string(key.k) + ")");
    gemm_->run(key, x, engine_->weight(wi), p.direct ? bias : nullptr, h, s);
    const int r = op.inputs.size() > 1 ? op.inputs[1] : NO_TENSOR;
    launch_linear_epilogue(h, float_dtype(p.h_t), p.direct ? nullptr : bias,
                           bi == NO_WEIGHT ? DType::F32 : float_dtype(d.weights[bi].type), tensor_ptr(r),
                           r == NO_TENSOR ? DType::F32 : float_dtype(d.tensors[r].type), y, float_dtype(yt.type), rows,
                           static_cast<int>(op.gated ? w.shape[1] / 2 : w.shape[1]), op.gated, op.activation,
                           p.round_h, s);
#else
    missing_plugin(op, "epilogue");
#endif
    return;
  }
  LinearChoice c = choose_linear(op, d);
  bool fused = false;
  if (c.fusable) {
    GemmKey key = linear_key(op, d, rows, c, false);
    // acc scratch absent means the fused path was available at the largest shape; it must be here too
    fused = gemm_->prepare(key) || acc_offset_[i] == kNone;
    if (fused) {
      if (!gemm_->prepare(key))
        throw DeviceError("op '" + op.name + "': cuBLASLt offers no algorithm for this GEMM (" +
                          std::to_string(key.m) + "x" + std::to_string(key.n) + "x" + std::to_string(key.k) + ")");
      gemm_->run(key, x, engine_->weight(wi), bias, y, s);
      if (c.gelu_after) {
#ifdef TRTRUN_HAVE_GELU
        launch_gelu(y, float_dtype(yt.type), static_cast<long long>(yt.numel(batch, seq_bucket)), false, s);
#else
        missing_plugin(op, "gelu");
#endif
      }
    }
  }
  if (!fused) {
    if (acc_offset_[i] == kNone) throw std::logic_error("unfused Linear without an accumulator");
    float* acc = reinterpret_cast<float*>(static_cast<char*>(arena_.get()) + acc_offset_[i]);
    GemmKey key = linear_key(op, d, rows, c, true);
    if (!gemm_->prepare(key))
      throw DeviceError("op '" + op.name + "': cuBLASLt offers no algorithm for this GEMM (" + std::to_string(key.m) +
                        "x" + std::to_string(key.n) + "x" + std::to_string(key.k) + ")");
    gemm_->run(key, x, engine_->weight(wi), nullptr, acc, s);
    launch_bias_act(acc, bias, bi == NO_WEIGHT ? DType::F32 : d.weights[bi].type, y, yt.type, rows, w.shape[1],
                    op.activation, s);
  }
}

}  // namespace trtrun

namespace trtrun {

// An fp8 Linear (Fp8Linear): x quantized to E4M3 codes with per-row scales, then the fp8 GEMM, finished as a hybrid
// Linear would be (docs/plan-format.md "fp8"): the fused epilogue into y, or an fp32 accumulator and the bias /
// activation kernel, or h and kernels/epilogue for a gate, silu or residual.
void Context::enqueue_linear_fp8(size_t i, int batch, int seq_bucket, cudaStream_t s) {
#ifdef TRTRUN_HAVE_QUANTIZE
  const EngineDesc& d = engine_->desc();
  const Engine& E = *engine_;
  const OpDesc& op = d.ops[i];
  const Fp8Linear& f = fp8_[i];
  const TensorDesc& xt = d.tensors[op.inputs[0]];
  const TensorDesc& yt = d.tensors[op.outputs[0]];
  const int wi = op.weight("weight"), bi = op.weight("bias"), wsi = op.weight("weight_scale");
  const WeightDesc& w = d.weights[wi];
  const int64_t k = w.shape[1], n = w.shape[0];
  const int64_t rows = static_cast<int64_t>(xt.numel(batch, seq_bucket) / static_cast<size_t>(k));
  char* q = static_cast<char*>(arena_.get()) + f.offset;
  float* sx = reinterpret_cast<float*>(q + f.scales_at);
  const float* x_scale = static_cast<const float*>(E.weight(op.weight("x_scale")));  // null: per token
  const float* sw = static_cast<const float*>(E.weight(wsi));
  const bool scalar = f.scale == GemmScale::Scalar;  // cuBLASLt reads x_scale itself: no per-row copy needed
  launch_quantize_fp8(tensor_ptr(op.inputs[0]), float_dtype(xt.type), x_scale, q, scalar ? nullptr : sx, rows,
                      static_cast<int>(k), s);
  const bool scaled = f.scale != GemmScale::None;
  auto gemm = [&](DType out_t, GemmEpilogue epi, const void* bias, void* out) {
    const GemmKey key = fp8_key(op, d, rows, out_t, epi, f.scale);
    if (!gemm_->prepare(key))
      throw DeviceError("op '" + op.name + "': cuBLASLt offers no algorithm for this fp8 GEMM (" + shape_text(key) +
                        ", scales " + to_string(key.scale) + ")");
    gemm_->run(key, q, E.weight(wi), bias, out, s, nullptr, scaled ? sw : nullptr,
               scaled ? (scalar ? x_scale : sx) : nullptr);
  };
  // the unscaled product of the codes (no scaled algorithm here): acc * (sx * sw), as trtrun/fp8.py fp8_gemm
  auto rescale = [&](void* acc) {
    if (!scaled)
      launch_fp8_rescale(static_cast<float*>(acc), sx, sw, d.weights[wsi].shape[0] != 1, rows, static_cast<int>(n), s);
  };
  const void* bias = E.weight(bi);
  void* y = tensor_ptr(op.outputs[0]);
  if (post_[i].on) {  // gate, silu or residual input: h, then kernels/epilogue (linear_post)
#ifdef TRTRUN_HAVE_EPILOGUE
    const LinearPost& p = post_[i];
    void* h = p.direct && !op.gated ? y : static_cast<char*>(arena_.get()) + acc_offset_[i];
    gemm(p.h_t, p.direct && bi != NO_WEIGHT ? GemmEpilogue::Bias : GemmEpilogue::None, p.direct ? bias : nullptr, h);
    rescale(h);  // unscaled: p is the fp32 accumulator path (planned so)
    const int r = op.inputs.size() > 1 ? op.inputs[1] : NO_TENSOR;
    launch_linear_epilogue(h, float_dtype(p.h_t), p.direct ? nullptr : bias,
                           bi == NO_WEIGHT ? DType::F32 : float_dtype(d.weights[bi].type), tensor_ptr(r),
                           r == NO_TENSOR ? DType::F32 : float_dtype(d.tensors[r].type), y, float_dtype(yt.type), rows,
                           static_cast<int>(op.gated ? n / 2 : n), op.gated, op.activation, p.round_h, s);
#else
    missing_plugin(op, "epilogue");
#endif
    return;
  }
  const LinearChoice c = choose_linear(op, d);
  if (f.fused) {
    gemm(yt.type, c.epilogue, bias, y);
    if (c.gelu_after) {
#ifdef TRTRUN_HAVE_GELU
      launch_gelu(y, float_dtype(yt.type), static_cast<long long>(yt.numel(batch, seq_bucket)), false, s);
#else
      missing_plugin(op, "gelu");
#endif
    }
    return;
  }
  float* acc = reinterpret_cast<float*>(static_cast<char*>(arena_.get()) + acc_offset_[i]);
  gemm(DType::F32, GemmEpilogue::None, nullptr, acc);
  // the rescale fused into the bias/activation pass: one read of the accumulator instead of three passes over it
  launch_bias_act(acc, bias, bi == NO_WEIGHT ? DType::F32 : d.weights[bi].type, y, yt.type, rows, n, op.activation, s,
                  scaled ? nullptr : sx, scaled ? nullptr : sw, d.weights[wsi].shape[0] != 1);
#else
  (void)batch;
  (void)seq_bucket;
  (void)s;
  missing_plugin(engine_->desc().ops[i], "quantize");
#endif
}

}  // namespace trtrun
