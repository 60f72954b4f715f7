// A kernel tracer for tests/gpu/trace: loaded with LD_PRELOAD into any CUDA program, it records the
// GPU start and end of every kernel (CUDA graphs' nodes included), copy and memset, and the host's
// start and end of every CUDA runtime call (kind "api", on the same clock), through CUPTI's
// activity API, and at exit writes them as CSV to $CUPTI_TRACE_OUT.<pid>.csv (default
// /tmp/trace.<pid>.csv): start,end,kind,bytes,name, times in ns. Nsight Systems does the same and
// more, but the GPU machine has no Nsight Systems; this needs only the toolkit's libcupti.
#include <cupti.h>
#include <cxxabi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Record {
  std::string name;
  unsigned long long start, end, bytes;
  const char* kind;
};

std::mutex records_mutex;
std::vector<Record>& records() {
  static auto* all = new std::vector<Record>;  // never freed: CUPTI may flush while the program exits
  return *all;
}

void CUPTIAPI give_buffer(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = 8 << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI take_buffer(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) try {
  std::lock_guard<std::mutex> lock(records_mutex);
  CUpti_Activity* r = nullptr;
  while (buffer && cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
      int status = 0;
      char* plain = k->name ? abi::__cxa_demangle(k->name, nullptr, nullptr, &status) : nullptr;
      records().push_back({plain ? plain : k->name ? k->name : "?", k->start, k->end, 0, "kernel"});
      std::free(plain);
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(r);
      const char* what = m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD   ? "[copy to GPU]"
                         : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH ? "[copy to host]"
                                                                          : "[copy]";
      records().push_back({what, m->start, m->end, m->bytes, "copy"});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_RUNTIME) {
      const auto* a = reinterpret_cast<const CUpti_ActivityAPI*>(r);
      const char* name = nullptr;
      cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name);
      records().push_back({name ? name : "?", a->start, a->end, 0, "api"});
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
      records().push_back({"[memset]", m->start, m->end, m->bytes, "memset"});
    }
  }
  std::free(buffer);
} catch (...) {  // out of memory: drop these records rather than end the traced program
  std::free(buffer);
}

struct Tracer {
  Tracer() {
    cuptiActivityRegisterCallbacks(give_buffer, take_buffer);
    for (CUpti_ActivityKind k :
         {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET,
          CUPTI_ACTIVITY_KIND_RUNTIME})
      if (cuptiActivityEnable(k) != CUPTI_SUCCESS) std::fprintf(stderr, "cupti_trace: cannot trace activity %d\n", int(k));
  }
  ~Tracer() {
    cuptiActivityFlushAll(1);
    const char* out = std::getenv("CUPTI_TRACE_OUT");
    const std::string path = std::string(out ? out : "/tmp/trace") + "." + std::to_string(getpid()) + ".csv";
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "cupti_trace: cannot write %s\n", path.c_str());
      return;
    }
    std::lock_guard<std::mutex> lock(records_mutex);
    std::fprintf(f, "start,end,kind,bytes,name\n");
    for (Record& r : records()) {
      for (char& c : r.name)
        if (c == ',' || c == '\n') c = ';';
      std::fprintf(f, "%llu,%llu,%s,%llu,%s\n", r.start, r.end, r.kind, r.bytes, r.name.c_str());
    }
    std::fclose(f);
  }
} tracer;

}  // namespace
