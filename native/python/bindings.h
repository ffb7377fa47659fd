// native/python/bindings.h: the bind_* functions module.cpp calls, one file each (no Python in the runtime core).
#pragma once

#include <pybind11/pybind11.h>

namespace trtrun {
void bind_engine(pybind11::module_& m);         // engine.cpp: Engine
void bind_context(pybind11::module_& m);        // context.cpp: Context, ContextOptions
void bind_device_memory(pybind11::module_& m);  // device_memory.cpp: DeviceMemory, dlpack_info
void bind_gemm_cache(pybind11::module_& m);     // gemm_cache.cpp: gemm_cache_export, gemm_cache_import
void bind_kernels(pybind11::module_& m);        // kernels.cpp: the kernel launchers alone, as _C.plugins
}  // namespace trtrun
