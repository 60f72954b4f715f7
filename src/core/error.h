// Errors: every failure the user can cause (bad file, bad flag, bad message) is thrown as
// shardlm::Error with one line that names the file, tensor or peer; main() prints it and exits 1.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace shardlm {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace shardlm

// Checks an invariant that input data could break; the message says which input.
#define SHARDLM_CHECK(cond, ...)          \
  do {                                    \
    if (!(cond)) ::shardlm::fail(__VA_ARGS__); \
  } while (0)
