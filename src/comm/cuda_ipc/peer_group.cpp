#include "comm/cuda_ipc/peer_group.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "core/error.h"
#include "kernels/cuda/peer_sum.h"

namespace shardlm::comm {
namespace {

PeerOffer my_offer(int device) {
  PeerOffer o;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(boot, id);
  std::strncpy(o.boot_id, id.c_str(), sizeof o.boot_id - 1);
  if (cudaDeviceGetPCIBusId(o.bus_id, sizeof o.bus_id, device) != cudaSuccess) o.bus_id[0] = 0;
  if (cudaDeviceGetAttribute(&o.sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) o.sms = 0;
  const char* v = std::getenv("SHARDLM_PEER_SUMS");
  o.wanted = !(v && std::strcmp(v, "0") == 0);
  return o;
}

// The first rank's reason among every rank's ("" where none), the same on every rank.
std::string first_reason(Group& group, const std::string& mine) {
  constexpr size_t kReason = 160;
  char reason[kReason] = {};
  std::strncpy(reason, mine.c_str(), kReason - 1);
  std::vector<char> all(size_t(group.size()) * kReason);
  group.all_gather(reason, kReason, all.data());
  for (int r = 0; r < group.size(); ++r)
    if (all[size_t(r) * kReason]) return std::string(&all[size_t(r) * kReason]);
  return "";
}

}  // namespace

std::string peer_refusal(const std::vector<PeerOffer>& all) {
  const auto same = [](const char* a, const char* b, size_t n) { return ::strncmp(a, b, n) == 0; };
  for (size_t r = 0; r < all.size(); ++r) {
    if (!all[r].wanted) return fmt::format("SHARDLM_PEER_SUMS=0 on rank {}", r);
    if (!all[r].boot_id[0] || !same(all[r].boot_id, all[0].boot_id, sizeof all[r].boot_id))
      return "ranks on different hosts";
    if (!all[r].bus_id[0] || all[r].sms < 1) return fmt::format("rank {}'s GPU did not say its PCI address or SM count", r);
    for (size_t s = 0; s < r; ++s)
      if (same(all[s].bus_id, all[r].bus_id, sizeof all[r].bus_id))
        return fmt::format("ranks {} and {} share a GPU", s, r);
  }
  return "";
}

std::unique_ptr<PeerGroup> PeerGroup::create(Group& group, int device, std::chrono::seconds timeout,
                                             std::string* why) {
  const int n = group.size(), me = group.rank();
  std::vector<PeerOffer> offers(static_cast<size_t>(n));
  const PeerOffer mine = my_offer(device);
  group.all_gather(&mine, sizeof mine, offers.data());
  *why = peer_refusal(offers);
  if (!why->empty()) return nullptr;

  std::unique_ptr<PeerGroup> g(new PeerGroup(timeout));
  g->rank_ = me, g->size_ = n, g->device_ = device;
  g->max_blocks_ = offers[0].sms;
  for (const PeerOffer& o : offers) g->max_blocks_ = std::min(g->max_blocks_, o.sms);
  // Local failures become reasons that every rank hears (agreed()), never an exception between
  // two of the group's collectives, which would leave the others waiting for this rank.
  std::string failed;
  const auto attempt = [&](const char* what, auto&& call) {
    if (!failed.empty()) return;
    const cudaError_t e = call();
    if (e != cudaSuccess) failed = fmt::format("rank {}: {} failed: {}", me, what, cudaGetErrorString(e));
  };
  const auto agreed = [&] {
    *why = first_reason(group, failed);
    (void)cudaGetLastError();  // a failure here is answered by NCCL, not carried into the pass
    return why->empty();
  };
  const size_t bytes = cuda::PeerSumLayout::bytes(n);
  cudaIpcMemHandle_t handle{};
  attempt("cudaSetDevice", [&] { return cudaSetDevice(device); });
  attempt("cudaMalloc", [&] { return cudaMalloc(reinterpret_cast<void**>(&g->region_), bytes); });
  attempt("cudaMemset", [&] { return cudaMemset(g->region_, 0, bytes); });
  attempt("cudaDeviceSynchronize", [&] { return cudaDeviceSynchronize(); });  // zeroed before any peer writes
  attempt("cudaIpcGetMemHandle", [&] { return cudaIpcGetMemHandle(&handle, g->region_); });
  attempt("cudaMalloc", [&] { return cudaMalloc(reinterpret_cast<void**>(&g->regions_on_device_), sizeof(char*) * n); });
  attempt("cudaHostAlloc", [&] {
    return cudaHostAlloc(reinterpret_cast<void**>(&g->abort_word_), sizeof(int), cudaHostAllocMapped);
  });
  attempt("cudaHostGetDevicePointer", [&] {
    *g->abort_word_ = 0;
    return cudaHostGetDevicePointer(reinterpret_cast<void**>(&g->abort_on_device_), g->abort_word_, 0);
  });
  if (!agreed()) return nullptr;  // the destructor frees what was made

  // Every rank maps every other's region; all keep the group only if all succeeded.
  std::vector<cudaIpcMemHandle_t> handles(static_cast<size_t>(n));
  group.all_gather(&handle, sizeof handle, handles.data());
  g->mapped_.assign(size_t(n), nullptr);
  for (int r = 0; r < n; ++r)
    if (r != me)
      attempt("mapping a peer's GPU memory", [&] {
        void* p = nullptr;
        const cudaError_t e = cudaIpcOpenMemHandle(&p, handles[size_t(r)], cudaIpcMemLazyEnablePeerAccess);
        g->mapped_[size_t(r)] = static_cast<char*>(p);
        return e;
      });
  std::vector<char*> regions = g->mapped_;
  regions[size_t(me)] = g->region_;
  attempt("cudaMemcpy", [&] {
    return cudaMemcpy(g->regions_on_device_, regions.data(), sizeof(char*) * n, cudaMemcpyHostToDevice);
  });
  if (!agreed()) return nullptr;
  return g;
}

// A clean end frees the region: every peer's last push into it came before the flag that this
// rank's last sum waited for. After a timeout a slow peer may still push into it, so it is left
// until the process ends.
PeerGroup::~PeerGroup() {
  cudaSetDevice(device_);
  if (abort_word_) *static_cast<volatile int*>(abort_word_) = 1;  // any sum still waiting ends (cudaFree waits)
  for (char* p : mapped_)
    if (p) cudaIpcCloseMemHandle(p);
  if (regions_on_device_) cudaFree(regions_on_device_);
  if (region_ && !failed_) cudaFree(region_);
  if (abort_word_) cudaFreeHost(abort_word_);
}

void PeerGroup::sum(float* data, int64_t count, void* stream) {
  refuse_after_failure();
  if (goes_to_large(count))
    return timed(stream, uint64_t(count) * 4, [&](void* s) { large_->enqueue_sum(data, count, s); });
  queue(data, nullptr, count, stream);
}

bool PeerGroup::sum_into(const float* data, float* x, int64_t count, void* stream) {
  refuse_after_failure();
  if (goes_to_large(count)) return false;
  queue(const_cast<float*>(data), x, count, stream);  // data is only read when x is given
  return true;
}

bool PeerGroup::goes_to_large(int64_t count) const {
  return large_ && count > cuda::PeerSumLayout::kPieceFloats;
}

void PeerGroup::refuse_after_failure() const {
  if (failed_) throw CommError(fmt::format("peer sums on rank {}: the group was given up after an error", rank_));
}

void PeerGroup::queue(float* data, float* x, int64_t count, void* stream) {
  const cuda::PeerSum g{regions_on_device_, rank_, size_, abort_on_device_, max_blocks_};
  for (int64_t done = 0; done < count; done += cuda::PeerSumLayout::kPieceFloats) {
    const int64_t piece = std::min(count - done, cuda::PeerSumLayout::kPieceFloats);
    timed(stream, uint64_t(piece) * 4, [&](void* s) {
      cuda::peer_sum(g, data + done, piece, x ? x + done : nullptr, cuda::Stream(s));
    });
  }
}

void PeerGroup::send(int, const float*, int64_t, void*) { fail("internal: a peer group only sums"); }
void PeerGroup::recv(int, float*, int64_t, void*) { fail("internal: a peer group only sums"); }

void PeerGroup::wait(void* stream) {
  // A failure only stops the sums' waits here: NCCL's abort would wait for the graphs that
  // captured its sums, which the pass destroys before it calls abort().
  try {
    wait_for(
        stream, fmt::format("peer sums on rank {}", rank_), [&] { if (large_) large_->check(); },
        [&] { stop_waiting(); });
  } catch (const CommError&) {
    stop_waiting();
    throw;
  }
}

void PeerGroup::stop_waiting() {
  failed_ = true;
  if (abort_word_) *static_cast<volatile int*>(abort_word_) = 1;
}

void PeerGroup::abort() {
  stop_waiting();
  if (large_) large_->abort();
}

}  // namespace shardlm::comm
