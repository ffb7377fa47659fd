// native/python/module.cpp: the extension module trtrun._C: exception mapping (trtrun/errors.h), device queries,
// the arena planner, and the classes of the other files here (bindings.h).
#include <tuple>
#include <vector>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cuda_runtime.h>

#include <string>

#include "bindings.h"
#include "trtrun/device.h"
#include "trtrun/errors.h"
#include "trtrun/memory_plan.h"

namespace py = pybind11;

namespace {

// Raises trtrun.errors.<cls>(msg); falls back to RuntimeError if trtrun.errors cannot be imported.
void set_trtrun_error(const char* cls, const char* msg) {
  try {
    py::object errors = py::module_::import("trtrun.errors");
    py::object type = errors.attr(cls);
    PyErr_SetString(type.ptr(), msg);
  } catch (py::error_already_set& e) {
    e.restore();
    PyErr_Clear();
    PyErr_SetString(PyExc_RuntimeError, msg);
  }
}

void translate(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const trtrun::ShapeError& e) {
    set_trtrun_error("ShapeError", e.what());
  } catch (const trtrun::InputError& e) {
    set_trtrun_error("InputError", e.what());
  } catch (const trtrun::DeviceError& e) {
    set_trtrun_error("DeviceError", e.what());
  } catch (const trtrun::CudaError& e) {
    std::string msg = e.what();
    if (e.code() == static_cast<int>(cudaErrorMemoryAllocation)) msg = "out of memory: " + msg;
    set_trtrun_error("DeviceError", msg.c_str());
  } catch (const trtrun::CublasError& e) {
    set_trtrun_error("DeviceError", e.what());
  } catch (const std::invalid_argument& e) {  // a bad argument thrown by std:: code
    set_trtrun_error("InputError", e.what());
  }
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "trtrun's CUDA runtime (C++/CUDA); use trtrun.runtime, not this module directly";
  py::register_exception_translator(&translate);

  m.attr("cuda_architectures") = TRTRUN_CUDA_ARCHS;
  m.attr("cuda_runtime_version") = CUDART_VERSION;

  m.def("device_problem", &trtrun::device_problem, py::arg("device") = 0,
        "'' when this build's kernels run on the device; otherwise why not (no driver/device, architecture)");
  m.def("archs_cover_device", &trtrun::archs_cover_device, py::arg("archs"), py::arg("major"), py::arg("minor"),
        "1/0: a CMAKE_CUDA_ARCHITECTURES list has/has no code for compute capability major.minor; -1: unknown");
  m.def("_alloc_error_message", &trtrun::alloc_error_message, py::arg("nbytes"), py::arg("what"),
        py::arg("have_info"), py::arg("free_bytes"), py::arg("total_bytes"), py::arg("code_name"), py::arg("file"),
        py::arg("line"), "the out-of-memory error text (tests)");
  m.def("_arch_error_message", &trtrun::arch_error_message, py::arg("archs"), py::arg("device"), py::arg("name"),
        py::arg("major"), py::arg("minor"), py::arg("how"), "the wrong-architecture error text (tests)");
  m.def(
      "device_count",
      []() {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess) {
          (void)cudaGetLastError();
          return 0;
        }
        return n;
      },
      "number of visible CUDA devices (0 when there is no driver)");
  m.def(
      "device_name",
      [](int device) {
        cudaDeviceProp prop;
        TRTRUN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
        return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
      },
      py::arg("device") = 0, "the device's name and architecture, e.g. 'NVIDIA H200 (sm_90)'");
  m.def(
      "mem_get_info",
      [](int device) {
        trtrun::DeviceGuard guard(device);
        size_t free_b = 0, total_b = 0;
        TRTRUN_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        return py::make_tuple(free_b, total_b);
      },
      py::arg("device") = 0, "(free, total) bytes of device memory (cudaMemGetInfo)");
  m.def(
      "plan_arena",
      [](const std::vector<std::tuple<size_t, int, int>>& lives, size_t alignment) {
        std::vector<trtrun::BufferLife> v;
        for (const auto& l : lives) v.push_back({std::get<0>(l), std::get<1>(l), std::get<2>(l)});
        trtrun::ArenaPlan p = trtrun::plan_arena(v, alignment);
        return py::make_tuple(p.offsets, p.total, p.naive_total);
      },
      py::arg("lives"), py::arg("alignment") = 256,
      "the arena planner alone (tests): lives = [(bytes, first_step, last_step)] -> (offsets, total, naive)");

  trtrun::bind_engine(m);
  trtrun::bind_context(m);
  trtrun::bind_device_memory(m);
  trtrun::bind_gemm_cache(m);
#ifdef TRTRUN_HAVE_BIND_PLUGINS
  trtrun::bind_kernels(m);
#endif
}
