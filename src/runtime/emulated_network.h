// A network of this machine's own, for seeing how splits compare over a slow or fast link: one
// network namespace per rank, each joined to a bridge by a veth pair whose rank side is shaped
// with tc (netem for delay, tbf for bandwidth). Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN).
// The namespaces are always removed: by the destructor, and by a janitor process that outlives
// this one should it die (Ctrl-C, a crash, SIGKILL).
#pragma once
#include <string>
#include <vector>

namespace shardlm {

struct LinkSpec {
  double bits_per_s = 0;  // 0: not limited
  double delay_s = 0;     // one way
  std::string name;       // as given, for records ("10gbe", "bw=1gbit,delay=1ms")
};

// "10gbe", "25gbe", "100gbe", "tb5", "1gbe", or "bw=10gbit,delay=50us" (units: bit, kbit, mbit,
// gbit; s, ms, us). Throws Error naming what it cannot read.
LinkSpec parse_link(const std::string& text);

class EmulatedNetwork {
 public:
  EmulatedNetwork(int ranks, const LinkSpec& link);  // throws Error with the reason (e.g. not root)
  ~EmulatedNetwork();
  EmulatedNetwork(const EmulatedNetwork&) = delete;
  EmulatedNetwork& operator=(const EmulatedNetwork&) = delete;

  const std::string& netns(int rank) const { return names_[size_t(rank)]; }
  // False when the delay could not be applied: the kernel lacks netem (sch_netem), as some VM
  // kernels do. Bandwidth (tbf) is always applied.
  bool delay_emulated() const { return delay_emulated_; }
  const std::string& address(int rank) const { return addresses_[size_t(rank)]; }
  int size() const { return int(names_.size()); }

  // Whether this process may build one; the reason when not.
  static bool available(std::string* why);

 private:
  // Removes the namespaces and stops the janitor: left to wake later, it would remove them again,
  // when a new network of this process (the same names) may have made them.
  void remove_all_and_release_janitor();
  // Shell commands removing every namespace this network may have made (absent ones are skipped).
  std::string removal_script() const;
  std::string prefix_;
  std::vector<std::string> names_, addresses_;
  int janitor_pipe_ = -1;
  int janitor_pid_ = -1;
  bool delay_emulated_ = false;
};

// Moves the calling thread (and the threads it starts later) into a namespace, and back when
// destroyed. Sockets keep the namespace they were made in.
class EnterNetns {
 public:
  explicit EnterNetns(const std::string& name);
  ~EnterNetns();
  EnterNetns(const EnterNetns&) = delete;
  EnterNetns& operator=(const EnterNetns&) = delete;

 private:
  int home_ = -1;
};

}  // namespace shardlm
