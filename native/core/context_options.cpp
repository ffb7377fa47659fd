// native/core/context_options.cpp: see trtrun/context_options.h.
#include "trtrun/context_options.h"

#include <string>

#include "trtrun/errors.h"

namespace trtrun {

void check_options(const ContextOptions& o) {
  if (o.ffn_chunks < 1) throw InputError("ffn_chunks must be >= 1, got " + std::to_string(o.ffn_chunks));
}

}  // namespace trtrun
