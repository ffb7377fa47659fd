// native/include/trtrun/memory_plan.h: offsets of activation buffers in one arena, from their sizes and lifetimes.
#pragma once

#include <cstddef>
#include <vector>

namespace trtrun {

// A buffer needed from step `first` to step `last` (inclusive; steps are op indices, -1 = before the first op).
struct BufferLife {
  size_t bytes = 0;
  int first = 0;
  int last = 0;
};

struct ArenaPlan {
  std::vector<size_t> offsets;  // one per BufferLife, multiples of `alignment`
  size_t total = 0;             // arena size
  size_t naive_total = 0;       // sum of all (aligned) sizes: what the arena would be without reuse
};

// Greedy best-fit by decreasing size: each buffer goes to the lowest offset that overlaps no already placed
// buffer whose lifetime overlaps its own. Buffers with overlapping lifetimes never share bytes (an op's outputs
// never alias its inputs: both are live at that op).
ArenaPlan plan_arena(const std::vector<BufferLife>& buffers, size_t alignment = 256);

}  // namespace trtrun
