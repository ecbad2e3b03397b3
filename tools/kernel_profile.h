// A kernel-level profile of timed GPU work (issue 15's "profile first"), from CUPTI's activity API
// instead of nsys (which did not run reliably on the lent machines): every kernel's name, start and
// end, and every memcpy's, collected in process while the timed steps run. Reported per step:
//   families     GPU time of each kernel family (the kernel's name decides, see family_of), its share of
//                the kernel time, and its launches
//   busy         the union of kernel intervals over the wall time from the first kernel's start to the
//                last one's end: 1 - busy is the GPU idle between kernels (launch gaps, host waits)
//   launches     kernels per step; memcpy time and count per step (uploads, offload copies)
// libcupti is loaded at run time (dlopen), so a machine without it still builds and runs everything;
// only --profile then says what is missing. The records are CUDA 13's CUpti_ActivityKernel10 and
// CUpti_ActivityMemcpy6 (cupti_activity.h of the toolkit this is built with).
#pragma once
#include <cupti.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ops/cuda_common.h"
#include "ops/error.h"

namespace loom {

// The family of a kernel, by substrings of its (mangled) name; first match wins.
inline std::string family_of(const std::string& name) {
  static const std::vector<std::pair<std::vector<const char*>, const char*>> kFamilies = {
      {{"attention_backward", "attention_dq"}, "attention backward"},
      {{"attention_forward"}, "attention forward"},
      {{"decode_split", "decode_merge"}, "attention (decode)"},
      // The adapters' u = x·Aᵀ apart from the projections it feeds, so that its own cost shows (and
      // where a launch overlaps the two, neither sum is mistaken for what a token waits for).
      {{"lora_u_kernel"}, "decode GEMV, adapters' u"},
      {{"lora_gemv"}, "decode GEMV"},
      // The MoE's grouped GEMMs by kernel: the Hopper and 128x128 ones take the experts' own products,
      // the 64x64 one the narrow LoRA products (N < 128), the tn one the expert LoRA gradients.
      {{"grouped_rows_hopper"}, "grouped GEMM Hopper (MoE)"},
      {{"grouped_rows_kernelILi128"}, "grouped GEMM 128x128 (MoE)"},  // grouped_rows_kernel<kT, ...>
      {{"grouped_rows_kernelILi64"}, "grouped GEMM 64x64 (MoE)"},
      {{"grouped_tn"}, "grouped GEMM tn, LoRA grads (MoE)"},
      {{"moe_"}, "MoE routing and permutation"},
      {{"nf4_dequantize"}, "NF4 dequantize"},
      {{"cross_entropy", "add_sum"}, "cross-entropy"},
      {{"rmsnorm"}, "RMSNorm"},
      {{"rope"}, "RoPE"},
      {{"swiglu"}, "SwiGLU"},
      {{"adamw", "norm_and_coef", "sum_squares", "scale_kernel"}, "optimizer and clipping"},
      {{"dropout"}, "dropout"},
      {{"embedding"}, "embedding"},
      {{"kv_cache", "token_cache"}, "KV cache"},
      {{"greedy", "sample_kernel"}, "sampling"},
      {{"cast_", "fill_", "bias_add"}, "casts, fills, bias"},
      {{"gemm", "xmma", "nvjet", "cutlass", "cublas", "sm90_", "sm80_"}, "cuBLASLt GEMM"},
  };
  for (const auto& [parts, family] : kFamilies)
    for (const char* part : parts)
      if (name.find(part) != std::string::npos) return family;
  return "other";
}

class KernelProfile {
 public:
  // Loads libcupti and registers the record buffers; fails with what to install when it cannot.
  KernelProfile() {
    for (const char* lib : {"libcupti.so", "libcupti.so.13", "/usr/local/cuda/lib64/libcupti.so"})
      if ((lib_ = dlopen(lib, RTLD_NOW | RTLD_LOCAL))) break;
    LOOM_CHECK(lib_, "--profile needs CUPTI (libcupti.so of the CUDA toolkit, /usr/local/cuda/lib64): ", dl_error());
    register_ = symbol<decltype(&cuptiActivityRegisterCallbacks)>("cuptiActivityRegisterCallbacks");
    enable_ = symbol<decltype(&cuptiActivityEnable)>("cuptiActivityEnable");
    disable_ = symbol<decltype(&cuptiActivityDisable)>("cuptiActivityDisable");
    flush_ = symbol<decltype(&cuptiActivityFlushAll)>("cuptiActivityFlushAll");
    next_ = symbol<decltype(&cuptiActivityGetNextRecord)>("cuptiActivityGetNextRecord");
    LOOM_CHECK(!active_, "one KernelProfile at a time");
    check(register_(&buffer_requested, &buffer_completed), "cuptiActivityRegisterCallbacks");
    active_ = this;
  }
  // libcupti stays loaded: it has hooked itself into the CUDA driver, which may call it until exit.
  ~KernelProfile() { active_ = nullptr; }
  KernelProfile(const KernelProfile&) = delete;
  KernelProfile& operator=(const KernelProfile&) = delete;

  // Records from here to stop(), which waits for the device first.
  void start() {
    check(enable_(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable(kernels)");
    check(enable_(CUPTI_ACTIVITY_KIND_MEMCPY), "cuptiActivityEnable(memcpy)");
  }
  void stop() {
    CUDA_CHECK(cudaDeviceSynchronize());  // the work profiled has finished
    check(flush_(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
    check(disable_(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityDisable(kernels)");
    check(disable_(CUPTI_ACTIVITY_KIND_MEMCPY), "cuptiActivityDisable(memcpy)");
  }

  // A summary on stderr, each line led by `tag` ("bench:"), figures per `unit` ("step").
  static void print(const nlohmann::json& j, const char* tag, const char* unit) {
    std::fprintf(stderr, "%s profile per %s: %.0f kernels, %.3f ms of kernels, GPU busy %.1f%%, %.3f ms of memcpy\n",
                 tag, unit, j["kernels_per_step"].get<double>(), j["kernel_ms_per_step"].get<double>(),
                 100 * j["busy_fraction"].get<double>(), j["memcpy_ms_per_step"].get<double>());
    for (const nlohmann::json& f : j["families"])
      std::fprintf(stderr, "%s   %-30s %9.4f ms %5.1f%% %8.1f launches\n", tag, f["family"].get<std::string>().c_str(),
                   f["ms_per_step"].get<double>(), 100 * f["share"].get<double>(),
                   f["launches_per_step"].get<double>());
  }

  // The profile per step of `steps` recorded steps.
  nlohmann::json summary(int steps) const {
    LOOM_CHECK(steps >= 1, "profile summary: steps = ", steps);
    std::lock_guard<std::mutex> lock(records_lock_);
    std::map<std::string, std::pair<double, int64_t>> families;  // ns, launches
    double kernel_ns = 0;
    for (const Interval& k : kernels_) {
      auto& f = families[k.family];
      f.first += double(k.end - k.start);
      f.second += 1;
      kernel_ns += double(k.end - k.start);
    }
    nlohmann::json out;
    out["kernels_per_step"] = double(kernels_.size()) / steps;
    out["kernel_ms_per_step"] = kernel_ns / 1e6 / steps;
    out["busy_fraction"] = busy_fraction();
    double copy_ns = 0;
    for (const Interval& c : copies_) copy_ns += double(c.end - c.start);
    out["memcpy_ms_per_step"] = copy_ns / 1e6 / steps;
    out["memcpys_per_step"] = double(copies_.size()) / steps;
    nlohmann::json table = nlohmann::json::array();
    for (const auto& [family, f] : families)
      table.push_back({{"family", family},
                       {"ms_per_step", f.first / 1e6 / steps},
                       {"share", kernel_ns > 0 ? f.first / kernel_ns : 0.0},
                       {"launches_per_step", double(f.second) / steps}});
    std::sort(table.begin(), table.end(),
              [](const nlohmann::json& a, const nlohmann::json& b) { return a["ms_per_step"] > b["ms_per_step"]; });
    out["families"] = table;
    return out;
  }

 private:
  struct Interval {
    uint64_t start, end;
    std::string family;
  };

  template <class F>
  F symbol(const char* name) {
    void* p = dlsym(lib_, name);
    LOOM_CHECK(p, "--profile: libcupti has no ", name, " (", dl_error(), ")");
    return reinterpret_cast<F>(p);
  }
  static std::string dl_error() {
    const char* e = dlerror();
    return e ? e : "no reason given";
  }
  static void check(CUptiResult r, const char* what) {
    LOOM_CHECK(r == CUPTI_SUCCESS, "--profile: ", what, " failed (CUPTI error ", int(r), ")");
  }

  // Union of the kernel intervals over [first start, last end].
  double busy_fraction() const {
    if (kernels_.empty()) return 0.0;
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const Interval& k : kernels_) spans.emplace_back(k.start, k.end);
    std::sort(spans.begin(), spans.end());
    uint64_t covered = 0, open = spans[0].first, close = spans[0].second, last = 0;
    for (const auto& [s, e] : spans) {
      if (s > close) covered += close - open, open = s, close = e;
      close = std::max(close, e);
      last = std::max(last, e);
    }
    covered += close - open;
    return double(covered) / double(std::max<uint64_t>(last - spans[0].first, 1));
  }

  static constexpr size_t kBufferBytes = size_t(8) << 20;
  static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *size = kBufferBytes;
    *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
    *max_records = 0;  // as many as fit
  }
  // CUPTI may call this from its own thread while the steps run: the records are appended under a lock.
  static void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
    KernelProfile* self = active_;
    std::lock_guard<std::mutex> lock(records_lock_);
    CUpti_Activity* record = nullptr;
    while (self && self->next_(buffer, valid, &record) == CUPTI_SUCCESS) {
      if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
        const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
        if (k->end > k->start) self->kernels_.push_back({k->start, k->end, family_of(k->name ? k->name : "")});
      } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
        const auto* c = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
        if (c->end > c->start) self->copies_.push_back({c->start, c->end, "memcpy"});
      }
    }
    std::free(buffer);
  }

  inline static KernelProfile* active_ = nullptr;  // CUPTI's callbacks carry no user pointer
  inline static std::mutex records_lock_;
  void* lib_ = nullptr;
  decltype(&cuptiActivityRegisterCallbacks) register_ = nullptr;
  decltype(&cuptiActivityEnable) enable_ = nullptr;
  decltype(&cuptiActivityDisable) disable_ = nullptr;
  decltype(&cuptiActivityFlushAll) flush_ = nullptr;
  decltype(&cuptiActivityGetNextRecord) next_ = nullptr;
  std::vector<Interval> kernels_, copies_;
};

}  // namespace loom
