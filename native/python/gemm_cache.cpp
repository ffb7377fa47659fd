// native/python/gemm_cache.cpp: trtrun._C.gemm_cache_export / gemm_cache_import, the process-wide cache of tuned
// GEMM choices (trtrun/gemm_cache.h) as dicts whose enum fields are names (trtrun.runtime.save_gemm_cache and
// load_gemm_cache write and read them as JSON; docs/runtime.md has the file format).
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "trtrun/errors.h"
#include "trtrun/gemm_cache.h"
#include "trtrun/types.h"

namespace py = pybind11;

namespace trtrun {

namespace {

py::list export_entries() {
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
    d["operand_t"] = to_string(e.key.operand_t);
    d["out_t"] = to_string(e.key.out_t);
    d["epilogue"] = to_string(e.key.epilogue);
    d["tf32"] = e.key.tf32;
    d["add_c"] = e.key.add_c;
    d["split"] = e.key.split;
    d["scale"] = to_string(e.key.scale);
    d["workspace"] = e.workspace;
    d["search"] = to_string(e.search);
    py::list algo;
    for (uint64_t v : e.algo) algo.append(v);
    d["algo"] = algo;
    d["algo_workspace"] = e.algo_workspace;
    out.append(d);
  }
  return out;
}

DType float_type(const py::dict& d, const char* field, const std::string& where, bool fp8 = false) {
  const DType t = from_string<DType>(d[field].cast<std::string>(), where + ": " + field);
  if (!is_float(t) && !(fp8 && t == DType::F8E4M3))
    throw InputError(where + ": " + field + (fp8 ? " must be float32, float16 or float8_e4m3fn" : " must be float32 or float16") +
                     ", got '" + to_string(t) + "'");
  return t;
}

size_t import_entries(const py::list& entries) {
  std::vector<GemmCacheEntry> es;
  size_t i = 0;
  for (py::handle h : entries) {
    const std::string where = "entry " + std::to_string(i++);
    try {
      py::dict d = h.cast<py::dict>();
      GemmCacheEntry e;
      e.device = d["device"].cast<std::string>();
      e.cc = d["cc"].cast<int>();
      e.cublaslt = d["cublaslt"].cast<size_t>();
      e.key.m = d["m"].cast<int64_t>();
      e.key.n = d["n"].cast<int64_t>();
      e.key.k = d["k"].cast<int64_t>();
      if (e.key.m <= 0 || e.key.n <= 0 || e.key.k <= 0) throw InputError(where + ": m, n, k must be > 0");
      e.key.operand_t = float_type(d, "operand_t", where, true);
      e.key.out_t = float_type(d, "out_t", where);
      e.key.epilogue = from_string<GemmEpilogue>(d["epilogue"].cast<std::string>(), where + ": epilogue");
      e.key.tf32 = d["tf32"].cast<bool>();
      e.key.add_c = d["add_c"].cast<bool>();
      e.key.split = d.contains("split") ? d["split"].cast<int>() : 1;  // absent: an unsplit GEMM
      if (e.key.split < 1 || e.key.k % e.key.split != 0) throw InputError(where + ": split must be >= 1 and divide k");
      // absent: a file written before fp8 GEMMs, whose GEMMs have no scales
      e.key.scale = d.contains("scale") ? from_string<GemmScale>(d["scale"].cast<std::string>(), where + ": scale")
                                        : GemmScale::None;
      if ((e.key.scale != GemmScale::None || e.key.operand_t == DType::F8E4M3) &&
          (e.key.operand_t != DType::F8E4M3 || e.key.split != 1 || e.key.add_c))
        throw InputError(where + ": scale and operand_t float8_e4m3fn go together, unsplit and without add_c");
      e.workspace = d["workspace"].cast<size_t>();
      e.search = from_string<GemmSearch>(d["search"].cast<std::string>(), where + ": search");
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
}

}  // namespace

void bind_gemm_cache(py::module_& m) {
  m.def("gemm_cache_export", &export_entries,
        "every tuned GEMM choice of this process, as dicts with the enums by name (operand_t: 'float32', 'float16' or "
        "'float8_e4m3fn'; out_t: 'float32' or 'float16'; epilogue: 'none', 'bias', 'gelu', 'gelu_bias'; scale: "
        "'none', 'scalar', 'outer_vec'; search: 'heuristic', 'focused', 'exhaustive'); "
        "trtrun.runtime.save_gemm_cache writes them");
  m.def("gemm_cache_import", &import_entries, py::arg("entries"),
        "take tuned GEMM choices made elsewhere, as gemm_cache_export gives them (trtrun.runtime.load_gemm_cache); "
        "InputError naming the entry and the field for a bad one; returns how many were taken");
}

}  // namespace trtrun
