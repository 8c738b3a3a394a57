// The kvlab HDF5 files: results (config.md, "Results file"), checkpoints and gradient
// dumps (model.md, "HDF5 layout"). Everything here is built on io/h5.h; this header
// does not expose HDF5 types.
//
// Types on disk: float arrays float32, int arrays int32 (train/step and eval/step too:
// model.md says "integer arrays int32"; a step beyond 2^31-1 is a kvlab::Error, and the
// readers accept int64 steps written by other tools). Attributes: int64_t -> int64,
// double -> float64, std::string -> variable-length UTF-8 (h5py returns str).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace kvlab {

using AttrValue = std::variant<int64_t, double, std::string>;
using Attrs = std::vector<std::pair<std::string, AttrValue>>;

// One named array, row-major, shape as model.md gives it ({} for a scalar).
struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> data;
};

// A checkpoint: model.md's /params layout. attrs are the group's attributes (the
// hyper-parameters, `attention`, `format_version`); tensors are one dataset each,
// named by dotted path ("layers.0.attn.wq"), read back in the order written.
struct ParamSet {
    Attrs attrs;
    std::vector<Tensor> tensors;
};

// Writes one run of a results file: /runs/<run_id>/ as config.md lays it out.
//   attrs   config, attention, status ("running", "completed", "failed", "interrupted"),
//           error (failed runs), interrupted_by and stopped_at_step (interrupted runs),
//           plus whatever begin_run /
//           set_attrs are given (seed, n_params, kv_cache_elements_per_token,
//           kv_cache_bytes_per_token, tokens_per_second, wall_seconds, ...)
//   train/step int32, train/loss float32, train/lr float32
//   eval/step int32, eval/loss float32, eval/accuracy float32 (only once an accuracy
//           was logged; rows of evaluations without one hold NaN, so rows stay aligned
//           with eval/step)
//   final/  attrs val_loss, val_bits_per_byte[, val_accuracy]
//   params/ a ParamSet
// The file is flushed after begin_run, every log_eval, end_run and fail_run, so a killed
// process leaves a readable file whose status ("running") tells the truth. The file stays
// open (and, by HDF5 1.10's file locking, unreadable by other processes) until the
// logger is destroyed.
class RunLogger {
public:
    // Opens the results file, creating it (not its directory: a missing parent directory
    // is a kvlab::Error naming it). If /runs/<run_id> exists with status "completed" and
    // overwrite is false, throws kvlab::Error; otherwise an existing group is removed and
    // recreated, with status "running".
    RunLogger(const std::string& path, const std::string& run_id, bool overwrite = false);
    ~RunLogger();
    RunLogger(const RunLogger&) = delete;
    RunLogger& operator=(const RunLogger&) = delete;

    void begin_run(const std::string& resolved_yaml, const std::string& attention, const Attrs& attrs);
    void log_train(int64_t step, double loss, double lr);
    void log_eval(int64_t step, double loss, std::optional<double> accuracy);
    // Extra or updated run attributes; config, attention, status and error are the
    // logger's own and are rejected (KV_CHECK).
    void set_attrs(const Attrs& attrs);
    void end_run(const Attrs& final_attrs, const ParamSet& params);
    void fail_run(const std::string& error);
    // Status "interrupted" (stopped by a signal; rerunning resumes it), with attributes
    // interrupted_by (the signal's name, e.g. "SIGTERM") and stopped_at_step.
    void interrupt_run(const std::string& signal_name, int64_t step);

private:
    struct State;
    std::unique_ptr<State> s_;
};

// One run as read back from a results file. attrs are all the run group's attributes
// in the order written (status included); series a run never logged are empty.
struct RunRecord {
    std::string id;
    Attrs attrs;
    Attrs final_attrs;
    std::vector<int64_t> train_step, eval_step;
    std::vector<double> train_loss, train_lr, eval_loss, eval_accuracy;
};

// All runs of a results file in the order they were created. kvlab::Error if the file is
// missing, not HDF5, or has no /runs group.
std::vector<RunRecord> read_runs(const std::string& path);

// The status attribute of every run of a results file, in creation order ("" when a run
// has none). A missing file has no runs; a file that is HDF5 but not a results file (no
// /runs and not empty) is a kvlab::Error.
std::vector<std::pair<std::string, std::string>> run_statuses(const std::string& path);

// Copies /runs/<run_id> of `src` (everything: attributes, series, final/, params/) into
// `dst` with H5Ocopy, replacing a run of the same id there; creates `dst` (not its
// directory) when missing. How a sweep (train/sweep.h) merges the per-point files its
// worker processes wrote, since HDF5 1.10's lock lets only one process write a file.
// kvlab::Error when src lacks the run or dst is not a results file.
void copy_run(const std::string& src, const std::string& dst, const std::string& run_id);

// The bytes of the results file `dst` with /runs/<run_id> of `src` copied in as copy_run
// would (dst is only read; a missing dst gives a new file). Built in memory, so a failure
// cannot leave a half-written file: io/safe_write.h's merge_run writes the bytes to a
// temporary file and renames it over dst.
std::vector<char> merged_image(const std::string& src, const std::string& dst, const std::string& run_id);

// Sets status "failed" and `error` on the existing /runs/<run_id> of `path` (a run whose
// process died before it could say so itself). kvlab::Error when the run is missing.
void mark_run_failed(const std::string& path, const std::string& run_id, const std::string& error);

// Writes `p` as the group `group_path` (e.g. "/params"), replacing an existing one;
// creates the file if missing. Adds format_version = 1 when p.attrs lacks it.
void write_param_set(const std::string& file, const std::string& group_path, const ParamSet& p);
// kvlab::Error for a missing file or group, a member that is not a float32 dataset, or a
// format_version other than 1.
ParamSet read_param_set(const std::string& file, const std::string& group_path);

// A table of equal-length 1-D columns stored as one group, e.g. `kvlab decode-bench`'s
// /decode_bench: one dataset per column in the order given (int64 columns as int64, real
// columns as float64, text columns as variable-length UTF-8 strings, which h5py reads as
// bytes; .asstr() gives str) and the group's attributes. Not part of model.md or config.md:
// a measurement table for scripts (pandas: DataFrame({k: f[g][k][()] for k in f[g]})).
using TableColumn = std::variant<std::vector<int64_t>, std::vector<double>, std::vector<std::string>>;
struct Table {
    Attrs attrs;
    std::vector<std::pair<std::string, TableColumn>> columns;
};
// Writes `t` as the group `group_path`, replacing an existing one; creates the file if
// missing (not its directory). Columns of different lengths are a bug (KV_CHECK).
void write_table(const std::string& file, const std::string& group_path, const Table& t);
// kvlab::Error for a missing file or group, or a member that is not a 1-D integer, float
// or variable-length string dataset. Integer columns come back as int64, floats as double.
Table read_table(const std::string& file, const std::string& group_path);

// Gradient dump (model.md): /params (ParamSet with attrs), /grads (same names and
// shapes), /batch/inputs [B,T] int32, /batch/targets [B,T] int32 (-1 = ignored), /loss
// scalar float32.
struct GradDump {
    ParamSet params, grads;
    int B = 0, T = 0;
    std::vector<int32_t> inputs, targets;
    float loss = 0;
};
void write_grad_dump(const std::string& file, const GradDump& d);  // replaces the file
// kvlab::Error when a part is missing or grads and params disagree in names or shapes.
GradDump read_grad_dump(const std::string& file);

}  // namespace kvlab
