#include "comm/connect.h"

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
