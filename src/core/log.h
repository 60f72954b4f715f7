// Progress and diagnostics go to stderr so stdout stays clean for generated text and --json.
#pragma once
#include <fmt/format.h>

#include <cstdio>

namespace shardlm {

enum class LogLevel { Quiet = 0, Info = 1, Debug = 2 };
LogLevel log_level();
void set_log_level(LogLevel level);

template <class... Args>
void log_info(fmt::format_string<Args...> format, Args&&... args) {
  if (log_level() >= LogLevel::Info) fmt::print(stderr, "{}\n", fmt::format(format, std::forward<Args>(args)...));
}
template <class... Args>
void log_debug(fmt::format_string<Args...> format, Args&&... args) {
  if (log_level() >= LogLevel::Debug) fmt::print(stderr, "{}\n", fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace shardlm
