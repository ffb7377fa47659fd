// native/python/context.cpp: trtrun._C.Context (runs; the GIL is released while work is enqueued or waited on)
// and trtrun._C.ContextOptions (its options, set by name; the struct is trtrun/context_options.h).
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "trtrun/context.h"
#include "trtrun/context_options.h"
#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace py = pybind11;

namespace trtrun {

namespace {

// The option names ContextOptions(**kwargs) takes: the fields bound below, in the struct's order.
constexpr const char* kOptionNames[] = {
    "use_graphs",    "workspace_bytes", "max_graphs",        "ffn_chunks",    "ffn_chunk_min_rows",
    "fuse_residual", "fuse_residual_min_rows", "gemm_search", "split_ln_max_rows", "split_ln_slice"};

std::string option_names() {
  std::string s;
  for (const char* n : kOptionNames) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}

}  // namespace

void bind_context(py::module_& m) {
  py::class_<ContextOptions> opts(m, "ContextOptions",
                                  "A Context's options by name; defaults and meaning in trtrun/context_options.h "
                                  "(trtrun.runtime.ContextOptions documents them)");
  opts.def(py::init([](const py::kwargs& kw) {
             ContextOptions o;
             py::object self = py::cast(&o, py::return_value_policy::reference);
             for (const auto& item : kw) {
               const std::string key = py::str(item.first);
               bool known = false;
               for (const char* n : kOptionNames) known = known || key == n;
               if (!known)
                 throw InputError("ContextOptions: unknown option '" + key + "'; the options are " + option_names());
               self.attr(key.c_str()) = item.second;
             }
             return o;
           }),
           "ContextOptions(**options): the defaults, with the options given by name replaced")
      .def_readwrite("use_graphs", &ContextOptions::use_graphs, "capture each (batch, bucket) shape in a CUDA graph")
      .def_readwrite("workspace_bytes", &ContextOptions::workspace_bytes, "cuBLASLt workspace bytes")
      .def_readwrite("max_graphs", &ContextOptions::max_graphs, "captured graphs kept (least recently used dropped)")
      .def_readwrite("ffn_chunks", &ContextOptions::ffn_chunks,
                     "feed-forward row chunks at the largest shapes (1: off)")
      .def_readwrite("ffn_chunk_min_rows", &ContextOptions::ffn_chunk_min_rows, "least rows a feed-forward chunk holds")
      .def_readwrite("fuse_residual", &ContextOptions::fuse_residual,
                     "add an fp32 residual in the GEMM epilogue of a Linear feeding a LayerNorm")
      .def_readwrite("fuse_residual_min_rows", &ContextOptions::fuse_residual_min_rows,
                     "least rows of a run that fuses the residual")
      .def_property(
          "gemm_search", [](const ContextOptions& o) { return std::string(to_string(o.gemm_search)); },
          [](ContextOptions& o, const std::string& v) { o.gemm_search = from_string<GemmSearch>(v, "gemm_search"); },
          "how each GEMM shape's cuBLASLt algorithm is chosen: 'heuristic', 'focused' or 'exhaustive'")
      .def_readwrite("split_ln_max_rows", &ContextOptions::split_ln_max_rows,
                     "most tokens of a run whose Linear -> LayerNorm runs as K slices (0: never)")
      .def_readwrite("split_ln_slice", &ContextOptions::split_ln_slice, "depth of those K slices");

  py::class_<Context, std::shared_ptr<Context>>(m, "Context", "Executes an Engine on its own CUDA stream")
      .def(py::init([](std::shared_ptr<Engine> engine, const ContextOptions& options) {
             check_options(options);
             py::gil_scoped_release release;
             return std::make_shared<Context>(std::move(engine), options);
           }),
           py::arg("engine"), py::arg("options") = ContextOptions(),
           "A context of `engine` with `options` (ContextOptions): its own stream, activation arena (allocated now, at "
           "the profile's maxima), pinned I/O buffers, cuBLASLt workspace and CUDA-graph cache")
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
           py::call_guard<py::gil_scoped_release>(),
           "run at (batch, seq) padded to seq_bucket, from host_input() to host_output(); waits for the result")
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
      .def("synchronize", &Context::synchronize, py::call_guard<py::gil_scoped_release>(),
           "wait for the last run; InputError if a device-path run met out-of-range token ids")
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
