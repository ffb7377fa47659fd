// native/kernels/gelu/gelu.h: GELU in place (docs/plan-format.md: gelu_erf, gelu_tanh).
#pragma once

#include <cuda_runtime.h>

#include "trtrun/errors.h"
#include "trtrun/types.h"

namespace trtrun {

// y[i] = gelu(y[i]) for i < count, computed in fp32 from the stored value, rounded to y_t.
// tanh_approx: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); else 0.5 x (1 + erf(x / sqrt(2))).
void launch_gelu(void* y, DType y_t, long long count, bool tanh_approx, cudaStream_t stream);

}  // namespace trtrun
