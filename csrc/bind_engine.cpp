// csrc/bind_engine.cpp: trtrun._C.Engine, built from the plan that trtrun/runtime.py validated and lowered to
// simple lists (no JSON parsing here). See trtrun/runtime.py (_lower_plan) for the exact layout.
#include <map>
#include <utility>
#include <vector>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "bind_common.h"
#include "engine.h"

namespace py = pybind11;

namespace trtrun {

namespace {

ElemType elem_from_code(int code, const std::string& what) {
  if (code < 0 || code > 3) throw InputError(what + ": unknown element type code " + std::to_string(code));
  return static_cast<ElemType>(code);
}

template <typename T>
T get(const py::dict& d, const char* key, T fallback) {
  if (!d.contains(key)) return fallback;
  return d[key].cast<T>();
}

OpDesc op_from_dict(const py::dict& d) {
  OpDesc op;
  int type = d["type"].cast<int>();
  if (type < 0 || type > 3) throw InputError("op: unknown type code " + std::to_string(type));
  op.type = static_cast<OpType>(type);
  op.name = d["name"].cast<std::string>();
  op.inputs = d["inputs"].cast<std::vector<int>>();
  op.outputs = d["outputs"].cast<std::vector<int>>();
  op.weights = get<std::map<std::string, int>>(d, "weights", {});
  int prec = d["precision"].cast<int>();
  if (prec < 0 || prec > 2) throw InputError("op '" + op.name + "': unknown precision code");
  op.precision = static_cast<Precision>(prec);
  int act = get<int>(d, "activation", 0);
  if (act < 0 || act > 2) throw InputError("op '" + op.name + "': unknown activation code");
  op.activation = static_cast<Activation>(act);
  op.epsilon = get<float>(d, "epsilon", 1e-5f);
  op.position_offset = get<int>(d, "position_offset", 0);
  op.num_heads = get<int>(d, "num_heads", 0);
  op.head_size = get<int>(d, "head_size", 0);
  op.scale = get<float>(d, "scale", 1.0f);
  op.causal = get<bool>(d, "causal", false);
  return op;
}

std::shared_ptr<Engine> make_engine(const py::list& tensors, const py::list& ops, const py::list& weights,
                                    const std::vector<int>& inputs, const std::vector<int>& outputs,
                                    int64_t batch_max, int64_t seq_max, bool tf32, int device) {
  EngineDesc d;
  for (const auto& item : tensors) {
    auto t = item.cast<py::tuple>();  // (name, element type code, dims with -1 = B, -2 = S)
    TensorDesc td;
    td.name = t[0].cast<std::string>();
    td.type = elem_from_code(t[1].cast<int>(), "tensor " + td.name);
    td.dims = t[2].cast<std::vector<int64_t>>();
    d.tensors.push_back(std::move(td));
  }
  for (const auto& item : ops) d.ops.push_back(op_from_dict(item.cast<py::dict>()));
  std::vector<py::array> keep;  // the arrays stay referenced while the engine uploads them
  for (const auto& item : weights) {
    auto t = item.cast<py::tuple>();  // (name, C-contiguous float32/float16 numpy array)
    WeightDesc wd;
    wd.name = t[0].cast<std::string>();
    py::array a = t[1].cast<py::array>();
    if (!(a.flags() & py::array::c_style)) throw InputError("weight '" + wd.name + "': not C-contiguous");
    const char kind = a.dtype().kind();
    const auto itemsize = a.dtype().itemsize();
    if (kind == 'f' && itemsize == 4) wd.type = ElemType::F32;
    else if (kind == 'f' && itemsize == 2) wd.type = ElemType::F16;
    else throw InputError("weight '" + wd.name + "': must be float32 or float16");
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
           py::arg("outputs"), py::arg("batch_max"), py::arg("seq_max"), py::arg("tf32"), py::arg("device"))
      .def_property_readonly("device", &Engine::device)
      .def_property_readonly("weight_bytes", &Engine::weight_bytes)
      .def_property_readonly("num_ops", [](const Engine& e) { return e.desc().ops.size(); })
      .def("input_info", [](const Engine& e) {
        py::list out;
        for (const auto& i : e.input_info()) out.append(py::make_tuple(i.tensor, i.used, i.is_mask, i.limit));
        return out;
      });
}

}  // namespace trtrun
