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

  m.def(
      "gemm_cache_export",
      []() {
        std::vector<GemmCacheEntry> es;
        {
          py::gil_scoped_release release;
          es = gemm_cache_export();
        }
        py::list out;
        for (const GemmCacheEntry& e : es) {
          py::dict d;
          d["device"] = e.device;
          d["cc"] = e.cc;
          d["cublaslt"] = e.cublaslt;
          d["m"] = e.key.m;
          d["n"] = e.key.n;
          d["k"] = e.key.k;
          d["operand_t"] = static_cast<int>(e.key.operand_t);
          d["out_t"] = static_cast<int>(e.key.out_t);
          d["epilogue"] = static_cast<int>(e.key.epilogue);
          d["tf32"] = e.key.tf32;
          d["add_c"] = e.key.add_c;
          d["split"] = e.key.split;
          d["workspace"] = e.workspace;
          d["search"] = e.search;
          py::list algo;
          for (uint64_t v : e.algo) algo.append(v);
          d["algo"] = algo;
          d["algo_workspace"] = e.algo_workspace;
          out.append(d);
        }
        return out;
      },
      "every tuned GEMM choice of this process, as dicts (trtrun.runtime.save_gemm_cache writes them)");
  m.def(
      "gemm_cache_import",
      [](py::list entries) {
        std::vector<GemmCacheEntry> es;
        size_t i = 0;
        for (py::handle h : entries) {
          const std::string where = "entry " + std::to_string(i++);
          py::dict d;
          try {
            d = h.cast<py::dict>();
            GemmCacheEntry e;
            e.device = d["device"].cast<std::string>();
            e.cc = d["cc"].cast<int>();
            e.cublaslt = d["cublaslt"].cast<size_t>();
            e.key.m = d["m"].cast<int64_t>();
            e.key.n = d["n"].cast<int64_t>();
            e.key.k = d["k"].cast<int64_t>();
            const int ot = d["operand_t"].cast<int>(), yt = d["out_t"].cast<int>(), ep = d["epilogue"].cast<int>();
            if (e.key.m <= 0 || e.key.n <= 0 || e.key.k <= 0) throw InputError(where + ": m, n, k must be > 0");
            if (ot < 0 || ot > 1 || yt < 0 || yt > 1) throw InputError(where + ": operand_t/out_t must be 0 or 1");
            if (ep < 0 || ep > 3) throw InputError(where + ": epilogue must be 0..3");
            e.key.operand_t = static_cast<ElemType>(ot);
            e.key.out_t = static_cast<ElemType>(yt);
            e.key.epilogue = static_cast<GemmEpilogue>(ep);
            e.key.tf32 = d["tf32"].cast<bool>();
            e.key.add_c = d["add_c"].cast<bool>();
            e.key.split = d.contains("split") ? d["split"].cast<int>() : 1;  // older cache files have no split key: unsplit
            if (e.key.split < 1 || e.key.k % e.key.split != 0)
              throw InputError(where + ": split must be >= 1 and divide k");
            e.workspace = d["workspace"].cast<size_t>();
            e.search = d["search"].cast<int>();
            auto algo = d["algo"].cast<std::vector<uint64_t>>();
            if (algo.size() != 8) throw InputError(where + ": algo must hold 8 integers");
            std::copy(algo.begin(), algo.end(), e.algo.begin());
            e.algo_workspace = d["algo_workspace"].cast<size_t>();
            es.push_back(e);
          } catch (const py::error_already_set& err) {
            throw InputError(where + ": " + err.what());
          } catch (const py::cast_error& err) {
            throw InputError(where + ": a field is missing or of the wrong type (" + std::string(err.what()) + ")");
          }
        }
        py::gil_scoped_release release;
        return gemm_cache_import(es);
      },
      py::arg("entries"), "take tuned GEMM choices made elsewhere (trtrun.runtime.load_gemm_cache); returns how many");

  py::class_<DeviceMemory, std::shared_ptr<DeviceMemory>>(m, "DeviceMemory")
      .def(py::init<size_t, int>(), py::arg("nbytes"), py::arg("device"))
      .def_property_readonly("ptr", &DeviceMemory::ptr)
      .def_property_readonly("nbytes", &DeviceMemory::nbytes)
      .def_property_readonly("device", &DeviceMemory::device)
      .def("to_host", &DeviceMemory::to_host, "a synchronous copy to host bytes");

  py::class_<Context, std::shared_ptr<Context>>(m, "Context", "Executes an Engine on its own CUDA stream")
      .def(py::init([](std::shared_ptr<Engine> engine, bool use_graphs, size_t workspace_bytes, size_t max_graphs,
                       int ffn_chunks, bool fuse_residual, int64_t fuse_residual_min_rows,
                       int64_t ffn_chunk_min_rows, const std::string& gemm_search, int64_t split_ln_max_rows,
                       int64_t split_ln_slice) {
             ContextOptions o;
             o.use_graphs = use_graphs;
             o.workspace_bytes = workspace_bytes;
             o.max_graphs = max_graphs;
             if (ffn_chunks < 1) throw InputError("ffn_chunks must be >= 1, got " + std::to_string(ffn_chunks));
             o.ffn_chunks = ffn_chunks;
             o.fuse_residual = fuse_residual;
             o.fuse_residual_min_rows = fuse_residual_min_rows;
             o.ffn_chunk_min_rows = ffn_chunk_min_rows;
             if (gemm_search == "heuristic") o.gemm_search = GemmSearch::Heuristic;
             else if (gemm_search == "exhaustive") o.gemm_search = GemmSearch::Exhaustive;
             else if (gemm_search == "focused") o.gemm_search = GemmSearch::Focused;
             else throw InputError("gemm_search must be 'heuristic', 'focused' or 'exhaustive', got '" + gemm_search + "'");
             o.split_ln_max_rows = split_ln_max_rows;
             o.split_ln_slice = split_ln_slice;
             py::gil_scoped_release release;
             return std::make_shared<Context>(std::move(engine), o);
           }),
           py::arg("engine"), py::arg("use_graphs") = true, py::arg("workspace_bytes") = ContextOptions().workspace_bytes,
           py::arg("max_graphs") = 256, py::arg("ffn_chunks") = ContextOptions().ffn_chunks,
           py::arg("fuse_residual") = ContextOptions().fuse_residual,
           py::arg("fuse_residual_min_rows") = ContextOptions().fuse_residual_min_rows,
           py::arg("ffn_chunk_min_rows") = ContextOptions().ffn_chunk_min_rows,
           py::arg("gemm_search") = std::string("focused"),
           py::arg("split_ln_max_rows") = ContextOptions().split_ln_max_rows,
           py::arg("split_ln_slice") = ContextOptions().split_ln_slice)
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
      .def_property_readonly("split_linears", &Context::split_linears)
      .def_property_readonly("graph_note", &Context::graph_note);
}

}  // namespace trtrun
