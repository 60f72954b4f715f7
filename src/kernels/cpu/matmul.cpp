// Dispatch, checks and the threading/cache-blocking driver shared by every SIMD level.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include "core/error.h"

namespace shardlm {

namespace {

using matmul_detail::Kernels;
using matmul_detail::kPackStep;

// Cache blocking of the packed path (measured on Zen 5: 48 KB L1, 1 MB L2 per core, 32 MB L3).
// A weight panel of kKc x panel_width f32 (32 KB at 256 x 32) stays in L1 while the activation
// tiles of the k block stream past it from L2 (512 KB at 512 rows); the kNc features of a block
// (kNc x kKc f32, 256 KB) are converted once and stay in L2 for all of their panels.
constexpr int64_t kKc = 256;
constexpr int64_t kNc = 256;
static_assert(kKc % kPackStep == 0);
// Activations are packed once per call, shared by all threads, in chunks of rows whose packed
// copy stays in L3 next to the weights streaming through (up to twice this, see run_packed).
constexpr int64_t kPackedActivationBytes = int64_t(12) << 20;

// Scratch that lives as long as its thread, grown on demand, 64-byte aligned for the packed loads.
struct ScratchBuffer {
  std::unique_ptr<float, decltype(&std::free)> data{nullptr, &std::free};
  size_t floats = 0;
  float* get(size_t n) {
    if (n > floats) {
      size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p) fail("matmul: cannot allocate {} bytes of scratch", bytes);
      data.reset(p);
      floats = n;
    }
    return data.get();
  }
};

// All threads of one pool.run meet here between packing the activations and reading them.
// Spins (the pool's threads are normally all running), yielding if a thread is descheduled.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void wait() {
    const int phase = phase_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      arrived_.store(0, std::memory_order_relaxed);
      phase_.store(phase + 1, std::memory_order_release);
      return;
    }
    for (int spin = 0; phase_.load(std::memory_order_acquire) == phase; ++spin) {
      if (spin < 4000) __builtin_ia32_pause();
      else std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> arrived_{0};
  std::atomic<int> phase_{0};
};

const Kernels& kernels_for(SimdLevel level) {
  const CpuFeatures& f = cpu_features();
  switch (level) {
    case SimdLevel::Avx512:
      SHARDLM_CHECK(f.avx512, "matmul: AVX-512 kernels requested on a CPU without AVX-512");
      return matmul_detail::avx512_kernels();
    case SimdLevel::Avx2:
      SHARDLM_CHECK(f.avx2, "matmul: AVX2 kernels requested on a CPU without AVX2/FMA/F16C");
      return matmul_detail::avx2_kernels();
    case SimdLevel::Scalar: break;
  }
  return matmul_detail::scalar_kernels();
}

// Decode of several matrices that read the same activations (q, k, v; gate, up) in one parallel
// region: each thread streams its row range of every matrix, so the threads start and finish
// once instead of once per matrix, and their shares even out over the matrices.
void run_decode(const Kernels& kern, ThreadPool& pool, const float* x, int64_t M, std::span<const MatmulJob> jobs,
                bool accumulate) {
  // Rows in contiguous ranges so each thread streams one run of memory; a small grain keeps the
  // split even for the 512-row kv projections.
  constexpr int64_t kGrain = 8;
  const int64_t step = kern.max_decode_rows;
  pool.run([&](int t, int nt) {
    for (const MatmulJob& job : jobs) {
      const WeightMatrix& w = *job.w;
      const int64_t N = w.rows, K = w.cols, chunks = (N + kGrain - 1) / kGrain;
      int64_t n0 = std::min(N, chunks * t / nt * kGrain), n1 = std::min(N, chunks * (t + 1) / nt * kGrain);
      if (n0 >= n1) continue;
      for (int64_t m0 = 0; m0 < M; m0 += step)
        kern.gemv(x + m0 * K, std::min(step, M - m0), w, n0, n1, job.y + m0 * N, accumulate);
    }
  });
}

void run_packed(const Kernels& kern, ThreadPool& pool, const float* x, int64_t M, const WeightMatrix& w,
                float* y, bool accumulate) {
  const int64_t N = w.rows, K = w.cols;
  const int64_t MR = kern.tile_rows, NR = kern.panel_width;
  // Equal chunks: a short last chunk would repack every weight for a few rows.
  const int64_t total_tiles = (M + MR - 1) / MR;
  const int64_t max_chunk_tiles = std::max<int64_t>(1, kPackedActivationBytes / (K * MR * int64_t(sizeof(float))));
  // Rounded down: a chunk may hold up to twice the budget rather than split 512 rows at K = 8192.
  const int64_t chunks = std::max<int64_t>(1, total_tiles / max_chunk_tiles);
  const int64_t chunk_rows = std::min(M, (total_tiles + chunks - 1) / chunks * MR);
  // Packed activations, k block by k block, each block's tiles contiguous ([k block][tile][k][MR]):
  // the tiles a weight panel meets are one run of memory, not K*MR floats apart (which maps
  // them all onto the same L2 sets when K is a power of two).
  const int64_t k_blocks = (K + kKc - 1) / kKc;
  const int64_t chunk_tiles = (chunk_rows + MR - 1) / MR;
  auto activation_offset = [&](int64_t tile, int64_t k0) {
    return k0 * MR * chunk_tiles + tile * std::min(kKc, K - k0) * MR;
  };
  const int64_t panels = (N + NR - 1) / NR;
  const int64_t block_panels = std::max<int64_t>(1, kNc / NR);
  // One allocation by the calling thread for the shared activations and each thread's weight
  // panels: nothing inside the parallel region can fail and leave the others at the barrier.
  const int64_t x_floats = (chunk_tiles * K * MR + 16 + 15) / 16 * 16;
  const int64_t w_floats = block_panels * kKc * NR;
  static thread_local ScratchBuffer scratch;
  float* packed_x = scratch.get(size_t(x_floats + w_floats * pool.size()));
  SpinBarrier barrier(pool.size());

  pool.run([&](int t, int nt) {
    float* packed_w = packed_x + x_floats + t * w_floats;
    const int64_t p_begin = panels * t / nt, p_end = panels * (t + 1) / nt;
    for (int64_t m0 = 0; m0 < M; m0 += chunk_rows) {
      const int64_t mc = std::min(chunk_rows, M - m0), tiles = (mc + MR - 1) / MR;
      if (m0 > 0) barrier.wait();  // everyone is done reading the previous chunk
      for (int64_t j = t; j < tiles * k_blocks; j += nt) {
        const int64_t i = j % tiles, k0 = j / tiles * kKc;
        kern.pack_activations(x + (m0 + i * MR) * K + k0, K, std::min(MR, mc - i * MR), std::min(kKc, K - k0),
                              packed_x + activation_offset(i, k0));
      }
      barrier.wait();
      for (int64_t pb = p_begin; pb < p_end; pb += block_panels) {
        const int64_t np = std::min(block_panels, p_end - pb);
        for (int64_t k0 = 0; k0 < K; k0 += kKc) {
          const int64_t kc = std::min(kKc, K - k0);
          for (int64_t p = 0; p < np; ++p) {
            const int64_t n = (pb + p) * NR;
            kern.pack_weights(w, n, std::min(NR, N - n), k0, kc, packed_w + p * kKc * NR);
          }
          const bool add = accumulate || k0 > 0;
          // One weight panel stays in L1 while the activation tiles stream past it from L2.
          for (int64_t p = 0; p < np; ++p) {
            const int64_t n = (pb + p) * NR;
            const int cols = int(std::min(NR, N - n));
            for (int64_t i = 0; i < tiles; ++i)
              kern.tile(kc, packed_x + activation_offset(i, k0), int(std::min(MR, mc - i * MR)),
                        packed_w + p * kKc * NR, cols, y + (m0 + i * MR) * N + n, N, add);
          }
        }
      }
    }
  });
}

void run_matmul(const Kernels& kern, ThreadPool& pool, const float* x, int64_t M, const WeightMatrix& w,
                float* y, bool accumulate, MatmulPath path) {
  check_weight_matrix(w);
  SHARDLM_CHECK(M >= 0, "matmul: negative row count {}", M);
  const int64_t N = w.rows, K = w.cols;
  if (M == 0 || N == 0) return;
  SHARDLM_CHECK(x && y, "matmul: null activations or output");
  if (K == 0) {
    if (!accumulate) std::fill(y, y + M * N, 0.0f);
    return;
  }
  if (path == MatmulPath::Auto) path = M <= kern.max_decode_rows ? MatmulPath::Decode : MatmulPath::Packed;
  if (path == MatmulPath::Decode) {
    const MatmulJob job{&w, y};
    run_decode(kern, pool, x, M, std::span<const MatmulJob>(&job, 1), accumulate);
  } else {
    run_packed(kern, pool, x, M, w, y, accumulate);
  }
}

}  // namespace

void check_weight_matrix(const WeightMatrix& w) {
  SHARDLM_CHECK(w.rows >= 0 && w.cols >= 0, "matmul: weight shape [{}, {}] is negative", w.rows, w.cols);
  const int64_t block = dtype_block_elems(w.dtype);
  SHARDLM_CHECK(w.cols % block == 0, "matmul: {} weight has {} columns, not a multiple of its block of {}",
                dtype_name(w.dtype), w.cols, block);
  const int64_t row_bytes = dtype_bytes(w.dtype, w.cols);
  SHARDLM_CHECK(w.rows <= 1 || w.row_stride >= row_bytes,
                "matmul: {} weight row stride {} is shorter than a row of {} columns ({} bytes)",
                dtype_name(w.dtype), w.row_stride, w.cols, row_bytes);
  SHARDLM_CHECK(w.data || w.rows == 0 || w.cols == 0, "matmul: {} weight [{}, {}] has no data",
                dtype_name(w.dtype), w.rows, w.cols);
}

void matmul(ThreadPool& pool, const float* x, int64_t M, const WeightMatrix& w, float* y, bool accumulate) {
  static const Kernels& kern = kernels_for(simd_level());
  run_matmul(kern, pool, x, M, w, y, accumulate, MatmulPath::Auto);
}

void matmul_same_input(ThreadPool& pool, const float* x, int64_t M, std::initializer_list<MatmulJob> jobs) {
  static const Kernels& kern = kernels_for(simd_level());
  bool decode = M > 0 && M <= kern.max_decode_rows;
  for (const MatmulJob& job : jobs) {
    check_weight_matrix(*job.w);
    decode = decode && job.w->rows > 0 && job.w->cols > 0 && job.y;
  }
  if (!decode) {
    for (const MatmulJob& job : jobs) run_matmul(kern, pool, x, M, *job.w, job.y, false, MatmulPath::Auto);
    return;
  }
  SHARDLM_CHECK(x, "matmul: null activations");
  run_decode(kern, pool, x, M, std::span<const MatmulJob>(jobs.begin(), jobs.size()), false);
}

void matmul_at_level(SimdLevel level, ThreadPool& pool, const float* x, int64_t M, const WeightMatrix& w,
                     float* y, bool accumulate, MatmulPath path) {
  run_matmul(kernels_for(level), pool, x, M, w, y, accumulate, path);
}

void matmul_reference(const float* x, int64_t M, const WeightMatrix& w, float* y) {
  check_weight_matrix(w);
  std::vector<float> row(static_cast<size_t>(w.cols));
  for (int64_t n = 0; n < w.rows; ++n) {
    to_f32(w.dtype, w.data + n * w.row_stride, row.data(), w.cols);
    for (int64_t m = 0; m < M; ++m) {
      double s = 0;
      for (int64_t k = 0; k < w.cols; ++k) s += double(x[m * w.cols + k]) * double(row[size_t(k)]);
      y[m * w.rows + n] = float(s);
    }
  }
}

}  // namespace shardlm
