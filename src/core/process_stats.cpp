#include "core/process_stats.h"

#include <cstdio>
#include <cstring>

namespace shardlm {

namespace {
// The kB figure on the line of `file` that starts with `key` ("VmHWM:"), or -1.
int64_t proc_kb(const char* key, const char* file = "/proc/self/status") {
  FILE* f = std::fopen(file, "r");
  if (!f) return -1;
  char line[256];
  int64_t kb = -1;
  size_t klen = std::strlen(key);
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, key, klen) == 0) {
      kb = std::atoll(line + klen);
      break;
    }
  }
  std::fclose(f);
  return kb;
}
}  // namespace

int64_t peak_rss_bytes() { return proc_kb("VmHWM:") * 1024; }
int64_t current_rss_bytes() { return proc_kb("VmRSS:") * 1024; }

std::string gib(int64_t bytes) {
  char text[48];
  std::snprintf(text, sizeof text, "%.2f GiB", double(bytes) / double(int64_t(1) << 30));
  return text;
}

int64_t available_memory_bytes() {
  const int64_t kb = proc_kb("MemAvailable:", "/proc/meminfo");
  return kb < 0 ? -1 : kb * 1024;
}

int64_t total_memory_bytes() {
  const int64_t kb = proc_kb("MemTotal:", "/proc/meminfo");
  return kb < 0 ? -1 : kb * 1024;
}

void reset_peak_rss() {
  if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", f);
    std::fclose(f);
  }
}

}  // namespace shardlm
