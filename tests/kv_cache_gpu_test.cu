// The KV cache write on the GPU (ops/kv_cache.cu) against its reference: a copy, so bit for bit.
// The cache starts from random values on both sides, so a row written to the wrong place, or a row
// not written, shows; rows go to scattered slots and positions, as a prefill and a decode step do.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "ops/kv_cache.h"
#include "ops/rope.h"
#include "tests/device_array.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::DeviceArray;

std::vector<uint16_t> to_bits(const std::vector<float>& x) {
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) b[i] = float_to_bf16_bits(x[i]);
  return b;
}

void check_write(int B, int64_t capacity, int KVH, int D, const std::vector<int32_t>& slot,
                 const std::vector<int32_t>& pos, uint64_t seed) {
  const int64_t T = int64_t(slot.size()), row = int64_t(KVH) * D, cells = B * capacity * row;
  std::vector<float> ck = test::random_bf16_values(size_t(cells), seed, 1.f);
  std::vector<float> cv = test::random_bf16_values(size_t(cells), seed + 1, 1.f);
  const std::vector<float> k = test::random_bf16_values(size_t(T * row), seed + 2, 1.f);
  const std::vector<float> v = test::random_bf16_values(size_t(T * row), seed + 3, 1.f);
  const size_t n_cache = static_cast<size_t>(cells), n_rows = static_cast<size_t>(T * row);
  DeviceArray<bf16> dck(n_cache), dcv(n_cache), dk(n_rows), dv(n_rows);
  DeviceArray<int32_t> dslot(slot.size()), dpos(pos.size());
  dck.upload(to_bits(ck));
  dcv.upload(to_bits(cv));
  dk.upload(to_bits(k));
  dv.upload(to_bits(v));
  dslot.upload(slot);
  dpos.upload(pos);
  kv_cache_write(dck.get(), dcv.get(), dk.get(), dv.get(), dslot.get(), dpos.get(), T, KVH, D, capacity, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  kv_cache_write_ref(ck.data(), cv.data(), k.data(), v.data(), slot.data(), pos.data(), T, KVH, D, B, capacity);
  const std::vector<uint16_t> got_k = dck.download<uint16_t>(), got_v = dcv.download<uint16_t>();
  EXPECT_EQ(got_k, to_bits(ck)) << "keys, T " << T << " D " << D;
  EXPECT_EQ(got_v, to_bits(cv)) << "values, T " << T << " D " << D;
  // The same rows' token ids into the id cache (random beforehand, as the caches).
  std::vector<int32_t> ids(static_cast<size_t>(B * capacity)), tokens(static_cast<size_t>(T));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((i * 2654435761u) % 100000);
  for (size_t t = 0; t < tokens.size(); ++t) tokens[t] = int32_t(7 + 13 * t);
  DeviceArray<int32_t> dids(ids.size()), dtokens(tokens.size());
  dids.upload(ids);
  dtokens.upload(tokens);
  token_cache_write(dids.get(), dtokens.get(), dslot.get(), dpos.get(), T, capacity, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  token_cache_write_ref(ids.data(), tokens.data(), slot.data(), pos.data(), T, B, capacity);
  EXPECT_EQ(dids.download<int32_t>(), ids) << "token ids, T " << T;
}

TEST(KvCacheGpu, WritesEveryRowToItsSlotAndPosition) {
  REQUIRE_GPU();
  // A prefill of 3 prompts (5, 1 and 9 tokens) into a cache of 4 sequences of 12 positions.
  std::vector<int32_t> slot, pos;
  const int lens[] = {5, 1, 9};
  for (int b = 0; b < 3; ++b)
    for (int p = 0; p < lens[b]; ++p) slot.push_back(b == 2 ? 3 : b), pos.push_back(p);
  check_write(4, 12, 8, 128, slot, pos, 1);
  // A decode step: one row per sequence at its length, D 64, one kv head.
  check_write(5, 300, 1, 64, {0, 1, 2, 3, 4}, {0, 299, 17, 128, 1}, 2);
}

// A decode step's rope and cache write in one launch (ops/rope.h rope_forward_into_cache) gives the
// bits of rope_forward on q and on k followed by kv_cache_write; k itself is left unrotated. Heads
// 4 and 2 (GQA), D 64 and 128, positions up to 40,000 (large angles), scattered slots.
void check_rope_into_cache(int B, int64_t capacity, int H, int KVH, int D, const std::vector<int32_t>& slot,
                           const std::vector<int32_t>& pos, uint64_t seed) {
  const int64_t T = int64_t(slot.size()), cells = B * capacity * KVH * D;
  const std::vector<uint16_t> cache = to_bits(test::random_bf16_values(size_t(cells), seed, 1.f));
  const std::vector<uint16_t> q = to_bits(test::random_bf16_values(size_t(T * H * D), seed + 1, 1.f));
  const std::vector<uint16_t> k = to_bits(test::random_bf16_values(size_t(T * KVH * D), seed + 2, 1.f));
  const std::vector<uint16_t> v = to_bits(test::random_bf16_values(size_t(T * KVH * D), seed + 3, 1.f));
  const std::vector<float> inv_freq = rope_inv_freq(D, RopeParams{});
  DeviceArray<int32_t> dslot(slot.size()), dpos(pos.size());
  dslot.upload(slot);
  dpos.upload(pos);
  DeviceArray<float> dfreq(inv_freq.size());
  dfreq.upload(inv_freq);
  struct Side {
    DeviceArray<bf16> q, k, v, ck, cv;
  };
  Side three{DeviceArray<bf16>(q.size()), DeviceArray<bf16>(k.size()), DeviceArray<bf16>(v.size()),
             DeviceArray<bf16>(cache.size()), DeviceArray<bf16>(cache.size())};
  Side one{DeviceArray<bf16>(q.size()), DeviceArray<bf16>(k.size()), DeviceArray<bf16>(v.size()),
           DeviceArray<bf16>(cache.size()), DeviceArray<bf16>(cache.size())};
  for (Side* s : {&three, &one}) s->q.upload(q), s->k.upload(k), s->v.upload(v), s->ck.upload(cache), s->cv.upload(cache);
  rope_forward(three.q.get(), dpos.get(), dfreq.get(), T, H, D, int64_t(H) * D, nullptr);
  rope_forward(three.k.get(), dpos.get(), dfreq.get(), T, KVH, D, int64_t(KVH) * D, nullptr);
  kv_cache_write(three.ck.get(), three.cv.get(), three.k.get(), three.v.get(), dslot.get(), dpos.get(), T, KVH, D,
                 capacity, nullptr);
  rope_forward_into_cache(one.q.get(), one.k.get(), one.v.get(), one.ck.get(), one.cv.get(), dslot.get(), dpos.get(),
                          dfreq.get(), T, H, KVH, D, capacity, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(one.q.download<uint16_t>(), three.q.download<uint16_t>()) << "q, D " << D;
  EXPECT_EQ(one.ck.download<uint16_t>(), three.ck.download<uint16_t>()) << "key cache, D " << D;
  EXPECT_EQ(one.cv.download<uint16_t>(), three.cv.download<uint16_t>()) << "value cache, D " << D;
  EXPECT_EQ(one.k.download<uint16_t>(), k) << "k must be left as it was";
  EXPECT_NE(one.ck.download<uint16_t>(), cache) << "the key cache was not written";
}

TEST(KvCacheGpu, RopeIntoCacheIsRopeThenWriteBitForBit) {
  REQUIRE_GPU();
  check_rope_into_cache(5, 300, 4, 2, 128, {0, 1, 2, 3, 4}, {0, 299, 17, 128, 1}, 3);
  check_rope_into_cache(3, 40001, 8, 1, 64, {2, 0, 1}, {40000, 5, 39999}, 4);
}

}  // namespace
}  // namespace loom
