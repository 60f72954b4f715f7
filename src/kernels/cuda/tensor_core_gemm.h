// Prefill's matrix products on the tensor cores, through cuBLAS loaded at run time (dlopen, see
// core/shared_library.h): the binary needs no libcublas to start, and a GPU without it keeps the
// weight-streaming kernel of ops.h (slower for prefill, the same for decode).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/ops.h"

namespace shardlm::cuda {

class TensorCoreGemm {
 public:
  // For the current device and `s`; null when cuBLAS cannot be loaded (`why` says why).
  static std::unique_ptr<TensorCoreGemm> create(Stream s, std::string* why);
  ~TensorCoreGemm();

  // One or two rows of x (a decode step of one or two sequences): the weight-streaming kernel reads
  // the weights once, exact in f32. From 3 rows on (batched decode, prefill) the tensor cores read
  // them as fast and the streaming kernel would slow down, reading x from L1 for every 8 weights
  // of every row.
  static constexpr int64_t kMinRows = 3;
  // y [M][rows] (+)= x [M][cols] W^T, as cuda::matmul; f32 accumulation. bf16 (f16) weights take
  // x in bf16 (f16), the tensor cores' input: below kPreciseRows rows (decode batches, short
  // chunks, where the product is bound by reading W) as two parts hi + lo stacked into one product
  // of 2M rows, within about 1e-5 of f32, so a sequence's tokens do not depend on its batch; from
  // it on (prefill, bound by FLOP/s) rounded once, within the type's rounding of the activations
  // (bf16 about 4e-3, f16 5e-4). f32 weights stay in f32.
  void run(const float* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate);
  static constexpr int64_t kPreciseRows = 64;

  // Whether run() rounds x once to the weights' type (16-bit weights, M >= kPreciseRows): then a
  // kernel can write the 16-bit x itself (into input_scratch, this object's scratch: valid until
  // the next call that fills it), and run_half takes it.
  static bool rounds_once(int64_t M, DType dtype) {
    return (dtype == DType::BF16 || dtype == DType::F16) && M >= kPreciseRows;
  }
  uint16_t* input_scratch(int64_t M, int64_t cols);
  // y [M][rows] (+)= x W^T for x [M][cols] already in W's 16-bit type.
  void run_half(const uint16_t* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate);
  // y [M][rows] = x W^T in W's 16-bit type too (f32 accumulation, rounded once at the end).
  void run_half_out(const uint16_t* x, int64_t M, const DeviceMatrix& w, uint16_t* y);

  // Grows run()'s scratch for products of up to M rows of x and matrices of up to `cols` columns
  // and `rows` rows: done before a CUDA graph capture, which must not allocate.
  void reserve(int64_t M, int64_t cols, int64_t rows);
  // That scratch's addresses (a captured graph names them).
  std::pair<const void*, const void*> scratch() const { return {x_half_.get(), halves_.get()}; }

  // The ceiling of prefill: bf16 FLOP/s of an 8192^3 product on `device` through this path (bf16
  // in, f32 out), the median of 5 timed products after a warm-up. 0 with `why` set without cuBLAS.
  static double measure_bf16_flops(int device, std::string* why);

 private:
  TensorCoreGemm() = default;
  // x rounded to `half` into input_scratch (run()'s own rounding).
  const uint16_t* round_input(const float* x, int64_t M, int64_t cols, DType half);
  // cublasGemmEx: y (+)= x W^T with x in W's type (f32, bf16 or f16), f32 accumulation, y in f32
  // (or, with half_out, in W's type).
  void gemm(const void* x, int64_t M, const DeviceMatrix& w, void* y, bool accumulate, bool half_out = false);
  void* handle_ = nullptr;  // cublasHandle_t
  Stream stream_ = nullptr;
  DeviceBuffer x_half_, halves_;
};

}  // namespace shardlm::cuda
