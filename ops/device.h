// Which path runs: the CUDA path when a device is present, else the fp32 CPU reference path.
#pragma once
#include <string>

namespace loom {
// Number of usable CUDA devices; 0 when there is no driver, no device, or CUDA fails to start.
int cuda_device_count();
inline bool cuda_available() { return cuda_device_count() > 0; }
// "NVIDIA H100 80GB HBM3, 132 SMs, 79.1 GiB, driver 13.0" or "no CUDA device (<reason>)".
std::string cuda_device_summary(int device = 0);
// Multiprocessors of the current device (a CUDA error if there is none).
int cuda_multiprocessors();
}  // namespace loom
