// native/include/trtrun/engine.h: an Engine holds a plan's ops and its weights on one device, uploaded once and
// immutable afterwards; Contexts (context.h) execute it. Several Contexts, in several threads, may share one Engine.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "trtrun/device.h"
#include "trtrun/plan.h"

namespace trtrun {

// How a graph input is read by the ops (derived from the plan): token ids (range limit) or a key mask.
struct InputInfo {
  int tensor = NO_TENSOR;
  bool used = false;
  bool is_mask = false;
  int64_t limit = 0;  // ids must lie in [0, limit)
};

class Engine {
 public:
  // Checks the description (indices, op arities, weight shapes and dtypes the kernels need) and uploads the
  // weights (desc.weights[i].host must stay valid during the call). Throws InputError for a description the
  // runtime cannot execute, DeviceError / CudaError for device problems (wrong architecture, out of memory).
  Engine(EngineDesc desc, int device);
  ~Engine() = default;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const EngineDesc& desc() const { return desc_; }
  int device() const { return device_; }
  const void* weight(int index) const;  // device pointer; nullptr for NO_WEIGHT
  size_t weight_bytes() const { return weights_.size(); }
  const std::vector<InputInfo>& input_info() const { return input_info_; }

 private:
  void check() ;
  EngineDesc desc_;
  int device_;
  DeviceBuffer weights_;
  std::vector<size_t> offsets_;
  std::vector<InputInfo> input_info_;
};

}  // namespace trtrun
