// Distributed sweeps: `mpirun -np N kvlab sweep CONFIG` (docs/distributed.md).
//
// Rank 0 runs the sweep as run_sweep does (plan, resume, lock, merge, one line per
// point) and is its coordinator: the other ranks ask it for a point, run it in a worker
// process of their own (`kvlab _run-point`, writing the point's part file into the parts
// directory next to the results file, which must be on a filesystem all ranks share),
// report how the worker ended and ask for the next one. Rank 0 merges every finished
// point into the results file as soon as it is reported, so it is the file's only
// writer; it also runs points itself, one at a time, in its own worker process (its
// coordinating costs little CPU: it sleeps in poll between messages).
//
// Failures: a point whose worker fails or crashes is recorded "failed" and the sweep goes
// on, as in a serial sweep. A rank that dies takes the whole job down (Open MPI's
// default); the points merged until then stay in the results file, so rerunning the same
// command resumes with only the points that were running redone.
#pragma once

#include "train/sweep.h"

namespace kvlab {

// Runs the points over all MPI ranks (every rank calls it with the same points and
// options; opt.jobs must be 1). Rank 0 returns the outcome as run_sweep does; the other
// ranks return an outcome without points (interrupted when they were).
SweepOutcome run_sweep_mpi(const std::vector<ExperimentConfig>& points, SweepOptions opt);

}  // namespace kvlab
