// GoogleTest runner for every suite. Prints gtest's usual report, then one closing line
// "N passed, N failed, N skipped" (GPU tests count as skipped on a machine without a GPU).
#include <gtest/gtest.h>

#include <cstdio>

namespace {
class SummaryLine : public testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const testing::TestInfo& info) override {
    const testing::TestResult* r = info.result();
    if (r->Skipped())
      ++skipped_;
    else if (r->Failed())
      ++failed_;
    else
      ++passed_;
  }
  void OnTestProgramEnd(const testing::UnitTest&) override {
    std::printf("%d passed, %d failed, %d skipped\n", passed_, failed_, skipped_);
    std::fflush(stdout);
  }

 private:
  int passed_ = 0, failed_ = 0, skipped_ = 0;
};
}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  testing::UnitTest::GetInstance()->listeners().Append(new SummaryLine);
  return RUN_ALL_TESTS();
}
