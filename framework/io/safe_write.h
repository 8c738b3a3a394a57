// Crash-safe updates of results files (docs/reliability.md, "Crash safety").
//
// HDF5 updates a file in place: a process killed while it writes (or between two flushes)
// can leave the file's metadata half-written, and with it every run the file already held.
// So kvlab never writes into a results file that holds runs. A run is written into its own
// part file; merging it copies the results file to a temporary name next to it, copies the
// run in, fsyncs, and renames the copy over the results file. rename(2) replaces the name
// atomically, so whatever moment a SIGKILL (or a full disk) strikes, the results file is
// either the old one or the new one, never a mixture. An advisory lock (flock) serialises
// merges into one results file from several processes (kvlab train and kvlab sweep).
#pragma once

#include <string>

namespace kvlab {

// Holds an exclusive flock(2) on `path` (created if missing) until destroyed. Blocks until
// the lock is free. kvlab::Error when the file cannot be created.
class FileLock {
public:
    explicit FileLock(const std::string& path);
    ~FileLock();
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;

private:
    int fd_ = -1;
};

// "<dir>/.<file name>.lock": the lock that serialises merges into `results`.
std::string merge_lock_path(const std::string& results);
// "<dir>/.<file name>.merging": the temporary copy a merge builds (a left-over one is stale).
std::string merge_temp_path(const std::string& results);

// fsync(2)s the file, renames it to `dst` (replacing it atomically) and fsyncs the directory.
// kvlab::Error naming the file and the errno text.
void commit_file(const std::string& tmp, const std::string& dst);

// Copies /runs/<run_id> of the part file `src` into the results file `dst` (created, with its
// directory's existence required, when missing) by copy-to-temp + rename under the merge
// lock. A run of the same id in dst is replaced. On any failure (a full disk, a corrupt
// part) dst is untouched, the temporary copy removed, and a kvlab::Error thrown.
void merge_run(const std::string& src, const std::string& dst, const std::string& run_id);

// Makes sure results can be written: creates its directory when missing, and checks that a
// file can be created there and that an existing `results` is a kvlab results file.
// kvlab::Error (before any training) naming the path and the reason otherwise.
void check_results_writable(const std::string& results);

}  // namespace kvlab
