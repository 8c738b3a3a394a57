// MPI for kvlab (docs/distributed.md): started only when kvlab runs under a launcher
// (mpirun, srun) with more than one process, and only for the commands that use it
// (train: data-parallel; sweep: points spread over the ranks). Everything here also
// compiles without MPI (CMake option KVLAB_MPI off): one process, rank 0 of 1.
//
// Errors under MPI: kvlab_main ends a failed command with exit_after_error(). While
// the ranks still do the same thing (loading and validating the config), every rank
// meets the same error: rank 0 prints it and all ranks exit 2 cleanly. Once ranks do
// different work (files opened by rank 0, a sweep's points), a failing rank takes the
// whole job down with MPI_Abort, since the others would wait for it forever.
#pragma once

#include <cstdint>

namespace kvlab::dist {

// True when kvlab was built with MPI (KVLAB_MPI).
bool built();
// The number of processes the launcher started, from its environment
// (OMPI_COMM_WORLD_SIZE, PMI_SIZE, or SLURM_STEP_NUM_TASKS under PMIx); 1 without one.
int launched_size();
// This process's rank as the launcher's environment gives it (0 without one); for
// messages before MPI starts.
int launched_rank();

// Starts MPI (MPI_THREAD_FUNNELED) when built with it and launched_size() > 1.
void init(int* argc, char*** argv);
// MPI_Finalize when init started MPI. Waits for the other ranks without spinning.
void finalize();
// True between init and finalize when MPI runs with more than one rank.
bool active();
int rank();    // 0 when not active
int size();    // 1 when not active
bool root();   // rank() == 0
// Ranks on this node (MPI_COMM_TYPE_SHARED); 1 when not active.
int local_size();

// Ranks diverge: from here an error on one rank is not met by the others (see above).
void diverge();
// Ends the process after an error a command threw: returns `code` for main to return
// (after finalize, when all ranks meet the error together), or aborts the job.
int exit_after_error(int code);
// Whether this rank prints an error: every rank once ranks diverged, rank 0 before.
bool prints_errors();

// Element-wise sums over all ranks, in place (no-ops when not active).
void allreduce_sum(double* x, int64_t n);
void allreduce_sum(float* x, int64_t n);
void allreduce_sum(int64_t* x, int64_t n);
// A barrier that sleeps between checks instead of spinning (Open MPI's blocking calls
// poll at full speed, which takes a core from a rank still working).
void idle_barrier();

}  // namespace kvlab::dist
