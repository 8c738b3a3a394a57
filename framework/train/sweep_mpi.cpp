// Distributed sweeps over MPI ranks (see sweep_mpi.h).
#include "train/sweep_mpi.h"

#include "core/error.h"
#include "dist/mpi.h"

#ifdef KVLAB_MPI
#include <mpi.h>
#endif

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

namespace kvlab {

#ifdef KVLAB_MPI
namespace {

using Clock = std::chrono::steady_clock;

// Messages. kAsk, worker rank -> rank 0: the point it finished (index -1: none yet) and how
// its worker ended; a request for the next point too. kAssign, rank 0 -> worker rank: the
// index of the point to run, or -1: the sweep is over for that rank.
constexpr int kAsk = 1, kAssign = 2;

struct Report {
    int64_t index = -1, wait_status = 0;
    double seconds = 0;
    std::string last_line;

    std::vector<char> pack() const {
        std::vector<char> b(sizeof index + sizeof wait_status + sizeof seconds + last_line.size());
        char* p = b.data();
        std::memcpy(p, &index, sizeof index), p += sizeof index;
        std::memcpy(p, &wait_status, sizeof wait_status), p += sizeof wait_status;
        std::memcpy(p, &seconds, sizeof seconds), p += sizeof seconds;
        std::memcpy(p, last_line.data(), last_line.size());
        return b;
    }
    static Report unpack(const std::vector<char>& b) {
        Report r;
        const size_t head = sizeof r.index + sizeof r.wait_status + sizeof r.seconds;
        KV_CHECK(b.size() >= head, "short sweep message ({} bytes)", b.size());
        const char* p = b.data();
        std::memcpy(&r.index, p, sizeof r.index), p += sizeof r.index;
        std::memcpy(&r.wait_status, p, sizeof r.wait_status), p += sizeof r.wait_status;
        std::memcpy(&r.seconds, p, sizeof r.seconds), p += sizeof r.seconds;
        r.last_line.assign(p, b.size() - head);
        return r;
    }
};

// Rank 0's side: answers the other ranks from inside run_sweep's loop.
class MpiRemote final : public RemoteWorkers {
public:
    explicit MpiRemote(int ranks) : waiting_(ranks - 1) {}

    std::vector<Finished> poll(const std::function<std::optional<size_t>()>& next) override {
        std::vector<Finished> done;
        for (;;) {
            int flag = 0;
            MPI_Status st;
            MPI_Iprobe(MPI_ANY_SOURCE, kAsk, MPI_COMM_WORLD, &flag, &st);
            if (!flag) break;
            int bytes = 0;
            MPI_Get_count(&st, MPI_CHAR, &bytes);
            std::vector<char> buf(size_t(std::max(bytes, 0)));
            MPI_Recv(buf.data(), bytes, MPI_CHAR, st.MPI_SOURCE, kAsk, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            const Report r = Report::unpack(buf);
            if (r.index >= 0) {
                --running_;
                done.push_back({size_t(r.index), int(r.wait_status), r.last_line, r.seconds});
            }
            const auto n = next();
            const int64_t assign = n ? int64_t(*n) : -1;
            MPI_Send(&assign, 1, MPI_INT64_T, st.MPI_SOURCE, kAssign, MPI_COMM_WORLD);
            if (n)
                ++running_;
            else
                --waiting_;
        }
        return done;
    }
    bool busy() const override { return running_ > 0 || waiting_ > 0; }

private:
    int waiting_;       // ranks not yet told that the sweep is over
    int running_ = 0;   // points running on other ranks
};

// Waits for a message without spinning (Open MPI's blocking receive polls at full speed).
void idle_wait(MPI_Request& req) {
    for (;;) {
        int done = 0;
        MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (done) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

// A worker rank: runs one point in a `kvlab _run-point` process and waits for it.
Report run_point(const ExperimentConfig& p, size_t index, const SweepOptions& opt) {
    Report r;
    r.index = int64_t(index);
    const auto t0 = Clock::now();
    std::vector<std::string> args = prepare_point(p, opt);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) throw Error(fmt::format("pipe: {}", std::strerror(errno)));
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) throw Error(fmt::format("fork: {}", std::strerror(errno)));
    if (pid == 0) {   // async-signal-safe calls only until exec; die with this rank
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(125);
        dup2(fds[1], STDERR_FILENO);
        execv(argv[0], argv.data());
        const char msg[] = "kvlab sweep: cannot exec the kvlab binary\n";
        (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
        _exit(127);
    }
    ::close(fds[1]);
    // Keep the last non-empty stderr line (the worker's error, when it fails); pass
    // interrupts on: SIGTERM first, SIGKILL on the second.
    std::string partial;
    int sent = 0;
    char buf[4096];
    for (;;) {
        const int want = opt.interrupts ? int(*opt.interrupts) : 0;
        if (want > sent) kill(pid, want >= 2 ? SIGKILL : SIGTERM), sent = want;
        const ssize_t n = ::read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        partial.append(buf, size_t(n));
        size_t nl;
        while ((nl = partial.find('\n')) != std::string::npos) {
            std::string line = partial.substr(0, nl);
            partial.erase(0, nl + 1);
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line.find_first_not_of(" \t\r") != std::string::npos) r.last_line = line;
        }
    }
    if (partial.find_first_not_of(" \t\r") != std::string::npos) r.last_line = partial;
    ::close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    r.wait_status = st;
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return r;
}

}  // namespace

SweepOutcome run_sweep_mpi(const std::vector<ExperimentConfig>& points, SweepOptions opt) {
    KV_CHECK(opt.jobs == 1, "a distributed sweep runs one point per rank at a time");
    KV_CHECK(!opt.exe.empty(), "run_sweep_mpi needs the kvlab binary to run workers");
    opt.quiet = true;   // progress lines of several ranks would interleave
    if (opt.threads == 0) {   // cores shared by the ranks of a node, unless the points say
        bool any = false;
        for (const auto& p : points) any |= p.train.threads > 0;
        if (!any) opt.threads = std::max(1, available_cores() / dist::local_size());
    }
    dist::diverge();
    if (dist::root()) {
        MpiRemote remote(dist::size());
        opt.remote = &remote;
        return run_sweep(points, opt);
    }
    SweepOutcome out;
    Report report;   // index -1: ready for a first point
    for (;;) {
        const auto msg = report.pack();
        MPI_Send(msg.data(), int(msg.size()), MPI_CHAR, 0, kAsk, MPI_COMM_WORLD);
        int64_t index = -1;
        MPI_Request req;
        MPI_Irecv(&index, 1, MPI_INT64_T, 0, kAssign, MPI_COMM_WORLD, &req);
        idle_wait(req);
        if (index < 0) break;
        KV_CHECK(size_t(index) < points.size(), "point {} of {} handed out", index, points.size());
        report = run_point(points[size_t(index)], size_t(index), opt);
    }
    out.interrupted = opt.interrupts && *opt.interrupts > 0;
    return out;
}

#else

SweepOutcome run_sweep_mpi(const std::vector<ExperimentConfig>&, SweepOptions) {
    throw Error("this kvlab was built without MPI (KVLAB_MPI); distributed sweeps need it");
}

#endif

}  // namespace kvlab
