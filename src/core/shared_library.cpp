#include "core/shared_library.h"

#include <dlfcn.h>

#include <cstdlib>
#include <vector>

namespace shardlm {

SharedLibrary SharedLibrary::open(const char* override_env, std::initializer_list<const char*> names) {
  std::vector<std::string> tried;
  if (const char* chosen = std::getenv(override_env); chosen && *chosen) tried.push_back(chosen);
  else
    for (const char* n : names) tried.push_back(n);
  SharedLibrary lib;
  for (const std::string& name : tried) {
    if ((lib.handle_ = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL))) {
      lib.path_ = name;
      return lib;
    }
    const char* err = ::dlerror();
    lib.why_ += (lib.why_.empty() ? "" : "; ") + std::string(err ? err : name + ": not found");
  }
  lib.why_ += std::string("; set ") + override_env + " to its path";
  return lib;
}

void* SharedLibrary::address(const char* name) const {
  SHARDLM_CHECK(handle_, "internal: symbol {} looked up in a library that did not load", name);
  void* p = ::dlsym(handle_, name);
  SHARDLM_CHECK(p, "{} has no function {} (a version this shardlm does not support?)", path_, name);
  return p;
}

}  // namespace shardlm
