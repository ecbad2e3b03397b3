// ops/files.h: how user text is quoted in messages, and the JSON depth bound every reader shares.
#include "ops/files.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/hostile.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::nested_arrays;

// The bound is exact: 64 levels parse, 65 do not (an off-by-one in either direction fails here).
TEST(Files, JsonDepthLimitIsExact) {
  EXPECT_EQ(json_depth(nested_arrays(kMaxJsonDepth)), kMaxJsonDepth);
  EXPECT_EQ(json_depth(nested_arrays(kMaxJsonDepth + 1)), kMaxJsonDepth + 1);
  EXPECT_NO_THROW(parse_json(nested_arrays(kMaxJsonDepth), "x.json"));
  test::expect_error([] { parse_json(nested_arrays(kMaxJsonDepth + 1), "x.json"); },
                     {"x.json: JSON nested deeper than 64 levels"});
  // Brackets inside strings (escaped quotes included) do not count.
  EXPECT_EQ(json_depth(R"({"a": "[[[[\"[[[", "b": [1]})"), 2);
}

TEST(Files, ShownQuotesShortTextWholeAndCutsLongTextBetweenCharacters) {
  EXPECT_EQ(shown("runs/x"), "runs/x");
  EXPECT_EQ(shown(std::string(kMaxShownBytes, 'p')), std::string(kMaxShownBytes, 'p'));
  EXPECT_EQ(shown(std::string(5000000, 'p')), std::string(kMaxShownBytes, 'p') + "... (5000000 characters)");
  // "é" is two bytes: a cut after 3 bytes would split the second one, so it keeps 2.
  EXPECT_EQ(shown("ééé", 3), "é... (6 characters)");
  // Control characters are escaped: a NUL would end the message, a newline split it.
  EXPECT_EQ(shown(std::string("a\nb\0c", 5)), "a\\x0ab\\x00c");
}

}  // namespace
}  // namespace loom
