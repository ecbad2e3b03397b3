#include "ops/error.h"
#include "tests/test_util.h"

TEST(Error, CatJoinsParts) { EXPECT_EQ(loom::cat("lora.r = ", 0, " in ", "x.yaml"), "lora.r = 0 in x.yaml"); }

TEST(Error, CheckThrowsWithMessage) {
  try {
    LOOM_CHECK(1 + 1 == 3, "arithmetic is broken: ", 2);
    FAIL() << "LOOM_CHECK did not throw";
  } catch (const loom::Error& e) {
    EXPECT_STREQ(e.what(), "arithmetic is broken: 2");
  }
}

TEST(Device, GpuPresentOrSkipped) {
  REQUIRE_GPU();
  EXPECT_GT(loom::cuda_device_count(), 0);
}
