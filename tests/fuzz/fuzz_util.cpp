#include "tests/fuzz/fuzz_util.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace loom::fuzz {

namespace fs = std::filesystem;

namespace {

// Removed when the process exits normally (libFuzzer ends a run with exit()); a crash leaves it
// behind with the input that caused it.
struct ScratchDir {
  std::string path;
  ScratchDir() {
    // /dev/shm keeps the per-input writes off the disk where it exists.
    const std::string root = fs::is_directory("/dev/shm") ? "/dev/shm" : fs::temp_directory_path().string();
    path = root + "/loom-fuzz-XXXXXX";
    if (!mkdtemp(path.data())) {
      std::perror("loom fuzz: cannot create a scratch folder");
      std::abort();
    }
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

const std::string& scratch_dir() {
  static const ScratchDir dir;
  return dir.path;
}

std::string write_scratch(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), std::streamsize(size));
  if (!out.flush()) {
    std::perror(("loom fuzz: cannot write " + path).c_str());  // the harness's problem, not a finding
    std::abort();
  }
  return path;
}

void finding(const std::string& what) {
  std::fprintf(stderr, "loom fuzz finding: %s\n", what.c_str());
  std::abort();
}

}  // namespace loom::fuzz
