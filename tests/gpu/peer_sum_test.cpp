// Tensor-parallel sums through the GPUs' mapped memory (comm/cuda_ipc/): two ranks, forked before
// this process uses CUDA, each on its own GPU, linked by a shared-memory host group. Needs two
// GPUs; skips without them.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#if SHARDLM_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "comm/cuda_ipc/peer_group.h"
#if SHARDLM_HAVE_NCCL
#include "comm/nccl/nccl_group.h"
#endif
#include "comm/shm/shm_group.h"
#include "gpu/gpu_count.h"
#include "kernels/cuda/peer_sum.h"
#include "multiprocess.h"

using namespace shardlm;

namespace {

// Rank r's value at i: distinct per rank and index, with fractions that round when added.
float part(int rank, int64_t i) { return float(std::sin(0.37 * double(i) + rank)) * (1.0f + 0.125f * float(rank)); }

// Runs body(rank, host group, peer group) as two ranks (test::run_ranks: forked processes), their
// peer group waiting at most `timeout`; a rank fails where body returns false, having said why.
using RankBody = std::function<bool(int, comm::Group&, comm::PeerGroup&)>;
void run_two_ranks(std::chrono::seconds timeout, const RankBody& body) {
  const std::string name = comm::new_shm_group_name();
  const auto outcomes = test::run_ranks(2, [&](int rank) {
    auto host = comm::make_shm_group({name, rank, 2, std::chrono::seconds(20)});
    std::string why;
    auto g = comm::PeerGroup::create(*host, rank, timeout, &why);
    ASSERT_TRUE(g) << "rank " << rank << ": no peer group: " << why;
    EXPECT_TRUE(body(rank, *host, *g)) << "rank " << rank;
  });
  std::string report;
  EXPECT_TRUE(test::all_passed(outcomes, &report)) << report;
}

// Sums `count` floats starting `offset` floats into a buffer, on the group's GPU, and checks every
// bit against part(0) + part(1) added on the host in rank order. With `graph`, the sum is captured
// once and replayed three times over new values. With `into`, the sum is added to x (x + sum, bit
// for bit) and data must come back unchanged.
bool sum_matches(int rank, comm::PeerGroup& g, cudaStream_t s, int64_t count, int64_t offset, bool graph,
                 bool into = false) {
  const size_t n = static_cast<size_t>(count);
  std::vector<float> mine(n), expected(n), got(n), x(n), data_after(n);
  float *buffer = nullptr, *x_buffer = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&buffer), sizeof(float) * size_t(count + offset));
  cudaMalloc(reinterpret_cast<void**>(&x_buffer), sizeof(float) * size_t(count + offset));
  float* data = buffer + offset;
  float* x_data = x_buffer + offset;
  const auto queue = [&] {
    if (!into) return g.sum(data, count, s);
    if (!g.sum_into(data, x_data, count, s)) std::fprintf(stderr, "rank %d: sum_into declined\n", rank);
  };
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    g.begin_capture(false);
    cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
    queue();
    cudaGraph_t captured;
    cudaStreamEndCapture(s, &captured);
    g.end_capture();
    cudaGraphInstantiate(&exec, captured, 0);
    cudaGraphDestroy(captured);
  }
  bool ok = true;
  for (int round = 0; round < (graph ? 3 : 1) && ok; ++round) {
    for (int64_t i = 0; i < count; ++i) {
      mine[size_t(i)] = part(rank, i + round);
      x[size_t(i)] = part(2, i + round);
      expected[size_t(i)] = part(0, i + round) + part(1, i + round);
      if (into) expected[size_t(i)] = x[size_t(i)] + expected[size_t(i)];
    }
    cudaMemcpy(data, mine.data(), sizeof(float) * n, cudaMemcpyHostToDevice);
    cudaMemcpy(x_data, x.data(), sizeof(float) * n, cudaMemcpyHostToDevice);
    if (graph) cudaGraphLaunch(exec, s);
    else queue();
    g.wait(s);
    cudaMemcpy(got.data(), into ? x_data : data, sizeof(float) * n, cudaMemcpyDeviceToHost);
    cudaMemcpy(data_after.data(), data, sizeof(float) * n, cudaMemcpyDeviceToHost);
    if (into && std::memcmp(data_after.data(), mine.data(), sizeof(float) * n) != 0) {
      std::fprintf(stderr, "rank %d: sum_into of %lld floats changed its data\n", rank, (long long)count);
      ok = false;
    }
    for (int64_t i = 0; i < count && ok; ++i)
      if (std::memcmp(&got[size_t(i)], &expected[size_t(i)], sizeof(float)) != 0) {
        std::fprintf(stderr, "rank %d: sum of %lld floats (offset %lld, graph %d, into %d, round %d): [%lld] = %.9g, not %.9g\n",
                     rank, (long long)count, (long long)offset, int(graph), int(into), round, (long long)i,
                     got[size_t(i)], expected[size_t(i)]);
        ok = false;
      }
  }
  if (exec) cudaGraphExecDestroy(exec);
  cudaFree(buffer);
  cudaFree(x_buffer);
  return ok && cudaGetLastError() == cudaSuccess;
}

void CUDART_CB hold_up(void* microseconds) {
  std::this_thread::sleep_for(std::chrono::microseconds(reinterpret_cast<uintptr_t>(microseconds)));
}

// Many sums queued back to back, no wait between them, of sizes whose grids and slices change from
// one sum to the next, with rank 1's stream held up now and then (the ranks' skew), so that a rank
// runs ahead into staging its peer may still read. Every result is checked once all are done.
bool back_to_back_sums_match(int rank, comm::PeerGroup& g, cudaStream_t s) {
  const std::vector<int64_t> sizes = {2048, 2049, 1, 5000, 300 * 2048 + 7, 3, 2049, 70000, 4096, 2051, 1 << 20, 2048};
  const int sums = 240;
  std::vector<float*> buffers(sums);
  std::vector<std::vector<float>> expected(sums);
  for (int k = 0; k < sums; ++k) {
    const int64_t count = sizes[size_t(k * 7) % sizes.size()];
    std::vector<float> mine(static_cast<size_t>(count));
    expected[size_t(k)].resize(size_t(count));
    for (int64_t i = 0; i < count; ++i) {
      mine[size_t(i)] = part(rank, i + k);
      expected[size_t(k)][size_t(i)] = part(0, i + k) + part(1, i + k);
    }
    cudaMalloc(reinterpret_cast<void**>(&buffers[size_t(k)]), sizeof(float) * size_t(count));
    cudaMemcpy(buffers[size_t(k)], mine.data(), sizeof(float) * size_t(count), cudaMemcpyHostToDevice);
  }
  for (int k = 0; k < sums; ++k) {
    if (rank == 1 && k % 5 == 0) cudaLaunchHostFunc(s, hold_up, reinterpret_cast<void*>(uintptr_t(k * 37 % 300)));
    g.sum(buffers[size_t(k)], int64_t(expected[size_t(k)].size()), s);
  }
  g.wait(s);
  bool ok = true;
  for (int k = 0; k < sums; ++k) {
    std::vector<float> got(expected[size_t(k)].size());
    cudaMemcpy(got.data(), buffers[size_t(k)], sizeof(float) * got.size(), cudaMemcpyDeviceToHost);
    if (ok && std::memcmp(got.data(), expected[size_t(k)].data(), sizeof(float) * got.size()) != 0) {
      std::fprintf(stderr, "rank %d: back-to-back sum %d of %zu floats differs\n", rank, k, got.size());
      ok = false;
    }
    cudaFree(buffers[size_t(k)]);
  }
  return ok && cudaGetLastError() == cudaSuccess;
}

}  // namespace

// Which clusters the ranks agree to link through peer memory (host logic: runs in CI too).
TEST(CudaHost, PeerSumsNeedOneHostAndAGpuEach) {
  const auto offer = [](const char* boot, const char* bus, int wanted = 1, int sms = 132) {
    comm::PeerOffer o;
    o.sms = sms;
    std::strncpy(o.boot_id, boot, sizeof o.boot_id - 1);
    std::strncpy(o.bus_id, bus, sizeof o.bus_id - 1);
    o.wanted = wanted;
    return o;
  };
  EXPECT_EQ(comm::peer_refusal({offer("b1", "0000:19:00.0"), offer("b1", "0000:3b:00.0")}), "");
  EXPECT_EQ(comm::peer_refusal({offer("b1", "0000:19:00.0"), offer("b2", "0000:3b:00.0")}), "ranks on different hosts");
  EXPECT_EQ(comm::peer_refusal({offer("b1", "0000:19:00.0"), offer("", "0000:3b:00.0")}), "ranks on different hosts");
  EXPECT_EQ(comm::peer_refusal({offer("b1", "0000:19:00.0"), offer("b1", "0000:3b:00.0"), offer("b1", "0000:19:00.0")}),
            "ranks 0 and 2 share a GPU");
  EXPECT_EQ(comm::peer_refusal({offer("b1", "0000:19:00.0"), offer("b1", "")}),
            "rank 1's GPU did not say its PCI address or SM count");
  EXPECT_EQ(comm::peer_refusal({offer("b1", "0000:19:00.0", 1, 0), offer("b1", "0000:3b:00.0")}),
            "rank 0's GPU did not say its PCI address or SM count");
  EXPECT_EQ(comm::peer_refusal({offer("b1", "0000:19:00.0", 1, 132), offer("b1", "0000:3b:00.0", 1, 114)}), "");
  EXPECT_EQ(comm::peer_refusal({offer("b1", "0000:19:00.0"), offer("b1", "0000:3b:00.0", 0)}),
            "SHARDLM_PEER_SUMS=0 on rank 1");
}

TEST(PeerSums, TwoGpusGetTheSameExactSums) {
  if (test::gpu_count() < 2) GTEST_SKIP() << "needs two GPUs";
  const RankBody body = [](int rank, comm::Group& host, comm::PeerGroup& g) {
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    const int64_t piece = cuda::PeerSumLayout::kPieceFloats;
    bool ok = true;
    // One float, a decode row, rows that end mid-vector or start unaligned, many blocks, several
    // pieces (the last one short), each twice so that both staging parities are used.
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t count : {int64_t(1), int64_t(3), int64_t(2048), int64_t(2051), int64_t(256 * 2048), piece + 333})
        for (int64_t offset : {int64_t(0), int64_t(1)}) ok = ok && sum_matches(rank, g, s, count, offset, false);
    // Replayed graphs: each launch is a new sum (the blocks' counts live on the GPU).
    ok = ok && sum_matches(rank, g, s, 4096, 0, true) && sum_matches(rank, g, s, 2048, 0, false);
    // Added to x in the same pass (a layer's residual), in graphs too.
    for (int64_t count : {int64_t(2048), int64_t(2051), int64_t(256 * 2048)})
      for (int64_t offset : {int64_t(0), int64_t(1)}) ok = ok && sum_matches(rank, g, s, count, offset, false, true);
    ok = ok && sum_matches(rank, g, s, 4096, 0, true, true);
    ok = ok && back_to_back_sums_match(rank, g, s);
#if SHARDLM_HAVE_NCCL
    // Sums larger than a piece go to NCCL where it starts, the rest still through peer memory.
    std::string no_nccl;
    if (auto nccl = comm::NcclGroup::create(host, rank, std::chrono::seconds(20), &no_nccl)) {
      g.send_large_sums_to(nccl.get());
      ok = ok && sum_matches(rank, g, s, piece + 333, 0, false) && sum_matches(rank, g, s, 2048, 1, false) &&
           sum_matches(rank, g, s, 2 * piece, 0, false);
      g.send_large_sums_to(nullptr);
    } else {
      std::fprintf(stderr, "rank %d: no NCCL (%s): large sums not checked through it\n", rank, no_nccl.c_str());
    }
#endif
    if (g.seconds() <= 0) {
      std::fprintf(stderr, "rank %d: no time recorded for the sums\n", rank);
      ok = false;
    }
    return ok;
  };
  run_two_ranks(std::chrono::seconds(20), body);
}

// A peer that leaves after the group has started: the sum's wait gives up within the timeout
// with an error, the sum's kernel ends (the abort word), and the GPU goes on working.
TEST(PeerSums, ALostPeerEndsTheWaitWithAnError) {
  if (test::gpu_count() < 2) GTEST_SKIP() << "needs two GPUs";
  const RankBody body = [](int rank, comm::Group& /*host*/, comm::PeerGroup& g) {
    if (rank == 1) ::_exit(0);  // gone without a word, its GPU memory with it
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    float* data = nullptr;
    cudaMalloc(reinterpret_cast<void**>(&data), 2048 * sizeof(float));
    const auto start = std::chrono::steady_clock::now();
    std::string error;
    try {
      g.sum(data, 2048, s);
      g.wait(s);
    } catch (const comm::CommError& e) {
      error = e.what();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    bool ok = error.find("did not finish in 3 s") != std::string::npos && seconds >= 3 && seconds < 20;
    if (!ok) std::fprintf(stderr, "rank 0: error '%s' after %.1f s\n", error.c_str(), seconds);
    try {
      g.sum(data, 2048, s);
      std::fprintf(stderr, "rank 0: a sum queued after the group gave up\n");
      ok = false;
    } catch (const comm::CommError&) {
    }
    // The kernel ended and the context is sound: the stream finishes, memory still works.
    const cudaError_t e = cudaStreamSynchronize(s);
    std::vector<float> back(2048, 1.0f);
    cudaMemset(data, 0, 2048 * sizeof(float));
    cudaMemcpy(back.data(), data, 2048 * sizeof(float), cudaMemcpyDeviceToHost);
    if (e != cudaSuccess || back[0] != 0.0f || back[2047] != 0.0f) {
      std::fprintf(stderr, "rank 0: the GPU after the lost peer: %s\n", cudaGetErrorString(e));
      ok = false;
    }
    cudaFree(data);
    return ok;
  };
  run_two_ranks(std::chrono::seconds(3), body);
}
#endif
