// Latency of the shm backend's collectives between 2 (or --ranks N) processes, beside the memcpy
// ceiling: an all_reduce moves each rank's buffer through shared memory once and reads the
// others' back, so it cannot beat a couple of memcpys of the same size.
//
//   shm_allreduce_bench [--ranks N] [--iters N]
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "comm/shm/shm_group.h"

namespace {

using Clock = std::chrono::steady_clock;

double median_us(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <class F>
double time_median_us(int iters, F&& f) {
  std::vector<double> t(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    auto a = Clock::now();
    f();
    t[size_t(i)] = std::chrono::duration<double, std::micro>(Clock::now() - a).count();
  }
  return median_us(std::move(t));
}

void run_rank(const std::string& name, int rank, int n, int iters) {
  using namespace shardlm::comm;
  auto g = make_shm_group({name, rank, n});
  struct Row {
    const char* what;
    size_t bytes;
    double us;
  };
  std::vector<Row> rows;
  auto bench = [&](const char* what, size_t bytes, int count, auto&& call) {
    for (int i = 0; i < std::max(50, count / 10); ++i) call();  // warm-up: pages, caches, branch history
    g->barrier();
    rows.push_back({what, bytes, time_median_us(count, call)});
  };
  bench("barrier", 0, iters, [&] { g->barrier(); });
  for (size_t bytes : {size_t(4) << 10, size_t(16) << 10, size_t(28) << 10, size_t(256) << 10, size_t(1) << 20,
                       size_t(4) << 20, size_t(14) << 20}) {
    std::vector<float> v(bytes / 4, 1.0f);
    int count = bytes <= (64 << 10) ? iters : bytes <= (1 << 20) ? iters / 10 : iters / 100;
    bench("all_reduce f32", bytes, std::max(count, 20), [&] { g->all_reduce_sum(v.data(), v.size()); });
  }
  for (size_t bytes : {size_t(16) << 10, size_t(1) << 20}) {
    std::vector<uint16_t> v(bytes / 2, 0x3f80);
    bench("all_reduce bf16", bytes, bytes <= (64 << 10) ? iters : iters / 10,
          [&] { g->all_reduce_sum_bf16(v.data(), v.size()); });
  }
  for (size_t bytes : {size_t(16) << 10, size_t(1) << 20}) {
    std::vector<uint8_t> mine(bytes, 1), all(bytes * size_t(n));
    bench("all_gather", bytes, bytes <= (64 << 10) ? iters : iters / 10,
          [&] { g->all_gather(mine.data(), bytes, all.data()); });
  }
  for (size_t bytes : {size_t(16) << 10, size_t(1) << 20}) {  // pipeline hand-off: rank 0 -> 1 -> 0
    std::vector<uint8_t> buf(bytes, 1);
    bench("send+recv round trip", bytes, bytes <= (64 << 10) ? iters : iters / 10, [&] {
      if (rank == 0) {
        g->send(1, buf.data(), bytes);
        g->recv(1, buf.data(), bytes);
      } else if (rank == 1) {
        g->recv(0, buf.data(), bytes);
        g->send(0, buf.data(), bytes);
      }
    });
  }
  if (rank != 0) return;
  // The ceiling: memcpy of the same bytes inside this process (hot caches, as in a decode loop).
  std::printf("shm backend, %d ranks, median of up to %d iterations after warm-up (rank 0's view)\n", n, iters);
  std::printf("%-22s %10s %12s %14s\n", "call", "bytes", "median us", "memcpy us");
  for (const Row& r : rows) {
    double copy_us = 0;
    if (r.bytes) {
      std::vector<uint8_t> a(r.bytes, 1), b(r.bytes);
      copy_us = time_median_us(200, [&] {
        std::memcpy(b.data(), a.data(), r.bytes);
        asm volatile("" ::"r"(b.data()) : "memory");
      });
    }
    std::printf("%-22s %10zu %12.2f %14.2f\n", r.what, r.bytes, r.us, copy_us);
  }
  for (size_t bytes : {size_t(16) << 10, size_t(1) << 20, size_t(14) << 20}) {
    std::vector<uint8_t> a(bytes, 1), b(bytes);
    double us = time_median_us(100, [&] {
      std::memcpy(b.data(), a.data(), bytes);
      asm volatile("" ::"r"(b.data()) : "memory");
    });
    std::printf("memcpy %8zu bytes: %.2f us = %.1f GB/s\n", bytes, us, double(bytes) / us / 1e3);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int n = 2, iters = 5000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--ranks") == 0) n = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--iters") == 0) iters = std::atoi(argv[i + 1]);
  }
  const std::string name = shardlm::comm::new_shm_group_name();
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int code = 0;
      try {
        run_rank(name, r, n, iters);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
        code = 1;
      }
      std::fflush(stdout);
      ::_exit(code);
    }
    pids.push_back(pid);
  }
  int failed = 0;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  return failed ? 1 : 0;
}
