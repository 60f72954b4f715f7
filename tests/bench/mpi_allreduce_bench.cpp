// all_reduce latency of the MPI backend, per algorithm and size, beside its ceilings: plain
// blocking MPI calls (MPI_Allreduce, and an MPI_Sendrecv ping-pong of the same bytes) and this
// machine's memcpy. Every rank runs the same fixed loop (no adaptive iteration counts, which
// would put ranks out of step), so Google Benchmark's runner is not used.
//
//   mpirun --allow-run-as-root --oversubscribe -np 2 mpi_allreduce_bench [iterations [KB,KB,...]]
//
// Prints, on rank 0, the median and 90th percentile of single calls after a warm-up, and
// whether every rank got the same bits (3+ ranks tell; with 2, a + b == b + a always).
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#if SHARDLM_HAVE_MPI
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "comm/mpi/mpi_comm_group.h"
#include "comm/mpi/mpi_group.h"

namespace shardlm {
namespace {

using Clock = std::chrono::steady_clock;

struct Timing {
  double median_us, p90_us;
};

// Times `call` one iteration at a time on every rank; rank 0's numbers are what it waited.
Timing time_calls(int iterations, const std::function<void()>& call) {
  for (int i = 0; i < std::max(20, iterations / 10); ++i) call();
  std::vector<double> us(static_cast<size_t>(iterations));
  for (auto& t : us) {
    auto start = Clock::now();
    call();
    t = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  }
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 9 / 10]};
}

float awkward_value(int rank, size_t i) {
  uint32_t x = uint32_t(rank + 1) * 2654435761u ^ uint32_t(i) * 2246822519u;
  x ^= x >> 15;
  x *= 2246822519u;
  float mantissa = 1.0f + float(x & 0xFFFFF) / float(1 << 20);
  return std::ldexp((x >> 31) ? -mantissa : mantissa, int((x >> 20) % 41) - 20);
}

bool same_bits_everywhere(comm::Group& g, size_t count) {
  std::vector<float> data(count);
  for (size_t i = 0; i < count; ++i) data[i] = awkward_value(g.rank(), i);
  g.all_reduce_sum(data.data(), count);
  std::vector<float> all(count * size_t(g.size()));
  g.all_gather(data.data(), count * sizeof(float), all.data());
  for (int r = 0; r < g.size(); ++r)
    if (std::memcmp(all.data() + size_t(r) * count, data.data(), count * sizeof(float)) != 0) return false;
  return true;
}

double memcpy_gbps(size_t bytes) {
  std::vector<char> a(bytes, 1), b(bytes);
  auto t = time_calls(200, [&] { std::memcpy(b.data(), a.data(), bytes); });
  return double(bytes) / (t.median_us * 1e3);
}

int run(int iterations, const std::vector<size_t>& sizes) {
  auto world = comm::make_mpi_world_group(std::chrono::seconds(60));
  auto& group = dynamic_cast<comm::mpi::MpiGroup&>(*world);
  const int rank = group.rank(), n = group.size();
  MPI_Comm raw;
  MPI_Comm_dup(MPI_COMM_WORLD, &raw);
  auto print = [&](const std::string& line) {
    if (rank == 0) std::printf("%s\n", line.c_str());
  };
  print(fmt::format("mpi all_reduce, {} ranks, {} iterations per case (median / p90 of single calls, us)", n,
                    iterations));
  for (size_t bytes : sizes) {
    const size_t count = bytes / sizeof(float);
    std::vector<float> data(count, 1.0f);
    std::vector<float> copy(count);
    print(fmt::format("-- {} KB (memcpy {:.1f} GB/s)", bytes >> 10, rank == 0 ? memcpy_gbps(bytes) : 0.0));
    struct Case {
      std::string name;
      comm::mpi::AllReduceAlgorithm algorithm;
      size_t segment;
    };
    std::vector<Case> cases = {
        {"automatic (the default)", comm::mpi::AllReduceAlgorithm::automatic, 64 << 10},
        {"reduce_then_broadcast", comm::mpi::AllReduceAlgorithm::reduce_then_broadcast, 1 << 30},
        {"reduce_then_broadcast/64K", comm::mpi::AllReduceAlgorithm::reduce_then_broadcast, 64 << 10},
        {"reduce_then_broadcast/16K", comm::mpi::AllReduceAlgorithm::reduce_then_broadcast, 16 << 10},
        {"ring", comm::mpi::AllReduceAlgorithm::ring, 0},
        {"native (MPI_Iallreduce)", comm::mpi::AllReduceAlgorithm::native, 0},
    };
    for (const Case& c : cases) {
      const bool pipelined = c.algorithm == comm::mpi::AllReduceAlgorithm::reduce_then_broadcast &&
                             c.segment != size_t(1) << 30;
      if (pipelined && c.segment >= count) continue;
      group.set_all_reduce_algorithm(c.algorithm);
      group.set_segment_elements(c.segment ? c.segment : 1);
      Timing t = time_calls(iterations, [&] { group.all_reduce_sum(data.data(), count); });
      bool same = same_bits_everywhere(group, count);
      print(fmt::format("  {:<28} {:9.1f} {:9.1f}   same bits on all ranks: {}", c.name, t.median_us, t.p90_us,
                        same ? "yes" : "NO"));
    }
    Timing blocking = time_calls(iterations, [&] {
      std::memcpy(copy.data(), data.data(), bytes);
      MPI_Allreduce(MPI_IN_PLACE, copy.data(), int(count), MPI_FLOAT, MPI_SUM, raw);
    });
    print(fmt::format("  {:<28} {:9.1f} {:9.1f}   (ceiling: unbounded blocking call)", "MPI_Allreduce blocking",
                      blocking.median_us, blocking.p90_us));
    if (n >= 2) {
      // One exchange of the whole buffer between ranks 0 and 1: the transport's own cost.
      Timing exchange = time_calls(iterations, [&] {
        if (rank < 2)
          MPI_Sendrecv(data.data(), int(count), MPI_FLOAT, 1 - rank, 7, copy.data(), int(count), MPI_FLOAT, 1 - rank,
                       7, raw, MPI_STATUS_IGNORE);
      });
      print(fmt::format("  {:<28} {:9.1f} {:9.1f}   ({:.2f} GB/s each way)", "MPI_Sendrecv rank 0<->1",
                        exchange.median_us, exchange.p90_us, double(bytes) / (exchange.median_us * 1e3)));
    }
  }
  MPI_Comm_free(&raw);
  return 0;
}

}  // namespace
}  // namespace shardlm

int main(int argc, char** argv) {
  int iterations = argc > 1 ? std::atoi(argv[1]) : 500;
  std::vector<size_t> sizes;
  for (const char* p = argc > 2 ? argv[2] : "4,16,28,256,1024,4096"; *p;) {
    char* end = nullptr;
    sizes.push_back(size_t(std::strtoul(p, &end, 10)) << 10);
    p = *end == ',' ? end + 1 : end;
    if (end == p && *p) break;
  }
  try {
    return shardlm::run(std::max(iterations, 10), sizes);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi_allreduce_bench: %s\n", e.what());
    return 1;
  }
}

#else
int main() {
  std::fprintf(stderr, "mpi_allreduce_bench: shardlm was built without MPI\n");
  return 0;
}
#endif
