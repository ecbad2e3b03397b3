#include "ops/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "ops/error.h"
#include "ops/cuda_common.h"

namespace loom {

namespace {
constexpr size_t kAlign = 256;  // cuBLASLt and 16-byte vector loads want aligned bases
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

std::string format_bytes(size_t b) {
  char buf[32];
  if (b >= (size_t(1) << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(size_t(1) << 30));
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", double(b) / double(1 << 20));
  return buf;
}

MemoryPlan::~MemoryPlan() {
  if (base_) cudaFree(base_);
}

void MemoryPlan::add_raw(const std::string& group, const std::string& name, void** ptr, size_t bytes,
                         const std::string& shape, const char* dtype) {
  LOOM_CHECK(!base_, "memory plan: '", name, "' added after allocation");
  entries_.push_back({group, name, shape, dtype, ptr, bytes, 0});
}

size_t MemoryPlan::total_bytes() const {
  size_t t = 0;
  for (const auto& e : entries_) t += align_up(e.bytes);
  return t;
}

size_t MemoryPlan::group_bytes(const std::string& group) const {
  size_t t = 0;
  for (const auto& e : entries_)
    if (e.group == group) t += align_up(e.bytes);
  return t;
}

std::string MemoryPlan::table(bool per_buffer) const {
  std::map<std::string, size_t> groups;
  for (const auto& e : entries_) groups[e.group] += align_up(e.bytes);
  std::string out = "memory plan:\n";
  for (const auto& [g, b] : groups) out += cat("  ", g, ": ", format_bytes(b), "\n");
  out += cat("  total: ", format_bytes(total_bytes()), " in one allocation (", entries_.size(), " buffers)\n");
  if (per_buffer) {
    char line[256];
    for (const auto& e : entries_) {
      std::snprintf(line, sizeof line, "    %-12s %-40s %-24s %-5s %12s\n", e.group.c_str(), e.name.c_str(),
                    e.shape.c_str(), e.dtype.c_str(), format_bytes(e.bytes).c_str());
      out += line;
    }
  }
  return out;
}

void MemoryPlan::check_fits(size_t free_bytes, size_t reserve_bytes, const std::string& hint) const {
  const size_t need = total_bytes() + reserve_bytes;
  if (need <= free_bytes) return;
  fail("the run needs ", format_bytes(need), " of device memory (plan ", format_bytes(total_bytes()), " + ",
       format_bytes(reserve_bytes), " for the CUDA context, cuBLASLt and NCCL) but only ", format_bytes(free_bytes),
       " is free.\n", table(false), "To fit: ", hint);
}

void MemoryPlan::allocate() {
  LOOM_CHECK(!base_, "memory plan allocated twice");
  const size_t total = total_bytes();
  CUDA_CHECK(cudaMalloc(&base_, std::max<size_t>(total, kAlign)));
  size_t off = 0;
  for (auto& e : entries_) {
    e.offset = off;
    *e.ptr = static_cast<char*>(base_) + off;
    off += align_up(e.bytes);
  }
}

}  // namespace loom
