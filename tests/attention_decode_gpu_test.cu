// Decode attention on the GPU (ops/attention_decode.cu) against the fp32 reference
// (attention_cached_ref with n = 1, per sequence), on bf16-rounded inputs both sides share.
// Tolerance, flash-attention's rule as in tests/attention_gpu_test.cu: the kernel's largest error
// against the fp32 reference at most twice that of a plain bf16 implementation on the same inputs
// (scores rounded to bf16, softmax in fp32 rounded to bf16, P·V in fp32 rounded to bf16: PyTorch's
// eager path in bf16), plus nothing. The output is poisoned with NaN first, so a row left unwritten
// fails the finiteness check. Lengths are awkward (1, 2, a window's edge, splits' edges, thousands).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "ops/attention.h"
#include "ops/attention_decode.h"
#include "ops/device.h"
#include "tests/device_array.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::DeviceArray;
using test::random_bf16_values;
using test::round_bf16;

struct DecodeCase {
  std::vector<int> lengths;
  int H, KVH, D, window, splits;  // splits 0: attention_decode_splits' choice
};

// The plain bf16 implementation of one (sequence, head) row.
std::vector<float> plain_bf16_row(const float* q, const float* k, const float* v, int len, int first, int KVH, int kvh,
                                  int D, float scale) {
  std::vector<float> s;
  float mx = -INFINITY;
  for (int j = first; j < len; ++j) {
    float dot = 0.f;
    for (int d = 0; d < D; ++d) dot += q[d] * k[(int64_t(j) * KVH + kvh) * D + d];
    s.push_back(round_bf16(round_bf16(dot) * scale));
    mx = std::max(mx, s.back());
  }
  double sum = 0;
  for (float& x : s) sum += (x = std::exp(x - mx));
  std::vector<float> out(size_t(D), 0.f);
  for (size_t j = 0; j < s.size(); ++j) {
    const float p = round_bf16(float(s[j] / sum));
    for (int d = 0; d < D; ++d) out[size_t(d)] += p * v[(int64_t(first + int(j)) * KVH + kvh) * D + d];
  }
  for (float& x : out) x = round_bf16(x);
  return out;
}

void run_case(const DecodeCase& c, uint64_t seed) {
  const int B = int(c.lengths.size());
  const int64_t capacity = *std::max_element(c.lengths.begin(), c.lengths.end()) + 3;  // rows past a length unused
  const float scale = 1.f / std::sqrt(float(c.D));
  const std::vector<float> q = random_bf16_values(size_t(B) * c.H * c.D, seed, 3.f);
  const std::vector<float> k = random_bf16_values(size_t(B * capacity) * c.KVH * c.D, seed + 1, 1.f);
  const std::vector<float> v = random_bf16_values(size_t(B * capacity) * c.KVH * c.D, seed + 2, 1.f);
  const AttentionShape shape{nullptr, 0, c.H, c.KVH, c.D, c.window, scale};

  auto to_bits = [](const std::vector<float>& x) {
    std::vector<uint16_t> b(x.size());
    for (size_t i = 0; i < x.size(); ++i) b[i] = float_to_bf16_bits(x[i]);
    return b;
  };
  DeviceArray<bf16> dq(q.size()), dk(k.size()), dv(v.size()), dout(q.size());
  DeviceArray<int32_t> dlen(static_cast<size_t>(B));
  dq.upload(to_bits(q));
  dk.upload(to_bits(k));
  dv.upload(to_bits(v));
  dlen.upload(c.lengths);
  dout.poison();
  const int64_t max_len = capacity - 3;
  const int splits = c.splits > 0 ? c.splits : attention_decode_splits(B, c.KVH, max_len, cuda_multiprocessors());
  DeviceArray<float> scratch(static_cast<size_t>(attention_decode_scratch_floats(B, c.H, c.D, splits)));
  attention_decode(dout.get(), dq.get(), DecodeCache{dk.get(), dv.get(), capacity}, dlen.get(), B, max_len, shape,
                   splits, scratch.get(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> got;
  for (uint16_t bits : dout.download<uint16_t>()) got.push_back(bf16_bits_to_float(bits));

  double kernel_err = 0, plain_err = 0;
  for (int b = 0; b < B; ++b) {
    const int len = c.lengths[size_t(b)];
    const float* kb = &k[size_t(b) * capacity * c.KVH * c.D];
    const float* vb = &v[size_t(b) * capacity * c.KVH * c.D];
    std::vector<float> want(size_t(c.H) * c.D);
    attention_cached_ref(want.data(), &q[size_t(b) * c.H * c.D], kb, vb, 1, len - 1, shape);
    const int first = c.window > 0 ? std::max(0, len - c.window) : 0;
    for (int h = 0; h < c.H; ++h) {
      const std::vector<float> plain = plain_bf16_row(&q[(size_t(b) * c.H + h) * c.D], kb, vb, len, first, c.KVH,
                                                      h / (c.H / c.KVH), c.D, scale);
      for (int d = 0; d < c.D; ++d) {
        const float w = want[size_t(h) * c.D + d], g = got[(size_t(b) * c.H + h) * c.D + d];
        ASSERT_TRUE(std::isfinite(g)) << "sequence " << b << " head " << h << " left unwritten or not finite";
        kernel_err = std::max(kernel_err, double(std::fabs(g - w)));
        plain_err = std::max(plain_err, double(std::fabs(plain[size_t(d)] - w)));
      }
    }
  }
  std::printf("decode B=%d H=%d KVH=%d D=%d window=%d splits=%d: max error %.3g (plain bf16 %.3g)\n", B, c.H, c.KVH, c.D,
              c.window, splits, kernel_err, plain_err);
  EXPECT_LE(kernel_err, 2 * plain_err);
}

TEST(AttentionDecodeGpu, MatchesReferenceAtAwkwardLengths) {
  REQUIRE_GPU();
  // Llama 8B's grouping (32 / 8) at D 128, one split and the automatic choice.
  run_case({{1, 2, 63, 64, 65, 300, 1000}, 32, 8, 128, 0, 1}, 1);
  run_case({{1, 2, 63, 64, 65, 300, 2049}, 32, 8, 128, 0, 0}, 2);
  // qwen2.5's 7 query heads per kv head, D 64, a sliding window and many splits.
  run_case({{1, 5, 16, 17, 700, 4096}, 14, 2, 64, 16, 0}, 3);
  run_case({{3, 129, 1500}, 8, 1, 64, 0, 7}, 4);
}

}  // namespace
}  // namespace loom
