// A shared library loaded at run time (dlopen), for the GPU libraries (cuBLAS, NCCL): the binary
// starts without them (CPU runs, CI machines) and a GPU run that lacks one says which and why.
// Never unloaded: those libraries keep threads and driver state until the process exits.
#pragma once
#include <initializer_list>
#include <string>

#include "core/error.h"

namespace shardlm {

class SharedLibrary {
 public:
  // The first of `names` that the dynamic loader finds (a soname is looked up on the loader's path,
  // LD_LIBRARY_PATH included; a path is taken as it is). An environment variable `override_env`,
  // when set, names the only file tried. Returns an empty library with why() saying what failed
  // and naming `override_env`.
  static SharedLibrary open(const char* override_env, std::initializer_list<const char*> names);

  explicit operator bool() const { return handle_ != nullptr; }
  const std::string& path() const { return path_; }
  const std::string& why() const { return why_; }

  // The function `name`, as a pointer of type F; throws Error naming the library if it is absent.
  template <class F>
  F* function(const char* name) const {
    return reinterpret_cast<F*>(address(name));
  }
  // The same, into a function pointer whose type says the signature.
  template <class F>
  void resolve(F*& slot, const char* name) const {
    slot = function<F>(name);
  }

 private:
  void* address(const char* name) const;
  void* handle_ = nullptr;
  std::string path_, why_;
};

}  // namespace shardlm
