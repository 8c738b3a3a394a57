// libFuzzer target: bytes -> a file -> the checkpoint and results readers kvlab uses
// (read_param_set, model_config_from_attrs, load_param_set into a model built from the
// attributes; read_runs and the report checks). Every outcome must be a loaded model or a
// kvlab::Error. The file lives in /dev/shm when there is one (no disk traffic).
//
// libhdf5 itself is not hardened against malformed files: it can crash, or read out of
// bounds, inside its own metadata decoding before kvlab sees anything. Such findings are
// libhdf5's (the library is not instrumented here, so ASan sees only some of them); see
// README, "Fuzzing". scripts/fuzz.sh treats a crash whose stack's first frame in a
// known library is in libhdf5 as known, and reports everything else.
#include "core/error.h"
#include "io/results.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "train/report.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace {
std::string scratch_file() {
    const std::string dir = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    return dir + "/kvlab_fuzz_checkpoint_" + std::to_string(getpid()) + ".h5";
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const std::string path = scratch_file();
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    }
    try {
        const kvlab::ParamSet p = kvlab::read_param_set(path, "/params");
        const kvlab::ModelConfig mc = kvlab::model_config_from_attrs(p.attrs, path);
        kvlab::Transformer<float> m(mc);
        kvlab::load_param_set(m, p, path);
    } catch (const kvlab::Error&) {
    }
    try {
        const auto runs = kvlab::read_runs(path);
        kvlab::check_report_runs(runs, path);
    } catch (const kvlab::Error&) {
    }
    return 0;
}
