// Ranks in separate network namespaces, joined by veth pairs on a bridge (10.99.0.0/24): the
// group forms over real interfaces with their own addresses, and a wrong secret is refused there
// too. The namespaces carry this process's pid in their names (parallel runs never collide) and
// are removed on every path, including those of earlier runs that were killed.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "comm/tcp/tcp_group.h"
#include "core/netns_command.h"
#include "multiprocess.h"
#include "tcp_test_util.h"

namespace shardlm::comm {
namespace {

using namespace std::chrono_literals;

// Runs a shell command; returns its exit status and fills `output` with stdout+stderr.
int shell(const std::string& command, std::string* output = nullptr) {
  std::FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return -1;
  std::string text;
  char buf[512];
  while (size_t k = std::fread(buf, 1, sizeof buf, p)) text.append(buf, k);
  int status = ::pclose(p);
  if (output) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::vector<std::string> namespaces_named(const std::string& prefix) {
  std::string list;
  shell("ip netns list", &list);
  std::vector<std::string> found;
  std::istringstream lines(list);
  std::string line;
  while (std::getline(lines, line)) {
    std::string name = line.substr(0, line.find(' '));
    if (name.rfind(prefix, 0) == 0) found.push_back(name);
  }
  return found;
}

// A hub namespace with a bridge, and one namespace per rank with eth0 = 10.99.0.(rank+1)/24.
class NetnsLab {
 public:
  static constexpr const char* kPrefix = "shardlm-tcp-";

  // Empty when the lab is up; otherwise why this machine cannot build it (the test skips).
  std::string start(int ranks) {
    if (::geteuid() != 0) return "needs root (CAP_NET_ADMIN) to create network namespaces";
    if (shell("command -v ip") != 0) return "the `ip` tool (iproute2) is not installed";
    remove_stale();
    std::string out;
    if (shell(shardlm::netns_add_command(hub()), &out) != 0)
      return "cannot create a network namespace (no CAP_NET_ADMIN?): " + out;
    created_.push_back(hub());
    run(fmt::format("ip -n {} link add br0 type bridge", hub()));
    run(fmt::format("ip -n {} link set br0 up", hub()));
    for (int r = 0; r < ranks; ++r) {
      std::string ns = rank_ns(r);
      run(shardlm::netns_add_command(ns));
      created_.push_back(ns);
      run(fmt::format("ip -n {} link add eth0 type veth peer name port{} netns {}", ns, r, hub()));
      run(fmt::format("ip -n {} link set port{} master br0 up", hub(), r));
      run(fmt::format("ip -n {} addr add {}/24 dev eth0", ns, address(r)));
      run(fmt::format("ip -n {} link set eth0 up", ns));
      run(fmt::format("ip -n {} link set lo up", ns));
    }
    return error_;
  }

  ~NetnsLab() {
    if (::getpid() != pid_) return;  // a forked rank's copy owns nothing
    for (auto it = created_.rbegin(); it != created_.rend(); ++it) shell(shardlm::netns_del_command(*it));
  }

  // Named after the test process, not the calling one: the forked ranks call these too.
  std::string hub() const { return fmt::format("{}{}-hub", kPrefix, pid_); }
  std::string rank_ns(int r) const { return fmt::format("{}{}-r{}", kPrefix, pid_, r); }
  static std::string address(int r) { return fmt::format("10.99.0.{}", r + 1); }
  std::string own_prefix() const { return fmt::format("{}{}-", kPrefix, pid_); }

  // Moves the calling (single-threaded, forked) process into rank r's namespace.
  void enter(int r) const {
    std::string path = "/var/run/netns/" + rank_ns(r);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path);
    if (::setns(fd, CLONE_NEWNET) != 0) throw std::runtime_error("setns into " + path + " failed");
    ::close(fd);
  }

 private:
  void run(const std::string& command) {
    std::string out;
    if (error_.empty() && shell(command, &out) != 0) error_ = fmt::format("`{}` failed: {}", command, out);
  }
  // Namespaces of runs that were killed before their destructor ran: their pid is gone.
  static void remove_stale() {
    for (const auto& name : namespaces_named(kPrefix)) {
      int pid = std::atoi(name.c_str() + std::strlen(kPrefix));
      if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) shell(shardlm::netns_del_command(name));
    }
  }

  pid_t pid_ = ::getpid();
  std::vector<std::string> created_;
  std::string error_;
};

TEST(TcpNetns, RanksInSeparateNamespacesFormGroupsAndRefuseAWrongSecret) {
  const int n = 3;
  std::string prefix;
  {
    NetnsLab lab;
    std::string why = lab.start(n);
    if (!why.empty()) {
      if (::geteuid() != 0 || why.find("not installed") != std::string::npos || why.find("cannot create") == 0)
        GTEST_SKIP() << "network namespace test skipped: " << why;
      FAIL() << why;
    }
    prefix = lab.own_prefix();
    std::vector<std::string> endpoints;
    for (int r = 0; r < n; ++r) endpoints.push_back(lab.address(r) + ":29500");
    int go[2];
    ASSERT_EQ(::pipe(go), 0);

    // Processes 0..2 are the ranks; process 3 is an impostor in rank 2's namespace that claims to
    // be rank 2 (whose first connection goes to rank 0) with a wrong secret, and must be refused
    // before ranks 1 and 2 even start.
    auto outcomes = test::run_ranks(n + 1, [&](int process) {
      lab.enter(process == n ? 2 : process);
      TcpGroupOptions o;
      o.endpoints = endpoints;
      o.secret = "namespaced secret";
      o.timeout = 15s;
      if (process == n) {
        o.rank = 2;
        o.secret = "wrong";
        int port;
        o.listen_fd = tcp_listen(lab.address(2), 0, &port);
        o.timeout = 5s;
        try {
          make_tcp_group(o);
          ADD_FAILURE() << "an impostor with the wrong secret joined";
        } catch (const CommError& e) {
          EXPECT_EQ(std::string(e.what()), "rank 0 at 10.99.0.1:29500 refused the connection: wrong cluster secret");
        }
        ::close(o.listen_fd);
        for (int i = 0; i < n - 1; ++i) EXPECT_EQ(::write(go[1], "g", 1), 1);
        return;
      }
      if (process != 0) {
        char c;
        ASSERT_EQ(::read(go[0], &c, 1), 1);
      }
      o.rank = process;
      for (TcpTopology topology : {TcpTopology::Ring, TcpTopology::Mesh}) {
        o.topology = topology;
        auto g = make_tcp_group(o);
        std::vector<float> v(100000, float(process + 1));
        g->all_reduce_sum(v.data(), v.size());
        EXPECT_EQ(v[0], 6.0f);
        EXPECT_EQ(v[99999], 6.0f);
        int32_t mine = process * 7, all[n] = {};
        g->all_gather(&mine, 4, all);
        for (int r = 0; r < n; ++r) EXPECT_EQ(all[r], r * 7);
        std::vector<uint8_t> block(3 << 20, uint8_t(process));
        std::vector<uint8_t> got(block.size());
        g->send_recv((process + 1) % n, block.data(), block.size(), (process + n - 1) % n, got.data(), got.size());
        EXPECT_EQ(got[12345], uint8_t((process + n - 1) % n));
        g->barrier();
      }
    }, 40);
    ::close(go[0]);
    ::close(go[1]);
    EXPECT_RANKS_PASS(outcomes);
  }
  EXPECT_TRUE(namespaces_named(prefix).empty()) << "network namespaces left behind";
}

}  // namespace
}  // namespace shardlm::comm
