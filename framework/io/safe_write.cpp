// Crash-safe results-file updates (see safe_write.h).
#include "io/safe_write.h"

#include "core/error.h"
#include "io/results.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

namespace kvlab {
namespace {

namespace fs = std::filesystem;

fs::path sibling(const std::string& file, const char* suffix) {
    const fs::path p(file);
    return p.parent_path() / fmt::format(".{}{}", p.filename().string(), suffix);
}

void fsync_path(const std::string& path, bool directory) {
    const int fd = ::open(path.empty() ? "." : path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) throw Error(fmt::format("cannot open '{}' to sync it: {}", path, std::strerror(errno)));
    const int r = ::fsync(fd);
    const int e = errno;
    ::close(fd);
    // Some file systems cannot fsync a directory (EINVAL); the rename is still atomic.
    if (r != 0 && !(directory && e == EINVAL)) throw Error(fmt::format("cannot sync '{}': {}", path, std::strerror(e)));
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(fmt::format("cannot create '{}': {}", path, std::strerror(errno)));
    size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int e = errno;
            ::close(fd);
            throw Error(fmt::format("cannot write '{}' ({} of {} bytes written): {}", path, done, bytes.size(),
                                    std::strerror(e)));
        }
        done += size_t(n);
    }
    if (::close(fd) != 0) throw Error(fmt::format("cannot write '{}': {}", path, std::strerror(errno)));
}

}  // namespace

FileLock::FileLock(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(fmt::format("cannot open the lock file '{}': {}", path, std::strerror(errno)));
    while (flock(fd_, LOCK_EX) != 0) {
        if (errno == EINTR) continue;
        const int e = errno;
        ::close(fd_);
        throw Error(fmt::format("cannot lock '{}': {}", path, std::strerror(e)));
    }
}

FileLock::~FileLock() {
    if (fd_ >= 0) ::close(fd_);   // releases the lock
}

std::string merge_lock_path(const std::string& results) { return sibling(results, ".lock").string(); }
std::string merge_temp_path(const std::string& results) { return sibling(results, ".merging").string(); }

void commit_file(const std::string& tmp, const std::string& dst) {
    fsync_path(tmp, false);
    if (std::rename(tmp.c_str(), dst.c_str()) != 0)
        throw Error(fmt::format("cannot rename '{}' to '{}': {}", tmp, dst, std::strerror(errno)));
    fsync_path(fs::path(dst).parent_path().string(), true);
}

void merge_run(const std::string& src, const std::string& dst, const std::string& run_id) {
    FileLock lock(merge_lock_path(dst));
    const std::string tmp = merge_temp_path(dst);
    std::error_code ec;
    fs::remove(tmp, ec);   // left by a merge that was killed: we hold the lock, so it is stale
    // The merged file is built in memory (HDF5 1.10 can crash inside H5Ocopy when a write
    // to disk fails) and written with plain write(2)s, whose failures are clean errors.
    const std::vector<char> bytes = merged_image(src, dst, run_id);
    try {
        write_bytes(tmp, bytes);
        commit_file(tmp, dst);
    } catch (...) {
        fs::remove(tmp, ec);
        throw;
    }
}

void check_results_writable(const std::string& results) {
    const fs::path p(results);
    const fs::path dir = p.parent_path();
    std::error_code ec;
    if (!dir.empty() && !fs::is_directory(dir, ec)) {
        fs::create_directories(dir, ec);
        if (ec)
            throw Error(fmt::format("cannot create the results directory '{}': {} (set output.path to a writable place)",
                                    dir.string(), ec.message()));
    }
    if (fs::exists(p, ec) && !fs::is_regular_file(p, ec))
        throw Error(fmt::format("the results path '{}' exists and is not a file", results));
    // Merges create a temporary file next to the results file: probe that the directory takes one.
    const std::string probe = sibling(results, fmt::format(".probe.{}", getpid()).c_str()).string();
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        throw Error(fmt::format("cannot write in the results directory '{}': {} (set output.path to a writable place)",
                                dir.empty() ? "." : dir.string(), std::strerror(errno)));
    ::close(fd);
    fs::remove(probe, ec);
    run_statuses(results);   // an existing file must be a readable kvlab results file
}

}  // namespace kvlab
