// The memory planner: every device buffer of a run is listed here before anything is loaded —
// name, shape, dtype, bytes, group (weights / lora / activations / scratch) — the plan is printed
// with its total, checked against the device's free memory (stopping with the numbers and the
// setting to change when it does not fit), and then carved out of ONE cudaMalloc. Nothing is
// allocated inside the step loop.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace loom {

class MemoryPlan {
 public:
  MemoryPlan() = default;
  MemoryPlan(const MemoryPlan&) = delete;
  MemoryPlan& operator=(const MemoryPlan&) = delete;
  ~MemoryPlan();

  // Registers a buffer of `count` elements of T; *ptr is set by allocate(). shape: e.g. "(L, 3·C, C)".
  template <class T>
  void add(const std::string& group, const std::string& name, T** ptr, size_t count, const std::string& shape,
           const char* dtype) {
    add_raw(group, name, reinterpret_cast<void**>(ptr), count * sizeof(T), shape, dtype);
  }
  void add_raw(const std::string& group, const std::string& name, void** ptr, size_t bytes, const std::string& shape,
               const char* dtype);

  size_t total_bytes() const;
  size_t group_bytes(const std::string& group) const;  // 0 for a group with no buffer
  // Per-group totals then every buffer, one line each.
  std::string table(bool per_buffer) const;
  // Throws loom::Error when total + reserve > free device memory, naming the total, the largest
  // groups, and `hint` (the setting to change).
  void check_fits(size_t free_bytes, size_t reserve_bytes, const std::string& hint) const;
  // One device allocation; every registered pointer is set (256-byte aligned).
  void allocate();
  void* base() const { return base_; }

 private:
  struct Entry {
    std::string group, name, shape, dtype;
    void** ptr;
    size_t bytes, offset;
  };
  std::vector<Entry> entries_;
  void* base_ = nullptr;
};

std::string format_bytes(size_t bytes);  // "12.34 GiB", "512.0 MiB"

}  // namespace loom
