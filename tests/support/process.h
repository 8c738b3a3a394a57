// Test helpers for tests that run programs: the kvlab binary under test (KVLAB_BINARY) or
// any shell command, with its output and exit status, and per-process scratch folders
// (ctest runs test cases in parallel processes).
#pragma once

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace kvlab::test {

struct Result {
    int status = -1;      // the exit status, or 128 + the signal that ended it
    std::string output;   // stdout, plus stderr when merged
};

// Runs `cmd` through the shell; stderr joins the output when merge_stderr, else is dropped.
inline Result run_shell(const std::string& cmd, bool merge_stderr = true) {
    Result r;
    FILE* p = popen((cmd + (merge_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
    const int st = pclose(p);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
}

// Runs `kvlab ARGS` (the binary under test).
inline Result run_kvlab(const std::string& args, bool merge_stderr = true) {
    return run_shell(fmt::format("'{}' {}", KVLAB_BINARY, args), merge_stderr);
}

// An empty folder for one test case: <tmp>/<prefix>.<pid>/<name>, made afresh.
inline std::filesystem::path scratch_dir(const std::string& prefix, const std::string& name) {
    const auto d = std::filesystem::temp_directory_path() / fmt::format("{}.{}", prefix, getpid()) / name;
    std::filesystem::remove_all(d);
    std::filesystem::create_directories(d);
    return d;
}

// A fresh folder under the system temp dir, removed with everything in it.
struct TempDir {
    std::filesystem::path dir;
    explicit TempDir(const std::string& prefix = "kvlab_test") {
        static int n = 0;
        dir = std::filesystem::temp_directory_path() / fmt::format("{}_{}_{}", prefix, getpid(), n++);
        std::filesystem::create_directories(dir);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string operator/(const std::string& name) const { return (dir / name).string(); }
};

}  // namespace kvlab::test
