// The MPI backend of Group, on OpenMPI. Where the fabric has RDMA, OpenMPI's UCX layer carries
// the traffic (select it with OMPI_MCA_pml=ucx); on one host it uses shared memory (btl vader).
// This header needs no mpi.h, so callers build the same whether or not MPI is found; the
// functions exist only when SHARDLM_HAVE_MPI is defined.
#pragma once
#include <chrono>
#include <memory>

#include "comm/group.h"

namespace shardlm::comm {

// The world of an `mpirun` launch (every rank of MPI_COMM_WORLD), on a communicator of its own
// so that several world groups never see each other's messages. Initializes MPI on first use
// (threads: serialized; call a group from one thread at a time) and finalizes it at process
// exit. Without mpirun the process is a world of one (MPI singleton). Collective: every rank
// of the launch must call it.
std::unique_ptr<Group> make_mpi_world_group(std::chrono::milliseconds timeout = kDefaultTimeout);

// True when this process was started by mpirun (or another launcher that Open MPI's PMIx
// understands), judged from the environment; never initializes MPI.
bool launched_by_mpirun();

}  // namespace shardlm::comm
