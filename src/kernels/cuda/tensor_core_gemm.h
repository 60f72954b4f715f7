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

  // Below this many rows of x a product reads its weights once with the weight-streaming kernel,
  // which is as fast and exact in f32; from it on the tensor cores win.
  static constexpr int64_t kMinRows = 32;

  // y [M][rows] (+)= x [M][cols] W^T, as cuda::matmul. bf16 weights multiply x rounded to bf16
  // (the tensor cores' input; f32 accumulation), so results differ from the f32 path by bf16
  // rounding of the activations; f32 weights stay in f32.
  void run(const float* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate);

  // Causal attention of one sequence's n query tokens at positions start..start+n-1 (q and out
  // [n][heads][head_dim], as cuda::attention) over its keys and values 0..start+n-1 in the paged
  // pools (`table`: its block ids, device memory): the keys and values are gathered contiguous,
  // then scores = Q K^T, a causal softmax and P V, the products on the tensor cores in TF32
  // (relative error about 1e-3 against the f32 kernel). Scores take at most kScoreBytes of scratch.
  void attention(const float* q, const float* k_pool, const float* v_pool, const int32_t* table, int64_t start,
                 int64_t n, const AttentionShape& shape, float* out);
  static constexpr int64_t kScoreBytes = int64_t(512) << 20;

 private:
  TensorCoreGemm() = default;
  void* handle_ = nullptr;  // cublasHandle_t
  Stream stream_ = nullptr;
  DeviceBuffer x_bf16_, k_rows_, v_rows_, scores_;
};

}  // namespace shardlm::cuda
