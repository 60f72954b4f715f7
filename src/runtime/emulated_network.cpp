#include "runtime/emulated_network.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fmt/format.h>
#include <map>
#include <regex>

#include "core/error.h"
#include "core/netns_command.h"
#include "core/log.h"

namespace shardlm {

namespace {

int sh(const std::string& cmd, std::string* out = nullptr) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[512];
  std::string text;
  while (std::fgets(buf, sizeof buf, p)) text += buf;
  int status = ::pclose(p);
  if (out) *out = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

double scaled(const std::string& number, const std::string& unit, const std::map<std::string, double>& units,
              const std::string& text) {
  auto it = units.find(unit);
  if (it == units.end()) fail("--emulate-link '{}': unknown unit '{}'", text, unit);
  return std::stod(number) * it->second;
}

}  // namespace

LinkSpec parse_link(const std::string& text) {
  static const std::map<std::string, std::pair<double, double>> presets = {
      {"1gbe", {1e9, 50e-6}},   {"10gbe", {10e9, 20e-6}}, {"25gbe", {25e9, 10e-6}},
      {"100gbe", {100e9, 5e-6}}, {"tb5", {80e9, 5e-6}}};  // Thunderbolt 5: 80 Gbit/s
  LinkSpec link;
  link.name = text;
  if (auto p = presets.find(text); p != presets.end()) {
    link.bits_per_s = p->second.first;
    link.delay_s = p->second.second;
    return link;
  }
  static const std::regex item("^\\s*(bw|delay)\\s*=\\s*([0-9.]+)\\s*([a-z]*)\\s*$");
  static const std::map<std::string, double> rates = {{"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}};
  static const std::map<std::string, double> times = {{"s", 1}, {"ms", 1e-3}, {"us", 1e-6}};
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string part = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    std::smatch m;
    if (!std::regex_match(part, m, item))
      fail("--emulate-link '{}': expected a preset (1gbe, 10gbe, 25gbe, 100gbe, tb5) or bw=...,delay=...", text);
    if (m[1] == "bw") link.bits_per_s = scaled(m[2], m[3], rates, text);
    else link.delay_s = scaled(m[2], m[3], times, text);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (link.bits_per_s < 0 || link.delay_s < 0 || link.delay_s > 10) fail("--emulate-link '{}': out of range", text);
  return link;
}

bool EmulatedNetwork::available(std::string* why) {
  if (::geteuid() != 0) {
    *why = "link emulation needs root (it creates network namespaces and shapes them with tc)";
    return false;
  }
  if (sh("command -v ip && command -v tc") != 0) {
    *why = "link emulation needs iproute2's ip and tc";
    return false;
  }
  return true;
}

EmulatedNetwork::EmulatedNetwork(int ranks, const LinkSpec& link) {
  std::string why;
  if (!available(&why)) fail("{}", why);
  prefix_ = fmt::format("slmemu{}", ::getpid() % 100000);
  const std::string hub = prefix_ + "hub";
  for (int r = 0; r < ranks; ++r) {
    names_.push_back(fmt::format("{}r{}", prefix_, r));
    addresses_.push_back(fmt::format("10.{}.{}.{}", 200 + (::getpid() % 50), (r + 1) / 250, (r + 1) % 250 + 1));
  }
  // The janitor: it waits for this process to close its pipe (at exit, whatever the cause) and
  // then removes whatever namespaces are left.
  int fds[2];
  if (::pipe(fds) == 0) {
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setsid();  // not in the foreground group: Ctrl-C stops the run, not its janitor
      ::dup2(fds[0], 3);
      // Hold nothing of the run's open (sockets, shared memory, and its stdout and stderr: a
      // reader of the run's output, a pipe or a test harness, must see their end when it exits).
      if (const int null = ::open("/dev/null", O_RDWR); null >= 0) {
        for (int std_fd = 0; std_fd < 3; ++std_fd) ::dup2(null, std_fd);
        if (null > 3) ::close(null);
      }
      ::close_range(4, ~0U, 0);
      fds[0] = 3;
      char c;
      while (::read(fds[0], &c, 1) > 0) {
      }
      int rc = std::system(removal_script().c_str());
      ::_exit(rc == 0 ? 0 : 1);
    }
    ::close(fds[0]);
    janitor_pid_ = pid;
    // Until the network is built, the scripts that build it inherit this end too: a run killed
    // half-way leaves its script running, and the janitor must wait for it, or the script would
    // add namespaces after the janitor has removed the others.
    janitor_pipe_ = fds[1];
  }
  std::string script = "set -e; " + netns_add_command(hub) + "; ip -n " + hub + " link add br0 type bridge; ip -n " + hub +
                       " link set br0 up;";
  std::string out;
  if (link.delay_s > 0) {
    // Does this kernel have netem? Try it in a namespace of its own: deleting the hub and adding it
    // again at once raced in the kernel ("Bind /proc/self/ns/net -> /run/netns/...hub failed: No
    // such file or directory", once in a CI-like run).
    const std::string probe = prefix_ + "probe";
    delay_emulated_ = sh("set -e; " + netns_add_command(probe) + "; ip -n " + probe + " link add br0 type bridge; tc -n " +
                         probe + " qdisc add dev br0 root netem delay 1us", &out) == 0;
    sh(netns_del_command(probe));
    if (!delay_emulated_)
      log_info("emulated link {}: this kernel has no netem (sch_netem), so the {} us delay is not applied; "
               "bandwidth is", link.name, link.delay_s * 1e6);
  }
  for (int r = 0; r < ranks; ++r) {
    const std::string ns = names_[size_t(r)], a = fmt::format("{}a{}", prefix_, r), b = fmt::format("{}b{}", prefix_, r);
    script += fmt::format(
        "{add}; ip link add {a} type veth peer name {b}; ip link set {a} netns {ns}; ip link set {b} netns {hub};"
        "ip -n {ns} addr add {ip}/8 dev {a}; ip -n {ns} link set {a} up; ip -n {ns} link set lo up;"
        "ip -n {hub} link set {b} master br0; ip -n {hub} link set {b} up;",
        fmt::arg("add", netns_add_command(ns)), fmt::arg("ns", ns), fmt::arg("a", a), fmt::arg("b", b), fmt::arg("hub", hub), fmt::arg("ip", addresses_[size_t(r)]));
    // Shape what each rank sends: delay (netem) and then rate (tbf, with a burst of at least one
    // large packet and a queue of a few milliseconds).
    std::string parent = "root";
    if (link.delay_s > 0 && delay_emulated_) {
      script += fmt::format("tc -n {} qdisc add dev {} root handle 1: netem delay {}us limit 100000;", ns, a,
                            std::llround(link.delay_s * 1e6));
      parent = "parent 1:";
    }
    if (link.bits_per_s > 0) {
      const double bytes_s = link.bits_per_s / 8;
      const int64_t burst = std::max<int64_t>(65536 * 2, int64_t(bytes_s / 1000));  // ~1 ms of traffic
      script += fmt::format("tc -n {} qdisc add dev {} {} handle 2: tbf rate {}bit burst {} latency 20ms;", ns, a, parent,
                            std::llround(link.bits_per_s), burst);
    }
  }
  if (int rc = sh(script, &out); rc != 0) {
    remove_all_and_release_janitor();
    fail("cannot build the emulated network (exit status {}): {}", rc, out.empty() ? script : out);
  }
  if (janitor_pipe_ >= 0) ::fcntl(janitor_pipe_, F_SETFD, FD_CLOEXEC);  // the ranks need not hold it
  log_info("emulated link {}: {} ranks in namespaces {}r0.. ({})", link.name.empty() ? "(custom)" : link.name, ranks,
           prefix_, link.bits_per_s > 0 ? fmt::format("{} Gbit/s, {} us one way", link.bits_per_s / 1e9, link.delay_s * 1e6)
                                        : std::string("no shaping"));
}

std::string EmulatedNetwork::removal_script() const {
  std::string cmd;
  for (const std::string& n : {prefix_ + "hub", prefix_ + "probe"}) cmd += netns_del_command(n) + " 2>/dev/null;";
  for (const auto& n : names_) cmd += netns_del_command(n) + " 2>/dev/null;";
  return cmd;
}

void EmulatedNetwork::remove_all_and_release_janitor() {
  sh(removal_script());
  // Nothing is left for the janitor. It is still blocked on its pipe (this end is open), so it has
  // not begun removing anything; stopped now, it never will.
  if (janitor_pid_ > 0 && ::kill(janitor_pid_, SIGKILL) == 0) ::waitpid(janitor_pid_, nullptr, 0);
  janitor_pid_ = -1;
  if (janitor_pipe_ >= 0) ::close(janitor_pipe_);
  janitor_pipe_ = -1;
}

EmulatedNetwork::~EmulatedNetwork() { remove_all_and_release_janitor(); }

EnterNetns::EnterNetns(const std::string& name) {
  home_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  int fd = ::open(("/var/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
  if (home_ < 0 || fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) {
    if (fd >= 0) ::close(fd);
    if (home_ >= 0) ::close(home_);
    fail("cannot enter network namespace {}", name);
  }
  ::close(fd);
}

EnterNetns::~EnterNetns() {
  if (home_ >= 0) {
    ::setns(home_, CLONE_NEWNET);
    ::close(home_);
  }
}

}  // namespace shardlm
