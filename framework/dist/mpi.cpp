// MPI start-up, reductions and error exits (see mpi.h).
#include "dist/mpi.h"

#ifdef KVLAB_MPI
#include <mpi.h>
#endif

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <string>
#include <thread>

namespace kvlab::dist {
namespace {

int env_int(const char* name) {
    const char* v = std::getenv(name);
    if (!v || !*v) return -1;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    return (end && *end == '\0' && n >= 0 && n < INT_MAX) ? int(n) : -1;
}

bool g_collective = true;    // ranks still do the same work
int g_rank = 0, g_size = 1, g_local = 1;

}  // namespace

bool built() {
#ifdef KVLAB_MPI
    return true;
#else
    return false;
#endif
}

int launched_size() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
        if (const int n = env_int(name); n > 0) return n;
    if (std::getenv("PMIX_RANK"))   // srun --mpi=pmix
        if (const int n = env_int("SLURM_STEP_NUM_TASKS"); n > 0) return n;
    return 1;
}

int launched_rank() {
    for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
        if (const int r = env_int(name); r >= 0) return r;
    return 0;
}

bool active() { return g_size > 1; }
int rank() { return g_rank; }
int size() { return g_size; }
bool root() { return g_rank == 0; }
int local_size() { return g_local; }
void diverge() { g_collective = false; }
bool prints_errors() { return !active() || root() || !g_collective; }

#ifdef KVLAB_MPI

namespace {
bool g_started = false;   // we called MPI_Init

// MPI counts are int: long arrays go in pieces.
template <class T>
void allreduce_chunks(T* x, int64_t n, MPI_Datatype type) {
    if (!active()) return;
    constexpr int64_t chunk = int64_t(1) << 28;
    for (int64_t off = 0; off < n; off += chunk)
        MPI_Allreduce(MPI_IN_PLACE, x + off, int(std::min(chunk, n - off)), type, MPI_SUM, MPI_COMM_WORLD);
}
}  // namespace

void init(int* argc, char*** argv) {
    if (g_started || launched_size() <= 1) return;
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    g_started = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &g_local);
    MPI_Comm_free(&node);
}

void finalize() {
    if (!g_started) return;
    idle_barrier();
    MPI_Finalize();
    g_started = false;
    g_rank = 0;
    g_size = g_local = 1;
}

void idle_barrier() {
    if (!active()) return;
    MPI_Request req;
    MPI_Ibarrier(MPI_COMM_WORLD, &req);
    for (;;) {
        int done = 0;
        MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (done) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

int exit_after_error(int code) {
    if (!g_started) return code;
    if (g_collective) {
        finalize();
        return code;
    }
    // Let a root that fails at the same moment finish its message first.
    if (!root()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    MPI_Abort(MPI_COMM_WORLD, code);
    return code;
}

void allreduce_sum(double* x, int64_t n) { allreduce_chunks(x, n, MPI_DOUBLE); }
void allreduce_sum(float* x, int64_t n) { allreduce_chunks(x, n, MPI_FLOAT); }
void allreduce_sum(int64_t* x, int64_t n) { allreduce_chunks(x, n, MPI_INT64_T); }

#else   // without MPI: one process

void init(int*, char***) {}
void finalize() {}
void idle_barrier() {}
int exit_after_error(int code) { return code; }
void allreduce_sum(double*, int64_t) {}
void allreduce_sum(float*, int64_t) {}
void allreduce_sum(int64_t*, int64_t) {}

#endif

}  // namespace kvlab::dist
