// csrc/bind_plugins.cpp: exposes each plugin launcher to Python as trtrun._C.plugins.<name>, so GPU
// tests can run a kernel alone on torch/cupy device buffers. Pointers, streams and enums cross as ints
// (0 = null pointer / default stream). std::invalid_argument -> ValueError; trtrun::CudaError is mapped by
// the module that calls bind_plugins (the runtime maps it to trtrun.DeviceError).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../plugins/attention/attention.h"
#include "../plugins/common/common.h"
#include "../plugins/embedding/embedding.h"
#include "../plugins/gelu/gelu.h"
#include "../plugins/layernorm/layernorm.h"

namespace py = pybind11;

namespace {

template <typename T = void>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
trtrun::DType dt(int v) { return static_cast<trtrun::DType>(v); }          // checked by the launcher
trtrun::Precision pr(int v) { return static_cast<trtrun::Precision>(v); }  // checked by the launcher

}  // namespace

void bind_plugins(py::module_& m) {
  py::module_ p = m.def_submodule("plugins", "trtrun's CUDA kernels, callable alone on device pointers (tests)");
  p.attr("F32") = static_cast<int>(trtrun::DType::F32);
  p.attr("F16") = static_cast<int>(trtrun::DType::F16);
  p.attr("FP32") = static_cast<int>(trtrun::Precision::FP32);
  p.attr("FP16") = static_cast<int>(trtrun::Precision::FP16);
  p.attr("HYBRID") = static_cast<int>(trtrun::Precision::HYBRID);

  p.def(
      "layernorm",
      [](std::uintptr_t x, int x_t, std::uintptr_t residual, int r_t, std::uintptr_t gamma, std::uintptr_t beta,
         int param_t, std::uintptr_t y, int y_t, std::uintptr_t sum_out, int sum_t, int rows, int n, float eps,
         int prec, std::uintptr_t stream) {
        trtrun::launch_layernorm(ptr(x), dt(x_t), ptr(residual), dt(r_t), ptr(gamma), ptr(beta), dt(param_t), ptr(y),
                                 dt(y_t), ptr(sum_out), dt(sum_t), rows, n, eps, pr(prec), stream_of(stream));
      },
      py::arg("x"), py::arg("x_dtype"), py::arg("residual"), py::arg("residual_dtype"), py::arg("gamma"),
      py::arg("beta"), py::arg("param_dtype"), py::arg("y"), py::arg("y_dtype"), py::arg("sum_out"),
      py::arg("sum_dtype"), py::arg("rows"), py::arg("n"), py::arg("eps"), py::arg("precision"),
      py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "s = x (+ residual); y = LN(s) * gamma + beta; sum_out = s (0 = absent). Enqueues on `stream`.");

  p.def(
      "layernorm_parts",
      [](std::uintptr_t parts, int n_parts, long long part_stride, std::uintptr_t bias, int bias_t,
         std::uintptr_t residual, int r_t, std::uintptr_t gamma, std::uintptr_t beta, int param_t, std::uintptr_t y,
         int y_t, std::uintptr_t sum_out, int sum_t, int rows, int n, float eps, int prec, std::uintptr_t stream) {
        trtrun::launch_layernorm_parts(ptr<const float>(parts), n_parts, part_stride, ptr(bias), dt(bias_t),
                                       ptr(residual), dt(r_t), ptr(gamma), ptr(beta), dt(param_t), ptr(y), dt(y_t),
                                       ptr(sum_out), dt(sum_t), rows, n, eps, pr(prec), stream_of(stream));
      },
      py::arg("parts"), py::arg("n_parts"), py::arg("part_stride"), py::arg("bias"), py::arg("bias_dtype"),
      py::arg("residual"), py::arg("residual_dtype"), py::arg("gamma"), py::arg("beta"), py::arg("param_dtype"),
      py::arg("y"), py::arg("y_dtype"), py::arg("sum_out"), py::arg("sum_dtype"), py::arg("rows"), py::arg("n"),
      py::arg("eps"), py::arg("precision"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "x = sum of n_parts fp32 slices (part_stride elements apart) + bias; then as layernorm. Enqueues on `stream`.");

  p.def(
      "attention",
      [](std::uintptr_t qkv, int qkv_t, std::uintptr_t mask, std::uintptr_t y, int y_t, int batch, int seq,
         int heads, int head_size, float scale, bool causal, int prec, std::uintptr_t stream) {
        trtrun::launch_attention(ptr(qkv), dt(qkv_t), ptr<const int32_t>(mask), ptr(y), dt(y_t), batch, seq,
                                 heads, head_size, scale, causal, pr(prec), stream_of(stream));
      },
      py::arg("qkv"), py::arg("qkv_dtype"), py::arg("mask"), py::arg("y"), py::arg("y_dtype"), py::arg("batch"),
      py::arg("seq"), py::arg("heads"), py::arg("head_size"), py::arg("scale"), py::arg("causal"),
      py::arg("precision"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "Fused attention on packed qkv [B,S,3HD] -> y [B,S,HD]; mask int32 [B,S] (0 = absent).");
  p.def(
      "attention_config",
      [](int batch, int seq, int heads, int head_size, bool causal, int prec) {
        return trtrun::attention_config(batch, seq, heads, head_size, causal, pr(prec));
      },
      py::arg("batch"), py::arg("seq"), py::arg("heads"), py::arg("head_size"), py::arg("causal"), py::arg("precision"),
      "The launch configuration attention() takes for these sizes here ('fp32' or 'mt=.. nw=.. ks=.. qb=..').");

  p.def(
      "embedding",
      [](std::uintptr_t ids, std::uintptr_t token_types, std::uintptr_t word, std::uintptr_t position,
         std::uintptr_t type_table, int table_t, std::uintptr_t gamma, std::uintptr_t beta, int param_t,
         std::uintptr_t y, int y_t, int batch, int seq, int n, int position_offset, float eps, int prec,
         std::uintptr_t stream) {
        trtrun::launch_embedding(ptr<const int32_t>(ids), ptr<const int32_t>(token_types), ptr(word),
                                 ptr(position), ptr(type_table), dt(table_t), ptr(gamma), ptr(beta), dt(param_t),
                                 ptr(y), dt(y_t), batch, seq, n, position_offset, eps, pr(prec),
                                 stream_of(stream));
      },
      py::arg("ids"), py::arg("token_types"), py::arg("word"), py::arg("position"), py::arg("type_table"),
      py::arg("table_dtype"), py::arg("gamma"), py::arg("beta"), py::arg("param_dtype"), py::arg("y"),
      py::arg("y_dtype"), py::arg("batch"), py::arg("seq"), py::arg("n"), py::arg("position_offset"),
      py::arg("eps"), py::arg("precision"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>(),
      "word[ids] + position[s+offset] + type[tt or 0], then LayerNorm when gamma != 0. ids/tt int32.");

  p.def(
      "gelu",
      [](std::uintptr_t y, int y_t, long long count, bool tanh_approx, std::uintptr_t stream) {
        trtrun::launch_gelu(ptr(y), dt(y_t), count, tanh_approx, stream_of(stream));
      },
      py::arg("y"), py::arg("y_dtype"), py::arg("count"), py::arg("tanh"), py::arg("stream") = 0,
      py::call_guard<py::gil_scoped_release>(), "GELU in place (erf, or tanh form), fp32 math.");
}

#ifdef TRTRUN_PLUGINS_STANDALONE
// A module holding only the plugins, for kernel tests before/without the full extension:
//   nvcc ... plugins/*/*.cu csrc/bind_plugins.cpp -DTRTRUN_PLUGINS_STANDALONE -o _trtrun_plugins.so
PYBIND11_MODULE(_trtrun_plugins, m) {
  py::register_exception<trtrun::CudaError>(m, "CudaError", PyExc_RuntimeError);
  bind_plugins(m);
}
#endif
