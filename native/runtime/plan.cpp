// native/runtime/plan.cpp: size arithmetic of the plan description (see trtrun/plan.h).
#include "trtrun/plan.h"

#include <limits>
#include <string>

#include "trtrun/errors.h"

namespace trtrun {

size_t TensorDesc::numel(int64_t batch, int64_t seq) const {
  size_t n = 1;
  for (int64_t d : dims) {
    int64_t v = d == DIM_B ? batch : d == DIM_S ? seq : d;
    if (v < 0) throw InputError("tensor " + name + ": negative dimension");
    n = checked_mul(n, static_cast<size_t>(v), name.c_str());
  }
  return n;
}

size_t checked_mul(size_t a, size_t b, const char* what) {
  if (a != 0 && b > std::numeric_limits<size_t>::max() / a)
    throw InputError(std::string("size overflow computing ") + what);
  return a * b;
}

size_t checked_add(size_t a, size_t b, const char* what) {
  if (b > std::numeric_limits<size_t>::max() - a) throw InputError(std::string("size overflow computing ") + what);
  return a + b;
}

}  // namespace trtrun
