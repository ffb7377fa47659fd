// native/python/kernels.cpp: each kernel launcher (native/kernels/<name>/) callable from Python as
// trtrun._C.plugins.<name>, so GPU tests and tools can run a kernel alone on torch/cupy device buffers. Pointers
// and streams cross as ints (0 = null pointer / default stream); dtypes ("float32", "float16") and precisions
// ("fp32", "fp16", "hybrid") as names, parsed by native/core/types.cpp. A bad argument raises InputError
// (a ValueError); a launch failure trtrun::CudaError, which the module calling bind_kernels maps.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bindings.h"
#include "kernels/attention/attention.h"
#include "kernels/embedding/embedding.h"
#include "kernels/epilogue/epilogue.h"
#include "kernels/gelu/gelu.h"
#include "kernels/layernorm/layernorm.h"
#include "kernels/quantize/quantize.h"
#include "kernels/rmsnorm/rmsnorm.h"
#include "kernels/rotary/rotary.h"
#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace py = pybind11;

namespace trtrun {

namespace {

template <typename T = void>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
// The launchers check that a dtype is a float type; these only turn names into values, naming the kernel and the
// argument ("layernorm: y_dtype must be one of ...") when one is not a name.
DType dt(const std::string& v, const char* op, const char* arg) {
  return from_string<DType>(v, std::string(op) + ": " + arg + "_dtype");
}
Precision pr(const std::string& v, const char* op) {
  return from_string<Precision>(v, std::string(op) + ": precision");
}

}  // namespace

void bind_kernels(py::module_& m) {
  py::module_ p = m.def_submodule("plugins", "trtrun's CUDA kernels, callable alone on device pointers (tests)");
  // The names the launchers take, as attributes (P.F16, P.HYBRID) for callers that spell them so.
  p.attr("F32") = to_string(DType::F32);
  p.attr("F16") = to_string(DType::F16);
  p.attr("FP32") = to_string(Precision::FP32);
  p.attr("FP16") = to_string(Precision::FP16);
  p.attr("HYBRID") = to_string(Precision::HYBRID);

  p.def(
      "layernorm",
      [](std::uintptr_t x, const std::string& x_t, std::uintptr_t residual, const std::string& r_t,
         std::uintptr_t gamma, std::uintptr_t beta, const std::string& param_t, std::uintptr_t y,
         const std::string& y_t, std::uintptr_t sum_out, const std::string& sum_t, int rows, int n, float eps,
         const std::string& prec, std::uintptr_t stream) {
        const char* op = "layernorm";
        const DType xd = dt(x_t, op, "x"), rd = dt(r_t, op, "residual"), pd = dt(param_t, op, "param");
        const DType yd = dt(y_t, op, "y"), sd = dt(sum_t, op, "sum");
        launch_layernorm(ptr(x), xd, ptr(residual), rd, ptr(gamma), ptr(beta), pd, ptr(y), yd, ptr(sum_out), sd, rows,
                         n, eps, pr(prec, op), stream_of(stream));
      },
      py::arg("x"), py::arg("x_dtype"), py::arg("residual"), py::arg("residual_dtype"), py::arg("gamma"),
      py::arg("beta"), py::arg("param_dtype"), py::arg("y"), py::arg("y_dtype"), py::arg("sum_out"),
      py::arg("sum_dtype"), py::arg("rows"), py::arg("n"), py::arg("eps"), py::arg("precision"),
      py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "s = x (+ residual); y = LN(s) * gamma + beta; sum_out = s (0 = absent). Enqueues on `stream`.");

  p.def(
      "layernorm_parts",
      [](std::uintptr_t parts, int n_parts, long long part_stride, std::uintptr_t bias, const std::string& bias_t,
         std::uintptr_t residual, const std::string& r_t, std::uintptr_t gamma, std::uintptr_t beta,
         const std::string& param_t, std::uintptr_t y, const std::string& y_t, std::uintptr_t sum_out,
         const std::string& sum_t, int rows, int n, float eps, const std::string& prec, std::uintptr_t stream) {
        const char* op = "layernorm_parts";
        const DType bd = dt(bias_t, op, "bias"), rd = dt(r_t, op, "residual"), pd = dt(param_t, op, "param");
        const DType yd = dt(y_t, op, "y"), sd = dt(sum_t, op, "sum");
        launch_layernorm_parts(ptr<const float>(parts), n_parts, part_stride, ptr(bias), bd, ptr(residual), rd,
                               ptr(gamma), ptr(beta), pd, ptr(y), yd, ptr(sum_out), sd, rows, n, eps, pr(prec, op),
                               stream_of(stream));
      },
      py::arg("parts"), py::arg("n_parts"), py::arg("part_stride"), py::arg("bias"), py::arg("bias_dtype"),
      py::arg("residual"), py::arg("residual_dtype"), py::arg("gamma"), py::arg("beta"), py::arg("param_dtype"),
      py::arg("y"), py::arg("y_dtype"), py::arg("sum_out"), py::arg("sum_dtype"), py::arg("rows"), py::arg("n"),
      py::arg("eps"), py::arg("precision"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "x = sum of n_parts fp32 slices (part_stride elements apart) + bias; then as layernorm. Enqueues on `stream`.");

  p.def(
      "attention",
      [](std::uintptr_t qkv, const std::string& qkv_t, std::uintptr_t mask, std::uintptr_t y, const std::string& y_t,
         int batch, int seq, int heads, int head_size, float scale, bool causal, const std::string& prec,
         std::uintptr_t stream) {
        const char* op = "attention";
        launch_attention(ptr(qkv), dt(qkv_t, op, "qkv"), ptr<const int32_t>(mask), ptr(y), dt(y_t, op, "y"), batch, seq,
                         heads, head_size, scale, causal, pr(prec, op), stream_of(stream));
      },
      py::arg("qkv"), py::arg("qkv_dtype"), py::arg("mask"), py::arg("y"), py::arg("y_dtype"), py::arg("batch"),
      py::arg("seq"), py::arg("heads"), py::arg("head_size"), py::arg("scale"), py::arg("causal"),
      py::arg("precision"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "Fused attention on packed qkv [B,S,3HD] -> y [B,S,HD]; mask int32 [B,S] (0 = absent).");
  p.def(
      "attention_config",
      [](int batch, int seq, int heads, int head_size, bool causal, const std::string& prec, bool extras,
         int window) {
        return attention_config(batch, seq, heads, head_size, causal, pr(prec, "attention_config"), extras, window);
      },
      py::arg("batch"), py::arg("seq"), py::arg("heads"), py::arg("head_size"), py::arg("causal"),
      py::arg("precision"), py::arg("extras") = false, py::arg("window") = -1,
      "The launch configuration attention() takes for these sizes here ('fp32' or 'mt=.. nw=.. ks=.. qb=..'); "
      "extras: with a score bias or a window; window >= 0: that sliding window (keys within it of the query).");

  p.def(
      "embedding",
      [](std::uintptr_t ids, std::uintptr_t token_types, std::uintptr_t word, std::uintptr_t position,
         std::uintptr_t type_table, const std::string& table_t, std::uintptr_t gamma, std::uintptr_t beta,
         const std::string& param_t, std::uintptr_t y, const std::string& y_t, int batch, int seq, int n,
         int position_offset, float eps, const std::string& prec, std::uintptr_t stream) {
        const char* op = "embedding";
        const DType td = dt(table_t, op, "table"), pd = dt(param_t, op, "param"), yd = dt(y_t, op, "y");
        launch_embedding(ptr<const int32_t>(ids), ptr<const int32_t>(token_types), ptr(word), ptr(position),
                         ptr(type_table), td, ptr(gamma), ptr(beta), pd, ptr(y), yd, batch, seq, n, position_offset,
                         eps, pr(prec, op), stream_of(stream));
      },
      py::arg("ids"), py::arg("token_types"), py::arg("word"), py::arg("position"), py::arg("type_table"),
      py::arg("table_dtype"), py::arg("gamma"), py::arg("beta"), py::arg("param_dtype"), py::arg("y"),
      py::arg("y_dtype"), py::arg("batch"), py::arg("seq"), py::arg("n"), py::arg("position_offset"),
      py::arg("eps"), py::arg("precision"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "word[ids] + position[s+offset] + type[tt or 0], then LayerNorm when gamma != 0. ids/tt int32.");

  p.def(
      "gelu",
      [](std::uintptr_t y, const std::string& y_t, long long count, bool tanh_approx, std::uintptr_t stream) {
        launch_gelu(ptr(y), dt(y_t, "gelu", "y"), count, tanh_approx, stream_of(stream));
      },
      py::arg("y"), py::arg("y_dtype"), py::arg("count"), py::arg("tanh"), py::arg("stream") = 0,
      py::call_guard<py::gil_scoped_release>(), "GELU in place (erf, or tanh form), fp32 math.");

  // fp8 Linears (native/kernels/quantize)
  p.def(
      "quantize_fp8",
      [](std::uintptr_t x, const std::string& x_t, std::uintptr_t x_scale, std::uintptr_t q, std::uintptr_t scales,
         long long rows, int k, std::uintptr_t stream) {
        launch_quantize_fp8(ptr(x), dt(x_t, "quantize_fp8", "x"), ptr<const float>(x_scale), ptr(q),
                            ptr<float>(scales), rows, k, stream_of(stream));
      },
      py::arg("x"), py::arg("x_dtype"), py::arg("x_scale"), py::arg("q"), py::arg("scales"), py::arg("rows"),
      py::arg("k"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "x [rows, k] -> q [rows, k] float8_e4m3fn codes (uint8) and scales [rows] float32: the static x_scale (one "
      "float32; 0 = per token: row amax / 448, 1 for a zero row), q = e4m3(x / s) saturated. scales 0: not written "
      "(static only).");
  p.def(
      "fp8_rescale",
      [](std::uintptr_t acc, std::uintptr_t sx, std::uintptr_t sw, bool per_channel, long long rows, int n,
         std::uintptr_t stream) {
        launch_fp8_rescale(ptr<float>(acc), ptr<const float>(sx), ptr<const float>(sw), per_channel, rows, n,
                           stream_of(stream));
      },
      py::arg("acc"), py::arg("sx"), py::arg("sw"), py::arg("per_channel"), py::arg("rows"), py::arg("n"),
      py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "acc [rows, n] float32 in place: acc *= sx[r] * sw[c] (sw[0] unless per_channel).");

  // Llama-family kernels (native/kernels/rmsnorm, epilogue, rotary; grouped-query attention)
  p.def(
      "rmsnorm",
      [](std::uintptr_t x, const std::string& x_t, std::uintptr_t residual, const std::string& r_t,
         std::uintptr_t gamma, const std::string& gamma_t, std::uintptr_t y, const std::string& y_t,
         std::uintptr_t sum_out, const std::string& sum_t, int rows, int n, float eps, const std::string& prec,
         std::uintptr_t stream, bool residual_after) {
        const char* op = "rmsnorm";
        const DType xd = dt(x_t, op, "x"), rd = dt(r_t, op, "residual"), gd = dt(gamma_t, op, "gamma");
        const DType yd = dt(y_t, op, "y"), sd = dt(sum_t, op, "sum");
        launch_rmsnorm(ptr(x), xd, ptr(residual), rd, ptr(gamma), gd, ptr(y), yd, ptr(sum_out), sd, rows, n, eps,
                       pr(prec, op), stream_of(stream), residual_after);
      },
      py::arg("x"), py::arg("x_dtype"), py::arg("residual"), py::arg("residual_dtype"), py::arg("gamma"),
      py::arg("gamma_dtype"), py::arg("y"), py::arg("y_dtype"), py::arg("sum_out"), py::arg("sum_dtype"),
      py::arg("rows"), py::arg("n"), py::arg("eps"), py::arg("precision"), py::arg("stream") = 0,
      py::arg("residual_after") = false, py::call_guard<py::gil_scoped_release>(),
      "s = x (+ residual); y = s / sqrt(mean(s^2) + eps) * gamma; sum_out = s (0 = absent). residual_after: "
      "y = residual + RMSNorm(x) (no sum_out). Enqueues on `stream`.");
  p.def(
      "linear_epilogue",
      [](std::uintptr_t src, const std::string& src_t, std::uintptr_t bias, const std::string& bias_t,
         std::uintptr_t residual, const std::string& r_t, std::uintptr_t y, const std::string& y_t, long long rows,
         int m, bool gated, const std::string& act, bool round_h, std::uintptr_t stream) {
        const char* op = "linear_epilogue";
        const DType sd = dt(src_t, op, "src"), bd = dt(bias_t, op, "bias"), rd = dt(r_t, op, "residual");
        const DType yd = dt(y_t, op, "y");
        launch_linear_epilogue(ptr(src), sd, ptr(bias), bd, ptr(residual), rd, ptr(y), yd, rows, m, gated,
                               from_string<Activation>(act, std::string(op) + ": activation"), round_h,
                               stream_of(stream));
      },
      py::arg("src"), py::arg("src_dtype"), py::arg("bias"), py::arg("bias_dtype"), py::arg("residual"),
      py::arg("residual_dtype"), py::arg("y"), py::arg("y_dtype"), py::arg("rows"), py::arg("m"), py::arg("gated"),
      py::arg("activation"), py::arg("round_h"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "y = act(h[:, :m]) * h[:, m:] (gated) or act(h) (+ residual); h = src (+ bias), rounded to y's dtype with "
      "round_h. activation: 'none', 'gelu_erf', 'gelu_tanh', 'silu', 'relu', 'relu2' or 'quick_gelu'.");
  p.def(
      "rotary",
      [](std::uintptr_t src, const std::string& src_t, std::uintptr_t dst, const std::string& dst_t,
         std::uintptr_t cos, std::uintptr_t sin, int batch, int seq, int heads, int kv_heads, int head_size,
         int rotary_dim, bool half_math, std::uintptr_t stream) {
        const char* op = "rotary";
        launch_rotary(ptr(src), dt(src_t, op, "src"), ptr(dst), dt(dst_t, op, "dst"), ptr<const float>(cos),
                      ptr<const float>(sin), batch, seq, heads, kv_heads, head_size, rotary_dim, half_math,
                      stream_of(stream));
      },
      py::arg("src"), py::arg("src_dtype"), py::arg("dst"), py::arg("dst_dtype"), py::arg("cos"), py::arg("sin"),
      py::arg("batch"), py::arg("seq"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_size"),
      py::arg("rotary_dim"), py::arg("half_math"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "Rotary embedding of the Q and K heads of packed qkv [B,S,(H+2Hkv)D]; cos/sin fp32 [>=S, R/2]. In place when "
      "dst == src.");
  p.def(
      "rotary_qk_norm",
      [](std::uintptr_t src, const std::string& src_t, std::uintptr_t dst, const std::string& dst_t,
         std::uintptr_t cos, std::uintptr_t sin, std::uintptr_t q_gamma, std::uintptr_t k_gamma,
         const std::string& gamma_t, float eps, int batch, int seq, int heads, int kv_heads, int head_size,
         int rotary_dim, bool half_math, std::uintptr_t stream, std::uintptr_t q_beta, std::uintptr_t k_beta,
         bool layer, bool gains_per_head, bool whole, bool after_rotary) {
        const char* op = "rotary_qk_norm";
        QkNorm norm;
        norm.q_gamma = ptr(q_gamma);
        norm.k_gamma = ptr(k_gamma);
        norm.q_beta = ptr(q_beta);
        norm.k_beta = ptr(k_beta);
        norm.gamma_t = dt(gamma_t, op, "gamma");
        norm.eps = eps;
        norm.layer = layer;
        norm.gains_per_head = gains_per_head;
        norm.whole = whole;
        norm.after_rotary = after_rotary;
        launch_rotary_qk_norm(ptr(src), dt(src_t, op, "src"), ptr(dst), dt(dst_t, op, "dst"), ptr<const float>(cos),
                              ptr<const float>(sin), norm, batch, seq, heads, kv_heads, head_size, rotary_dim,
                              half_math, stream_of(stream));
      },
      py::arg("src"), py::arg("src_dtype"), py::arg("dst"), py::arg("dst_dtype"), py::arg("cos"), py::arg("sin"),
      py::arg("q_gamma"), py::arg("k_gamma"), py::arg("gamma_dtype"), py::arg("eps"), py::arg("batch"),
      py::arg("seq"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_size"), py::arg("rotary_dim"),
      py::arg("half_math"), py::arg("stream") = 0, py::arg("q_beta") = 0, py::arg("k_beta") = 0,
      py::arg("layer") = false, py::arg("gains_per_head") = false, py::arg("whole") = false,
      py::arg("after_rotary") = false,
      py::call_guard<py::gil_scoped_release>(),
      "A query/key norm of packed qkv [B,S,(H+2Hkv)D], then the rotary of its first rotary_dim columns (0: none; "
      "cos/sin fp32 [>=S, R/2]); in place when dst == src. RMSNorm per head with gains [D] (Qwen3); layer: "
      "LayerNorm per head, biases q_beta/k_beta optional (0), gains and biases [D] or, gains_per_head, [H*D] and "
      "[Hkv*D] (Persimmon, StableLM-2); whole: RMSNorm over each token's whole Q and K part, gains [H*D] and [Hkv*D] "
      "(OLMo-2); after_rotary: per-head forms rotated first, normalised after (HunYuan). Gains and biases in "
      "gamma_dtype.");
  p.def(
      "attention_gqa",
      [](std::uintptr_t qkv, const std::string& qkv_t, std::uintptr_t mask, std::uintptr_t y, const std::string& y_t,
         int batch, int seq, int heads, int kv_heads, int head_size, float scale, bool causal,
         const std::string& prec, std::uintptr_t stream, std::uintptr_t bias, int bias_max_seq, int window,
         float softcap, std::uintptr_t rope_cos, std::uintptr_t rope_sin, int rotary_dim) {
        const char* op = "attention_gqa";
        AttentionExtras extras;
        extras.bias = ptr<const float>(bias);
        extras.bias_max_seq = bias_max_seq;
        extras.window = window;
        extras.softcap = softcap;
        extras.rope_cos = ptr<const float>(rope_cos);
        extras.rope_sin = ptr<const float>(rope_sin);
        extras.rotary_dim = rotary_dim;
        launch_attention_gqa(ptr(qkv), dt(qkv_t, op, "qkv"), ptr<const int32_t>(mask), ptr(y), dt(y_t, op, "y"),
                             batch, seq, heads, kv_heads, head_size, scale, causal, pr(prec, op), stream_of(stream),
                             extras);
      },
      py::arg("qkv"), py::arg("qkv_dtype"), py::arg("mask"), py::arg("y"), py::arg("y_dtype"), py::arg("batch"),
      py::arg("seq"), py::arg("heads"), py::arg("kv_heads"), py::arg("head_size"), py::arg("scale"), py::arg("causal"),
      py::arg("precision"), py::arg("stream") = 0, py::arg("bias") = 0, py::arg("bias_max_seq") = 0,
      py::arg("window") = -1, py::arg("softcap") = 0.f, py::arg("rope_cos") = 0, py::arg("rope_sin") = 0,
      py::arg("rotary_dim") = 0, py::call_guard<py::gil_scoped_release>(),
      "Fused attention with grouped-query K/V heads on packed qkv [B,S,(H+2Hkv)D] -> y [B,S,HD]; bias: fp32 "
      "[heads, 2*bias_max_seq - 1] added by distance j - i (entry j - i + bias_max_seq - 1), 0 for none; window: keys "
      "with |i - j| > window masked, -1 for none; softcap: scaled scores soft-capped to softcap * tanh(s / softcap) "
      "before the bias, 0 for none; rope_cos/rope_sin: fp32 [>=S, R/2] tables (0 for none), Q and K rotated by their "
      "first rotary_dim columns as the kernel loads them (fp16 qkv, hybrid/fp16), bit-identical to rotary() first.");
}

}  // namespace trtrun

#ifdef TRTRUN_PLUGINS_STANDALONE
// A module holding only the kernels, for kernel tests before/without the full extension (tools/kernels_build.py):
//   nvcc ... native/kernels/*/*.cu native/core/types.cpp native/python/kernels.cpp -DTRTRUN_PLUGINS_STANDALONE
PYBIND11_MODULE(_trtrun_plugins, m) {
  py::register_exception<trtrun::CudaError>(m, "CudaError", PyExc_RuntimeError);
  trtrun::bind_kernels(m);
}
#endif
