#pragma once
// Shell commands that create and remove a network namespace. `ip netns add` mounts /run/netns on
// its first use, and two first uses at once race: one fails with "Bind /proc/self/ns/net ->
// /run/netns/X failed". Every namespace shardlm or its tests create or remove goes through one
// host-wide lock (the same failure was seen once with a removal beside an add).
#include <string>

namespace shardlm {

inline std::string netns_add_command(const std::string& name) {
  return "mkdir -p /run/lock && flock /run/lock/shardlm-netns.lock ip netns add " + name;
}
inline std::string netns_del_command(const std::string& name) {
  return "mkdir -p /run/lock && flock /run/lock/shardlm-netns.lock ip netns del " + name;
}

}  // namespace shardlm
