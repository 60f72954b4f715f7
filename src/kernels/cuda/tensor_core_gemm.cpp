#include "kernels/cuda/tensor_core_gemm.h"

#include <cublas_v2.h>

#include <vector>

#include "core/dtype.h"
#include "core/shared_library.h"
#include "kernels/cuda/launch.h"

namespace shardlm::cuda {
namespace {

// cublasGemmEx's C signature (C++ sees an overload set).
using GemmEx = cublasStatus_t(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                              const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

// The few cuBLAS entry points used, resolved once per process.
struct Cublas {
  decltype(&cublasCreate_v2) create = nullptr;
  decltype(&cublasDestroy_v2) destroy = nullptr;
  decltype(&cublasSetStream_v2) set_stream = nullptr;
  GemmEx* gemm = nullptr;
  std::string why;
};

const Cublas& cublas() {
  static const Cublas api = [] {
    Cublas a;
    const SharedLibrary lib = SharedLibrary::open(
        "SHARDLM_CUBLAS", {"libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so.13", "libcublas.so.12"});
    if (!lib) {
      a.why = "cuBLAS not found: " + lib.why();
      return a;
    }
    try {
      lib.resolve(a.create, "cublasCreate_v2");
      lib.resolve(a.destroy, "cublasDestroy_v2");
      lib.resolve(a.set_stream, "cublasSetStream_v2");
      lib.resolve(a.gemm, "cublasGemmEx");
    } catch (const Error& e) {
      a.create = nullptr;
      a.why = e.what();
    }
    return a;
  }();
  return api;
}

void check(cublasStatus_t status, const char* what) {
  SHARDLM_CHECK(status == CUBLAS_STATUS_SUCCESS, "cuBLAS: {} failed (status {})", what, int(status));
}

}  // namespace

std::unique_ptr<TensorCoreGemm> TensorCoreGemm::create(Stream s, std::string* why) {
  const Cublas& api = cublas();
  if (!api.create) {
    *why = api.why;
    return nullptr;
  }
  std::unique_ptr<TensorCoreGemm> g(new TensorCoreGemm);
  cublasHandle_t h = nullptr;
  check(api.create(&h), "cublasCreate");
  g->handle_ = h;
  g->stream_ = s;
  check(api.set_stream(h, s), "cublasSetStream");
  return g;
}

TensorCoreGemm::~TensorCoreGemm() {
  if (handle_) cublas().destroy(static_cast<cublasHandle_t>(handle_));
}

void TensorCoreGemm::reserve(int64_t M, int64_t cols, int64_t rows) {
  x_half_.grow(size_t(2 * M * cols) * 2);
  if (M < kPreciseRows) halves_.grow(size_t(2 * M * rows) * 4);
}

void TensorCoreGemm::run(const float* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate) {
  if (M == 0 || w.rows == 0) return;
  SHARDLM_CHECK(w.dtype == DType::BF16 || w.dtype == DType::F16 || w.dtype == DType::F32,
                "internal: tensor-core product of {} weights", dtype_name(w.dtype));
  if (rounds_once(M, w.dtype)) {
    run_half(round_input(x, M, w.cols, w.dtype), M, w, y, accumulate);
    return;
  }
  if (w.dtype == DType::F32) {
    gemm(x, M, w, y, accumulate);
    return;
  }
  // Two parts of x in the weights' 16-bit type, stacked: their products go to scratch and are
  // summed into y by add_halves.
  reserve(M, w.cols, w.rows);
  uint16_t* parts = x_half_.get<uint16_t>();
  split_half(x, parts, parts + M * w.cols, M * w.cols, w.dtype, stream_);
  gemm(parts, 2 * M, w, halves_.get<float>(), false);
  add_halves(y, halves_.get<float>(), M * w.rows, accumulate, stream_);
}

const uint16_t* TensorCoreGemm::round_input(const float* x, int64_t M, int64_t cols, DType half) {
  uint16_t* out = input_scratch(M, cols);
  to_half(x, out, M * cols, half, stream_);
  return out;
}

uint16_t* TensorCoreGemm::input_scratch(int64_t M, int64_t cols) {
  x_half_.grow(size_t(M * cols) * 2);
  return x_half_.get<uint16_t>();
}

void TensorCoreGemm::run_half(const uint16_t* x, int64_t M, const DeviceMatrix& w, float* y, bool accumulate) {
  if (M == 0 || w.rows == 0) return;
  SHARDLM_CHECK(w.dtype == DType::BF16 || w.dtype == DType::F16, "internal: 16-bit input for {} weights",
                dtype_name(w.dtype));
  gemm(x, M, w, y, accumulate);
}

void TensorCoreGemm::run_half_out(const uint16_t* x, int64_t M, const DeviceMatrix& w, uint16_t* y) {
  if (M == 0 || w.rows == 0) return;
  SHARDLM_CHECK(w.dtype == DType::BF16 || w.dtype == DType::F16, "internal: 16-bit output for {} weights",
                dtype_name(w.dtype));
  gemm(x, M, w, y, false, /*half_out=*/true);
}

void TensorCoreGemm::gemm(const void* x, int64_t M, const DeviceMatrix& w, void* y, bool accumulate, bool half_out) {
  // Row-major y [M][N] = x [M][K] W^T is column-major y^T (N x M) = W^T' (W as K x N, transposed) x^T.
  const cudaDataType_t type = w.dtype == DType::F32 ? CUDA_R_32F : w.dtype == DType::F16 ? CUDA_R_16F : CUDA_R_16BF;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  check(cublas().gemm(static_cast<cublasHandle_t>(handle_), CUBLAS_OP_T, CUBLAS_OP_N, int(w.rows), int(M), int(w.cols),
                      &alpha, w.data, type, int(w.cols), x, type, int(w.cols), &beta, y, half_out ? type : CUDA_R_32F, int(w.rows),
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

double TensorCoreGemm::measure_bf16_flops(int device, std::string* why) {
  SHARDLM_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t s = nullptr;
  SHARDLM_CUDA_CHECK(cudaStreamCreate(&s));
  double result = 0;
  {
    std::unique_ptr<TensorCoreGemm> g = create(s, why);
    if (g) {
      constexpr int64_t n = 8192;
      DeviceBuffer a(size_t(n * n) * 2), b(size_t(n * n) * 2), c(size_t(n * n) * 4);
      // Random operands, as a model's are: constant ones flip fewer bits, draw less power and
      // clock higher (the tensor cores run faster on constant data than on a model's).
      std::vector<uint16_t> values(size_t(n * n));
      uint32_t state = 0x9e3779b9u;
      for (uint16_t& v : values) {
        state ^= state << 13, state ^= state >> 17, state ^= state << 5;  // xorshift32
        v = f32_to_bf16(float(int32_t(state >> 8) - (1 << 23)) / float(1 << 23));  // uniform in [-1, 1)
      }
      SHARDLM_CUDA_CHECK(cudaMemcpy(a.get(), values.data(), a.bytes(), cudaMemcpyHostToDevice));
      SHARDLM_CUDA_CHECK(cudaMemcpy(b.get(), values.data(), b.bytes(), cudaMemcpyHostToDevice));
      const float one = 1.0f, zero = 0.0f;
      const double seconds = detail::median_seconds(s, 5, [&] {
        check(cublas().gemm(static_cast<cublasHandle_t>(g->handle_), CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(n), int(n),
                            &one, a.get(), CUDA_R_16BF, int(n), b.get(), CUDA_R_16BF, int(n), &zero, c.get(),
                            CUDA_R_32F, int(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx (FLOP/s probe)");
      });
      result = 2.0 * double(n) * double(n) * double(n) / seconds;
    }
  }
  cudaStreamDestroy(s);
  return result;
}

}  // namespace shardlm::cuda
