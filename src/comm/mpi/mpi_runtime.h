// Process-wide MPI state: initialization on first use, finalization at exit, error texts.
#pragma once
#include "comm/mpi/mpi_api.h"

#include <chrono>
#include <string>

namespace shardlm::comm::mpi {

// Initializes MPI once (unless the program already did), with errors returned as codes rather
// than aborting the job, and registers MPI_Finalize to run at exit. Throws CommError when MPI
// cannot start or was already finalized.
void ensure_initialized();

// True between ensure_initialized() and finalization; group destructors check it so that a
// group outliving MPI (a static destroyed after the exit handler) frees nothing.
bool is_active();

// "MPI_ERR_TRUNCATE: message truncated" for an MPI error code.
std::string error_text(int code);

// After a failure, operations that could be neither completed nor cancelled are handed here.
// A collective's request is kept and tested again at exit (a late peer may still finish it);
// a freed point-to-point request can never be checked again. MPI_Finalize runs at exit only
// when every abandoned operation has finished, since otherwise it would wait on it for ever;
// the process then exits without it and mpirun ends the rest of the job.
void note_abandoned_collective(MPI_Request request);
void note_abandoned_point_to_point();
// A communicator with abandoned collectives on it, freed at exit once they have finished.
void note_abandoned_communicator(MPI_Comm comm);

// MPI_Finalize synchronizes with every rank, so a hung peer would hang this process's exit.
// It is given the longest timeout of any group (at least 10 s), or 5 s once a group has
// failed (the peer behind the failure may never arrive); past that the process exits with
// status 1 without it, and mpirun ends the job.
void note_group_timeout(std::chrono::milliseconds timeout);
void note_group_failed();

}  // namespace shardlm::comm::mpi
