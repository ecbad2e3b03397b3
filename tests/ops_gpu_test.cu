// GPU tests of the training-step kernels (ops/*.cu) against their fp32 references (ops/*_ref.cpp).
// Every test starts with REQUIRE_GPU(), so the suite skips on machines without a device.
// Inputs are fresh random values at awkward sizes (row counts 1, 37, 1000, 4099: no multiple of any
// tile); every output is poisoned with NaN before the kernel runs, so an element the kernel forgets
// to write fails. The references get the same bf16-rounded inputs the kernels read, so the only
// differences left are the kernels' own roundings and fp32 summation order. Tolerances follow from:
//   one round-to-nearest-even to bf16 (8 significant bits) moves a value by at most 2^-8 of itself
//   (kBf16Eps); fp32 math in a different order moves results by ~1e-7 relative, well under kSlack.
// Exact ops (copies, casts, bias add, NF4 dequantization, AdamW) are compared bit for bit.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "ops/adamw.h"
#include "ops/bias.h"
#include "ops/cast.h"
#include "ops/cross_entropy.h"
#include "ops/dropout.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/grad_norm.h"
#include "ops/lora_gemv.h"
#include "ops/lora_linear.h"
#include "ops/matmul.h"
#include "ops/nf4.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "tests/test_util.h"

namespace loom {
namespace {

using test::expect_close;
using test::random_floats;

constexpr double kBf16Eps = 1.0 / 256;  // unit roundoff of bf16: |bf16(x) - x| <= 2^-8 |x|
constexpr double kSlack = 1e-5;         // fp32 evaluation-order differences, relative
constexpr cudaStream_t kStream = nullptr;
constexpr float kNaN = NAN;

// ---------------------------------------------------------------------------------------------
// Device buffers and host conversions

template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) { CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(n, 1) * sizeof(T))); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), n_(other.n_) { other.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  T* get() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  size_t n_;
};

float round_bf16(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

std::vector<float> random_bf16(size_t n, uint64_t seed, float lo = -1.f, float hi = 1.f) {
  return round_bf16(random_floats(n, seed, lo, hi));
}

// Uploads v (already bf16-representable values) into dst[0..v.size()).
void upload(bf16* dst, const std::vector<float>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = float_to_bf16_bits(v[i]);
  CUDA_CHECK(cudaMemcpy(dst, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
}

template <class T>
void upload(T* dst, const std::vector<T>& v) {
  CUDA_CHECK(cudaMemcpy(dst, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
}

DeviceBuffer<bf16> to_device_bf16(const std::vector<float>& v) {
  DeviceBuffer<bf16> d(v.size());
  upload(d.get(), v);
  return d;
}

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& v) {
  DeviceBuffer<T> d(v.size());
  upload(d.get(), v);
  return d;
}

std::vector<float> download(const bf16* src, size_t n) {
  std::vector<uint16_t> bits(n);
  CUDA_CHECK(cudaMemcpy(bits.data(), src, n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = bf16_bits_to_float(bits[i]);
  return v;
}

template <class T>
std::vector<T> download(const T* src, size_t n) {
  std::vector<T> v(n);
  CUDA_CHECK(cudaMemcpy(v.data(), src, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

template <class T>
std::vector<float> download(const DeviceBuffer<T>& d) {
  if constexpr (std::is_same_v<T, bf16>)
    return download(d.get(), d.size());
  else
    return download<float>(d.get(), d.size());
}

template <class T>
void poison(const DeviceBuffer<T>& d) {
  fill(d.get(), kNaN, int64_t(d.size()), kStream);
}

double rms(const std::vector<float>& v) {
  double sum = 0;
  for (float x : v) sum += double(x) * x;
  return v.empty() ? 0.0 : std::sqrt(sum / v.size());
}

// Bit-for-bit equality; on failure names the first differing index and both values.
void expect_bitwise_equal(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what << ": size";
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && !(std::isnan(got[i]) && std::isnan(want[i]))) {
      ADD_FAILURE() << what << ": first difference at index " << i << " of " << got.size() << ": got " << got[i]
                    << ", want " << want[i];
      return;
    }
  }
}

// EXPECT |got[i] - want[i]| <= bound[i] everywhere; on failure prints the element with the largest
// error relative to its bound, and the largest absolute error.
void expect_within(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& bound,
                   const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what << ": size";
  ASSERT_EQ(bound.size(), want.size()) << what << ": bounds";
  size_t worst = 0;
  double worst_ratio = 0, max_abs = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    // A NaN or Inf on either side, or in the bound (computed from the reference), fails.
    const double err = test::absolute_error(got[i], want[i]);
    const double ratio = !std::isfinite(err) || !std::isfinite(bound[i]) ? INFINITY : err == 0 ? 0 : err / bound[i];
    max_abs = test::max_keeping_nan(max_abs, err);
    if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
  }
  EXPECT_LE(worst_ratio, 1.0) << what << ": error " << std::fabs(double(got[worst]) - want[worst]) << " > bound "
                              << bound[worst] << " at index " << worst << " (got " << got[worst] << ", want "
                              << want[worst] << "); max abs error " << max_abs;
}

// ---------------------------------------------------------------------------------------------
// launcher preconditions (checked before any CUDA call, so these run without a device too)

// EXPECT that call throws loom::Error whose message contains `needle`.
void expect_error(const std::function<void()>& call, const std::string& needle) { test::expect_error(call, {needle}); }

TEST(OpsLaunchers, RejectShapesTheKernelsCannotTake) {
  expect_error([] { rmsnorm_forward(nullptr, nullptr, nullptr, nullptr, 4, 20, 1e-6f, kStream); }, "multiple of 8");
  expect_error([] { rope_forward(nullptr, nullptr, nullptr, 4, 2, 24, 48, kStream); }, "multiple of 16");
  expect_error([] { rope_forward(nullptr, nullptr, nullptr, 4, 2, 64, 96, kStream); }, "stride");
  expect_error([] { embedding_forward(nullptr, nullptr, nullptr, 4, 12, kStream); }, "multiple of 8");
  Nf4Device w;
  w.numel = 64, w.blocksize = 12;
  expect_error([&] { nf4_dequantize(nullptr, w, kStream); }, "blocksize");
  AdamWParams a;
  a.step = 0;
  expect_error([&] { adamw_update(nullptr, nullptr, nullptr, nullptr, nullptr, 4, a, kStream); }, "step");
}

// ---------------------------------------------------------------------------------------------
// cast / fill

TEST(Cast, Fp32ToBf16RoundsToNearestEven) {
  REQUIRE_GPU();
  for (int64_t offset : {0, 1}) {  // offset 1: unaligned pointers take the element-by-element path
    std::vector<float> in = random_floats(4099, 11 + offset, -300.f, 300.f);
    // Specials and exact ties (1 + 2^-8 sits halfway between two bf16 values and rounds to even).
    const float specials[] = {0.f, -0.f, INFINITY, -INFINITY, 1.f + 1.f / 256, 1.f + 3.f / 256, 1e-40f, -3e38f};
    std::copy(std::begin(specials), std::end(specials), in.begin() + 100);
    DeviceBuffer<float> d_in(in.size() + 1);
    DeviceBuffer<bf16> d_out(in.size() + 1);
    upload(d_in.get() + offset, in);
    poison(d_out);
    cast_fp32_to_bf16(d_out.get() + offset, d_in.get() + offset, int64_t(in.size()), kStream);
    expect_bitwise_equal(download(d_out.get() + offset, in.size()), round_bf16(in),
                         "fp32 -> bf16, offset " + std::to_string(offset));
  }
}

TEST(Cast, Bf16ToFp32IsExact) {
  REQUIRE_GPU();
  for (int64_t offset : {0, 1}) {
    const std::vector<float> in = random_bf16(1037, 12 + offset, -1e4f, 1e4f);
    DeviceBuffer<bf16> d_in(in.size() + 1);
    DeviceBuffer<float> d_out(in.size() + 1);
    upload(d_in.get() + offset, in);
    poison(d_out);
    cast_bf16_to_fp32(d_out.get() + offset, d_in.get() + offset, int64_t(in.size()), kStream);
    expect_bitwise_equal(download<float>(d_out.get() + offset, in.size()), in,
                         "bf16 -> fp32, offset " + std::to_string(offset));
  }
}

TEST(Cast, FillWritesEveryElementAndNothingElse) {
  REQUIRE_GPU();
  for (int64_t n : {1, 37, 4099}) {
    DeviceBuffer<bf16> b(n + 2);
    DeviceBuffer<float> f(n + 2);
    fill(b.get(), 7.f, n + 2, kStream);
    fill(f.get(), 7.f, n + 2, kStream);
    fill(b.get() + 1, 1.f / 3, n, kStream);
    fill(f.get() + 1, 1.f / 3, n, kStream);
    std::vector<float> want(n + 2, round_bf16(1.f / 3));
    want.front() = want.back() = 7.f;
    expect_bitwise_equal(download(b), want, "bf16 fill, n " + std::to_string(n));
    std::fill(want.begin() + 1, want.end() - 1, 1.f / 3);
    expect_bitwise_equal(download(f), want, "fp32 fill, n " + std::to_string(n));
  }
}

// ---------------------------------------------------------------------------------------------
// bias

// y (N, out) += b: an fp32 add and one rounding (ops/bias.h), so bit-exact with the same sum on
// the host. Widths 1..4099 (no multiple of the 256-thread block, most no multiple of 8); 1000 x
// 4099 elements need more than the 4096 blocks the launcher caps the grid at (the grid-stride
// loop); N = 0 writes nothing. Guard elements on both sides of y must keep their value.
TEST(Bias, AddIsBitExactAndWritesOnlyItsRows) {
  REQUIRE_GPU();
  for (int out : {1, 8, 37, 896, 4099}) {
    for (int64_t N : {int64_t(0), int64_t(1), int64_t(37), int64_t(1000)}) {
      for (int offset : {0, 1}) {  // offset 1: unaligned y and b
        SCOPED_TRACE("out " + std::to_string(out) + ", N " + std::to_string(N) + ", offset " + std::to_string(offset));
        const int64_t n = N * out;
        const std::vector<float> y = random_bf16(n, 91 + out, -4.f, 4.f), b = random_bf16(out, 92 + N);
        const float guard = 7.f;
        DeviceBuffer<bf16> d_y(n + offset + 1), d_b(out + offset);
        fill(d_y.get(), guard, int64_t(d_y.size()), kStream);
        upload(d_y.get() + offset, y);
        upload(d_b.get() + offset, b);
        bias_add(d_y.get() + offset, d_b.get() + offset, N, out, kStream);
        std::vector<float> want(d_y.size(), guard);
        for (int64_t i = 0; i < n; ++i) want[offset + i] = round_bf16(y[i] + b[i % out]);
        expect_bitwise_equal(download(d_y), want, "y + b with guards");
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// embedding

TEST(Embedding, ForwardCopiesTheRowsOfTheIds) {
  REQUIRE_GPU();
  const int V = 1000;
  for (int C : {24, 896}) {
    for (int64_t T : {1, 37, 4099}) {
      const std::vector<float> table = random_bf16(size_t(V) * C, 21);
      std::vector<int32_t> ids(T);
      for (int64_t t = 0; t < T; ++t) ids[t] = int32_t((t * 7919 + 13) % V);
      ids.back() = V - 1;
      auto d_table = to_device_bf16(table);
      auto d_ids = to_device(ids);
      DeviceBuffer<bf16> d_out(T * C);
      poison(d_out);
      embedding_forward(d_out.get(), d_ids.get(), d_table.get(), T, C, kStream);
      std::vector<float> want(T * C);
      embedding_forward_ref(want.data(), ids.data(), table.data(), T, C);
      expect_bitwise_equal(download(d_out), want, "embedding T " + std::to_string(T) + ", C " + std::to_string(C));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm (+ fused residual add)

// Row lengths: 24 (4 lanes per row), 64 (8), 128 (16: a Qwen3 q/k head row), 896, 2056, 4096 and 8192
// (a warp). Up to 8 rows the forward takes a block per row (rmsnorm_row_forward_kernel), whose threads
// hold 1 (24 .. 896), 2 (2056: one thread two vectors, the rest one), 2 (4096) and 4 (8192) vectors.
const int kNormWidths[] = {24, 64, 128, 896, 2056, 4096, 8192};
const int64_t kRowCounts[] = {1, 8, 37, 1000, 4099};

TEST(RmsNorm, ResidualForwardMatchesReference) {
  REQUIRE_GPU();
  const float eps = 1e-6f;
  for (int C : kNormWidths) {
    for (int64_t N : kRowCounts) {
      SCOPED_TRACE("N " + std::to_string(N) + ", C " + std::to_string(C));
      const std::vector<float> a = random_bf16(N * C, 31, -2.f, 2.f), b = random_bf16(N * C, 32, -2.f, 2.f);
      const std::vector<float> w = random_bf16(C, 33, 0.5f, 1.5f);
      auto d_a = to_device_bf16(a), d_b = to_device_bf16(b), d_w = to_device_bf16(w);
      DeviceBuffer<bf16> d_res(N * C), d_out(N * C);
      DeviceBuffer<float> d_rstd(N);
      poison(d_res), poison(d_out), poison(d_rstd);
      residual_rmsnorm_forward(d_res.get(), d_out.get(), d_rstd.get(), d_a.get(), d_b.get(), d_w.get(), N, C, eps,
                               kStream);

      std::vector<float> res(N * C), out(N * C), rstd(N);
      for (size_t i = 0; i < res.size(); ++i) res[i] = round_bf16(a[i] + b[i]);  // HF's bf16 residual add
      rmsnorm_forward_ref(out.data(), rstd.data(), res.data(), w.data(), N, C, eps);
      expect_bitwise_equal(download(d_res), res, "residual");
      expect_close(download(d_rstd), rstd, kSlack, "rstd");
      // Two roundings: bf16(x * rstd), then bf16(w * that).
      expect_close(download(d_out), out, 2 * kBf16Eps + kSlack, "out", 1e-3 * rms(out));
    }
  }
}

TEST(RmsNorm, ForwardWithoutResidualAndInPlaceResidual) {
  REQUIRE_GPU();
  const int64_t N = 1000;
  const int C = 896;
  const float eps = 1e-5f;
  const std::vector<float> a = random_bf16(N * C, 41, -3.f, 3.f), b = random_bf16(N * C, 42);
  const std::vector<float> w = random_bf16(C, 43, -1.f, 1.f);
  auto d_a = to_device_bf16(a), d_b = to_device_bf16(b), d_w = to_device_bf16(w);
  DeviceBuffer<bf16> d_out(N * C);
  DeviceBuffer<float> d_rstd(N);
  std::vector<float> out(N * C), rstd(N);

  poison(d_out), poison(d_rstd);
  rmsnorm_forward(d_out.get(), d_rstd.get(), d_a.get(), d_w.get(), N, C, eps, kStream);
  rmsnorm_forward_ref(out.data(), rstd.data(), a.data(), w.data(), N, C, eps);
  expect_close(download(d_out), out, 2 * kBf16Eps + kSlack, "out (no residual)", 1e-3 * rms(out));
  expect_close(download(d_rstd), rstd, kSlack, "rstd (no residual)");

  // The residual stream updated in place: residual aliases a.
  poison(d_out), poison(d_rstd);
  residual_rmsnorm_forward(d_a.get(), d_out.get(), d_rstd.get(), d_a.get(), d_b.get(), d_w.get(), N, C, eps, kStream);
  std::vector<float> res(N * C);
  for (size_t i = 0; i < res.size(); ++i) res[i] = round_bf16(a[i] + b[i]);
  rmsnorm_forward_ref(out.data(), rstd.data(), res.data(), w.data(), N, C, eps);
  expect_bitwise_equal(download(d_a), res, "residual in place");
  expect_close(download(d_out), out, 2 * kBf16Eps + kSlack, "out (in place)", 1e-3 * rms(out));
}

TEST(RmsNorm, BackwardMatchesReference) {
  REQUIRE_GPU();
  for (int C : kNormWidths) {
    for (int64_t N : kRowCounts) {
      for (bool with_residual_grad : {false, true}) {
        SCOPED_TRACE("N " + std::to_string(N) + ", C " + std::to_string(C) +
                     (with_residual_grad ? ", + dresidual" : ""));
        const std::vector<float> x = random_bf16(N * C, 51, -2.f, 2.f), dy = random_bf16(N * C, 52);
        const std::vector<float> w = random_bf16(C, 53, 0.5f, 1.5f), dres = random_bf16(N * C, 54);
        std::vector<float> y(N * C), rstd(N), dx(N * C);
        rmsnorm_forward_ref(y.data(), rstd.data(), x.data(), w.data(), N, C, 1e-6f);
        rmsnorm_backward_ref(dx.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);
        if (with_residual_grad)
          for (size_t i = 0; i < dx.size(); ++i) dx[i] += dres[i];

        auto d_x = to_device_bf16(x), d_dy = to_device_bf16(dy), d_w = to_device_bf16(w);
        auto d_dres = to_device_bf16(dres);
        auto d_rstd = to_device(rstd);
        DeviceBuffer<bf16> d_dx(N * C);
        poison(d_dx);
        rmsnorm_backward(d_dx.get(), d_dy.get(), with_residual_grad ? d_dres.get() : nullptr, d_x.get(), d_w.get(),
                         d_rstd.get(), N, C, kStream);
        // fp32 math, one rounding of the result.
        expect_close(download(d_dx), dx, kBf16Eps + kSlack, "dinp", 1e-3 * rms(dx));

        if (with_residual_grad) {  // dinp accumulating into the residual gradient in place
          rmsnorm_backward(d_dres.get(), d_dy.get(), d_dres.get(), d_x.get(), d_w.get(), d_rstd.get(), N, C, kStream);
          expect_close(download(d_dres), dx, kBf16Eps + kSlack, "dinp in place", 1e-3 * rms(dx));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// RoPE

// Packed documents: positions restart at 0 at each document start and reach 131071, where the
// angle is ~1.3e5 rad and a fast sincos would be visibly wrong.
std::vector<int32_t> packed_positions(int64_t T) {
  std::vector<int32_t> pos(T);
  int32_t p = 131072 - int32_t(T) / 2;
  for (int64_t t = 0; t < T; ++t) {
    if (t == T / 2 || t == (3 * T) / 4) p = 0;
    pos[t] = p++;
  }
  return pos;
}

// Copies heads [h0, h0 + NH) of each token out of a fused (T, stride) buffer into (T, NH, D).
std::vector<float> gather_heads(const std::vector<float>& fused, int64_t T, int64_t stride, int h0, int NH, int D) {
  std::vector<float> out(T * NH * D);
  for (int64_t t = 0; t < T; ++t)
    std::copy_n(fused.begin() + t * stride + int64_t(h0) * D, NH * D, out.begin() + t * NH * D);
  return out;
}

TEST(Rope, ForwardAndBackwardMatchReferenceOnAFusedQkvBuffer) {
  REQUIRE_GPU();
  RopeParams llama3;
  llama3.type = "llama3";
  llama3.theta = 500000.0;
  llama3.factor = 8.0;
  const int H = 14, KVH = 2;
  for (int D : {64, 128}) {
    for (int64_t T : {1, 37, 4099}) {
      for (bool backward : {false, true}) {
        SCOPED_TRACE("D " + std::to_string(D) + ", T " + std::to_string(T) + (backward ? ", backward" : ""));
        const int64_t stride = int64_t(H + 2 * KVH) * D;
        const std::vector<float> qkv = random_bf16(T * stride, 61 + D + T, -2.f, 2.f);
        const std::vector<int32_t> pos = packed_positions(T);
        const std::vector<float> inv_freq = rope_inv_freq(D, llama3);
        auto d_qkv = to_device_bf16(qkv);
        auto d_pos = to_device(pos);
        auto d_inv_freq = to_device(inv_freq);
        auto rotate = backward ? rope_backward : rope_forward;
        rotate(d_qkv.get(), d_pos.get(), d_inv_freq.get(), T, H, D, stride, kStream);                   // q
        rotate(d_qkv.get() + H * D, d_pos.get(), d_inv_freq.get(), T, KVH, D, stride, kStream);         // k
        const std::vector<float> got = download(d_qkv);

        auto rotate_ref = backward ? rope_backward_ref : rope_forward_ref;
        for (auto [h0, NH, what] : {std::tuple{0, H, "q"}, std::tuple{H, KVH, "k"}}) {
          std::vector<float> want = gather_heads(qkv, T, stride, h0, NH, D);
          rotate_ref(want.data(), pos.data(), inv_freq.data(), T, NH, D);
          // fp32 rotation, one rounding; sincosf and glibc's sinf/cosf differ by ~1 fp32 ulp.
          expect_close(gather_heads(got, T, stride, h0, NH, D), want, kBf16Eps + kSlack, what, 1e-3 * rms(want));
        }
        expect_bitwise_equal(gather_heads(got, T, stride, H + KVH, KVH, D),
                             gather_heads(qkv, T, stride, H + KVH, KVH, D), "v untouched");
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

TEST(SwiGlu, ForwardAndBackwardMatchReference) {
  REQUIRE_GPU();
  // 1000 * 896 + 3 leaves a ragged tail after the 8-element vectors; offset 1 unaligns every pointer.
  for (int64_t n : {int64_t(1), int64_t(37), int64_t(1000) * 896 + 3, int64_t(4099) * 24}) {
    for (int offset : {0, 1}) {
      SCOPED_TRACE("n " + std::to_string(n) + ", offset " + std::to_string(offset));
      const std::vector<float> g = random_bf16(n, 71, -8.f, 8.f), u = random_bf16(n, 72, -2.f, 2.f);
      const std::vector<float> dh = random_bf16(n, 73);
      std::vector<float> h(n), dg(n), du(n);
      swiglu_forward_ref(h.data(), g.data(), u.data(), n);
      swiglu_backward_ref(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);

      DeviceBuffer<bf16> d_g(n + 1), d_u(n + 1), d_dh(n + 1), d_h(n + 1), d_dg(n + 1), d_du(n + 1);
      upload(d_g.get() + offset, g), upload(d_u.get() + offset, u), upload(d_dh.get() + offset, dh);
      poison(d_h), poison(d_dg), poison(d_du);
      swiglu_forward(d_h.get() + offset, d_g.get() + offset, d_u.get() + offset, n, kStream);
      swiglu_backward(d_dg.get() + offset, d_du.get() + offset, d_dh.get() + offset, d_g.get() + offset,
                      d_u.get() + offset, n, kStream);
      // fp32 math, one rounding per output.
      expect_close(download(d_h.get() + offset, n), h, kBf16Eps + kSlack, "h", 1e-3 * rms(h));
      expect_close(download(d_dg.get() + offset, n), dg, kBf16Eps + kSlack, "dgate", 1e-3 * rms(dg));
      expect_close(download(d_du.get() + offset, n), du, kBf16Eps + kSlack, "dup", 1e-3 * rms(du));

      // Backward overwriting its inputs (dgate over gate, dup over up).
      swiglu_backward(d_g.get() + offset, d_u.get() + offset, d_dh.get() + offset, d_g.get() + offset,
                      d_u.get() + offset, n, kStream);
      expect_close(download(d_g.get() + offset, n), dg, kBf16Eps + kSlack, "dgate in place", 1e-3 * rms(dg));
      expect_close(download(d_u.get() + offset, n), du, kBf16Eps + kSlack, "dup in place", 1e-3 * rms(du));
    }
  }
}

// The fused form over [gate | up] rows gives the bits of the plain form on the gate and up columns
// (same math per element), forward and in-place backward; rows of 24 (3 vectors) and 768 (qwen3-30b-a3b's
// expert width).
TEST(SwiGlu, FusedRowsGiveThePlainFormsBits) {
  REQUIRE_GPU();
  for (const auto& [rows, width] : {std::pair<int64_t, int>{37, 24}, std::pair<int64_t, int>{5, 768}}) {
    SCOPED_TRACE("rows " + std::to_string(rows) + ", width " + std::to_string(width));
    const int64_t n = rows * width;
    const std::vector<float> gate_up = random_bf16(2 * n, 74, -8.f, 8.f), dh = random_bf16(n, 75);
    std::vector<float> g(n), u(n);
    for (int64_t r = 0; r < rows; ++r)
      for (int c = 0; c < width; ++c) {
        g[r * width + c] = gate_up[r * 2 * width + c];
        u[r * width + c] = gate_up[r * 2 * width + width + c];
      }
    DeviceBuffer<bf16> d_gu(2 * n), d_g(n), d_u(n), d_dh(n), d_h(n), d_hf(n);
    upload(d_gu.get(), gate_up), upload(d_g.get(), g), upload(d_u.get(), u), upload(d_dh.get(), dh);
    poison(d_h), poison(d_hf);
    swiglu_forward(d_h.get(), d_g.get(), d_u.get(), n, kStream);
    swiglu_forward_fused(d_hf.get(), d_gu.get(), rows, width, kStream);
    expect_bitwise_equal(download(d_hf), download(d_h), "h (fused)");
    swiglu_backward(d_g.get(), d_u.get(), d_dh.get(), d_g.get(), d_u.get(), n, kStream);
    swiglu_backward_fused(d_gu.get(), d_dh.get(), d_gu.get(), rows, width, kStream);
    const std::vector<float> fused = download(d_gu), dg = download(d_g), du = download(d_u);
    std::vector<float> want(2 * n);
    for (int64_t r = 0; r < rows; ++r)
      for (int c = 0; c < width; ++c) {
        want[r * 2 * width + c] = dg[r * width + c];
        want[r * 2 * width + width + c] = du[r * width + c];
      }
    expect_bitwise_equal(fused, want, "[dgate | dup] (fused, in place)");
  }
  DeviceBuffer<bf16> d(64);
  expect_error([&] { swiglu_forward_fused(d.get(), d.get(), 2, 12, kStream); }, "multiple of 8");
}

// ---------------------------------------------------------------------------------------------
// Dropout

TEST(Dropout, ForwardAndBackwardMatchReference) {
  REQUIRE_GPU();
  for (int64_t n : {int64_t(1), int64_t(37), int64_t(1000) * 896 + 3}) {
    for (int offset : {0, 1}) {
      SCOPED_TRACE("n " + std::to_string(n) + ", offset " + std::to_string(offset));
      const float p = 0.15f;
      const uint64_t seed = 1234567, stream = 42;
      const std::vector<float> x = random_bf16(n, 81), dy = random_bf16(n, 82), dx0 = random_bf16(n, 83);
      std::vector<float> y(n), dx = dx0;
      dropout_forward_ref(y.data(), x.data(), n, seed, stream, p);
      dropout_backward_ref(dx.data(), dy.data(), n, seed, stream, p);

      DeviceBuffer<bf16> d_x(n + 1), d_y(n + 1), d_dy(n + 1), d_dx(n + 1);
      upload(d_x.get() + offset, x), upload(d_dy.get() + offset, dy), upload(d_dx.get() + offset, dx0);
      poison(d_y);
      dropout_forward(d_y.get() + offset, d_x.get() + offset, n, seed, stream, p, kStream);
      dropout_backward(d_dx.get() + offset, d_dy.get() + offset, n, seed, stream, p, kStream);
      // The same mask (bit-equal zeros), fp32 math, one rounding per output.
      const std::vector<float> got_y = download(d_y.get() + offset, n);
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got_y[i] == 0.f, y[i] == 0.f) << i;
      expect_close(got_y, y, kBf16Eps + kSlack, "y", 1e-3 * rms(y));
      expect_close(download(d_dx.get() + offset, n), dx, kBf16Eps + kSlack, "dx", 1e-3 * rms(dx));
    }
  }
}

// A piece of an array given its first element draws the whole array's mask there, bit for bit (the
// MLP's sequence tiles), forward and backward; a piece without it draws the mask of element 0.
TEST(Dropout, APieceDrawsTheWholeArraysMask) {
  REQUIRE_GPU();
  const int64_t n = 5000, first = 1737, piece = 2011;  // odd sizes: the unaligned path too
  const float p = 0.2f;
  const uint64_t seed = 99, stream = 7;
  const std::vector<float> x = random_bf16(n, 84), dy = random_bf16(n, 85), dx0 = random_bf16(n, 86);
  DeviceBuffer<bf16> d_x(n), d_y(n), d_piece(piece), d_dy(n), d_dx(n), d_dx_piece(piece);
  upload(d_x.get(), x), upload(d_dy.get(), dy), upload(d_dx.get(), dx0);
  upload(d_dx_piece.get(), std::vector<float>(dx0.begin() + first, dx0.begin() + first + piece));
  dropout_forward(d_y.get(), d_x.get(), n, seed, stream, p, kStream);
  dropout_forward(d_piece.get(), d_x.get() + first, piece, seed, stream, p, kStream, first);
  dropout_backward(d_dx.get(), d_dy.get(), n, seed, stream, p, kStream);
  dropout_backward(d_dx_piece.get(), d_dy.get() + first, piece, seed, stream, p, kStream, first);
  expect_bitwise_equal(download(d_piece), download(d_y.get() + first, piece), "y of the piece");
  expect_bitwise_equal(download(d_dx_piece), download(d_dx.get() + first, piece), "dx of the piece");
  dropout_forward(d_piece.get(), d_x.get() + first, piece, seed, stream, p, kStream);
  EXPECT_NE(download(d_piece), download(d_y.get() + first, piece)) << "first = 0 should draw another mask";
}

// ---------------------------------------------------------------------------------------------
// NF4

struct Nf4Upload {
  DeviceBuffer<uint8_t> codes, absmax_q;
  DeviceBuffer<float> quant_map, absmax, nested_absmax, nested_map;
  Nf4Device view;
  // table: the code table uploaded as its quant_map (bitsandbytes' NF4 table unless a test varies it).
  explicit Nf4Upload(const Nf4Host& q, std::vector<float> table = std::vector<float>(kNf4Table, kNf4Table + 16))
      : codes(q.codes.size()),
        absmax_q(q.absmax_q.size()),
        quant_map(16),
        absmax(q.absmax.size()),
        nested_absmax(q.nested_absmax.size()),
        nested_map(q.nested_map.size()) {
    upload(codes.get(), q.codes);
    upload(quant_map.get(), table);
    view.numel = q.numel();
    view.blocksize = q.blocksize;
    view.codes = codes.get();
    view.quant_map = quant_map.get();
    if (!q.nested) {
      upload(absmax.get(), q.absmax);
      view.absmax = absmax.get();
      return;
    }
    upload(absmax_q.get(), q.absmax_q);
    upload(nested_absmax.get(), q.nested_absmax);
    upload(nested_map.get(), q.nested_map);
    view.absmax_q = absmax_q.get();
    view.nested_absmax = nested_absmax.get();
    view.nested_map = nested_map.get();
    view.nested_offset = q.nested_offset;
    view.nested_blocksize = q.nested_blocksize;
  }
};

TEST(Nf4, DequantizeIsBitExactWithReferenceRoundedToBf16) {
  REQUIRE_GPU();
  struct Case {
    int64_t rows, cols;
    int blocksize;
    bool nested;
  };
  // 37 x 97 is odd (a ragged tail and a short last block); 1000 x 896 nested has 14000 blocks, so
  // 55 nested groups of 256; blocksize 32 is the smallest bitsandbytes accepts.
  const Case cases[] = {{1, 64, 64, false},     {37, 96, 64, false},  {37, 97, 64, true},
                        {1000, 896, 64, true},  {4099, 128, 128, false}, {24, 4096, 32, true}};
  for (const Case& c : cases) {
    SCOPED_TRACE("rows " + std::to_string(c.rows) + ", cols " + std::to_string(c.cols) + ", blocksize " +
                 std::to_string(c.blocksize) + (c.nested ? ", nested" : ""));
    const std::vector<float> w = random_bf16(c.rows * c.cols, 81 + c.rows, -0.2f, 0.2f);
    const Nf4Host q = nf4_quantize_ref(w.data(), c.rows, c.cols, c.blocksize, c.nested);
    ASSERT_EQ(q.numel(), c.rows * c.cols);
    ASSERT_EQ(q.nested, c.nested);
    std::vector<float> want(q.numel());
    nf4_dequantize_ref(want.data(), q);
    Nf4Upload up(q);
    DeviceBuffer<bf16> d_out(q.numel());
    poison(d_out);
    nf4_dequantize(d_out.get(), up.view, kStream);
    expect_bitwise_equal(download(d_out), round_bf16(want), "dequantized weight");
  }
}

// Pieces dequantized in one launch (a mixture-of-experts layer's experts) equal each piece dequantized
// alone, bit for bit; what lies between a piece's end and the next stride is not written.
TEST(Nf4, PiecesInOneLaunchEqualEachPieceAlone) {
  REQUIRE_GPU();
  struct Piece {
    int64_t rows, cols;
    int blocksize;
    bool nested;
  };
  const Piece shapes[] = {{48, 64, 64, true}, {37, 97, 64, false}, {1, 8, 32, true}, {300, 128, 128, true},
                          {64, 48, 64, false}};
  const int64_t stride = 300 * 128 + 8;  // the longest piece and a gap
  std::vector<std::unique_ptr<Nf4Upload>> uploads;
  std::vector<Nf4Device> pieces;
  for (size_t i = 0; i < std::size(shapes); ++i) {
    const Piece& p = shapes[i];
    const std::vector<float> w = random_bf16(size_t(p.rows * p.cols), 61 + i, -0.2f, 0.2f);
    uploads.push_back(std::make_unique<Nf4Upload>(nf4_quantize_ref(w.data(), p.rows, p.cols, p.blocksize, p.nested)));
    pieces.push_back(uploads.back()->view);
  }
  DeviceBuffer<Nf4Device> device_pieces(pieces.size());
  upload(device_pieces.get(), pieces);
  DeviceBuffer<bf16> together(stride * pieces.size());
  poison(together);
  const std::vector<float> poisoned = download(together);
  nf4_dequantize_pieces(together.get(), stride, pieces.data(), device_pieces.get(), int(pieces.size()), kStream);
  const std::vector<float> got = download(together);
  for (size_t i = 0; i < pieces.size(); ++i) {
    DeviceBuffer<bf16> alone(pieces[i].numel);
    nf4_dequantize(alone.get(), pieces[i], kStream);
    const auto begin = got.begin() + int64_t(i) * stride;
    expect_bitwise_equal(std::vector<float>(begin, begin + pieces[i].numel), download(alone),
                         "piece " + std::to_string(i));
    expect_bitwise_equal(std::vector<float>(begin + pieces[i].numel, begin + stride),
                         std::vector<float>(poisoned.begin() + int64_t(i) * stride + pieces[i].numel,
                                            poisoned.begin() + int64_t(i + 1) * stride),
                         "the gap after piece " + std::to_string(i));
  }
  expect_error([&] { nf4_dequantize_pieces(together.get(), 104, pieces.data(), device_pieces.get(), 1, kStream); },
               "more than the stride");
}

// ---------------------------------------------------------------------------------------------
// LoRA linear as GEMVs (ops/lora_gemv.h), against lora_gemv_ref on the same fp32 values (a bf16 W's,
// or the NF4 weight's as lora_gemv multiplies them: lora_gemv_nf4_values_ref), sums in double. Allowed per y: 2^-8 of |y| (its one bf16
// rounding: 8 significant bits), plus (K + R + 3) · 2^-24 · (|b| + Σ_k |x_k w_k| + s·Σ_j |u_j B_j|)
// (Higham's γ bound for an fp32 sum of those terms in any order, with two roundings more on the GPU's
// side for NF4, a chunk's sum times its scale, and one on the reference's, its weight c·A), plus
// s·Σ_j 2^-7·|u_j B_j| (u is stored in bf16 on both sides, from an fp32 and a double sum: one landing
// on each side of a rounding boundary gives neighbouring bf16 values, one ulp = 2^-7 relative apart).
// Per u: 2^-7 of |u| (that ulp) plus (K + 1) · 2^-24 · Σ_k |x_k A_jk|.
namespace gemv_test {

struct Projection {
  int N;
  bool adapter, bias;
  int R = 16;
};

struct Case {
  std::vector<Projection> projections;
  int K, T;
  bool nf4;
  int blocksize = 64;
  bool nested = true;
  bool own_tables = false;  // projection i's code table: kNf4Table · (1 + i / 4), not the shared one
};

// The weights of an NF4 case: uniform values times a power of two from 1/4 to 4 per 64 weights, so that
// neighbouring blocks' scales differ by up to 16x and a scale taken from the wrong block shows (with one
// magnitude everywhere it moved y by ~1%, under the bound at large K).
std::vector<float> nf4_case_weights(size_t n, uint64_t seed) {
  std::vector<float> w = random_bf16(n, seed, -0.2f, 0.2f);
  for (size_t i = 0; i < n; ++i) w[i] = std::ldexp(w[i], int((i / 64 * 7919 + seed) % 5) - 2);
  return w;
}

// One projection's host values and device buffers.
struct Side {
  std::vector<float> w, bias, A, B, y_want, u_want;
  std::unique_ptr<Nf4Upload> nf4;
  bool tensor_cores = false;  // the call takes the tensor cores (lora_gemv_tensor_cores and _faster)
  DeviceBuffer<bf16> d_w, d_bias, d_A, d_B, d_y, d_u;
  GemvProjection view;
  Side(const Projection& p, const Case& c, const std::vector<float>& x, uint64_t seed, int index)
      : d_w(c.nf4 ? 0 : size_t(p.N) * c.K),
        d_bias(p.bias ? p.N : 0),
        d_A(p.adapter ? size_t(p.R) * c.K : 0),
        d_B(p.adapter ? size_t(p.N) * p.R : 0),
        d_y(size_t(c.T) * p.N),
        d_u(p.adapter ? size_t(c.T) * p.R : 0) {
    w = c.nf4 ? nf4_case_weights(size_t(p.N) * c.K, seed) : random_bf16(size_t(p.N) * c.K, seed, -0.2f, 0.2f);
    view.N = p.N;
    if (c.nf4) {
      const Nf4Host q = nf4_quantize_ref(w.data(), p.N, c.K, c.blocksize, c.nested);
      std::vector<float> table(kNf4Table, kNf4Table + 16);
      if (c.own_tables)
        for (float& v : table) v *= 1.f + 0.25f * float(index);
      nf4 = std::make_unique<Nf4Upload>(q, table);
      view.nf4 = nf4->view;
      // Every projection of a case has its K and blocksize: this one's path is the call's.
      int64_t weights = 0;
      for (const Projection& each : c.projections) weights += int64_t(each.N) * c.K;
      tensor_cores = lora_gemv_tensor_cores(&view, 1, c.K) && lora_gemv_tensor_cores_faster(c.T, weights);
      lora_gemv_nf4_values_ref(w.data(), q, table.data(), tensor_cores);
    } else {
      upload(d_w.get(), w);
      view.W = d_w.get();
    }
    if (p.bias) {
      bias = random_bf16(size_t(p.N), seed + 1, -0.5f, 0.5f);
      upload(d_bias.get(), bias);
      view.bias = d_bias.get();
    }
    if (p.adapter) {
      A = random_bf16(size_t(p.R) * c.K, seed + 2, -0.1f, 0.1f);
      B = random_bf16(size_t(p.N) * p.R, seed + 3, -0.1f, 0.1f);
      upload(d_A.get(), A);
      upload(d_B.get(), B);
      view.A = d_A.get(), view.B = d_B.get(), view.R = p.R, view.scale = 2.f, view.u = d_u.get();
      poison(d_u);
    }
    poison(d_y);
    view.y = d_y.get();
    y_want.resize(size_t(c.T) * p.N);
    u_want.resize(p.adapter ? size_t(c.T) * p.R : 0);
    lora_gemv_ref(y_want.data(), p.adapter ? u_want.data() : nullptr, x.data(), w.data(), p.bias ? bias.data() : nullptr,
                  p.adapter ? A.data() : nullptr, p.adapter ? B.data() : nullptr, p.R, view.scale, c.T, p.N, c.K);
  }

  void expect_close(const Case& c, const std::vector<float>& x) const {
    const int N = view.N, K = c.K, R = view.A ? view.R : 0;
    const std::vector<float> y = download(d_y), u = R ? download(d_u) : std::vector<float>();
    // The tensor cores' sums are not fp32 round-to-nearest (products exact, additions truncated, with
    // alignment to the largest addend: Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior of NVIDIA
    // tensor cores", 2021): 2^-22 per addend there, four times fp32's unit roundoff 2^-24 (truncation's
    // 2^-23, and as much again for the bits the alignment drops).
    const int sum_exponent = tensor_cores ? -22 : -24;
    ASSERT_EQ(y.size(), y_want.size());
    ASSERT_EQ(u.size(), u_want.size());
    for (int t = 0; t < c.T; ++t) {
      const float* xt = &x[size_t(t) * K];
      for (int j = 0; j < R; ++j) {
        double m = 0;
        for (int k = 0; k < K; ++k) m += std::fabs(xt[k] * A[size_t(j) * K + k]);
        const double want = u_want[size_t(t) * R + j], got = u[size_t(t) * R + j];
        ASSERT_LE(std::fabs(got - want), std::ldexp(std::fabs(want), -7) + (K + 1) * std::ldexp(m, -24))
            << "u[" << t << "][" << j << "] = " << got << ", want " << want;
      }
      for (int n = 0; n < N; ++n) {
        double m = bias.empty() ? 0 : std::fabs(bias[size_t(n)]), lora = 0;
        for (int k = 0; k < K; ++k) m += std::fabs(xt[k] * w[size_t(n) * K + k]);
        for (int j = 0; j < R; ++j) lora += view.scale * std::fabs(u_want[size_t(t) * R + j] * B[size_t(n) * R + j]);
        const double want = y_want[size_t(t) * N + n], got = y[size_t(t) * N + n];
        const double bound = std::ldexp(std::fabs(want), -8) + (K + R + 3) * std::ldexp(m + lora, sum_exponent) +
                             std::ldexp(lora, -7);
        ASSERT_LE(std::fabs(got - want), bound) << "y[" << t << "][" << n << "] = " << got << ", want " << want;
      }
    }
  }
};

void run(const Case& c, uint64_t seed) {
  std::string what = std::string(c.nf4 ? "nf4" : "bf16") + ", K " + std::to_string(c.K) + ", T " +
                     std::to_string(c.T) + ", blocksize " + std::to_string(c.blocksize);
  for (const Projection& p : c.projections)
    what += ", (N " + std::to_string(p.N) + (p.adapter ? ", R " + std::to_string(p.R) : "") +
            (p.bias ? ", bias)" : ")");
  SCOPED_TRACE(what);
  const std::vector<float> x = random_bf16(size_t(c.T) * c.K, seed, -2.f, 2.f);
  DeviceBuffer<bf16> d_x(x.size());
  upload(d_x.get(), x);
  std::vector<std::unique_ptr<Side>> sides;
  std::vector<GemvProjection> views;
  for (size_t i = 0; i < c.projections.size(); ++i) {
    sides.push_back(std::make_unique<Side>(c.projections[i], c, x, seed + 10 * (i + 1), int(i)));
    views.push_back(sides.back()->view);
  }
  lora_gemv(views.data(), int(views.size()), d_x.get(), c.T, c.K, kStream);
  for (const auto& side : sides) side->expect_close(c, x);
}

}  // namespace gemv_test

// Shapes: every row count 1..8; one projection and q/k/v-like triples of unequal N (a block of 8
// warps straddles two projections); N of 1, 7, 37, 130, 4099; K of 64, 96 (blocks straddling rows
// with blocksize 64), 200 and 1000 (not multiples of 32: 8-weight NF4 chunks), 896, 4096, 14336
// (llama-3.1-8b's down projection); blocksizes 32, 64, 128, 256, nested and plain scales; ranks 7
// (odd: B's rows not 4-byte aligned), 8, 16, 24 and 40 (more than a warp's lanes; on the tensor cores
// more than 16 a warp: 40 over 2 warps, and over 1 warp in a call of 501 tiles, several a block,
// beside rank 7); with and without bias and adapter. NF4 on the tensor cores
// (K a multiple of 64, blocksize >= 64) at every row count 4..8, and at 1, 2 and 3 rows in calls of 2^24
// weights or more (smaller ones take the CUDA-core kernel), with N not a multiple of the 16-row
// tile, K split unevenly over a tile's warps (896: 14 groups over 3), several projections, and 700
// tiles (more than the ~264 blocks resident on an H100 or H200, so blocks take several), once with
// three projections of different code tables (own_tables), so a block moving to another projection's
// tile must refill its pair table to stay right. NF4 weights vary in magnitude block to block
// (nf4_case_weights).
TEST(LoraGemv, MatchesTheReferenceOnBf16AndNf4Weights) {
  REQUIRE_GPU();
  using gemv_test::Case;
  const std::vector<Case> cases = {
      {{{1, false, false}}, 64, 1, true, 64, false},
      {{{37, true, false}}, 96, 3, true, 64, false},
      {{{1000, true, true}}, 896, 8, true},
      {{{7, false, true}}, 4096, 5, true, 32},
      {{{130, true, false, 8}}, 14336, 1, true},
      {{{4099, false, false}}, 128, 2, true, 128, false},
      {{{33, true, true, 40}}, 512, 6, true},
      {{{9, true, false}}, 1024, 7, true, 256},
      {{{29, true, true}}, 200, 2, true, 64, false},
      {{{5, false, false}}, 1000, 4, true},
      {{{300, true, true}, {100, true, true}, {100, true, true}}, 256, 1, true},
      {{{64, true, false}, {37, false, false}, {19, true, false, 8}}, 1000, 3, true},
      {{{48, true, true}, {16, false, false}}, 2048, 4, true},
      {{{20, true, false}}, 192, 3, true, 64, false},
      {{{17, false, true}}, 4096, 5, true, 128},
      {{{11200, true, false}}, 4096, 1, true},
      {{{4096, true, true}}, 4096, 2, true},
      {{{40, true, true, 8}}, 1024, 5, true},
      {{{50, true, false, 7}, {30, true, true, 24}}, 640, 4, true},
      {{{5000, true, true, 40}, {3000, true, false, 7}}, 256, 4, true},
      {{{5000, true, false}, {3000, false, true}, {3210, true, true}}, 4096, 3, true, 64, true, true},
      {{{1, false, false}}, 64, 1, false},
      {{{37, true, true}}, 96, 8, false},
      {{{1000, true, false}}, 896, 2, false},
      {{{130, true, false, 40}}, 14336, 1, false},
      {{{4099, false, true}}, 128, 4, false},
      {{{29, true, true}}, 200, 5, false},
      {{{300, true, true}, {100, true, true}, {100, true, true}}, 4096, 1, false},
      {{{64, false, false}, {37, true, false}}, 1024, 6, false},
  };
  for (size_t i = 0; i < cases.size(); ++i) gemv_test::run(cases[i], 100 + i);
}

TEST(LoraGemv, RefusesWhatItCannotCompute) {
  REQUIRE_GPU();
  Nf4Upload up(nf4_quantize_ref(random_bf16(64 * 64, 1).data(), 64, 64, 64, false));
  DeviceBuffer<bf16> d(64 * 64), y(64 * 9);  // d: x, W, A and B; y: what a launch would write
  poison(y);
  GemvProjection nf4;
  nf4.nf4 = up.view, nf4.N = 64, nf4.y = y.get();
  GemvProjection bf16_weight;
  bf16_weight.W = d.get(), bf16_weight.N = 64, bf16_weight.y = y.get();
  expect_error([&] { lora_gemv(&nf4, 1, d.get(), 9, 64, kStream); }, "rows (1 to 8)");
  expect_error([&] { lora_gemv(&nf4, 1, d.get(), 1, 32, kStream); }, "elements");
  expect_error([&] { lora_gemv(&nf4, 1, d.get(), 1, 60, kStream); }, "a multiple of 8");
  GemvProjection both[2] = {nf4, bf16_weight};
  expect_error([&] { lora_gemv(both, 2, d.get(), 1, 64, kStream); }, "weight as projection 0's");
  GemvProjection adapter = bf16_weight;
  adapter.A = d.get(), adapter.B = d.get(), adapter.R = 8;
  expect_error([&] { lora_gemv(&adapter, 1, d.get(), 1, 64, kStream); }, "u (the (T, R) buffer)");
  GemvProjection unaligned = nf4;
  unaligned.nf4.codes += 4;
  expect_error([&] { lora_gemv(&unaligned, 1, d.get(), 1, 64, kStream); }, "16-byte aligned codes");
  // Nothing was launched: a kernel given these would have written y.
  for (float v : download(y)) ASSERT_TRUE(std::isnan(v)) << "a refused call wrote y";
}

// ---------------------------------------------------------------------------------------------
// GEMM (cuBLASLt)

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

struct GemmCase {
  int64_t M, N, K;
};

// Stored shape of an operand: (rows, cols) of op(X), transposed when trans.
size_t elems(int64_t rows, int64_t cols) { return size_t(rows) * size_t(cols); }

// Error bound of D = alpha·A·B + beta·D0 against the fp32 reference. fp32 output: accumulation order
// alone, ~1e-5 of the rms at K = 4096, allowed 1e-4 of max(|D|, rms). bf16 output with beta = 1:
// cuBLASLt does not hold alpha·acc + beta·D0 in fp32 until one final rounding (seen on an H200: errors
// of 4u of |D| where |alpha·A·B| >> |D|), so allow one rounding u of each term:
// u·(|alpha·A·B| + |beta·D0| + |D|), plus the fp32 part.
std::vector<double> gemm_error_bound(const std::vector<float>& ab, const std::vector<float>& d0, float beta,
                                     const std::vector<float>& want, bool fp32_out) {
  const double scale = rms(want);
  std::vector<double> bound(want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const double fp32_part = 1e-4 * std::max<double>(std::fabs(want[i]), scale);
    const double terms = std::fabs(ab[i]) + std::fabs(beta * d0[i]) + std::fabs(want[i]);
    bound[i] = fp32_out ? fp32_part : kBf16Eps * terms + fp32_part;
  }
  return bound;
}

// Every layout, output type and beta of ctx against matmul_ref. A row-invariant context sums over rows
// in pieces only into an fp32 D (a bf16 D would round each piece: refused, RowInvariant tests it).
void expect_gemm_matches_reference(GemmContext& ctx) {
  const GemmCase cases[] = {{1, 37, 24}, {37, 1000, 896}, {4099, 64, 24}, {129, 896, 4096}};
  const float alpha = 0.75f;
  for (const GemmCase& c : cases) {
    const std::vector<float> A = random_bf16(elems(c.M, c.K), 91), B = random_bf16(elems(c.K, c.N), 92);
    const std::vector<float> D0 = random_bf16(elems(c.M, c.N), 93);
    auto d_A = to_device_bf16(A), d_B = to_device_bf16(B);
    for (bool trans_a : {false, true}) {
      for (bool trans_b : {false, true}) {
        std::vector<float> ab(elems(c.M, c.N));
        matmul_ref(ab.data(), A.data(), B.data(), c.M, c.N, c.K, trans_a, trans_b, alpha, 0.f);
        for (GemmOut out : {GemmOut::kBf16, GemmOut::kFp32}) {
          if (ctx.row_chunk() > 0 && trans_a && c.K > ctx.row_chunk() && out == GemmOut::kBf16) continue;
          for (float beta : {0.f, 1.f}) {
            const bool fp32 = out == GemmOut::kFp32;
            SCOPED_TRACE("M " + std::to_string(c.M) + ", N " + std::to_string(c.N) + ", K " + std::to_string(c.K) +
                         (trans_a ? ", trans_a" : "") + (trans_b ? ", trans_b" : "") + (fp32 ? ", fp32" : ", bf16") +
                         ", beta " + std::to_string(beta));
            std::vector<float> want = D0;
            matmul_ref(want.data(), A.data(), B.data(), c.M, c.N, c.K, trans_a, trans_b, alpha, beta);
            std::vector<float> got;
            if (fp32) {
              DeviceBuffer<float> d_D(elems(c.M, c.N));
              if (beta == 0.f) poison(d_D); else upload(d_D.get(), D0);
              gemm(ctx, d_D.get(), d_A.get(), d_B.get(), c.M, c.N, c.K, trans_a, trans_b, alpha, beta, out, kStream);
              got = download(d_D);
            } else {
              DeviceBuffer<bf16> d_D(elems(c.M, c.N));
              if (beta == 0.f) poison(d_D); else upload(d_D.get(), D0);
              gemm(ctx, d_D.get(), d_A.get(), d_B.get(), c.M, c.N, c.K, trans_a, trans_b, alpha, beta, out, kStream);
              got = download(d_D);
            }
            expect_within(got, want, gemm_error_bound(ab, D0, beta, want, fp32), "D");
          }
        }
      }
    }
  }
}

TEST(Gemm, MatchesReferenceForEveryLayoutAndOutputType) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  expect_gemm_matches_reference(ctx);
  SCOPED_TRACE("row-invariant context, row_chunk 64");
  GemmContext invariant(workspace.get(), kWorkspaceBytes, 64);
  expect_gemm_matches_reference(invariant);
}

// A row-invariant context (ops/gemm.h): rows computed in pieces are the rows of one call, bit for bit,
// wherever a piece starts; a sum over rows in pieces whose boundaries are multiples of row_chunk is the
// one call's sum, bit for bit.
// The rows [r0, r1) of each piece computed by its own call into D, against one call over all M rows:
// the same bytes. x (M, inner) · W, W (cols, inner) read transposed or (inner, cols) as stored.
void expect_pieces_equal_one_call(GemmContext& ctx, int64_t M, int64_t inner, int64_t cols, bool trans_b,
                                  const std::vector<std::pair<int64_t, int64_t>>& pieces, uint64_t seed) {
  auto d_x = to_device_bf16(random_bf16(elems(M, inner), seed));
  auto d_W = to_device_bf16(random_bf16(elems(cols, inner), seed + 1, -0.05f, 0.05f));
  for (GemmOut out : {GemmOut::kFp32, GemmOut::kBf16}) {
    SCOPED_TRACE(cat("M ", M, ", inner ", inner, ", cols ", cols, trans_b ? ", x·Wᵀ" : ", x·W",
                     out == GemmOut::kFp32 ? ", fp32 D" : ", bf16 D"));
    const size_t bytes = out == GemmOut::kFp32 ? 4 : 2;
    DeviceBuffer<uint8_t> whole(elems(M, cols) * bytes), split(elems(M, cols) * bytes);
    gemm(ctx, whole.get(), d_x.get(), d_W.get(), M, cols, inner, false, trans_b, 1.f, 0.f, out, kStream);
    CUDA_CHECK(cudaMemset(split.get(), 0xff, split.size()));
    for (auto [r0, r1] : pieces)
      gemm(ctx, split.get() + r0 * cols * bytes, d_x.get() + r0 * inner, d_W.get(), r1 - r0, cols, inner, false,
           trans_b, 1.f, 0.f, out, kStream);
    CUDA_CHECK(cudaStreamSynchronize(kStream));
    std::vector<uint8_t> a(whole.size()), b(split.size());
    CUDA_CHECK(cudaMemcpy(a.data(), whole.get(), a.size(), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(b.data(), split.get(), b.size(), cudaMemcpyDeviceToHost));
    EXPECT_TRUE(a == b) << "rows in pieces differ from one call's";
  }
}

TEST(Gemm, RowInvariantContextGivesTheSameBitsForAnySplitOfTheRows) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  const int64_t chunk = 64, M = 300, N = 136, K = 200;
  GemmContext ctx(workspace.get(), kWorkspaceBytes, chunk);
  // Awkward sizes, and a piece starting at row 37 (not a multiple of anything): y = x·Wᵀ and dx = dy·W.
  const std::vector<std::pair<int64_t, int64_t>> awkward = {{0, 37}, {37, 64}, {64, 192}, {192, 300}};
  expect_pieces_equal_one_call(ctx, M, K, N, true, awkward, 111);
  expect_pieces_equal_one_call(ctx, M, N, K, false, awkward, 113);
  // Model sizes, where a heuristic left to itself picks split-K or other algorithms for small M: a
  // LoRA u (x·Aᵀ, R 16, in 4096), llama-3.1-8b's down projection (in 14336) and its dx (dy·W).
  const std::vector<std::pair<int64_t, int64_t>> tiles = {{0, 1024}, {1024, 2048}, {2048, 2100}};
  expect_pieces_equal_one_call(ctx, 2100, 4096, 16, true, tiles, 117);
  expect_pieces_equal_one_call(ctx, 2100, 14336, 4096, true, tiles, 119);
  expect_pieces_equal_one_call(ctx, 2100, 4096, 14336, false, tiles, 121);
  const std::vector<float> A = random_bf16(elems(M, K), 111);
  auto d_A = to_device_bf16(A);
  // dA (R, K) += duᵀ·x over the M rows: one call, or pieces at multiples of the chunk, accumulated.
  const int64_t R = 24;
  const std::vector<float> du = random_bf16(elems(M, R), 113), D0 = random_floats(elems(R, K), 114, -1.f, 1.f);
  auto d_du = to_device_bf16(du);
  auto d_one = to_device(D0), d_split = to_device(D0), d_other = to_device(D0);
  gemm(ctx, d_one.get(), d_du.get(), d_A.get(), R, K, M, true, false, 0.5f, 1.f, GemmOut::kFp32, kStream);
  for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, 128}, {128, 300}})
    gemm(ctx, d_split.get(), d_du.get() + r0 * R, d_A.get() + r0 * K, R, K, r1 - r0, true, false, 0.5f, 1.f,
         GemmOut::kFp32, kStream);
  for (auto [r0, r1] : {std::pair<int64_t, int64_t>{0, 64}, {64, 256}, {256, 300}})
    gemm(ctx, d_other.get(), d_du.get() + r0 * R, d_A.get() + r0 * K, R, K, r1 - r0, true, false, 0.5f, 1.f,
         GemmOut::kFp32, kStream);
  expect_bitwise_equal(download(d_split), download(d_one), "sum over rows, pieces 128 + 172");
  expect_bitwise_equal(download(d_other), download(d_one), "sum over rows, pieces 64 + 192 + 44");
  // Refused: a sum in pieces into a bf16 D, and pointers the plans' 16-byte alignment does not hold for.
  DeviceBuffer<bf16> d_bf16(elems(R, K));
  expect_error([&] { gemm(ctx, d_bf16.get(), d_du.get(), d_A.get(), R, K, M, true, false, 1.f, 0.f, GemmOut::kBf16,
                          kStream); },
               "fp32 D");
  expect_error([&] { gemm(ctx, d_bf16.get(), d_A.get() + 1, d_A.get(), 3, N, K - 8, false, true, 1.f, 0.f,
                          GemmOut::kBf16, kStream, GemmLd{K, K, N}); },
               "16-byte aligned");
}

TEST(Gemm, LeadingDimensionsAddressColumnSlices) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  // y[:, 64:64+N] of a (M, 3N) fused output += x·Wᵀ, x a column slice of a (M, K + 8) buffer.
  const int64_t M = 37, N = 128, K = 96, ldx = K + 8, ldy = 3 * N, col = 64;
  const std::vector<float> x_wide = random_bf16(elems(M, ldx), 101), W = random_bf16(elems(N, K), 102);
  const std::vector<float> y0 = random_bf16(elems(M, ldy), 103);
  auto d_x = to_device_bf16(x_wide), d_W = to_device_bf16(W), d_y = to_device_bf16(y0);
  gemm(ctx, d_y.get() + col, d_x.get() + 8, d_W.get(), M, N, K, false, true, 1.f, 1.f, GemmOut::kBf16, kStream,
       GemmLd{ldx, 0, ldy});
  std::vector<float> x(elems(M, K)), slice(elems(M, N));
  for (int64_t i = 0; i < M; ++i) {
    std::copy_n(x_wide.begin() + i * ldx + 8, K, x.begin() + i * K);
    std::copy_n(y0.begin() + i * ldy + col, N, slice.begin() + i * N);
  }
  std::vector<float> ab(elems(M, N)), slice0 = slice;
  matmul_ref(ab.data(), x.data(), W.data(), M, N, K, false, true, 1.f, 0.f);
  matmul_ref(slice.data(), x.data(), W.data(), M, N, K, false, true, 1.f, 1.f);
  const std::vector<float> got = download(d_y);
  std::vector<float> got_slice(elems(M, N));
  for (int64_t i = 0; i < M; ++i) std::copy_n(got.begin() + i * ldy + col, N, got_slice.begin() + i * N);
  expect_within(got_slice, slice, gemm_error_bound(ab, slice0, 1.f, slice, false), "slice");
  // Outside the slice nothing may change.
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < ldy; ++j)
      if (j < col || j >= col + N) ASSERT_EQ(got[i * ldy + j], y0[i * ldy + j]) << "row " << i << ", col " << j;
}

// ---------------------------------------------------------------------------------------------
// Linear + LoRA

struct LoraShape {
  int64_t T;
  int in, out, R;
};
// T = 1, 13, 37, 1003: no multiple of 8 or 16. in, out: odd multiples of 8 (model widths are
// multiples of 8) and 37, 19 (multiples of nothing). R = 1, 3, 16.
const LoraShape kLoraShapes[] = {{1, 40, 24, 1}, {37, 24, 40, 3}, {13, 37, 19, 3}, {1003, 136, 72, 16}};

std::string lora_trace(const LoraShape& c, float dropout) {
  return "T " + std::to_string(c.T) + ", in " + std::to_string(c.in) + ", out " + std::to_string(c.out) + ", R " +
         std::to_string(c.R) + ", dropout " + std::to_string(dropout);
}

std::vector<float> abs_of(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}

// op(a)·op(b) (M, N) through the fp32 reference, times alpha.
std::vector<float> product(const std::vector<float>& a, const std::vector<float>& b, int64_t M, int64_t N, int64_t K,
                           bool ta, bool tb, float alpha = 1.f) {
  std::vector<float> c(elems(M, N));
  matmul_ref(c.data(), a.data(), b.data(), M, N, K, ta, tb, alpha, 0.f);
  return c;
}

std::vector<float> sum_of(std::vector<float> a, const std::vector<float>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// One term of a rounding bound: times · |v[i]|, v a value that the GPU rounds to bf16 once.
struct Rounding {
  double times;
  const std::vector<float>* v;
};

// bound[i] = kBf16Eps · sum of the terms at i (first order in u: one rounding of each listed value
// moves the result by at most u of it) + the fp32 part of gemm_error_bound (summation order).
std::vector<double> rounding_bound(const std::vector<float>& want, std::initializer_list<Rounding> terms) {
  const double scale = rms(want);
  std::vector<double> bound(want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    double sum = 0;
    for (const Rounding& r : terms) sum += r.times * std::fabs((*r.v)[i]);
    bound[i] = kBf16Eps * sum + 1e-4 * std::max<double>(std::fabs(want[i]), scale);
  }
  return bound;
}

// A linear with an adapter: the bf16 values the GPU reads, xl the dropped input as the GPU makes it.
struct LoraProblem {
  LoraShape c;
  float dropout;
  float scale = 2.f;  // alpha / r of a typical run (alpha 16, r 8)
  uint64_t dropout_seed = 4242, dropout_stream = 17;
  std::vector<float> x, xl, W, bias, A, B;

  LoraProblem(const LoraShape& shape, float p, uint64_t seed)
      : c(shape),
        dropout(p),
        x(random_bf16(elems(c.T, c.in), seed)),
        W(random_bf16(elems(c.out, c.in), seed + 1, -0.5f, 0.5f)),
        bias(random_bf16(c.out, seed + 2)),
        A(random_bf16(elems(c.R, c.in), seed + 3, -0.5f, 0.5f)),
        B(random_bf16(elems(c.out, c.R), seed + 4, -0.5f, 0.5f)) {
    xl = x;
    // dropout_forward computes x·f in fp32 and rounds once to bf16: the same values as the reference's, rounded.
    if (dropout > 0) {
      dropout_forward_ref(xl.data(), x.data(), int64_t(x.size()), dropout_seed, dropout_stream, dropout);
      xl = round_bf16(xl);
    }
  }
  LoraRef ref() const { return {A.data(), B.data(), c.R, scale}; }
  LoraDevice device(const bf16* d_A, const bf16* d_B, float* d_dA, float* d_dB) const {
    return {d_A, d_B, d_dA, d_dB, c.R, scale, dropout, dropout_seed, dropout_stream};
  }
  double max_factor() const { return 1.0 / (1.0 - dropout); }  // a kept element's dropout factor f
};

// Against lora_linear_forward_ref on the same bf16 inputs. Error bound, one term per rounding
// (Y0 = x·Wᵀ, Y1 = Y0 + b, U = xl·Aᵀ, L = s·U·Bᵀ, y = Y1 + L):
//   y0 = bf16(x·Wᵀ)            u|Y0|
//   y1 = bf16(y0 + b)          u|Y1|                    (bias only; counted always, a spare without)
//   u  = bf16(xl·Aᵀ)           u|U|, and u·s·(|U|·|B|ᵀ) once multiplied by B
//   y  = bf16(s·u·Bᵀ + y1)     u(|L| + |Y1| + |y|)       (beta = 1 may round each term: gemm_error_bound)
// xl needs no term: the reference reads the GPU's rounded xl (LoraProblem).
TEST(LoraLinear, ForwardMatchesReference) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  for (const LoraShape& c : kLoraShapes) {
    for (float dropout : {0.f, 0.1f}) {
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(lora_trace(c, dropout) + (with_bias ? ", bias" : ", no bias"));
        const LoraProblem p(c, dropout, 181 + c.T);
        std::vector<float> y(elems(c.T, c.out)), u(elems(c.T, c.R));
        lora_linear_forward_ref(y.data(), u.data(), p.x.data(), p.xl.data(), p.W.data(),
                                with_bias ? p.bias.data() : nullptr, p.ref(), c.T, c.in, c.out);

        auto d_x = to_device_bf16(p.x), d_W = to_device_bf16(p.W), d_b = to_device_bf16(p.bias);
        auto d_A = to_device_bf16(p.A), d_B = to_device_bf16(p.B);
        DeviceBuffer<bf16> d_y(elems(c.T, c.out)), d_u(elems(c.T, c.R)), d_xl(elems(c.T, c.in));
        poison(d_y), poison(d_u), poison(d_xl);
        // Without dropout the scratch is not needed: null there checks that it is not touched.
        lora_linear_forward(ctx, d_y.get(), d_u.get(), d_x.get(), d_W.get(), with_bias ? d_b.get() : nullptr,
                            p.device(d_A.get(), d_B.get(), nullptr, nullptr), dropout > 0 ? d_xl.get() : nullptr, c.T,
                            c.in, c.out, kStream);

        std::vector<float> Y1 = product(p.x, p.W, c.T, c.out, c.in, false, true);
        const std::vector<float> Y0 = Y1;
        if (with_bias)
          for (size_t i = 0; i < Y1.size(); ++i) Y1[i] += p.bias[i % c.out];
        const std::vector<float> L = product(u, p.B, c.T, c.out, c.R, false, true, p.scale);
        const std::vector<float> UB = product(abs_of(u), abs_of(p.B), c.T, c.out, c.R, false, true, p.scale);
        expect_within(download(d_u), u, rounding_bound(u, {{1, &u}}), "u");
        expect_within(download(d_y), y, rounding_bound(y, {{1, &Y0}, {2, &Y1}, {1, &UB}, {1, &L}, {1, &y}}), "y");
      }
    }
  }
}

// Against lora_linear_backward_ref (+ dropout_backward_ref) on the same bf16 dy, x, u, W, A, B.
// dB: bf16 inputs identical on both sides, fp32 out: the fp32 part alone. The GPU's du = bf16(s·dy·B)
// is the only rounded input left (u|du|), so with DW = dy·W, D0 = dx before (0 without accumulate),
// X0 = DW + D0, G = du·A and f the dropout factor (1 without):
//   dA  += duᵀ·xl              u(|du|ᵀ·|xl|)
//   dx0 = bf16(dy·W + D0)      u(|DW| + |D0| + |X0|)          (beta = 1 may round each term)
//   du·A                       f·u(|du|·|A|) reaching dx
//   no dropout: dx = bf16(du·A + dx0)          u(|G| + |X0| + |dx|)
//   dropout:    x_dropped = bf16(du·A), then dx = bf16(dx0 + f·x_dropped): f·u|G| + u|dx|
// bounded together by u(|DW| + |D0| + 2|X0| + |dx| + f|G| + f(|du|·|A|)).
TEST(LoraLinear, BackwardMatchesReference) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  for (const LoraShape& c : kLoraShapes) {
    for (float dropout : {0.f, 0.1f}) {
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(lora_trace(c, dropout) + (accumulate ? ", dx accumulated" : ", dx written"));
        const LoraProblem p(c, dropout, 191 + c.T);
        const int64_t n = c.T * c.in;
        // u as the forward saved it (bf16); dy, the dx to accumulate into, and dA, dB before (+=).
        const std::vector<float> u = round_bf16(product(p.xl, p.A, c.T, c.R, c.in, false, true));
        const std::vector<float> dy = random_bf16(elems(c.T, c.out), 192 + c.T);
        const std::vector<float> D0 = accumulate ? random_bf16(n, 193 + c.T) : std::vector<float>(n, 0.f);
        const std::vector<float> dA0 = random_floats(elems(c.R, c.in), 194, -0.1f, 0.1f);
        const std::vector<float> dB0 = random_floats(elems(c.out, c.R), 195, -0.1f, 0.1f);

        std::vector<float> dx(n), dxl(n), dA = dA0, dB = dB0, du(elems(c.T, c.R));
        lora_linear_backward_ref(dx.data(), dropout > 0 ? dxl.data() : nullptr, dA.data(), dB.data(), du.data(),
                                 dy.data(), p.xl.data(), u.data(), p.W.data(), p.ref(), c.T, c.in, c.out);
        for (int64_t i = 0; i < n; ++i) dx[i] += D0[i];
        if (dropout > 0) dropout_backward_ref(dx.data(), dxl.data(), n, p.dropout_seed, p.dropout_stream, dropout);

        auto d_x = to_device_bf16(p.x), d_W = to_device_bf16(p.W), d_A = to_device_bf16(p.A);
        auto d_B = to_device_bf16(p.B), d_u = to_device_bf16(u), d_dy = to_device_bf16(dy), d_dx = to_device_bf16(D0);
        auto d_dA = to_device(dA0), d_dB = to_device(dB0);
        DeviceBuffer<bf16> d_du(elems(c.T, c.R)), d_xl(n);
        if (!accumulate) poison(d_dx);
        poison(d_du), poison(d_xl);
        lora_linear_backward(ctx, d_dx.get(), accumulate, d_dy.get(), d_x.get(), d_u.get(), d_W.get(),
                             p.device(d_A.get(), d_B.get(), d_dA.get(), d_dB.get()), d_du.get(),
                             dropout > 0 ? d_xl.get() : nullptr, c.T, c.in, c.out, kStream);

        const std::vector<float> DW = product(dy, p.W, c.T, c.in, c.out, false, false);
        const std::vector<float> X0 = sum_of(DW, D0), G = product(du, p.A, c.T, c.in, c.R, false, false);
        const std::vector<float> duA = product(abs_of(du), abs_of(p.A), c.T, c.in, c.R, false, false);
        const std::vector<float> duxl = product(abs_of(du), abs_of(p.xl), c.R, c.in, c.T, true, false);
        const double f = p.max_factor();
        expect_within(download(d_dB), dB, rounding_bound(dB, {}), "dB");
        expect_within(download(d_dA), dA, rounding_bound(dA, {{1, &duxl}}), "dA");
        expect_within(download(d_dx), dx,
                      rounding_bound(dx, {{1, &DW}, {1, &D0}, {2, &X0}, {1, &dx}, {f, &G}, {f, &duA}}), "dx");
      }
    }
  }
}

// With A = nullptr (no adapter, or adapters switched off) the op is the base linear alone: the
// same GEMM (and bias add) bit for bit, whatever the dropout, with no u, du or scratch given.
TEST(LoraLinear, WithoutAdapterIsTheBaseLinearBitForBit) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  for (const LoraShape& c : kLoraShapes) {
    SCOPED_TRACE(lora_trace(c, 0.1f));
    const LoraProblem p(c, 0.1f, 201 + c.T);
    LoraDevice off;
    off.dropout = 0.1f, off.R = c.R, off.scale = p.scale;
    const std::vector<float> dy = random_bf16(elems(c.T, c.out), 202), dx0 = random_bf16(elems(c.T, c.in), 203);
    auto d_x = to_device_bf16(p.x), d_W = to_device_bf16(p.W), d_b = to_device_bf16(p.bias), d_dy = to_device_bf16(dy);
    for (bool with_bias : {false, true}) {
      DeviceBuffer<bf16> d_y(elems(c.T, c.out)), d_want(elems(c.T, c.out));
      poison(d_y);
      const bf16* bias = with_bias ? d_b.get() : nullptr;
      lora_linear_forward(ctx, d_y.get(), nullptr, d_x.get(), d_W.get(), bias, off, nullptr, c.T, c.in, c.out,
                          kStream);
      gemm(ctx, d_want.get(), d_x.get(), d_W.get(), c.T, c.out, c.in, false, true, 1.f, 0.f, GemmOut::kBf16, kStream);
      if (with_bias) bias_add(d_want.get(), bias, c.T, c.out, kStream);
      expect_bitwise_equal(download(d_y), download(d_want), with_bias ? "y = x·Wᵀ + b" : "y = x·Wᵀ");
    }
    for (bool accumulate : {false, true}) {
      auto d_dx = to_device_bf16(dx0), d_want = to_device_bf16(dx0);
      if (!accumulate) poison(d_dx);
      lora_linear_backward(ctx, d_dx.get(), accumulate, d_dy.get(), d_x.get(), nullptr, d_W.get(), off, nullptr,
                           nullptr, c.T, c.in, c.out, kStream);
      gemm(ctx, d_want.get(), d_dy.get(), d_W.get(), c.T, c.in, c.out, false, false, 1.f, accumulate ? 1.f : 0.f,
           GemmOut::kBf16, kStream);
      expect_bitwise_equal(download(d_dx), download(d_want), accumulate ? "dx += dy·W" : "dx = dy·W");
    }
  }
}

// The input product alone (recompute: full's down projection) writes the u of the whole forward, bit for
// bit, dropout included (its mask is drawn again from the same seed and stream).
TEST(LoraLinear, InputProductIsTheForwardsU) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  for (const LoraShape& c : kLoraShapes)
    for (float dropout : {0.f, 0.1f}) {
      SCOPED_TRACE(lora_trace(c, dropout));
      const LoraProblem p(c, dropout, 205 + c.T);
      auto d_x = to_device_bf16(p.x), d_W = to_device_bf16(p.W), d_A = to_device_bf16(p.A), d_B = to_device_bf16(p.B);
      DeviceBuffer<bf16> d_y(elems(c.T, c.out)), d_u(elems(c.T, c.R)), d_alone(elems(c.T, c.R)), d_xl(elems(c.T, c.in));
      poison(d_alone);
      const LoraDevice lora = p.device(d_A.get(), d_B.get(), nullptr, nullptr);
      lora_linear_forward(ctx, d_y.get(), d_u.get(), d_x.get(), d_W.get(), nullptr, lora, d_xl.get(), c.T, c.in, c.out,
                          kStream);
      lora_linear_input_product(ctx, d_alone.get(), d_x.get(), lora, d_xl.get(), c.T, c.in, kStream);
      expect_bitwise_equal(download(d_alone), download(d_u), "u = xl·Aᵀ");
    }
}

// Missing buffers are refused before any launch, naming the buffer.
TEST(LoraLinear, RejectsMissingBuffers) {
  REQUIRE_GPU();
  GemmContext ctx(nullptr, 0);
  bf16* some = reinterpret_cast<bf16*>(16);  // never dereferenced: the checks come first
  LoraDevice lora;
  lora.A = some, lora.R = 4, lora.scale = 1.f;
  auto forward = [&](bf16* u) {
    lora_linear_forward(ctx, some, u, some, some, nullptr, lora, nullptr, 4, 8, 8, kStream);
  };
  expect_error([&] { forward(some); }, "B and rank");
  lora.B = some;
  expect_error([&] { forward(nullptr); }, "u, the (T, R) buffer");
  lora.dropout = 0.1f;
  expect_error([&] { forward(some); }, "x_dropped");
  lora.dropout = 0.f;
  expect_error([&] { lora_linear_backward(ctx, some, false, some, some, some, some, lora, some, nullptr, 4, 8, 8,
                                          kStream); },
               "dA, dB");
  // Nothing was launched: a kernel given the fake pointers would fault here, not in a later test.
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// ---------------------------------------------------------------------------------------------
// LM head + cross-entropy

struct CeProblem {
  int64_t T;
  int C, V;
  std::vector<float> x, W;  // bf16 values
  std::vector<int32_t> targets;
  std::vector<float> token_weight;  // w_t: SFT's 1 / (target tokens) unless a test sets others
};

CeProblem make_ce_problem(int64_t T, int C, int V, uint64_t seed) {
  CeProblem p{T, C, V, random_bf16(elems(T, C), seed), random_bf16(elems(V, C), seed + 1, -0.25f, 0.25f), {}, {}};
  p.targets.resize(T);
  int64_t n_targets = 0;
  for (int64_t t = 0; t < T; ++t) {
    p.targets[t] = t % 7 == 3 ? kIgnoreIndex : int32_t((t * 104729 + seed) % V);
    n_targets += p.targets[t] != kIgnoreIndex;
  }
  p.targets.back() = V - 1;  // the last vocabulary row
  p.token_weight.assign(T, 1.f / float(std::max<int64_t>(n_targets, 1)));
  return p;
}

struct CeResult {
  std::vector<float> dx, token_loss;
  float loss_sum = 0;
};

CeResult run_ce(GemmContext& ctx, const CeProblem& p, GemmOut logits_type, int chunk, bool with_grad) {
  auto d_x = to_device_bf16(p.x), d_W = to_device_bf16(p.W);
  auto d_targets = to_device(p.targets);
  auto d_weight = to_device(p.token_weight);
  DeviceBuffer<bf16> d_dx(elems(p.T, p.C));
  DeviceBuffer<float> d_loss(p.T), d_loss_sum(1);
  DeviceBuffer<uint8_t> d_logits(lm_head_logits_bytes(chunk, p.V, logits_type));
  poison(d_dx), poison(d_loss);
  const float start = 0.5f;  // loss_sum accumulates (+=)
  upload(d_loss_sum.get(), std::vector<float>{start});
  // The loss alone needs no weights: null there checks that they are not read.
  lm_head_cross_entropy(ctx, with_grad ? d_dx.get() : nullptr, d_loss.get(), d_loss_sum.get(), d_logits.get(),
                        logits_type, d_x.get(), d_W.get(), d_targets.get(), with_grad ? d_weight.get() : nullptr, p.T,
                        p.C, p.V, chunk, kStream);
  CeResult r;
  if (with_grad) r.dx = download(d_dx);
  r.token_loss = download(d_loss);
  r.loss_sum = download<float>(d_loss_sum.get(), 1)[0] - start;
  return r;
}

// Error bounds from bf16 logits: |dz| of a logit z is at most u|z| <= u * B_t, B_t = |x_t| * max_v |W_v|
// (Cauchy-Schwarz), so lse and z[y] each move by at most u * B_t and the loss by 2 u B_t. Softmax
// probabilities then move by a factor exp(+-2 u B_t), dz is rounded to bf16 (u), and
// dx_t = sum_v dz_v W_v moves by at most (2 u B_t + u) * |w_t| * 2 max|W| (sum_v |dz_v| <= 2 |w_t|),
// plus one rounding of dx itself. fp32 logits take B_t = 0 (the GEMM's fp32 sums are ~1e-6 exact).
// A token of weight 0 gets dz = 0 exactly, so its dx must be exactly 0.
void expect_ce_close(const CeResult& got, const CeResult& want, const CeProblem& p, bool bf16_logits) {
  const double u = kBf16Eps;
  double max_w_norm = 0, max_w = 0;
  for (int v = 0; v < p.V; ++v) {
    double norm = 0;
    for (int c = 0; c < p.C; ++c) {
      const double w = p.W[size_t(v) * p.C + c];
      norm += w * w;
      max_w = std::max(max_w, std::fabs(w));
    }
    max_w_norm = std::max(max_w_norm, std::sqrt(norm));
  }
  double loss_tol_sum = 0;
  for (int64_t t = 0; t < p.T; ++t) {
    double x_norm = 0;
    for (int c = 0; c < p.C; ++c) x_norm += double(p.x[t * p.C + c]) * p.x[t * p.C + c];
    const double B = bf16_logits ? std::sqrt(x_norm) * max_w_norm : 0.0;
    const double loss_tol = 2 * u * B + kSlack * (1 + std::fabs(want.token_loss[t]));
    loss_tol_sum += loss_tol;
    ASSERT_LE(std::fabs(got.token_loss[t] - want.token_loss[t]), loss_tol)
        << "token_loss of token " << t << ": got " << got.token_loss[t] << ", want " << want.token_loss[t];
    if (got.dx.empty()) continue;
    const double w = std::fabs(p.token_weight[t]);
    const double dz_err = (std::expm1(2 * u * B) + u) * w * 2 * max_w;
    for (int c = 0; c < p.C; ++c) {
      const size_t i = size_t(t) * p.C + c;
      const double tol = dz_err + u * std::fabs(want.dx[i]) + 1e-6 * w;
      ASSERT_LE(std::fabs(got.dx[i] - want.dx[i]), tol)
          << "dx of token " << t << ", channel " << c << ": got " << got.dx[i] << ", want " << want.dx[i];
    }
  }
  EXPECT_LE(std::fabs(got.loss_sum - want.loss_sum), loss_tol_sum + 1e-5 * std::fabs(want.loss_sum))
      << "loss_sum: got " << got.loss_sum << ", want " << want.loss_sum;
}

CeResult reference_ce(const CeProblem& p, bool with_grad) {
  CeResult r;
  r.dx.assign(with_grad ? elems(p.T, p.C) : 0, 0.f);
  r.token_loss.assign(p.T, 0.f);
  const CrossEntropyOut out = lm_head_cross_entropy_ref(with_grad ? r.dx.data() : nullptr, r.token_loss.data(),
                                                        p.x.data(), p.W.data(), p.targets.data(),
                                                        p.token_weight.data(), p.T, p.C, p.V);
  r.loss_sum = float(out.loss_sum);
  return r;
}

TEST(LmHeadCrossEntropy, MatchesReferenceOnQwenAndLlamaVocabularies) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  struct Case {
    int64_t T;
    int C, V, chunk;
  };
  // 300 tokens in chunks of 128 leave a short last chunk; 1000 tokens in one chunk.
  const Case cases[] = {{300, 64, 151936, 128}, {37, 24, 128256, 16}, {1000, 128, 32000, 1000}, {5, 8, 4099, 2}};
  for (const Case& c : cases) {
    const CeProblem p = make_ce_problem(c.T, c.C, c.V, 111 + c.V);
    const CeResult want = reference_ce(p, true);
    for (GemmOut logits : {GemmOut::kBf16, GemmOut::kFp32}) {
      const bool bf16_logits = logits == GemmOut::kBf16;
      SCOPED_TRACE("T " + std::to_string(c.T) + ", C " + std::to_string(c.C) + ", V " + std::to_string(c.V) +
                   ", chunk " + std::to_string(c.chunk) + (bf16_logits ? ", bf16 logits" : ", fp32 logits"));
      expect_ce_close(run_ce(ctx, p, logits, c.chunk, true), want, p, bf16_logits);
      CeResult loss_only = want;
      loss_only.dx.clear();
      expect_ce_close(run_ce(ctx, p, logits, c.chunk, false), loss_only, p, bf16_logits);
    }
  }
}

TEST(LmHeadCrossEntropy, GradientNeedsTokenWeights) {
  REQUIRE_GPU();
  GemmContext ctx(nullptr, 0);
  bf16* dx = reinterpret_cast<bf16*>(16);  // never dereferenced: the checks come first
  float* loss = reinterpret_cast<float*>(16);
  expect_error([&] {
    lm_head_cross_entropy(ctx, dx, loss, nullptr, loss, GemmOut::kFp32, nullptr, nullptr, nullptr, nullptr, 4, 8, 16, 4,
                          kStream);
  }, "token_weight");
}

// Per-token weights as a preference objective gives them: random signs and sizes, every fifth
// exactly 0 (its dx must be exactly 0), weights on ignored tokens too (dx 0 all the same). Each row
// must use its own weight, also across chunk boundaries (chunks of 16 and 128 over 37 and 300 tokens).
TEST(LmHeadCrossEntropy, PerTokenWeightsMatchReference) {
  REQUIRE_GPU();
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  struct Case {
    int64_t T;
    int C, V, chunk;
  };
  const Case cases[] = {{37, 24, 4099, 16}, {300, 64, 32000, 128}, {5, 8, 151936, 2}};
  for (const Case& c : cases) {
    CeProblem p = make_ce_problem(c.T, c.C, c.V, 171 + c.V);
    p.token_weight = random_floats(c.T, 172 + c.T, -2.f, 2.f);
    for (int64_t t = 2; t < c.T; t += 5) p.token_weight[t] = 0.f;  // w_0 != 0: every row differs from row 0
    const CeResult want = reference_ce(p, true);
    for (GemmOut logits : {GemmOut::kBf16, GemmOut::kFp32}) {
      const bool bf16_logits = logits == GemmOut::kBf16;
      SCOPED_TRACE("T " + std::to_string(c.T) + ", C " + std::to_string(c.C) + ", V " + std::to_string(c.V) +
                   ", chunk " + std::to_string(c.chunk) + (bf16_logits ? ", bf16 logits" : ", fp32 logits"));
      expect_ce_close(run_ce(ctx, p, logits, c.chunk, true), want, p, bf16_logits);
    }
  }
}

// One chunk of 16500 tokens x 131072 logits = 2.16e9 elements: row offsets pass 2^31. Only a few
// tokens have targets (checked against a direct double-precision computation); every other row
// must give loss 0 and dx exactly 0.
TEST(LmHeadCrossEntropy, LargeChunkRowOffsetsPast2To31) {
  REQUIRE_GPU();
  const int64_t T = 16500;
  const int C = 16, V = 131072;
  CeProblem p = make_ce_problem(T, C, V, 121);
  std::fill(p.targets.begin(), p.targets.end(), kIgnoreIndex);
  const int64_t checked[] = {0, 16383, 16384, T - 1};
  for (int64_t t : checked) p.targets[t] = int32_t((t * 31) % V);
  std::fill(p.token_weight.begin(), p.token_weight.end(), 0.25f);
  DeviceBuffer<uint8_t> workspace(kWorkspaceBytes);
  GemmContext ctx(workspace.get(), kWorkspaceBytes);
  const CeResult got = run_ce(ctx, p, GemmOut::kBf16, int(T), true);

  CeProblem small = p;  // the checked rows alone, through the reference
  small.T = std::size(checked);
  small.x.clear(), small.targets.clear(), small.token_weight.clear();
  for (int64_t t : checked) {
    small.x.insert(small.x.end(), p.x.begin() + t * C, p.x.begin() + (t + 1) * C);
    small.targets.push_back(p.targets[t]);
    small.token_weight.push_back(p.token_weight[t]);
  }
  const CeResult want = reference_ce(small, true);
  CeResult got_small;
  for (int64_t t : checked) {
    got_small.token_loss.push_back(got.token_loss[t]);
    got_small.dx.insert(got_small.dx.end(), got.dx.begin() + t * C, got.dx.begin() + (t + 1) * C);
  }
  got_small.loss_sum = got.loss_sum;
  expect_ce_close(got_small, want, small, true);
  for (int64_t t = 0; t < T; ++t) {
    if (p.targets[t] != kIgnoreIndex) continue;
    ASSERT_EQ(got.token_loss[t], 0.f) << "token_loss of ignored token " << t;
    for (int c = 0; c < C; ++c) ASSERT_EQ(got.dx[t * C + c], 0.f) << "dx of ignored token " << t << ", channel " << c;
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW, grad norm

TEST(AdamW, UpdateIsBitExactWithReference) {
  REQUIRE_GPU();
  for (int64_t n : {1, 37, 4099}) {
    for (int offset : {0, 1}) {
      for (float wd : {0.f, 0.01f}) {
        SCOPED_TRACE("n " + std::to_string(n) + ", offset " + std::to_string(offset) + ", wd " + std::to_string(wd));
        std::vector<float> p = random_floats(n, 131, -0.1f, 0.1f), m(n, 0.f), v(n, 0.f);
        DeviceBuffer<float> d_p(n + 1), d_m(n + 1), d_v(n + 1), d_g(n + 1), d_coef(1);
        upload(d_p.get() + offset, p), upload(d_m.get() + offset, m), upload(d_v.get() + offset, v);
        const float coef = 0.37f;
        upload(d_coef.get(), std::vector<float>{coef});
        AdamWParams a;
        a.lr = 1e-3f, a.weight_decay = wd;
        for (int step = 1; step <= 3; ++step) {
          a.step = step;
          std::vector<float> g = random_floats(n, 140 + step, -step * 1.f, step * 1.f);
          upload(d_g.get() + offset, g);
          adamw_update(d_p.get() + offset, d_m.get() + offset, d_v.get() + offset, d_g.get() + offset, d_coef.get(), n,
                       a, kStream);
          for (float& x : g) x *= coef;  // the clip coefficient, folded in on the device
          adamw_ref(p.data(), m.data(), v.data(), g.data(), n, a);
        }
        expect_bitwise_equal(download<float>(d_p.get() + offset, n), p, "p");
        expect_bitwise_equal(download<float>(d_m.get() + offset, n), m, "m");
        expect_bitwise_equal(download<float>(d_v.get() + offset, n), v, "v");
      }
    }
  }
}

TEST(GradNorm, NormAndClipCoefficientMatchReference) {
  REQUIRE_GPU();
  for (int64_t n : {int64_t(1), int64_t(37), int64_t(1000003)}) {
    for (int offset : {0, 1}) {
      SCOPED_TRACE("n " + std::to_string(n) + ", offset " + std::to_string(offset));
      const std::vector<float> g = random_floats(n, 151 + n, -0.01f, 0.01f);
      const double norm = std::sqrt(sum_squares_ref(g.data(), n));
      DeviceBuffer<float> d_g(n + 1), d_partials(kGradNormPartials), d_norm(1), d_coef(1);
      upload(d_g.get() + offset, g);
      for (float max_norm : {float(0.5 * norm), float(10 * norm), 0.f}) {
        poison(d_norm), poison(d_coef);
        grad_norm_clip(d_norm.get(), d_coef.get(), d_partials.get(), d_g.get() + offset, n, max_norm, kStream);
        const float got_norm = download<float>(d_norm.get(), 1)[0], got_coef = download<float>(d_coef.get(), 1)[0];
        // fp32 partial sums of <= 1000 squares each, then a tree: ~1e-6 relative.
        EXPECT_NEAR(got_norm, norm, kSlack * norm) << "max_norm " << max_norm;
        EXPECT_NEAR(got_coef, clip_coefficient(norm, max_norm), kSlack) << "max_norm " << max_norm;
        if (max_norm == 0.f || max_norm > norm) EXPECT_EQ(got_coef, 1.f) << "no clipping at max_norm " << max_norm;
        // Deterministic: the same bits on a second run.
        grad_norm_clip(d_norm.get(), d_coef.get(), d_partials.get(), d_g.get() + offset, n, max_norm, kStream);
        EXPECT_EQ(download<float>(d_norm.get(), 1)[0], got_norm) << "second run";
      }
    }
  }
}

TEST(GradNorm, ScaleByMultipliesByTheDeviceScalar) {
  REQUIRE_GPU();
  for (int64_t n : {1, 37, 4099}) {
    for (int offset : {0, 1}) {
      std::vector<float> g = random_floats(n, 161 + n);
      DeviceBuffer<float> d_g(n + 1), d_s(1);
      upload(d_g.get() + offset, g);
      upload(d_s.get(), std::vector<float>{0.3f});
      scale_by(d_g.get() + offset, d_s.get(), n, kStream);
      scale_ref(g.data(), n, 0.3f);
      expect_bitwise_equal(download<float>(d_g.get() + offset, n), g, "g * s, n " + std::to_string(n));
    }
  }
}

}  // namespace
}  // namespace loom
