// native/runtime/memory_plan.cpp: see memory_plan.h.
#include <cstdint>
#include <utility>
#include <vector>
#include "trtrun/memory_plan.h"

#include "trtrun/errors.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace trtrun {

ArenaPlan plan_arena(const std::vector<BufferLife>& buffers, size_t alignment) {
  ArenaPlan plan;
  const size_t n = buffers.size();
  plan.offsets.assign(n, 0);
  std::vector<size_t> size(n);
  for (size_t i = 0; i < n; ++i) {
    if (buffers[i].last < buffers[i].first) throw InputError("plan_arena: lifetime ends before it starts");
    size[i] = (buffers[i].bytes + alignment - 1) / alignment * alignment;
    plan.naive_total += size[i];
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return size[a] > size[b]; });

  std::vector<size_t> placed;
  placed.reserve(n);
  for (size_t idx : order) {
    if (size[idx] == 0) continue;
    // placed buffers alive at the same time, by offset
    std::vector<std::pair<size_t, size_t>> busy;  // [begin, end)
    for (size_t j : placed) {
      bool overlap = buffers[j].first <= buffers[idx].last && buffers[idx].first <= buffers[j].last;
      if (overlap) busy.emplace_back(plan.offsets[j], plan.offsets[j] + size[j]);
    }
    std::sort(busy.begin(), busy.end());
    // smallest gap that fits (best fit), else after the last busy block
    size_t best = SIZE_MAX, best_gap = SIZE_MAX, cursor = 0;
    for (const auto& b : busy) {
      if (b.first > cursor) {
        size_t gap = b.first - cursor;
        if (gap >= size[idx] && gap < best_gap) {
          best = cursor;
          best_gap = gap;
        }
      }
      cursor = std::max(cursor, b.second);
    }
    if (best == SIZE_MAX) best = cursor;
    plan.offsets[idx] = best;
    plan.total = std::max(plan.total, best + size[idx]);
    placed.push_back(idx);
  }
  return plan;
}

}  // namespace trtrun
