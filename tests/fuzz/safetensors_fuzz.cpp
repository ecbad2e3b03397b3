// libFuzzer target: the input is a .safetensors file (8-byte header length, JSON header, data).
// Opens it as a checkpoint and reads every floating-point tensor, as the weight loaders do.
#include "models/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = loom::fuzz::write_scratch("model.safetensors", data, size);
  loom::fuzz::expect_clean([&] {
    const loom::Checkpoint ck = loom::Checkpoint::open(path);
    for (const std::string& name : ck.names()) {
      const loom::TensorView& t = ck.get(name);
      if (t.dtype == loom::DType::F32 || t.dtype == loom::DType::F16 || t.dtype == loom::DType::BF16)
        ck.read_f32(name, t.shape);
    }
  });
  return 0;
}
