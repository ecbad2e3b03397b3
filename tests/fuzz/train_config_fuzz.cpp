// libFuzzer target: the input is a YAML experiment config, optionally followed by a NUL byte and
// NUL-separated "section.key=value" overrides (as on build/train's command line). A config that
// loads must satisfy config.h's promise: parse_config(to_yaml(c)) gives c back.
#include <cstring>
#include <string>
#include <vector>

#include "engine/config.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

std::vector<std::string> split_overrides(const char* p, const char* end) {
  std::vector<std::string> out;
  while (p < end) {
    const char* nul = static_cast<const char*>(std::memchr(p, '\0', size_t(end - p)));
    const char* stop = nul ? nul : end;
    out.emplace_back(p, stop);
    p = stop + 1;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  const char* nul = static_cast<const char*>(std::memchr(text, '\0', size));
  const size_t yaml_size = nul ? size_t(nul - text) : size;
  const std::string path = loom::fuzz::write_scratch("config.yaml", data, yaml_size);
  const std::vector<std::string> overrides = nul ? split_overrides(nul + 1, text + size) : std::vector<std::string>{};
  loom::TrainConfig cfg;
  try {
    cfg = loom::load_config(path, overrides);
  } catch (const loom::Error&) {
    return 0;
  }
  const std::string resolved = loom::to_yaml(cfg);
  try {
    const std::string again = loom::to_yaml(loom::parse_config(resolved, "resolved"));
    if (again != resolved)
      loom::fuzz::finding("to_yaml(parse_config(to_yaml(c))) differs from to_yaml(c):\n" + resolved + "\n---\n" + again);
  } catch (const loom::Error& e) {
    loom::fuzz::finding("the resolved config of an accepted one does not load: " + std::string(e.what()) + "\n" +
                        resolved);
  }
  return 0;
}
