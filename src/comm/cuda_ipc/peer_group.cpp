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

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: {} failed: {}", what, cudaGetErrorString(e));
}

PeerOffer my_offer(int device) {
  PeerOffer o;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(boot, id);
  std::strncpy(o.boot_id, id.c_str(), sizeof o.boot_id - 1);
  if (cudaDeviceGetPCIBusId(o.bus_id, sizeof o.bus_id, device) != cudaSuccess) o.bus_id[0] = 0;
  const char* v = std::getenv("SHARDLM_PEER_SUMS");
  o.wanted = !(v && std::strcmp(v, "0") == 0);
  return o;
}

}  // namespace

std::string peer_refusal(const std::vector<PeerOffer>& all) {
  const auto same = [](const char* a, const char* b, size_t n) { return ::strncmp(a, b, n) == 0; };
  for (size_t r = 0; r < all.size(); ++r) {
    if (!all[r].wanted) return fmt::format("SHARDLM_PEER_SUMS=0 on rank {}", r);
    if (!all[r].boot_id[0] || !same(all[r].boot_id, all[0].boot_id, sizeof all[r].boot_id))
      return "ranks on different hosts";
    if (!all[r].bus_id[0]) return fmt::format("rank {}'s GPU has no PCI address", r);
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

  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  std::unique_ptr<PeerGroup> g(new PeerGroup(timeout));
  g->rank_ = me, g->size_ = n, g->device_ = device;
  const size_t bytes = cuda::PeerSumLayout::bytes(n);
  check_cuda(cudaMalloc(reinterpret_cast<void**>(&g->region_), bytes), "cudaMalloc (peer sums' region)");
  check_cuda(cudaMemset(g->region_, 0, bytes), "cudaMemset");
  check_cuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // zeroed before any peer writes
  cudaIpcMemHandle_t handle;
  check_cuda(cudaIpcGetMemHandle(&handle, g->region_), "cudaIpcGetMemHandle");
  std::vector<cudaIpcMemHandle_t> handles(static_cast<size_t>(n));
  group.all_gather(&handle, sizeof handle, handles.data());

  // Every rank maps every other's region; all keep the group only if all succeeded.
  g->mapped_.assign(size_t(n), nullptr);
  std::string failed;
  for (int r = 0; r < n && failed.empty(); ++r) {
    if (r == me) continue;
    void* p = nullptr;
    const cudaError_t e = cudaIpcOpenMemHandle(&p, handles[size_t(r)], cudaIpcMemLazyEnablePeerAccess);
    if (e == cudaSuccess) g->mapped_[size_t(r)] = static_cast<char*>(p);
    else failed = fmt::format("rank {} could not map rank {}'s GPU memory: {}", me, r, cudaGetErrorString(e));
  }
  (void)cudaGetLastError();  // a failed mapping is answered by NCCL, not carried into the pass
  std::vector<char> reasons(size_t(n) * 160);
  char reason[160] = {};
  std::strncpy(reason, failed.c_str(), sizeof reason - 1);
  group.all_gather(reason, sizeof reason, reasons.data());
  for (int r = 0; r < n; ++r)
    if (reasons[size_t(r) * 160]) {
      *why = std::string(&reasons[size_t(r) * 160]);
      return nullptr;  // the destructor unmaps and frees
    }

  std::vector<char*> regions = g->mapped_;
  regions[size_t(me)] = g->region_;
  check_cuda(cudaMalloc(reinterpret_cast<void**>(&g->regions_on_device_), sizeof(char*) * size_t(n)), "cudaMalloc");
  check_cuda(cudaMemcpy(g->regions_on_device_, regions.data(), sizeof(char*) * size_t(n), cudaMemcpyHostToDevice),
             "cudaMemcpy");
  check_cuda(cudaHostAlloc(reinterpret_cast<void**>(&g->abort_word_), sizeof(int), cudaHostAllocMapped), "cudaHostAlloc");
  *g->abort_word_ = 0;
  check_cuda(cudaHostGetDevicePointer(reinterpret_cast<void**>(&g->abort_on_device_), g->abort_word_, 0),
             "cudaHostGetDevicePointer");
  return g;
}

// Peers may still have this region mapped when it is freed (a rank ends without a barrier, which
// a lost peer would hold up); the driver keeps mapped memory alive until they unmap it.
PeerGroup::~PeerGroup() {
  cudaSetDevice(device_);
  if (abort_word_) *static_cast<volatile int*>(abort_word_) = 1;  // any sum still waiting ends (cudaFree waits)
  for (char* p : mapped_)
    if (p) cudaIpcCloseMemHandle(p);
  if (regions_on_device_) cudaFree(regions_on_device_);
  if (region_) cudaFree(region_);
  if (abort_word_) cudaFreeHost(abort_word_);
}

void PeerGroup::sum(float* data, int64_t count, void* stream) {
  if (large_ && count > cuda::PeerSumLayout::kPieceFloats)
    return timed(stream, uint64_t(count) * 4, [&](void* s) { large_->enqueue_sum(data, count, s); });
  queue(data, nullptr, count, stream);
}

bool PeerGroup::sum_into(const float* data, float* x, int64_t count, void* stream) {
  if (large_ && count > cuda::PeerSumLayout::kPieceFloats) return false;
  queue(const_cast<float*>(data), x, count, stream);  // data is only read when x is given
  return true;
}

void PeerGroup::queue(float* data, float* x, int64_t count, void* stream) {
  if (failed_) throw CommError(fmt::format("peer sums on rank {}: the group was given up after an error", rank_));
  const cuda::PeerSum g{regions_on_device_, rank_, size_, abort_on_device_};
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
  try {
    wait_for(
        stream, fmt::format("peer sums on rank {}", rank_), [&] { if (large_) large_->check(); }, [&] { abort(); });
  } catch (const CommError&) {
    abort();
    throw;
  }
}

void PeerGroup::abort() {
  failed_ = true;
  if (abort_word_) *static_cast<volatile int*>(abort_word_) = 1;
  if (large_) large_->abort();
}

}  // namespace shardlm::comm
