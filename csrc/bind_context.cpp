// csrc/bind_context.cpp: trtrun._C.Context (runs; the GIL is released while work is enqueued or waited on),
// a DLPack capsule reader for run_device, and DeviceMemory (device buffers run_device can return).
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>

#include "bind_common.h"
#include "context.h"

namespace py = pybind11;

namespace trtrun {

namespace {

// The DLPack ABI (dlpack.h v0.x, stable): enough to read a "dltensor" capsule.
struct DLDevice_ {
  int32_t device_type;  // 1 CPU, 2 CUDA, 3 CUDA host, 13 CUDA managed
  int32_t device_id;
};
struct DLDataType_ {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor_ {
  void* data;
  DLDevice_ device;
  int32_t ndim;
  DLDataType_ dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL = compact row-major
  uint64_t byte_offset;
};

py::dict dlpack_info(py::capsule cap) {
  if (std::strcmp(cap.name(), "dltensor") != 0)
    throw InputError(std::string("expected an unconsumed DLPack capsule named 'dltensor', got '") + cap.name() + "'");
  // DLManagedTensor starts with its DLTensor: the capsule's pointer is readable as one.
  auto* t = static_cast<DLTensor_*>(cap.get_pointer());
  if (t == nullptr) throw InputError("empty DLPack capsule");
  py::list shape, strides;
  for (int i = 0; i < t->ndim; ++i) shape.append(t->shape[i]);
  if (t->strides != nullptr) {
    for (int i = 0; i < t->ndim; ++i) strides.append(t->strides[i]);
  } else {
    int64_t s = 1;
    std::vector<int64_t> v(t->ndim);
    for (int i = t->ndim - 1; i >= 0; --i) v[i] = s, s *= t->shape[i];
    for (int64_t x : v) strides.append(x);
  }
  py::dict d;
  d["ptr"] = reinterpret_cast<uintptr_t>(static_cast<char*>(t->data) + t->byte_offset);
  d["shape"] = py::tuple(shape);
  d["strides"] = py::tuple(strides);  // elements
  d["code"] = static_cast<int>(t->dtype.code);
  d["bits"] = static_cast<int>(t->dtype.bits);
  d["lanes"] = static_cast<int>(t->dtype.lanes);
  d["device_type"] = t->device.device_type;
  d["device_id"] = t->device.device_id;
  return d;
}

// Device memory owned by Python (run_device's outputs when the caller gives none).
class DeviceMemory {
 public:
  DeviceMemory(size_t nbytes, int device) : device_(device) {
    DeviceGuard guard(device);
    buf_ = DeviceBuffer(nbytes, "run_device output");
  }
  ~DeviceMemory() {
    int previous = -1;
    if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
    if (previous != device_) TRTRUN_CUDA_IGNORE(cudaSetDevice(device_));
    buf_ = DeviceBuffer();
    if (previous >= 0 && previous != device_) TRTRUN_CUDA_IGNORE(cudaSetDevice(previous));
  }
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(buf_.get()); }
  size_t nbytes() const { return buf_.size(); }
  int device() const { return device_; }
  py::bytes to_host() const {
    std::string s(buf_.size(), '\0');
    DeviceGuard guard(device_);
    if (!s.empty()) TRTRUN_CUDA_CHECK(cudaMemcpy(&s[0], buf_.get(), s.size(), cudaMemcpyDeviceToHost));
    return py::bytes(s);
  }

 private:
  int device_;
  DeviceBuffer buf_;
};

}  // namespace

void bind_context(py::module_& m) {
  m.def("dlpack_info", &dlpack_info, py::arg("capsule"),
        "read a DLPack 'dltensor' capsule: dict(ptr, shape, strides (elements), code, bits, lanes, device_type, "
        "device_id); the capsule is not consumed");

  py::class_<DeviceMemory, std::shared_ptr<DeviceMemory>>(m, "DeviceMemory")
      .def(py::init<size_t, int>(), py::arg("nbytes"), py::arg("device"))
      .def_property_readonly("ptr", &DeviceMemory::ptr)
      .def_property_readonly("nbytes", &DeviceMemory::nbytes)
      .def_property_readonly("device", &DeviceMemory::device)
      .def("to_host", &DeviceMemory::to_host, "a synchronous copy to host bytes");

  py::class_<Context, std::shared_ptr<Context>>(m, "Context", "Executes an Engine on its own CUDA stream")
      .def(py::init([](std::shared_ptr<Engine> engine, bool use_graphs, size_t workspace_bytes, size_t max_graphs,
                       int ffn_chunks, bool fuse_residual, int64_t fuse_residual_min_rows,
                       int64_t ffn_chunk_min_rows) {
             ContextOptions o;
             o.use_graphs = use_graphs;
             o.workspace_bytes = workspace_bytes;
             o.max_graphs = max_graphs;
             if (ffn_chunks < 1) throw InputError("ffn_chunks must be >= 1, got " + std::to_string(ffn_chunks));
             o.ffn_chunks = ffn_chunks;
             o.fuse_residual = fuse_residual;
             o.fuse_residual_min_rows = fuse_residual_min_rows;
             o.ffn_chunk_min_rows = ffn_chunk_min_rows;
             py::gil_scoped_release release;
             return std::make_shared<Context>(std::move(engine), o);
           }),
           py::arg("engine"), py::arg("use_graphs") = true, py::arg("workspace_bytes") = ContextOptions().workspace_bytes,
           py::arg("max_graphs") = 256, py::arg("ffn_chunks") = ContextOptions().ffn_chunks,
           py::arg("fuse_residual") = ContextOptions().fuse_residual,
           py::arg("fuse_residual_min_rows") = ContextOptions().fuse_residual_min_rows,
           py::arg("ffn_chunk_min_rows") = ContextOptions().ffn_chunk_min_rows)
      .def(
          "host_input",
          [](py::object self, size_t slot) -> py::object {
            Context& c = self.cast<Context&>();
            int32_t* p = c.host_input(slot);
            if (p == nullptr) return py::none();
            return py::array_t<int32_t>({static_cast<py::ssize_t>(c.host_input_elems(slot))}, {sizeof(int32_t)}, p,
                                        self);
          },
          py::arg("slot"), "pinned int32 staging buffer of graph input `slot` (a numpy view; None when unused)")
      .def(
          "host_output",
          [](py::object self, size_t slot) {
            Context& c = self.cast<Context&>();
            return py::array_t<uint8_t>({static_cast<py::ssize_t>(c.host_output_bytes(slot))}, {1},
                                        static_cast<uint8_t*>(c.host_output(slot)), self);
          },
          py::arg("slot"), "pinned bytes of graph output `slot` (a numpy uint8 view)")
      .def("run_host", &Context::run_host, py::arg("batch"), py::arg("seq"), py::arg("seq_bucket"),
           py::call_guard<py::gil_scoped_release>())
      .def(
          "run_device",
          [](Context& c, int batch, int seq, int seq_bucket, const std::vector<std::tuple<uintptr_t, bool, int64_t>>& feeds,
             const std::vector<uintptr_t>& outputs, py::object stream, bool sync) {
            std::vector<Context::Feed> f;
            for (const auto& t : feeds)
              f.push_back({reinterpret_cast<const void*>(std::get<0>(t)), std::get<1>(t), std::get<2>(t)});
            std::vector<void*> o;
            for (uintptr_t p : outputs) o.push_back(reinterpret_cast<void*>(p));
            const bool own = stream.is_none();
            const uintptr_t handle = own ? 0 : stream.cast<uintptr_t>();
            py::gil_scoped_release release;
            c.run_device(batch, seq, seq_bucket, f, o, reinterpret_cast<cudaStream_t>(handle), own, sync);
          },
          py::arg("batch"), py::arg("seq"), py::arg("seq_bucket"), py::arg("feeds"), py::arg("outputs"),
          py::arg("stream"), py::arg("sync"),
          "feeds: per graph input (device pointer, is_int64, row stride in elements); outputs: device pointers; "
          "stream: a cudaStream_t as int (0: the legacy default stream) or None (this context's own stream)")
      .def("synchronize", &Context::synchronize, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("stream", [](const Context& c) { return reinterpret_cast<uintptr_t>(c.stream()); })
      .def_property_readonly("arena_bytes", &Context::arena_bytes)
      .def_property_readonly("arena_naive_bytes", &Context::arena_naive_bytes)
      .def_property_readonly("graph_count", &Context::graph_count)
      .def_property_readonly("gemm_plans", &Context::gemm_plans)
      .def_property_readonly("fused_residuals", &Context::fused_residuals)
      .def_property_readonly("graph_note", &Context::graph_note);
}

}  // namespace trtrun
