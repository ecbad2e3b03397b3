// The kernel families of build/bench --profile (tools/kernel_profile.h): our kernels by their mangled
// names, cuBLASLt's by its naming, the attention's forward and backward apart, and the rest "other".
#include <gtest/gtest.h>

#include "tools/kernel_profile.h"

namespace loom {
namespace {

TEST(KernelProfile, KernelsFallIntoTheirFamilies) {
  EXPECT_EQ(family_of("_ZN4loom4attn23attention_forward_kernelILi128EEEvNS0_6ParamsE"), "attention forward");
  EXPECT_EQ(family_of("_ZN4loom4attn24attention_backward_kernelILi128EEEvNS0_6ParamsE"), "attention backward");
  EXPECT_EQ(family_of("_ZN4loom4attn29attention_backward_prep_kernelILi64EEEvNS0_6ParamsE"), "attention backward");
  EXPECT_EQ(family_of("_ZN4loom4attn26attention_dq_convert_kernelILi64EEEvNS0_6ParamsE"), "attention backward");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_122rmsnorm_forward_kernelEP13__nv_bfloat16"), "RMSNorm");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_116lora_gemv_kernelILi1ELi4EEEvNS0_9GemvBatchE"), "decode GEMV");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_120lora_gemv_mma_kernelENS0_8MmaBatchEPK13__nv_bfloat16ii"), "decode GEMV");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_113lora_u_kernelILi1EEEvNS0_9GemvBatchEPK13__nv_bfloat16i"),
            "decode GEMV, adapters' u");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_128nf4_dequantize_pieces_kernelEP13__nv_bfloat16"), "NF4 dequantize");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_116moe_route_kernelEPiPfS2_PKflii"), "MoE routing and permutation");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_119grouped_rows_kernelILi64ELi4ELb1EEEvv"), "grouped GEMM 64x64 (MoE)");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_119grouped_rows_kernelILi128ELi2ELb0EEEvv"),
            "grouped GEMM 128x128 (MoE)");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_126grouped_rows_hopper_kernelILb1EEEvv"), "grouped GEMM Hopper (MoE)");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_117grouped_tn_kernelEPfl"), "grouped GEMM tn, LoRA grads (MoE)");
  EXPECT_EQ(family_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1"),
            "cuBLASLt GEMM");
  EXPECT_EQ(family_of("nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNN"), "cuBLASLt GEMM");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_111adamw_kernelEPfS1_S1_PKf"), "optimizer and clipping");
  EXPECT_EQ(family_of("_ZN4loom12_GLOBAL__N_122rope_into_cache_kernelEv"), "RoPE");
  EXPECT_EQ(family_of("some_library_kernel"), "other");
}

}  // namespace
}  // namespace loom
