// shardlm bench --comm: all-reduce latency between ranks on this host, for any backend, beside
// the floor of a memcpy of the same bytes (the least any link between two processes could cost).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "cli/bench_common.h"
#include "comm/connect.h"
#include "comm/shm/shm_group.h"
#include "comm/tcp/tcp_group.h"
#include "core/error.h"
#include "core/log.h"

namespace shardlm::cli {

namespace {

struct Row {
  size_t bytes;
  double median_us, p10_us, p90_us;
};

std::vector<Row> measure(comm::Group& g, const std::vector<size_t>& sizes, int iters) {
  std::vector<Row> rows;
  for (size_t bytes : sizes) {
    std::vector<float> v(bytes / 4, 1.0f);
    const int n = bytes <= (64 << 10) ? iters : std::max(20, iters / 10);
    for (int i = 0; i < std::max(20, n / 10); ++i) g.all_reduce_sum(v.data(), v.size());  // warm-up
    g.barrier();
    std::vector<double> t;
    for (int i = 0; i < n; ++i) {
      Stopwatch clock;
      g.all_reduce_sum(v.data(), v.size());
      t.push_back(clock.seconds() * 1e6);
    }
    std::sort(t.begin(), t.end());
    rows.push_back({bytes, t[t.size() / 2], t[t.size() / 10], t[t.size() * 9 / 10]});
  }
  return rows;
}

double memcpy_us(size_t bytes) {
  std::vector<uint8_t> a(bytes, 1), b(bytes);
  std::vector<double> t;
  for (int i = 0; i < 200; ++i) {
    Stopwatch clock;
    std::memcpy(b.data(), a.data(), bytes);
    asm volatile("" ::"r"(b.data()) : "memory");
    t.push_back(clock.seconds() * 1e6);
  }
  return median(t);
}

// Bytes/s of one plain TCP stream over loopback between two processes: the link the tcp backend
// runs on here.
double loopback_tcp_bandwidth() {
  int port = 0;
  int listener = comm::tcp_listen("127.0.0.1", 0, &port);
  const size_t total = size_t(512) << 20, chunk = size_t(1) << 20;
  std::fflush(stdout);
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) ::_exit(1);
    std::vector<char> buf(chunk);
    size_t got = 0;
    while (got < total) {
      ssize_t k = ::read(fd, buf.data(), buf.size());
      if (k <= 0) ::_exit(1);
      got += size_t(k);
    }
    ::_exit(0);
  }
  int fd = ::accept(listener, nullptr, nullptr);
  ::fcntl(fd, F_SETFL, 0);  // blocking, for a plain stream
  std::vector<char> buf(chunk, 1);
  Stopwatch clock;
  for (size_t sent = 0; sent < total;) {
    ssize_t k = ::write(fd, buf.data(), buf.size());
    if (k <= 0) break;
    sent += size_t(k);
  }
  int status;
  ::waitpid(pid, &status, 0);
  double seconds = clock.seconds();
  ::close(fd);
  ::close(listener);
  return double(total) / seconds;
}

void report(const std::string& backend, int ranks, const std::vector<Row>& rows, bool json) {
  nlohmann::json out = nlohmann::json::array();
  // The ceiling on one host, whatever the backend: a memcpy of the same bytes (every link between
  // two processes copies the data at least once). For tcp the rate of one plain loopback stream
  // is printed too: loopback is CPU-bound, not a wire, so it is context rather than a limit.
  const bool tcp = backend.rfind("tcp", 0) == 0;
  const double stream = tcp ? loopback_tcp_bandwidth() : 0;
  if (!json) {
    fmt::print("all_reduce f32, {} ranks over {} (median of many, after warm-up); ceiling: memcpy of the same bytes\n",
               ranks, backend);
    if (tcp) fmt::print("  (one plain loopback TCP stream moves {:.2f} GB/s here)\n", stream / 1e9);
  }
  for (const Row& r : rows) {
    const double floor = memcpy_us(r.bytes);
    if (json) {
      out.push_back({{"backend", backend}, {"ranks", ranks}, {"bytes", r.bytes}, {"median_us", r.median_us},
                     {"p10_us", r.p10_us}, {"p90_us", r.p90_us}, {"memcpy_us", floor},
                     {"loopback_tcp_bytes_s", stream}});
    } else {
      fmt::print("  {:>8} KB  {:9.2f} us  (p10 {:.2f}, p90 {:.2f}) = {:6.2f} GB/s;  ceiling {:.2f} us, ratio {:.2f}\n",
                 r.bytes >> 10, r.median_us, r.p10_us, r.p90_us, r.bytes / r.median_us / 1e3, floor,
                 floor / r.median_us);
    }
  }
  if (json) fmt::print("{}\n", out.dump());
}

}  // namespace

void run_comm_bench(const CommBenchFlags& f) {
  comm::check_backend(f.backend, f.topology);
  const std::vector<size_t> sizes = {size_t(16) << 10, size_t(1) << 20};
  const std::string name = f.backend == "tcp" ? "tcp-" + f.topology : f.backend;
  if (f.backend == "mpi") {
    comm::GroupSpec spec;
    spec.backend = "mpi";
    auto g = comm::connect(spec);
    auto rows = measure(*g, sizes, f.iters);
    if (g->rank() == 0) report(name, g->size(), rows, f.json);
    return;
  }
  comm::LocalGroup group = comm::prepare_local_group(f.backend, f.topology, f.ranks, "bench", comm::kDefaultTimeout);
  std::vector<pid_t> children;
  std::fflush(stdout);
  for (int r = 1; r < f.ranks; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int code = 0;
      try {
        group.close_except(r);
        auto g = comm::connect(group.for_rank(r));
        measure(*g, sizes, f.iters);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "shardlm: error: rank %d: %s\n", r, e.what());
        code = 1;
      }
      ::_exit(code);
    }
    children.push_back(pid);
  }
  group.close_except(0);
  std::vector<Row> rows;
  std::string error;
  try {
    auto g = comm::connect(group.for_rank(0));
    rows = measure(*g, sizes, f.iters);
  } catch (const std::exception& e) {
    error = e.what();
  }
  for (pid_t pid : children) {
    int status;
    ::waitpid(pid, &status, 0);
  }
  group.close_except(-1);
  if (!error.empty()) fail("{}", error);
  report(name, f.ranks, rows, f.json);
}

}  // namespace shardlm::cli
