// native/python/device_memory.cpp: trtrun._C.DeviceMemory (device buffers run_device can return) and
// trtrun._C.dlpack_info (reads a DLPack capsule for run_device without consuming it).
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "trtrun/device.h"
#include "trtrun/errors.h"

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

void bind_device_memory(py::module_& m) {
  m.def("dlpack_info", &dlpack_info, py::arg("capsule"),
        "read a DLPack 'dltensor' capsule: dict(ptr, shape, strides (elements), code, bits, lanes, device_type, "
        "device_id); the capsule is not consumed");

  py::class_<DeviceMemory, std::shared_ptr<DeviceMemory>>(m, "DeviceMemory", "device memory owned by Python")
      .def(py::init<size_t, int>(), py::arg("nbytes"), py::arg("device"), "nbytes of device memory on `device`")
      .def_property_readonly("ptr", &DeviceMemory::ptr, "the device address")
      .def_property_readonly("nbytes", &DeviceMemory::nbytes)
      .def_property_readonly("device", &DeviceMemory::device)
      .def("to_host", &DeviceMemory::to_host, "a synchronous copy to host bytes");
}

}  // namespace trtrun
