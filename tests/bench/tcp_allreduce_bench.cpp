// All-reduce latency of the tcp backend on loopback, beside the ceiling of plain TCP sockets
// between the same two processes. Ranks are forked processes; rank 0 prints.
//
//   tcp_allreduce_bench [--iters N] [--ranks 2,3,4]
//
// Ceiling: a message's one-way time (half a ping-pong), streaming bandwidth, and the time for
// both ends to exchange S bytes at once (what a 2-rank direct all-reduce must do, without the sum).
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "comm/tcp/tcp_group.h"

using namespace shardlm::comm;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::string size_name(size_t bytes) {
  return bytes >= (1 << 20) ? fmt::format("{} MB", bytes >> 20) : fmt::format("{} KB", bytes >> 10);
}

// Forks `n` ranks with a listening socket each; waits for them all.
void run_ranks(int n, const std::function<void(int rank, const std::vector<int>& fds, const std::vector<std::string>&)>& body) {
  std::vector<int> fds;
  std::vector<std::string> endpoints;
  for (int r = 0; r < n; ++r) {
    int port;
    fds.push_back(tcp_listen("127.0.0.1", 0, &port));
    endpoints.push_back(fmt::format("127.0.0.1:{}", port));
  }
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int code = 0;
      try {
        body(r, fds, endpoints);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
        code = 1;
      }
      std::fflush(stdout);
      ::_exit(code);
    }
    pids.push_back(pid);
  }
  for (pid_t p : pids) ::waitpid(p, nullptr, 0);
  for (int fd : fds) ::close(fd);
}

void full_write(int fd, const void* p, size_t n) {
  auto* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t k = ::send(fd, c, n, MSG_NOSIGNAL);
    if (k <= 0) throw std::runtime_error("send failed");
    c += k;
    n -= size_t(k);
  }
}
void full_read(int fd, void* p, size_t n) {
  auto* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t k = ::recv(fd, c, n, 0);
    if (k <= 0) throw std::runtime_error("recv failed");
    c += k;
    n -= size_t(k);
  }
}

// A plain blocking TCP connection between ranks 0 and 1 (NODELAY, 4 MB buffers, like the group's).
int plain_connection(int rank, const std::vector<int>& fds, const std::vector<std::string>& endpoints) {
  int size = 4 << 20, one = 1, fd;
  if (rank == 0) {
    fd = ::accept(fds[0], nullptr, nullptr);
  } else {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(std::stoi(endpoints[0].substr(endpoints[0].rfind(':') + 1))));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect failed");
  }
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

void ceiling(int iters) {
  std::printf("loopback TCP ceiling (plain blocking sockets, 2 processes):\n");
  run_ranks(2, [&](int rank, const std::vector<int>& fds, const std::vector<std::string>& endpoints) {
    int fd = plain_connection(rank, fds, endpoints);
    std::vector<char> buf(4 << 20), other(4 << 20);
    for (size_t bytes : {size_t(4) , size_t(16 << 10), size_t(1 << 20)}) {
      std::vector<double> one_way, exchange;
      int n = bytes >= (1 << 20) ? iters / 4 + 10 : iters;
      for (int i = 0; i < n + 20; ++i) {
        auto t = Clock::now();
        if (rank == 0) {
          full_write(fd, buf.data(), bytes);
          full_read(fd, buf.data(), bytes);
        } else {
          full_read(fd, buf.data(), bytes);
          full_write(fd, buf.data(), bytes);
        }
        if (i >= 20) one_way.push_back(seconds_since(t) / 2);
      }
      for (int i = 0; i < n + 20; ++i) {  // both send first: fits in the socket buffers
        auto t = Clock::now();
        full_write(fd, buf.data(), bytes);
        full_read(fd, other.data(), bytes);
        if (i >= 20) exchange.push_back(seconds_since(t));
        char sync = 0;  // keep the two ends in step, like the data dependency of an all-reduce
        if (rank == 0) {
          full_write(fd, &sync, 1);
          full_read(fd, &sync, 1);
        } else {
          full_read(fd, &sync, 1);
          full_write(fd, &sync, 1);
        }
      }
      if (rank == 0)
        std::printf("  %-6s one-way (half ping-pong) %8.1f us   exchange both ways at once %8.1f us\n",
                    bytes < 1024 ? "4 B" : size_name(bytes).c_str(), median(one_way) * 1e6, median(exchange) * 1e6);
    }
    const size_t total = size_t(1) << 30, chunk = 1 << 20;
    auto t = Clock::now();
    if (rank == 0) {
      for (size_t sent = 0; sent < total; sent += chunk) full_write(fd, buf.data(), chunk);
      char ack;
      full_read(fd, &ack, 1);
      std::printf("  streaming 1 GB in 1 MB writes: %.2f GB/s\n", double(total) / seconds_since(t) / 1e9);
    } else {
      for (size_t got = 0; got < total; got += chunk) full_read(fd, buf.data(), chunk);
      full_write(fd, "k", 1);
    }
    ::close(fd);
  });
}

void group_latency(int ranks, TcpTopology topology, size_t direct_max, const char* label, int iters,
                   const std::vector<size_t>& sizes) {
  run_ranks(ranks, [&](int rank, const std::vector<int>& fds, const std::vector<std::string>& endpoints) {
    TcpGroupOptions o;
    o.endpoints = endpoints;
    o.rank = rank;
    o.topology = topology;
    o.secret = "bench";
    o.listen_fd = fds[size_t(rank)];
    o.mesh_direct_max_bytes = direct_max;
    auto g = make_tcp_group(o);
    for (size_t bytes : sizes) {
      std::vector<float> data(bytes / 4, 1.0f);
      int n = bytes >= (1 << 20) ? iters / 4 + 10 : iters;
      std::vector<double> times;
      for (int i = 0; i < n + 20; ++i) {
        auto t = Clock::now();
        g->all_reduce_sum(data.data(), data.size());
        if (i >= 20) times.push_back(seconds_since(t));
        std::fill(data.begin(), data.end(), 1.0f);
      }
      if (rank == 0)
        std::printf("  %d ranks %-22s %-6s %8.1f us  (%.2f GB/s of buffer)\n", ranks, label, size_name(bytes).c_str(),
                    median(times) * 1e6, double(bytes) / median(times) / 1e9);
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  int iters = 400;
  std::vector<int> rank_counts = {2};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--iters" && i + 1 < argc) iters = std::stoi(argv[++i]);
    if (a == "--ranks" && i + 1 < argc) {
      rank_counts.clear();
      std::string list = argv[++i];
      for (size_t p = 0; p < list.size(); p = list.find(',', p) == std::string::npos ? list.size() : list.find(',', p) + 1)
        rank_counts.push_back(std::stoi(list.substr(p)));
    }
  }
  ceiling(iters);
  std::printf("all_reduce_sum f32, median of %d after 20 warm-up (1 MB and up: %d):\n", iters, iters / 4 + 10);
  const std::vector<size_t> sizes = {16 << 10, 64 << 10, 128 << 10, 256 << 10, 1 << 20, 4 << 20};
  for (int n : rank_counts) {
    group_latency(n, TcpTopology::Ring, 0, "ring (tcp-ring)", iters, sizes);
    group_latency(n, TcpTopology::Mesh, kTcpMeshDirectMaxBytes, "mesh (default)", iters, sizes);
    group_latency(n, TcpTopology::Mesh, size_t(1) << 40, "mesh, direct forced", iters, sizes);
  }
  return 0;
}
