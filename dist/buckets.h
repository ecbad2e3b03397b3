// Which gradient buckets may start their all-reduce, and in what order.
//
// The LoRA gradient is one layer-major vector; a bucket is a contiguous range of it, bucket i =
// [bounds[i], bounds[i+1]). During the step's last backward the model marks each layer's range
// final, last layer first, and a bucket's all-reduce can start as soon as it is complete, while
// the earlier layers are still in backward.
//
// Order. NCCL needs every rank to issue its collectives in the same order, but marks differ
// between ranks: a rank with no micro-batch in a step marks nothing and only flushes. So buckets
// start strictly from the last to the first: bucket i starts once it and every bucket after it
// are complete. Marks in backward order (last layer first) start each bucket at once; any other
// order only delays starts, never reorders them.
#pragma once
#include <cstddef>
#include <vector>

namespace loom {

// Bucket bounds from layer bounds (0 = l0 < l1 < ... < lL = n, layer j = [l_j, l_{j+1})):
// consecutive layers are merged, from the last one down, until a bucket holds at least
// min_elems values, so tiny layers do not each pay a collective's launch cost. The first
// bucket takes whatever is left and may be smaller.
std::vector<size_t> merge_layer_buckets(const std::vector<size_t>& layer_bounds, size_t min_elems);

class BucketTracker {
 public:
  // bounds: 0 = b0 < b1 < ... < bk = n (a loom::Error otherwise).
  explicit BucketTracker(std::vector<size_t> bounds);

  size_t buckets() const { return bounds_.size() - 1; }
  size_t begin(size_t bucket) const { return bounds_[bucket]; }
  size_t size(size_t bucket) const { return bounds_[bucket + 1] - bounds_[bucket]; }

  // Marks [begin, end) final; returns the buckets that may start now, in start order. Marking
  // a value twice in one step, or outside [0, n), is a loom::Error.
  std::vector<size_t> mark(size_t begin, size_t end);
  // Every bucket not started yet, in start order; the next step then starts from scratch.
  std::vector<size_t> flush();

 private:
  std::vector<size_t> bounds_;
  std::vector<size_t> marked_;  // values of each bucket marked final this step
  size_t unstarted_;            // buckets [0, unstarted_) have not started
};

}  // namespace loom
