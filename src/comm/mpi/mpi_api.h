// mpi.h without the MPI-2 C++ bindings: Debian's Open MPI declares them whenever mpi.h is read
// by a C++ compiler, and they would need libmpi_cxx; the backend uses the C API only.
#pragma once
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
