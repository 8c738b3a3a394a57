// kvlab: one executable, sub-commands; `kvlab COMMAND --help` documents each.
// User errors (kvlab::Error) print one clean message and exit with status 2.
#include "cli.h"
#include "core/gemm.h"
#include "model/batch_split.h"
#include "dist/mpi.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace kvlab;

namespace {

struct Command {
    const char* name;
    const char* summary;
    int (*run)(int, char**);
};

// The command table: one line per sub-command.
const std::vector<Command>& commands() {
    static const std::vector<Command> cmds = {
        {"train", "train one config (or the embedded MQAR default) and write its run to HDF5", cli::cmd_train},
        {"sweep", "run every point of a config's sweep: block (worker processes, resumable) into one HDF5 file", cli::cmd_sweep},
        {"report", "comparison table of a results file (Table 1 shape): KV cache per token vs capability", cli::cmd_report},
        {"_run-point", nullptr, cli::cmd_run_point},   // hidden (summary nullptr): kvlab sweep's worker
        {"list", "list registered attention plugins, tasks and low-rank approximators", cli::cmd_list},
        {"gradcheck", "write a gradient dump (model.md) and check gradients by finite differences", cli::cmd_gradcheck},
        {"generate", "continue a prompt with a trained checkpoint, through the KV cache", cli::cmd_generate},
        {"decode-bench", "decode tokens/s and KV-cache bytes per plugin, decode impl, context", cli::cmd_decode_bench},
        {"bench", "training/decode speed against the measured GEMM peak, per-op times, memory", cli::cmd_bench},
        {"cache-table", "DeepSeek-V2 Table 1: KV cache/token of MHA, GQA, MQA, MLA for a config", cli::cmd_cache_table},
        {"approx", "rank-K approximation of one HDF5 matrix; error vs Eckart-Young", cli::cmd_approx},
        {"compress", "post-hoc KV compression: mha/gqa checkpoint -> latent_kv at rank R", cli::cmd_compress},
        {"lowrank-study", "learned MLA vs MHA + post-hoc low-rank KV compression at equal cache budgets", cli::cmd_lowrank_study},
    };
    return cmds;
}
void print_help() {
    fmt::print("usage: kvlab COMMAND [ARGS]   (kvlab COMMAND --help for details)\n\n"
               "kvlab trains small transformer LMs on CPU to measure what each way of shrinking\n"
               "the KV cache (GQA, MQA, MLA, low-rank compression) costs in capability.\n\ncommands:\n");
    for (const auto& c : commands())
        if (c.summary) fmt::print("  {:<12} {}\n", c.name, c.summary);
    fmt::print("\nenvironment:\n"
               "  KVLAB_DATA_DIR           where a relative data.path is looked for when it is not next to the config\n"
               "  KVLAB_GEMM               auto (default: OpenBLAS, checked, else Eigen), openblas or eigen\n"
               "  KVLAB_OPENBLAS_CORETYPE  OpenBLAS core type instead of the one chosen from the CPU\n"
               "  KVLAB_OPENBLAS_LIB       path of the OpenMP build of libopenblas to load\n"
               "  KVLAB_BATCH_SPLIT        auto (default: training splits each batch between the threads)\n"
               "                           or off (the products share the threads)\n");
}

// Ends the process after an error without running atexit handlers: HDF5 1.10's own one
// closes every file still open and crashes on a file whose writes failed (a full disk).
// The results file is never one of those (io/safe_write.h); our output is flushed first.
int error_exit(int status) {
    std::fflush(nullptr);
    std::_Exit(status);
}

// Under mpirun/srun with several processes: train and sweep start MPI (the hidden
// _run-point is a sweep's worker process and inherits the launcher's environment); other
// commands run in one process. Returns an exit status, or -1 to go on.
int mpi_launch_check(int* argc, char*** argv) {
    const std::string cmd = (*argv)[1];
    const int n = dist::launched_size();
    if (n <= 1 || cmd == "_run-point") return -1;
    const bool first = dist::launched_rank() == 0;
    if (!dist::built()) {
        if (first)
            fmt::print(stderr,
                       "kvlab: started as {} processes by mpirun/srun, but this kvlab was built without MPI "
                       "(KVLAB_MPI=OFF); rebuild it with Open MPI installed (libopenmpi-dev) and -DKVLAB_MPI=ON, "
                       "or run it without mpirun\n",
                       n);
        return 2;
    }
    if (cmd != "train" && cmd != "sweep") {
        if (first)
            fmt::print(stderr, "kvlab {}: runs in one process; only train and sweep run over MPI ranks (mpirun -np 1, "
                               "or no mpirun)\n", cmd);
        return 2;
    }
    dist::init(argc, argv);
    return -1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
        std::string(argv[1]) == "help") {
        print_help();
        return argc < 2 ? 2 : 0;
    }
    if (const int rc = mpi_launch_check(&argc, &argv); rc >= 0) return rc;
    // Error messages: under MPI, ranks other than 0 name themselves (see dist/mpi.h).
    auto who = [&] { return dist::active() && !dist::root() ? fmt::format("[rank {}] ", dist::rank()) : std::string(); };
    try {
        // A bad KVLAB_GEMM fails every command at once; the backend itself is loaded by
        // the first model or product (core/gemm.h).
        gemm::check_env();
        batch_shards_from_env(1, 1);   // likewise a bad KVLAB_BATCH_SPLIT
        for (const auto& c : commands())
            if (argv[1] == std::string(c.name)) {
                const int rc = c.run(argc, argv);
                dist::finalize();
                return rc;
            }
        fmt::print(stderr, "kvlab: unknown command '{}'\n\n", argv[1]);
        print_help();
        return 2;
    } catch (const Error& e) {
        if (dist::prints_errors()) fmt::print(stderr, "{}kvlab {}: error: {}\n", who(), argv[1], e.what());
        return error_exit(dist::exit_after_error(2));
    } catch (const std::exception& e) {
        if (dist::prints_errors()) fmt::print(stderr, "{}kvlab {}: internal error: {}\n", who(), argv[1], e.what());
        return error_exit(dist::exit_after_error(3));
    }
}
