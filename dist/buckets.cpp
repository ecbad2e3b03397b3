#include "dist/buckets.h"

#include <algorithm>
#include <utility>

#include "ops/error.h"

namespace loom {
namespace {

void check_bounds(const std::vector<size_t>& b, const char* what) {
  LOOM_CHECK(b.size() >= 2 && b.front() == 0, what, " must start at 0 and hold at least one range (got ", b.size(),
             " bounds)");
  for (size_t i = 1; i < b.size(); ++i)
    LOOM_CHECK(b[i] > b[i - 1], what, " must increase strictly: bound ", i, " is ", b[i], " after ", b[i - 1]);
}

}  // namespace

std::vector<size_t> merge_layer_buckets(const std::vector<size_t>& layer_bounds, size_t min_elems) {
  check_bounds(layer_bounds, "layer bounds");
  std::vector<size_t> reversed{layer_bounds.back()};
  for (size_t j = layer_bounds.size() - 1; j-- > 1;)
    if (reversed.back() - layer_bounds[j] >= min_elems) reversed.push_back(layer_bounds[j]);
  reversed.push_back(0);
  return {reversed.rbegin(), reversed.rend()};
}

BucketTracker::BucketTracker(std::vector<size_t> bounds) : bounds_(std::move(bounds)) {
  check_bounds(bounds_, "gradient bucket bounds");
  marked_.assign(buckets(), 0);
  unstarted_ = buckets();
}

std::vector<size_t> BucketTracker::mark(size_t begin, size_t end) {
  const size_t n = bounds_.back();
  LOOM_CHECK(begin < end && end <= n, "gradient range [", begin, ", ", end, ") marked ready is empty or outside the ",
             n, " gradient values");
  // Buckets overlapping [begin, end): from the one holding `begin` while they start before `end`.
  size_t b = size_t(std::upper_bound(bounds_.begin(), bounds_.end(), begin) - bounds_.begin()) - 1;
  for (; b < buckets() && bounds_[b] < end; ++b) {
    const size_t overlap = std::min(end, bounds_[b + 1]) - std::max(begin, bounds_[b]);
    LOOM_CHECK(marked_[b] + overlap <= size(b), "gradient range [", begin, ", ", end,
               ") marked ready twice in one step (bucket ", b, " = [", bounds_[b], ", ", bounds_[b + 1],
               ") would be more than complete)");
    marked_[b] += overlap;
  }
  std::vector<size_t> start;
  while (unstarted_ > 0 && marked_[unstarted_ - 1] == size(unstarted_ - 1)) start.push_back(--unstarted_);
  return start;
}

std::vector<size_t> BucketTracker::flush() {
  std::vector<size_t> start;
  while (unstarted_ > 0) start.push_back(--unstarted_);
  marked_.assign(buckets(), 0);
  unstarted_ = buckets();
  return start;
}

}  // namespace loom
