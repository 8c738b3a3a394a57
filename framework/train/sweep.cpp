// The sweep runner: worker processes, merging and resume (see sweep.h).
#include "train/sweep.h"

#include "core/error.h"
#include "io/results.h"
#include "io/safe_write.h"
#include "io/train_checkpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

namespace kvlab {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string part_file(const ExperimentConfig& p, const char* ext) { return parts_dir(p) + "/" + p.run_id + ext; }

std::string human_seconds(double s) {
    if (s < 60) return fmt::format("{:.1f}s", s);
    if (s < 3600) return fmt::format("{}m{:02d}s", int(s) / 60, int(s) % 60);
    return fmt::format("{}h{:02d}m", int(s) / 3600, (int(s) % 3600) / 60);
}

std::optional<double> real_attr(const Attrs& attrs, const std::string& name) {
    for (const auto& [k, v] : attrs)
        if (k == name) {
            if (const auto* d = std::get_if<double>(&v)) return *d;
            if (const auto* i = std::get_if<int64_t>(&v)) return double(*i);
        }
    return std::nullopt;
}

std::string text_attr(const Attrs& attrs, const std::string& name) {
    for (const auto& [k, v] : attrs)
        if (k == name)
            if (const auto* s = std::get_if<std::string>(&v)) return *s;
    return {};
}

// One running worker process.
struct Worker {
    pid_t pid = -1;
    int fd = -1;             // read end of the worker's stderr
    size_t index = 0;        // into the points
    std::string partial;     // stderr bytes after the last newline
    std::string last_line;   // last non-empty stderr line
    Clock::time_point start;
};

// Forwards worker progress lines to our stderr. On a terminal a progress line ("[id] step
// ...") overwrites the previous one with '\r', as `kvlab train` does.
struct Console {
    bool tty = isatty(STDERR_FILENO) != 0;
    bool open_line = false;   // a '\r' line is on screen without its newline

    void progress(const std::string& line) {
        if (tty && !line.empty() && line.front() == '[') {
            fmt::print(stderr, "\r{:<110}", line);
            open_line = true;
        } else {
            end_line();
            fmt::print(stderr, "{}\n", line);
        }
        std::fflush(stderr);
    }
    void end_line() {
        if (open_line) fmt::print(stderr, "\n");
        open_line = false;
    }
};

class Runner {
public:
    Runner(const std::vector<ExperimentConfig>& points, const SweepOptions& opt) : points_(points), opt_(opt) {}
    SweepOutcome run();

private:
    void lock_parts_dirs();
    void launch(size_t index);
    void read_output(Worker& w, bool until_eof);
    void finish(Worker& w, int wait_status);
    void record_failure(const ExperimentConfig& p, const std::string& error);
    void line_done(const PointOutcome& o);
    void poll_remote(const std::vector<size_t>& queue, size_t& next);
    int interrupts() const { return opt_.interrupts ? int(*opt_.interrupts) : 0; }

    const std::vector<ExperimentConfig>& points_;
    const SweepOptions& opt_;
    SweepOutcome out_;
    std::vector<Worker> workers_;
    std::map<std::string, int> locks_;   // parts dir -> flock'ed fd
    Console console_;
    size_t to_run_ = 0, done_ = 0;
    bool stopping_ = false, killed_ = false;
};

void Runner::lock_parts_dirs() {
    for (const auto& p : points_) {
        const std::string dir = parts_dir(p);
        if (locks_.count(dir)) continue;
        std::error_code ec;
        fs::create_directories(dir, ec);
        if (ec) throw Error(fmt::format("cannot create the sweep's work directory '{}': {}", dir, ec.message()));
        const std::string lock = dir + "/lock";
        const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) throw Error(fmt::format("cannot open '{}': {}", lock, std::strerror(errno)));
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            ::close(fd);
            throw Error(fmt::format("another kvlab sweep is writing {} (it holds {}); wait for it or stop it",
                                    p.results_path(), lock));
        }
        locks_[dir] = fd;
    }
}

void Runner::launch(size_t index) {
    std::vector<std::string> args = prepare_point(points_[index], opt_);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw Error(fmt::format("pipe: {}", std::strerror(errno)));
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
        ::close(fds[0]);
        ::close(fds[1]);
        throw Error(fmt::format("fork: {}", std::strerror(errno)));
    }
    if (pid == 0) {
        // Worker: async-signal-safe calls only until exec. Die with the parent.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(125);
        dup2(fds[1], STDERR_FILENO);   // dup2 clears O_CLOEXEC on the copy
        execv(argv[0], argv.data());
        const char msg[] = "kvlab sweep: cannot exec the kvlab binary\n";
        (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
        _exit(127);
    }
    ::close(fds[1]);
    Worker w;
    w.pid = pid;
    w.fd = fds[0];
    w.index = index;
    w.start = Clock::now();
    workers_.push_back(std::move(w));
}

void Runner::read_output(Worker& w, bool until_eof) {
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(w.fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        w.partial.append(buf, size_t(n));
        size_t nl;
        while ((nl = w.partial.find('\n')) != std::string::npos) {
            std::string line = w.partial.substr(0, nl);
            w.partial.erase(0, nl + 1);
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            w.last_line = line;
            if (opt_.jobs == 1 && !opt_.quiet) console_.progress(line);
        }
        if (!until_eof) break;
    }
    if (until_eof && !w.partial.empty()) {
        w.last_line = w.partial;
        if (opt_.jobs == 1 && !opt_.quiet) console_.progress(w.partial);
        w.partial.clear();
    }
}

// A run for a point whose worker left nothing usable: the resolved config and the error,
// written as a part file and merged like any other.
void Runner::record_failure(const ExperimentConfig& p, const std::string& error) {
    const std::string part = part_file(p, ".h5");
    std::error_code ec;
    fs::remove(part, ec);
    {
        RunLogger log(part, p.run_id, /*overwrite=*/true);
        log.begin_run(p.resolved_yaml, p.model.attention, {{"seed", static_cast<int64_t>(p.seed)}});
        log.fail_run(error);
    }
    merge_run(part, p.results_path(), p.run_id);
}

void Runner::finish(Worker& w, int wait_status) {
    read_output(w, true);
    ::close(w.fd);
    const ExperimentConfig& p = points_[w.index];
    PointOutcome& o = out_.points[w.index];
    o.seconds = std::chrono::duration<double>(Clock::now() - w.start).count();
    const std::string part = part_file(p, ".h5");

    // What the worker's own results file says.
    std::optional<RunRecord> rec;
    std::string part_problem;
    std::error_code ec;
    if (fs::exists(part, ec)) {
        try {
            for (auto& r : read_runs(part))
                if (r.id == p.run_id) rec = std::move(r);
        } catch (const Error& e) {
            part_problem = e.what();
        }
    }
    const std::string status = rec ? text_attr(rec->attrs, "status") : "";
    std::string error;   // stays empty when the run completed, whatever happened after
    std::string last = w.last_line;
    if (last.rfind("kvlab _run-point: ", 0) == 0) last.erase(0, 18);
    const bool interrupted = status == "interrupted";
    if (status == "completed")
        error.clear();
    else if (interrupted)
        error = fmt::format("interrupted by {} after step {}", text_attr(rec->attrs, "interrupted_by"),
                            real_attr(rec->attrs, "stopped_at_step").value_or(0));
    else if (WIFSIGNALED(wait_status))
        error = fmt::format("{}process exited with signal {} ({})", stopping_ ? "interrupted: " : "",
                            WTERMSIG(wait_status), strsignal(WTERMSIG(wait_status)));
    else if (status == "failed" && !text_attr(rec->attrs, "error").empty())
        error = text_attr(rec->attrs, "error");
    else if (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) != 0)
        error = !last.empty() ? last : fmt::format("process exited with status {}", WEXITSTATUS(wait_status));
    else
        error = fmt::format("the worker exited without completing its run (status \"{}\"{})", status,
                            part_problem.empty() ? "" : "; " + part_problem);

    // Merge into the results file (atomically: io/safe_write.h); keep the part files when
    // that fails. The checkpoint of a completed run goes once the run is merged.
    bool merged = false;
    try {
        if (rec) {
            if (!error.empty() && status != "failed" && !interrupted) mark_run_failed(part, p.run_id, error);
            merge_run(part, p.results_path(), p.run_id);
        } else {
            record_failure(p, error);
        }
        merged = true;
        fs::remove(part, ec);
        fs::remove(part_file(p, ".yaml"), ec);
        if (status == "completed") {
            const std::string ckpt = checkpoint_path(p.results_path(), p.run_id);
            fs::remove(ckpt, ec);
            fs::remove(fs::path(ckpt).parent_path(), ec);   // only when empty
        }
    } catch (const Error& e) {
        const std::string why = fmt::format("could not merge into {} (the run stays in {}): {}", p.results_path(), part,
                                            e.what());
        error = error.empty() ? why : error + "; " + why;
    }
    o.status = error.empty()              ? PointStatus::completed
               : interrupted && merged   ? PointStatus::interrupted
                                          : PointStatus::failed;
    o.error = error;
    if (rec) {
        o.val_loss = real_attr(rec->final_attrs, "val_loss");
        o.val_accuracy = real_attr(rec->final_attrs, "val_accuracy");
    }
    ++done_;
    line_done(o);
}

void Runner::line_done(const PointOutcome& o) {
    console_.end_line();
    std::string what;
    if (o.status == PointStatus::completed) {
        what = o.val_loss ? fmt::format("val_loss {:.4f}", *o.val_loss) : "completed";
        if (o.val_accuracy) what += fmt::format("  accuracy {:.4f}", *o.val_accuracy);
    } else if (o.status == PointStatus::interrupted) {
        what = "INTERRUPTED: " + o.error;
    } else {
        what = "FAILED: " + o.error;
    }
    fmt::print("[{}/{}] {}  {}  ({})\n", done_, to_run_, o.run_id, what, human_seconds(o.seconds));
    std::fflush(stdout);
}

SweepOutcome Runner::run() {
    const auto t0 = Clock::now();
    out_.points = plan_sweep(points_, opt_.overwrite);
    std::vector<size_t> queue;
    for (size_t i = 0; i < out_.points.size(); ++i) {
        out_.points[i].error.clear();
        if (out_.points[i].status == PointStatus::skipped)
            fmt::print("skip {} (completed)\n", out_.points[i].run_id);
        else
            queue.push_back(i);
    }
    to_run_ = queue.size();
    if (!queue.empty()) lock_parts_dirs();
    size_t next = 0;
    const int jobs = std::max(1, opt_.jobs);
    while ((next < queue.size() && !stopping_) || !workers_.empty() || (opt_.remote && opt_.remote->busy())) {
        if (interrupts() >= 1 && !stopping_) {
            stopping_ = out_.interrupted = true;
            console_.end_line();
            fmt::print(stderr, "kvlab sweep: interrupted; stopping {} running point(s) (interrupt again to kill)\n",
                       workers_.size());
            for (const auto& w : workers_) kill(w.pid, SIGTERM);
        }
        if (interrupts() >= 2 && !killed_) {
            killed_ = true;
            for (const auto& w : workers_) kill(w.pid, SIGKILL);
        }
        while (!stopping_ && next < queue.size() && int(workers_.size()) < jobs) launch(queue[next++]);
        if (opt_.remote) poll_remote(queue, next);

        std::vector<pollfd> fds;
        for (const auto& w : workers_) fds.push_back({w.fd, POLLIN, 0});
        if (poll(fds.data(), fds.size(), opt_.remote ? 50 : 200) > 0)
            for (size_t i = 0; i < fds.size(); ++i)
                if (fds[i].revents & (POLLIN | POLLHUP)) read_output(workers_[i], false);
        for (size_t i = 0; i < workers_.size();) {
            int st = 0;
            const pid_t r = waitpid(workers_[i].pid, &st, WNOHANG);
            if (r == workers_[i].pid) {
                finish(workers_[i], st);
                workers_.erase(workers_.begin() + long(i));
            } else {
                ++i;
            }
        }
    }
    console_.end_line();
    for (auto& [dir, fd] : locks_) {
        std::error_code ec;
        fs::remove(dir + "/lock", ec);
        ::close(fd);
        fs::remove(dir, ec);   // only when empty: kept part files of failed merges stay
    }
    out_.wall_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return out_;
}

// Points run by other processes (SweepOptions::remote): hand out the queue, merge what
// finished as finish() does for a local worker (no pipe to read: fd -1).
void Runner::poll_remote(const std::vector<size_t>& queue, size_t& next) {
    auto give = [&]() -> std::optional<size_t> {
        if (stopping_ || next >= queue.size()) return std::nullopt;
        return queue[next++];
    };
    for (auto& f : opt_.remote->poll(give)) {
        Worker w;
        w.index = f.index;
        w.last_line = f.last_line;
        w.start = Clock::now() - std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(f.seconds));
        finish(w, f.wait_status);
    }
}

}  // namespace

std::vector<std::string> prepare_point(const ExperimentConfig& p, const SweepOptions& opt) {
    const std::string yaml = part_file(p, ".yaml"), part = part_file(p, ".h5");
    std::error_code ec;
    fs::remove(part, ec);   // a stale part of an earlier, killed sweep
    {
        std::ofstream f(yaml, std::ios::binary | std::ios::trunc);
        f << p.resolved_yaml;
        if (!f) throw Error(fmt::format("cannot write '{}'", yaml));
    }
    // The worker loads the point under the original config's name, so a relative
    // data.path is looked up exactly as it was for this sweep.
    std::vector<std::string> args = {opt.exe, "_run-point", yaml, "--source", p.source.empty() ? "<config>" : p.source,
                                     "--run-id", p.run_id, "--out", part};
    if (const int t = worker_threads(p, opt); t > 0) args.insert(args.end(), {"--threads", std::to_string(t)});
    if (opt.quiet || opt.jobs > 1) args.push_back("--quiet");
    return args;
}

int SweepOutcome::count(PointStatus s) const {
    int n = 0;
    for (const auto& p : points) n += p.status == s;
    return n;
}

int available_cores() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
}

int worker_threads(const ExperimentConfig& point, const SweepOptions& opt) {
    if (opt.threads > 0) return opt.threads;
    if (point.train.threads > 0) return point.train.threads;
    if (opt.jobs > 1) return std::max(1, available_cores() / opt.jobs);
    return 0;
}

std::string parts_dir(const ExperimentConfig& point) {
    const fs::path results(point.results_path());
    const fs::path dir = results.parent_path();
    const std::string name = fmt::format(".{}.parts", results.stem().string());
    return (dir.empty() ? fs::path(name) : dir / name).string();
}

std::vector<PointOutcome> plan_sweep(const std::vector<ExperimentConfig>& points, bool overwrite) {
    std::map<std::string, std::vector<std::pair<std::string, std::string>>> statuses;   // per results file
    std::vector<PointOutcome> out;
    for (const auto& p : points) {
        const std::string path = p.results_path();
        if (!statuses.count(path)) statuses[path] = run_statuses(path);
        PointOutcome o;
        o.run_id = p.run_id;
        o.results_path = path;
        for (const auto& [id, st] : statuses[path])
            if (id == p.run_id) {
                if (st == "completed" && !overwrite) o.status = PointStatus::skipped;
                o.error = st;
            }
        out.push_back(std::move(o));
    }
    return out;
}

SweepOutcome run_sweep(const std::vector<ExperimentConfig>& points, const SweepOptions& opt) {
    KV_CHECK(!opt.exe.empty(), "run_sweep needs the kvlab binary to run workers");
    Runner r(points, opt);
    return r.run();
}

}  // namespace kvlab
