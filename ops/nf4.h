// NF4 (QLoRA NormalFloat, 4-bit) quantization with the bitsandbytes byte layout (FORMATS.md §3).
//   W (rows, cols) flattened row-major, blocks of `blocksize` consecutive elements (last may be short);
//   absmax[b] = max |x| over the block (fp32); code = nearest entry of kNf4Table to x / absmax[b];
//   byte k = (code[2k] << 4) | code[2k+1]   (first element in the HIGH nibble).
//   Double quantization: offset = mean(absmax); absmax - offset quantized blockwise (256) to 8 bits
//   with the signed dynamic map, one fp32 nested_absmax per 256 blocks.
//   Dequantize: w = kNf4Table[code] * A[b], A[b] = absmax[b] or nested_map[q[b]] * nested_absmax[b/256] + offset.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace loom {

// bitsandbytes nf4_dequantization_lut (kernels.cu) = get_4bit_type("nf4"), index = 4-bit code.
extern const float kNf4Table[16];

struct Nf4Host {
  int64_t rows = 0, cols = 0;
  int blocksize = 64;
  std::vector<uint8_t> codes;  // (rows*cols + 1) / 2 packed bytes
  bool nested = false;
  std::vector<float> absmax;          // (nb) fp32, when !nested
  std::vector<uint8_t> absmax_q;      // (nb) 8-bit codes, when nested
  std::vector<float> nested_absmax;   // (ceil(nb / 256))
  std::vector<float> nested_map;      // (256) signed dynamic map
  float nested_offset = 0.f;
  int nested_blocksize = 256;
  int64_t numel() const { return rows * cols; }
  int64_t nblocks() const { return (numel() + blocksize - 1) / blocksize; }
};

// The 256-entry signed dynamic map of bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8).
std::vector<float> dynamic_map_signed();

// w (rows, cols) fp32 (the caller rounds to the checkpoint dtype first, as bitsandbytes sees bf16 values).
Nf4Host nf4_quantize_ref(const float* w, int64_t rows, int64_t cols, int blocksize = 64, bool double_quant = false);
// Checks that the arrays of q have the sizes its rows, cols, blocksize and nesting imply; errors
// start with `what` (e.g. the tensor name).
void nf4_check_sizes(const Nf4Host& q, const std::string& what);
// Per-block scale A[b] (fp32), resolving double quantization.
std::vector<float> nf4_block_scales(const Nf4Host& q);
// out (rows, cols) fp32.
void nf4_dequantize_ref(float* out, const Nf4Host& q);

}  // namespace loom

// CUDA path (ops/nf4.cu): dequantization to a bf16 scratch, bit-exact with nf4_dequantize_ref
// followed by round-to-nearest-even to bf16.
#include "ops/cuda_common.h"

namespace loom {

// Device pointers of one NF4 weight (the Nf4Host fields, uploaded). All 16-byte aligned buffers.
struct Nf4Device {
  int64_t numel = 0;                     // rows * cols
  int blocksize = 64;                    // a multiple of 8 (bitsandbytes uses powers of two 32..4096)
  const uint8_t* codes = nullptr;        // (ceil(numel / 2)) two codes per byte, first in the high nibble
  const float* quant_map = nullptr;      // (16) the code table: kNf4Table, or the checkpoint's weight.quant_map
  const float* absmax = nullptr;         // (nb) when not nested
  const uint8_t* absmax_q = nullptr;     // (nb) when nested (double quantization)
  const float* nested_absmax = nullptr;  // (ceil(nb / nested_blocksize))
  const float* nested_map = nullptr;     // (256) signed dynamic map
  float nested_offset = 0.f;
  int nested_blocksize = 256;
  __host__ __device__ bool nested() const { return absmax_q != nullptr; }
};

#ifdef __CUDACC__
// A[block] on the device, each product and sum rounded on its own as bitsandbytes evaluates them.
__device__ __forceinline__ float nf4_block_scale(const Nf4Device& w, int64_t block) {
  if (!w.nested()) return w.absmax[block];
  const float q = w.nested_map[w.absmax_q[block]];
  return __fadd_rn(__fmul_rn(q, w.nested_absmax[block / w.nested_blocksize]), w.nested_offset);
}

// nf4_block_scale in two halves, for a kernel that loads a block's scale well before it needs it: the
// half that reads global memory (independent loads) and the half that finishes the value. In one
// piece, the nested map's load waits for absmax_q's, so the loading warp stalls a memory latency there.
struct Nf4ScaleParts {
  float absmax;  // absmax[block], or nested_absmax[block / nested_blocksize] when nested
  uint32_t q;    // absmax_q[block] when nested
};
__device__ __forceinline__ Nf4ScaleParts nf4_scale_load(const Nf4Device& w, int64_t block) {
  if (!w.nested()) return {w.absmax[block], 0u};
  return {w.nested_absmax[block / w.nested_blocksize], w.absmax_q[block]};
}
__device__ __forceinline__ float nf4_scale_finish(const Nf4Device& w, Nf4ScaleParts s) {
  if (!w.nested()) return s.absmax;
  return __fadd_rn(__fmul_rn(w.nested_map[s.q], s.absmax), w.nested_offset);
}
#endif

// out (numel) bf16 written (=), in the weight's row-major order.
void nf4_dequantize(bf16* out, const Nf4Device& w, cudaStream_t stream);
// Piece i of the count weights `pieces` into out + i·stride (numel_i ≤ stride, stride a multiple of 8),
// each as nf4_dequantize writes it, in one launch: a mixture-of-experts layer's 3·E expert matrices.
// device_pieces: the same count descriptors in device memory (each block reads its piece's there);
// pieces: their host copies, checked here.
void nf4_dequantize_pieces(bf16* out, int64_t stride, const Nf4Device* pieces, const Nf4Device* device_pieces,
                           int count, cudaStream_t stream);

}  // namespace loom
