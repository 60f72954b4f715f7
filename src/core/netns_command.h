#pragma once
// Shell command that creates a network namespace. `ip netns add` mounts /run/netns on its first
// use, and two first uses at once race: one fails with "Bind /proc/self/ns/net -> /run/netns/X
// failed". Every namespace shardlm or its tests create goes through one host-wide lock.
#include <string>

namespace shardlm {

inline std::string netns_add_command(const std::string& name) {
  return "mkdir -p /run/lock && flock /run/lock/shardlm-netns.lock ip netns add " + name;
}

}  // namespace shardlm
