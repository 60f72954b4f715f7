#include "comm/nccl/nccl_group.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "core/log.h"
#include "core/shared_library.h"

namespace shardlm::comm {
namespace {

// The NCCL entry points used, resolved once per process.
struct Nccl {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRankConfig) init_rank = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  decltype(&ncclCommGetAsyncError) async_error = nullptr;
  decltype(&ncclCommAbort) abort = nullptr;
  decltype(&ncclCommFinalize) finalize = nullptr;
  decltype(&ncclCommDestroy) destroy = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  std::string why;
};

const Nccl& nccl() {
  static const Nccl api = [] {
    Nccl a;
    ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);  // NVLink multicast: off unless asked for
    const SharedLibrary lib =
        SharedLibrary::open("SHARDLM_NCCL", {"libnccl.so.2", "/usr/local/cuda/lib64/libnccl.so.2"});
    if (!lib) {
      a.why = "NCCL not found: " + lib.why();
      return a;
    }
    try {
      lib.resolve(a.get_unique_id, "ncclGetUniqueId");
      lib.resolve(a.init_rank, "ncclCommInitRankConfig");
      lib.resolve(a.all_reduce, "ncclAllReduce");
      lib.resolve(a.send, "ncclSend");
      lib.resolve(a.recv, "ncclRecv");
      lib.resolve(a.async_error, "ncclCommGetAsyncError");
      lib.resolve(a.abort, "ncclCommAbort");
      lib.resolve(a.finalize, "ncclCommFinalize");
      lib.resolve(a.destroy, "ncclCommDestroy");
      lib.resolve(a.error_string, "ncclGetErrorString");
    } catch (const Error& e) {
      a.init_rank = nullptr;
      a.why = e.what();
    }
    return a;
  }();
  return api;
}

void check_nccl(ncclResult_t r, const char* what, int rank) {
  if (r != ncclSuccess) throw CommError(fmt::format("NCCL on rank {}: {} failed: {}", rank, what, nccl().error_string(r)));
}

// The communicators are nonblocking, so that a start whose peers never come can be given up: a
// call may return ncclInProgress and finish in the background, and the communicator's state says
// when (NCCL: poll ncclCommGetAsyncError before the next call). The result once settled, or
// ncclInProgress still at `deadline`. A collective's enqueue settles within microseconds: it is
// asked after at once, and only after a millisecond with sleeps between. (Sleeping 50 us before
// the first ask made every all-reduce of a prompt chunk, which is not a replayed graph, cost the
// host about 150 us: TP2 prefill of 2K tokens of the 1b preset in chunks of 256 ran at 42,473
// tok/s, now 64,023, against 134,147 on one GPU; two H200s.)
ncclResult_t settled(ncclComm_t comm, ncclResult_t r, std::chrono::steady_clock::time_point deadline) {
  if (r == ncclInProgress && !comm) return ncclInternalError;  // nothing to ask
  const auto spin_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
  while (r == ncclInProgress) {
    const auto now = std::chrono::steady_clock::now();
    if (now > deadline) return r;
    if (now > spin_until) std::this_thread::sleep_for(std::chrono::microseconds(50));
    else std::this_thread::yield();
    const ncclResult_t asked = nccl().async_error(comm, &r);
    if (asked != ncclSuccess) return asked;
  }
  return r;
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA: {} failed: {}", what, cudaGetErrorString(e));
}

// What each rank tells the others before they start NCCL.
struct Offer {
  int32_t loaded;  // this rank found NCCL
  int32_t device;
};

}  // namespace

std::unique_ptr<NcclGroup> NcclGroup::create(Group& group, int device, std::chrono::seconds timeout, std::string* why) {
  const Nccl& api = nccl();
  const Offer mine{api.init_rank != nullptr, device};
  std::vector<Offer> all(size_t(group.size()));
  group.all_gather(&mine, sizeof mine, all.data());
  for (int r = 0; r < group.size(); ++r) {
    if (!all[size_t(r)].loaded) {
      *why = r == group.rank() ? api.why : fmt::format("rank {} of the group has no NCCL", r);
      return nullptr;
    }
    for (int s = 0; s < r; ++s)
      if (all[size_t(s)].device == all[size_t(r)].device) {
        *why = fmt::format("ranks {} and {} of the group share GPU {}", s, r, all[size_t(r)].device);
        return nullptr;
      }
  }
  std::vector<uint8_t> id(sizeof(ncclUniqueId));
  if (group.rank() == 0) id = new_id(why);
  SHARDLM_CHECK(!id.empty(), "NCCL on rank 0: {}", *why);
  std::vector<uint8_t> ids(id.size() * size_t(group.size()));
  group.all_gather(id.data(), id.size(), ids.data());  // the host group is authenticated: only peers see it
  return join({ids.begin(), ids.begin() + std::ptrdiff_t(id.size())}, group.rank(), group.size(), device, timeout);
}

std::vector<uint8_t> NcclGroup::new_id(std::string* why) {
  const Nccl& api = nccl();
  if (!api.init_rank) {
    *why = api.why;
    return {};
  }
  ncclUniqueId id;
  check_nccl(api.get_unique_id(&id), "ncclGetUniqueId", 0);
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&id);
  return {bytes, bytes + sizeof id};
}

std::unique_ptr<NcclGroup> NcclGroup::join(const std::vector<uint8_t>& id, int rank, int size, int device,
                                           std::chrono::seconds timeout) {
  const Nccl& api = nccl();
  SHARDLM_CHECK(api.init_rank, "{}", api.why);
  SHARDLM_CHECK(id.size() == sizeof(ncclUniqueId) && rank >= 0 && rank < size,
                "internal: NCCL rank {} of {} joining on an id of {} bytes", rank, size, id.size());
  ncclUniqueId unique;
  std::memcpy(&unique, id.data(), sizeof unique);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const ncclResult_t started = api.init_rank(&comm, size, unique, rank, &config);  // sets comm: before settled()
  const ncclResult_t r = settled(comm, started, deadline);
  if (r != ncclSuccess) {
    if (comm) api.abort(comm);
    if (r == ncclInProgress)
      throw CommError(fmt::format("NCCL on rank {}: the group's start did not finish in {} s (a rank lost?)", rank,
                                  timeout.count()));
    check_nccl(r, "ncclCommInitRankConfig", rank);
  }
  std::unique_ptr<NcclGroup> g(new NcclGroup(timeout));
  g->comm_ = comm;
  g->rank_ = rank;
  g->size_ = size;
  return g;
}

NcclGroup::~NcclGroup() {
  if (!comm_) return;
  // A clean end flushes the communicator (every rank's last transfers) within the timeout; after
  // an error, or a peer that never finishes, it is aborted instead (destroying waits for peers).
  const ncclComm_t comm = ncclComm_t(comm_);
  if (!failed_ && settled(comm, nccl().finalize(comm), std::chrono::steady_clock::now() + timeout_) == ncclSuccess)
    nccl().destroy(comm);
  else abort();
}

void NcclGroup::abort() {
  if (comm_) nccl().abort(ncclComm_t(comm_));
  comm_ = nullptr;
}

void NcclGroup::settle(int result, const char* what) {
  const ncclResult_t r = settled(ncclComm_t(comm_), ncclResult_t(result), std::chrono::steady_clock::now() + timeout_);
  if (r == ncclSuccess) return;
  failed_ = true;  // NCCL's word after an error: abort the communicator, never destroy it
  if (r == ncclInProgress)
    throw CommError(fmt::format("NCCL on rank {}: {} did not finish in {} s (a peer lost?)", rank_, what,
                                timeout_.count()));
  check_nccl(r, what, rank_);
}

void NcclGroup::sum(float* data, int64_t count, void* stream) {
  timed(stream, uint64_t(count) * 4, [&](void* s) { enqueue_sum(data, count, s); });
}

void NcclGroup::enqueue_sum(float* data, int64_t count, void* stream) {
  settle(nccl().all_reduce(data, data, size_t(count), ncclFloat32, ncclSum, ncclComm_t(comm_), cudaStream_t(stream)),
         "ncclAllReduce");
}

void NcclGroup::send(int peer, const float* data, int64_t count, void* stream) {
  SHARDLM_CHECK(peer >= 0 && peer < size_ && peer != rank_, "internal: NCCL send to rank {} of {}", peer, size_);
  timed(stream, uint64_t(count) * 4, [&](void* s) {
    settle(nccl().send(data, size_t(count), ncclFloat32, peer, ncclComm_t(comm_), cudaStream_t(s)), "ncclSend");
  });
}

void NcclGroup::recv(int peer, float* data, int64_t count, void* stream) {
  SHARDLM_CHECK(peer >= 0 && peer < size_ && peer != rank_, "internal: NCCL recv from rank {} of {}", peer, size_);
  timed(stream, 0, [&](void* s) {
    settle(nccl().recv(data, size_t(count), ncclFloat32, peer, ncclComm_t(comm_), cudaStream_t(s)), "ncclRecv");
  });
}

void NcclGroup::check() {
  ncclResult_t async = ncclSuccess;
  nccl().async_error(ncclComm_t(comm_), &async);
  if (async != ncclSuccess && async != ncclInProgress) {
    failed_ = true;
    throw CommError(fmt::format("NCCL on rank {}: {} (a peer lost?)", rank_, nccl().error_string(async)));
  }
}

void NcclGroup::wait(void* stream) {
  wait_for(stream, fmt::format("NCCL on rank {}", rank_), [&] { check(); }, [&] { failed_ = true; });
}

}  // namespace shardlm::comm
