// csrc/bind_common.h: what the pybind11 files share (declarations only; no Python in the runtime core).
#pragma once

#include <pybind11/pybind11.h>

namespace trtrun {
void bind_engine(pybind11::module_& m);
void bind_context(pybind11::module_& m);
#ifdef TRTRUN_HAVE_BIND_PLUGINS
}  // namespace trtrun
void bind_plugins(pybind11::module_& m);  // csrc/bind_plugins.cpp (plugin helper)
namespace trtrun {
#endif
}  // namespace trtrun
