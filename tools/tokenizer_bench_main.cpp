// build/tokenizer_bench: single-thread encode throughput of a tokenizer on text files, the way
// dataset preparation calls it (documents of a few KB, each encoded on its own).
//   build/tokenizer_bench --tokenizer PATH [--doc-bytes N] FILE...
// Prints bytes, tokens, seconds and MB/s (1 MB = 10^6 bytes of UTF-8 input).
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "data/utf8.h"
#include "ops/error.h"

namespace {

const char* kUsage =
    "usage: tokenizer_bench --tokenizer PATH [--doc-bytes N] FILE...\n"
    "  Encodes FILEs (UTF-8 text) cut into documents of about N bytes (default 4096) at line ends,\n"
    "  on one thread, and prints the throughput.\n";

struct Args {
  std::string tokenizer;
  size_t doc_bytes = 4096;
  std::vector<std::string> files;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if ((arg == "--tokenizer" || arg == "--doc-bytes") && i + 1 < argc) {
      std::string v = argv[++i];
      if (arg == "--tokenizer")
        a.tokenizer = v;
      else
        a.doc_bytes = std::stoul(v);
    } else if (arg.rfind("--", 0) == 0) {
      loom::fail("unknown option ", arg, "\n", kUsage);
    } else {
      a.files.push_back(arg);
    }
  }
  LOOM_CHECK(!a.tokenizer.empty() && !a.files.empty(), "--tokenizer and at least one FILE are required\n", kUsage);
  return a;
}

// Documents of about `size` bytes, cut after a newline; invalid UTF-8 files are rejected.
std::vector<std::string> documents(const std::vector<std::string>& files, size_t size) {
  std::vector<std::string> docs;
  for (const std::string& path : files) {
    std::ifstream f(path, std::ios::binary);
    LOOM_CHECK(f.good(), "cannot open ", path);
    std::ostringstream s;
    s << f.rdbuf();
    std::string text = s.str();
    LOOM_CHECK(loom::utf8::first_invalid(text) == std::string::npos, path, " is not valid UTF-8");
    for (size_t at = 0; at < text.size();) {
      size_t cut = text.find('\n', std::min(text.size(), at + size));
      cut = cut == std::string::npos ? text.size() : cut + 1;
      docs.push_back(text.substr(at, cut - at));
      at = cut;
    }
  }
  return docs;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args args = parse_args(argc, argv);
    auto tokenizer = loom::Tokenizer::load(args.tokenizer);
    std::vector<std::string> docs = documents(args.files, args.doc_bytes);
    size_t bytes = 0, tokens = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (const std::string& d : docs) {
      tokens += tokenizer->encode(d).size();
      bytes += d.size();
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: %zu documents, %zu bytes, %zu tokens (%.2f bytes/token) in %.3f s = %.2f MB/s\n",
                args.tokenizer.c_str(), docs.size(), bytes, tokens, double(bytes) / double(tokens ? tokens : 1),
                seconds, double(bytes) / seconds / 1e6);
    return 0;
  } catch (...) {
    std::fprintf(stderr, "error: %s\n", loom::describe_current_exception().c_str());
    return 1;
  }
}
