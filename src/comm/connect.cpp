#include "comm/connect.h"

#include <unistd.h>

#include "comm/shm/shm_group.h"
#include "comm/tcp/tcp_group.h"
#ifdef SHARDLM_HAVE_MPI
#include "comm/mpi/mpi_group.h"
#endif

namespace shardlm::comm {

bool mpi_available() {
#ifdef SHARDLM_HAVE_MPI
  return true;
#else
  return false;
#endif
}

void check_backend(const std::string& backend, const std::string& topology) {
  if (backend != "shm" && backend != "tcp" && backend != "mpi")
    fail("unknown backend '{}' (expected shm, tcp or mpi)", backend);
  if (topology != "ring" && topology != "mesh") fail("unknown topology '{}' (expected ring or mesh)", topology);
  if (backend == "mpi" && !mpi_available()) fail("this shardlm was built without MPI (install libopenmpi-dev and rebuild)");
}

LocalGroup prepare_local_group(const std::string& backend, const std::string& topology, int size,
                               const std::string& secret, std::chrono::milliseconds timeout) {
  check_backend(backend, topology);
  LocalGroup g;
  g.spec.backend = backend;
  g.spec.topology = topology;
  g.spec.size = size;
  g.spec.timeout = timeout;
  g.spec.secret = secret;
  if (backend == "shm") {
    g.spec.shm_name = new_shm_group_name();
  } else if (backend == "tcp") {
    for (int r = 0; r < size; ++r) {
      int port = 0;
      g.listen_fds.push_back(tcp_listen("127.0.0.1", 0, &port));
      g.spec.endpoints.push_back("127.0.0.1:" + std::to_string(port));
    }
  }
  return g;
}

GroupSpec LocalGroup::for_rank(int rank) const {
  GroupSpec s = spec;
  s.rank = rank;
  s.listen_fd = listen_fds.empty() ? -1 : listen_fds[size_t(rank)];
  return s;
}

void LocalGroup::close_except(int rank) {
  for (int r = 0; r < int(listen_fds.size()); ++r)
    if (r != rank && listen_fds[size_t(r)] >= 0) {
      ::close(listen_fds[size_t(r)]);
      listen_fds[size_t(r)] = -1;
    }
}

std::unique_ptr<Group> connect(const GroupSpec& s) {
  check_backend(s.backend, s.topology);
  if (s.backend == "shm") {
    ShmGroupOptions o;
    o.name = s.shm_name;
    o.rank = s.rank;
    o.size = s.size;
    o.timeout = s.timeout;
    return make_shm_group(o);
  }
  if (s.backend == "tcp") {
    TcpGroupOptions o;
    o.endpoints = s.endpoints;
    o.rank = s.rank;
    o.topology = s.topology == "mesh" ? TcpTopology::Mesh : TcpTopology::Ring;
    o.secret = s.secret;
    o.timeout = s.timeout;
    o.listen_fd = s.listen_fd;
    return make_tcp_group(o);
  }
#ifdef SHARDLM_HAVE_MPI
  return make_mpi_world_group(s.timeout);
#else
  fail("this shardlm was built without MPI");
#endif
}

}  // namespace shardlm::comm
