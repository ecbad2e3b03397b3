// The attention kernel families (ops/attention.h AttentionKernels) the GPU tests run: every one
// this build has, so that each is checked against the same reference.
#pragma once
#include <vector>

#include "ops/attention.h"

namespace loom::test {

// The families for long documents: the mma.sync one and, in GPU_ARCH=90 builds, the Hopper one.
inline std::vector<AttentionKernels> long_attention_families() {
  std::vector<AttentionKernels> families{AttentionKernels::kLongDocs};
  if (attention_hopper_kernels_built()) families.push_back(AttentionKernels::kLongDocsHopper);
  return families;
}

inline std::vector<AttentionKernels> attention_families() {
  std::vector<AttentionKernels> families{AttentionKernels::kShortDocs};
  for (AttentionKernels f : long_attention_families()) families.push_back(f);
  return families;
}

inline const char* attention_family_name(AttentionKernels kernels) {
  switch (kernels) {
    case AttentionKernels::kShortDocs: return "short-document kernels";
    case AttentionKernels::kLongDocs: return "long-document kernels";
    case AttentionKernels::kLongDocsHopper: return "long-document kernels on Hopper warpgroup MMAs";
    case AttentionKernels::kAuto: break;
  }
  return "the kernels kAuto chooses for each pass";
}

}  // namespace loom::test
