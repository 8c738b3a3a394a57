// Shared command-line plumbing for kvlab's sub-commands. Each command lives in its own
// experiments/cmd_<name>.cpp and is listed once in kvlab_main.cpp's command table.
#pragma once

#include "config/loader.h"
#include "core/error.h"

#include <csignal>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace kvlab {
template <class S>
class Transformer;
}

namespace kvlab::cli {

// Positionals, --flag, --key value (or --key=value), and repeated --set key=value.
struct Args {
    std::vector<std::string> positional;
    std::vector<Override> overrides;
    std::map<std::string, std::string> options;   // --key value
    std::set<std::string> flags;                   // --flag

    bool flag(const std::string& f) const { return flags.count(f) != 0; }
    std::string opt(const std::string& k, const std::string& fallback = {}) const;
    // A numeric option; a value that is not a number is an Error naming the option.
    double num(const std::string& k, double fallback) const;
};

// Parses argv[first..]; `valued` options take a value, `flags` do not; anything else is
// an Error naming the command.
Args parse_args(int argc, char** argv, int first, const std::set<std::string>& valued,
                const std::set<std::string>& flags, const std::string& cmd);
bool wants_help(int argc, char** argv, int first);
// An integer option in [lo, hi] (fallback when absent); anything else is an Error naming
// the option and pointing at `kvlab CMD --help`.
int64_t int_opt(const Args& a, const std::string& key, int64_t fallback, int64_t lo, int64_t hi, const std::string& cmd);
// "a,b,,c" -> {a, b, c}: a comma-separated list, empty items dropped.
std::vector<std::string> split_list(const std::string& s);
// The config named by the single positional (with --set overrides); without one, the
// embedded default when allow_default, else an Error.
ExperimentConfig load(const Args& a, const std::string& cmd, bool allow_default);

// One single-sequence decode-speed measurement, shared by decode-bench and bench
// (cmd_decode.cpp): a decode state for exactly `context` positions, context - steps of
// them filled by decode steps of tokens[0..] (prefill_seconds), then the last `steps`
// steps timed `repeats` times, rewinding the cache in between; step_seconds is the median
// and tokens_per_second = steps / step_seconds. tokens holds at least `context` ids.
struct DecodeTiming {
    int64_t cache_bytes = 0;   // the decode state's allocated KV-cache bytes
    double prefill_seconds = 0, step_seconds = 0, tokens_per_second = 0;
};
DecodeTiming time_decode(Transformer<float>& model, const std::string& impl, int context, int steps, int repeats,
                         const std::vector<int32_t>& tokens);

// Installs SIGINT/SIGTERM handlers that store the signal number in the returned flag (for
// RunOptions::stop); the handlers reset themselves, so a second signal kills. A sweep
// worker ignores SIGINT (its parent forwards Ctrl-C as SIGTERM).
const volatile std::sig_atomic_t* install_stop_handlers(bool sweep_worker);

// Sub-commands: int cmd_<name>(argc, argv), argv[1] is the command name.
int cmd_train(int argc, char** argv);
int cmd_list(int argc, char** argv);
int cmd_gradcheck(int argc, char** argv);
int cmd_sweep(int, char**);
int cmd_report(int, char**);
int cmd_run_point(int, char**);   // hidden: a sweep worker
int cmd_generate(int, char**);
int cmd_decode_bench(int, char**);
int cmd_cache_table(int, char**);
int cmd_approx(int, char**);       // cmd_lowrank.cpp
int cmd_compress(int, char**);     // cmd_lowrank.cpp
int cmd_bench(int, char**);        // cmd_bench.cpp
int cmd_lowrank_study(int, char**);   // cmd_study.cpp

}  // namespace kvlab::cli
