// native/python/engine.cpp: trtrun._C.Engine, built from the plan that trtrun.plan validated and
// trtrun/runtime/lower.py lowered to simple lists (no JSON parsing here; enums by name, parsed by
// native/core/types.cpp). See lower_plan there for the exact layout.
#include <map>
#include <utility>
#include <vector>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "bindings.h"
#include "trtrun/engine.h"
#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace py = pybind11;

namespace trtrun {

namespace {

template <typename T>
T get(const py::dict& d, const char* key, T fallback) {
  if (!d.contains(key)) return fallback;
  return d[key].cast<T>();
}

OpDesc op_from_dict(const py::dict& d) {
  OpDesc op;
  op.name = d["name"].cast<std::string>();
  const std::string where = "op '" + op.name + "'";
  op.type = from_string<OpType>(d["type"].cast<std::string>(), where + ": type");
  op.inputs = d["inputs"].cast<std::vector<int>>();
  op.outputs = d["outputs"].cast<std::vector<int>>();
  op.weights = get<std::map<std::string, int>>(d, "weights", {});
  op.precision = from_string<Precision>(d["precision"].cast<std::string>(), where + ": precision");
  op.activation = from_string<Activation>(get<std::string>(d, "activation", "none"), where + ": activation");
  op.epsilon = get<float>(d, "epsilon", 1e-5f);
  op.position_offset = get<int>(d, "position_offset", 0);
  op.num_heads = get<int>(d, "num_heads", 0);
  op.head_size = get<int>(d, "head_size", 0);
  op.scale = get<float>(d, "scale", 1.0f);
  op.causal = get<bool>(d, "causal", false);
  op.gated = get<bool>(d, "gated", false);
  op.num_kv_heads = get<int>(d, "num_kv_heads", 0);
  op.rotary_dim = get<int>(d, "rotary_dim", 0);
  op.window = get<int>(d, "window", -1);
  op.softcap = get<float>(d, "softcap", 0.f);
  op.residual_after = get<bool>(d, "residual_after", false);
  op.qk_norm_epsilon = get<float>(d, "qk_norm_epsilon", 1e-6f);
  op.qk_norm_layer = get<bool>(d, "qk_norm_layer", false);
  op.qk_norm_after_rotary = get<bool>(d, "qk_norm_after_rotary", false);
  return op;
}

std::shared_ptr<Engine> make_engine(const py::list& tensors, const py::list& ops, const py::list& weights,
                                    const std::vector<int>& inputs, const std::vector<int>& outputs,
                                    int64_t batch_max, int64_t seq_max, bool tf32, int device) {
  EngineDesc d;
  for (const auto& item : tensors) {
    auto t = item.cast<py::tuple>();  // (name, dtype name on the device, dims with -1 = B, -2 = S)
    TensorDesc td;
    td.name = t[0].cast<std::string>();
    td.type = from_string<DType>(t[1].cast<std::string>(), "tensor " + td.name + ": dtype");
    td.dims = t[2].cast<std::vector<int64_t>>();
    d.tensors.push_back(std::move(td));
  }
  for (const auto& item : ops) d.ops.push_back(op_from_dict(item.cast<py::dict>()));
  std::vector<py::array> keep;  // the arrays stay referenced while the engine uploads them
  for (const auto& item : weights) {
    auto t = item.cast<py::tuple>();  // (name, C-contiguous float32/float16/float8_e4m3fn numpy array)
    WeightDesc wd;
    wd.name = t[0].cast<std::string>();
    py::array a = t[1].cast<py::array>();
    if (!(a.flags() & py::array::c_style)) throw InputError("weight '" + wd.name + "': not C-contiguous");
    const char kind = a.dtype().kind();
    const auto itemsize = a.dtype().itemsize();
    if (kind == 'f' && itemsize == 4) wd.type = DType::F32;
    else if (kind == 'f' && itemsize == 2) wd.type = DType::F16;
    // ml_dtypes' float8_e4m3fn is numpy's kind 'V': known by its name (an fp8 Linear's weight, lower_plan)
    else if (itemsize == 1 && py::str(a.dtype().attr("name")).cast<std::string>() == to_string(DType::F8E4M3))
      wd.type = DType::F8E4M3;
    else throw InputError("weight '" + wd.name + "': must be float32, float16 or float8_e4m3fn");
    for (py::ssize_t i = 0; i < a.ndim(); ++i) wd.shape.push_back(a.shape(i));
    wd.host = a.data();
    wd.nbytes = static_cast<size_t>(a.nbytes());
    keep.push_back(a);
    d.weights.push_back(std::move(wd));
  }
  d.inputs = inputs;
  d.outputs = outputs;
  d.batch_max = batch_max;
  d.seq_max = seq_max;
  d.tf32 = tf32;
  py::gil_scoped_release release;  // the upload (and the device checks) need no Python
  return std::make_shared<Engine>(std::move(d), device);
}

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine",
                                              "A plan's ops and weights on one device (immutable once built)")
      .def(py::init(&make_engine), py::arg("tensors"), py::arg("ops"), py::arg("weights"), py::arg("inputs"),
           py::arg("outputs"), py::arg("batch_max"), py::arg("seq_max"), py::arg("tf32"), py::arg("device"),
           "tensors: [(name, dtype name on the device, dims with -1 = batch, -2 = sequence)]; ops: [dict(type, name, "
           "inputs, outputs, weights {role: index}, precision, and the attributes activation, epsilon, "
           "position_offset, num_heads, head_size, scale, causal, gated, num_kv_heads, rotary_dim, window, "
           "softcap, residual_after, qk_norm_epsilon, qk_norm_layer, qk_norm_after_rotary)] with type, precision and activation by name; "
           "weights: [(name, C-contiguous float32/float16/float8_e4m3fn array)]; inputs, outputs: tensor indices. Checks the "
           "description (InputError naming what is wrong), then the device (DeviceError), then uploads the weights.")
      .def_property_readonly("device", &Engine::device)
      .def_property_readonly("weight_bytes", &Engine::weight_bytes, "device bytes of the uploaded weights")
      .def_property_readonly("num_ops", [](const Engine& e) { return e.desc().ops.size(); })
      .def(
          "input_info",
          [](const Engine& e) {
            py::list out;
            for (const auto& i : e.input_info()) out.append(py::make_tuple(i.tensor, i.used, i.is_mask, i.limit));
            return out;
          },
          "per graph input: (tensor index, read by an op, read as a mask, ids must lie below this limit)");
}

}  // namespace trtrun
