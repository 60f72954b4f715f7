// How many GPUs this machine has, asked without touching CUDA: a process that has initialised it
// cannot fork ranks that use it (the GPU tests fork theirs).
#pragma once
#include <unistd.h>

#include <string>

namespace shardlm::test {

inline int gpu_count() {
  int n = 0;
  while (::access(("/dev/nvidia" + std::to_string(n)).c_str(), F_OK) == 0) ++n;
  return n;
}
inline bool have_gpu() { return gpu_count() > 0; }

}  // namespace shardlm::test
