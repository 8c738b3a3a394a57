// Results files, checkpoints and gradient dumps (see results.h for the layouts).
#include "io/results.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>

#include "core/error.h"
#include "io/h5.h"

namespace kvlab {
namespace {

constexpr int64_t format_version = 1;

// Run attributes the logger owns; set_attrs must not overwrite them.
bool is_reserved_attr(const std::string& name) {
    return name == "config" || name == "attention" || name == "status" || name == "error" ||
           name == "interrupted_by" || name == "stopped_at_step";
}

// A link name usable as one HDF5 path component: dots are fine ("layers.0.attn.wq"),
// "/" would silently create nested groups.
bool is_valid_name(const std::string& n) {
    return !n.empty() && n != "." && n != ".." && n.find('/') == std::string::npos;
}

int32_t to_step(int64_t step, const std::string& file) {
    if (step < 0 || step > std::numeric_limits<int32_t>::max())
        throw Error(fmt::format("step {} does not fit the int32 step series of '{}'", step, file));
    return static_cast<int32_t>(step);
}

std::string describe_shape(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

void write_params_into(h5::Group& g, const ParamSet& p, bool stamp_version) {
    g.write_attrs(p.attrs);
    if (stamp_version && !g.has_attr("format_version")) g.write_attr("format_version", format_version);
    for (const auto& t : p.tensors) {
        KV_CHECK(is_valid_name(t.name), "parameter name '{}' is not a valid HDF5 link name", t.name);
        g.write(t.name, t.shape, std::span<const float>(t.data));
    }
}

ParamSet read_params_from(const h5::Group& g) {
    ParamSet p;
    p.attrs = g.read_attrs();
    for (const auto& [k, v] : p.attrs) {
        if (k != "format_version") continue;
        const auto* i = std::get_if<int64_t>(&v);
        if (!i || *i != format_version)
            throw Error(fmt::format("'{}' in '{}' has format_version {}; this kvlab reads format_version {}", g.path(),
                                    g.file(), std::visit([](const auto& x) { return fmt::format("{}", x); }, v),
                                    format_version));
    }
    for (const auto& name : g.list()) {
        if (!g.is_dataset(name))
            throw Error(fmt::format("'{}/{}' in '{}' is not a dataset; a parameter group holds only float32 datasets",
                                    g.path(), name, g.file()));
        h5::Dataset d = g.open_dataset(name);
        p.tensors.push_back({name, d.shape(), d.read_f32()});
    }
    return p;
}

}  // namespace

// ---------------------------------------------------------------- RunLogger

struct RunLogger::State {
    std::string path, id;
    // Declared file first so that it closes last (members are destroyed in reverse).
    h5::File file;
    h5::Group run;
    h5::Dataset train_step, train_loss, train_lr, eval_step, eval_loss, eval_accuracy;
    int64_t n_evals = 0;
    bool begun = false, finished = false;
};

RunLogger::RunLogger(const std::string& path, const std::string& run_id, bool overwrite)
    : s_(std::make_unique<State>()) {
    if (!is_valid_name(run_id))
        throw Error(fmt::format("invalid run id '{}': it must be non-empty and contain no '/'", run_id));
    s_->path = path;
    s_->id = run_id;
    s_->file = h5::File::open(path, h5::Mode::create_or_open);
    // Refuse to add /runs to some other HDF5 file (a checkpoint, a gradient dump).
    if (!s_->file.exists("runs") && !s_->file.list().empty())
        throw Error(
            fmt::format("'{}' is an HDF5 file but not a kvlab results file (no /runs group); "
                        "choose another output.path",
                        path));
    h5::Group runs = s_->file.require_group("runs");
    if (runs.exists(run_id)) {
        h5::Group old = runs.open_group(run_id);
        if (!overwrite && old.has_attr("status") && old.read_attr("status") == AttrValue{"completed"})
            throw Error(fmt::format("run '{}' already completed in {}; use --overwrite or another name", run_id, path));
        old = h5::Group();
        // The old run's space stays allocated in the file (HDF5 does not reclaim it;
        // h5repack does).
        runs.delete_link(run_id);
    }
    s_->run = runs.create_group(run_id);
    s_->run.write_attr("status", std::string("running"));
}

RunLogger::~RunLogger() = default;

void RunLogger::begin_run(const std::string& resolved_yaml, const std::string& attention, const Attrs& attrs) {
    KV_CHECK(!s_->begun && !s_->finished, "begin_run called twice for run '{}'", s_->id);
    h5::Group& run = s_->run;
    run.write_attr("config", resolved_yaml);
    run.write_attr("attention", attention);
    for (const auto& [k, v] : attrs) KV_CHECK(!is_reserved_attr(k), "run attribute '{}' is set by RunLogger", k);
    run.write_attrs(attrs);
    h5::Group train = run.create_group("train"), eval = run.create_group("eval");
    s_->train_step = train.create_series("step", h5::DType::i32);
    s_->train_loss = train.create_series("loss", h5::DType::f32);
    s_->train_lr = train.create_series("lr", h5::DType::f32);
    s_->eval_step = eval.create_series("step", h5::DType::i32);
    s_->eval_loss = eval.create_series("loss", h5::DType::f32);
    s_->begun = true;
    s_->file.flush();
}

void RunLogger::log_train(int64_t step, double loss, double lr) {
    KV_CHECK(s_->begun && !s_->finished, "log_train outside begin_run/end_run for run '{}'", s_->id);
    const int32_t st = to_step(step, s_->path);
    const float l = static_cast<float>(loss), r = static_cast<float>(lr);
    s_->train_step.append(std::span<const int32_t>(&st, 1));
    s_->train_loss.append(std::span<const float>(&l, 1));
    s_->train_lr.append(std::span<const float>(&r, 1));
}

void RunLogger::log_eval(int64_t step, double loss, std::optional<double> accuracy) {
    KV_CHECK(s_->begun && !s_->finished, "log_eval outside begin_run/end_run for run '{}'", s_->id);
    const int32_t st = to_step(step, s_->path);
    const float l = static_cast<float>(loss);
    s_->eval_step.append(std::span<const int32_t>(&st, 1));
    s_->eval_loss.append(std::span<const float>(&l, 1));
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (accuracy && !s_->eval_accuracy.valid()) {
        // First accuracy: create the series and give earlier evaluations NaN rows.
        h5::Group eval = s_->run.open_group("eval");
        s_->eval_accuracy = eval.create_series("accuracy", h5::DType::f32);
        std::vector<float> fill(static_cast<size_t>(s_->n_evals), nan);
        s_->eval_accuracy.append(std::span<const float>(fill));
    }
    if (s_->eval_accuracy.valid()) {
        const float a = accuracy ? static_cast<float>(*accuracy) : nan;
        s_->eval_accuracy.append(std::span<const float>(&a, 1));
    }
    ++s_->n_evals;
    s_->file.flush();
}

void RunLogger::set_attrs(const Attrs& attrs) {
    for (const auto& [k, v] : attrs) KV_CHECK(!is_reserved_attr(k), "run attribute '{}' is set by RunLogger", k);
    s_->run.write_attrs(attrs);
    s_->file.flush();
}

void RunLogger::end_run(const Attrs& final_attrs, const ParamSet& params) {
    KV_CHECK(s_->begun && !s_->finished, "end_run without begin_run, or after end_run/fail_run, for run '{}'", s_->id);
    h5::Group final_group = s_->run.create_group("final");
    final_group.write_attrs(final_attrs);
    h5::Group params_group = s_->run.create_group("params");
    write_params_into(params_group, params, true);
    s_->run.write_attr("status", std::string("completed"));
    s_->finished = true;
    s_->file.flush();
}

void RunLogger::fail_run(const std::string& error) {
    // Allowed before begin_run: a run can fail while its model is being built.
    KV_CHECK(!s_->finished, "fail_run after end_run/fail_run for run '{}'", s_->id);
    s_->run.write_attr("status", std::string("failed"));
    s_->run.write_attr("error", error);
    s_->finished = true;
    s_->file.flush();
}

void RunLogger::interrupt_run(const std::string& signal_name, int64_t step) {
    KV_CHECK(!s_->finished, "interrupt_run after end_run/fail_run for run '{}'", s_->id);
    s_->run.write_attr("status", std::string("interrupted"));
    s_->run.write_attr("interrupted_by", signal_name);
    s_->run.write_attr("stopped_at_step", step);
    s_->finished = true;
    s_->file.flush();
}

// ---------------------------------------------------------------- read_runs

std::vector<RunRecord> read_runs(const std::string& path) {
    h5::File f = h5::File::open(path, h5::Mode::read_only);
    if (!f.is_group("runs")) throw Error(fmt::format("'{}' is not a kvlab results file (no /runs group)", path));
    h5::Group runs = f.open_group("runs");
    std::vector<RunRecord> out;
    for (const auto& id : runs.list()) {
        if (!runs.is_group(id)) continue;
        h5::Group g = runs.open_group(id);
        RunRecord r;
        r.id = id;
        r.attrs = g.read_attrs();
        if (g.is_group("final")) r.final_attrs = g.open_group("final").read_attrs();
        // A run that failed early, or was killed, may lack some series.
        auto ints = [&](const char* p) {
            return g.is_dataset(p) ? g.open_dataset(p).read_as_i64() : std::vector<int64_t>{};
        };
        auto reals = [&](const char* p) {
            return g.is_dataset(p) ? g.open_dataset(p).read_as_f64() : std::vector<double>{};
        };
        r.train_step = ints("train/step");
        r.train_loss = reals("train/loss");
        r.train_lr = reals("train/lr");
        r.eval_step = ints("eval/step");
        r.eval_loss = reals("eval/loss");
        r.eval_accuracy = reals("eval/accuracy");
        out.push_back(std::move(r));
    }
    return out;
}

// ---------------------------------------------------------------- merging (sweeps)

std::vector<std::pair<std::string, std::string>> run_statuses(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return {};
    h5::File f = h5::File::open(path, h5::Mode::read_only);
    std::vector<std::pair<std::string, std::string>> out;
    if (!f.is_group("runs")) {
        if (f.list().empty()) return out;
        throw Error(fmt::format("'{}' is an HDF5 file but not a kvlab results file (no /runs group)", path));
    }
    h5::Group runs = f.open_group("runs");
    for (const auto& id : runs.list()) {
        if (!runs.is_group(id)) continue;
        h5::Group g = runs.open_group(id);
        std::string status;
        if (g.has_attr("status")) {
            const AttrValue v = g.read_attr("status");
            if (const auto* s = std::get_if<std::string>(&v)) status = *s;
        }
        out.emplace_back(id, status);
    }
    return out;
}

namespace {
// The attributes of `from` and of every object below it onto the same-named objects of `to`.
void copy_attrs(const h5::Group& from, h5::Group to) {
    to.write_attrs(from.read_attrs());
    for (const auto& name : from.list()) {
        if (from.is_group(name)) {
            copy_attrs(from.open_group(name), to.open_group(name));
        } else if (from.is_dataset(name)) {
            const h5::Values attrs = from.open_dataset(name).read_attrs();
            if (!attrs.empty()) to.open_dataset(name).write_attrs(attrs);
        }
    }
}

// copy_run into an open file.
void copy_run_into(const std::string& src, h5::File& out, const std::string& run_id) {
    const std::string& dst = out.file();
    if (!is_valid_name(run_id)) throw Error(fmt::format("invalid run id '{}'", run_id));
    h5::File in = h5::File::open(src, h5::Mode::read_only);
    const std::string from = "runs/" + run_id;
    if (!in.is_group(from)) throw Error(fmt::format("'{}' has no run '{}' to copy", src, run_id));
    if (!out.exists("runs") && !out.list().empty())
        throw Error(fmt::format("'{}' is an HDF5 file but not a kvlab results file (no /runs group)", dst));
    {
        h5::Group runs = out.require_group("runs");
        if (runs.exists(run_id)) runs.delete_link(run_id);   // space is not reclaimed (h5repack does)
        h5::Group from_group = in.open_group(from);
        // H5Ocopy keeps the source's creation properties (creation-order tracking included).
        // Attributes are copied by us: HDF5 before 1.14.4 crashes copying variable-length
        // string attributes from dense attribute storage (HDFGroup/hdf5#2414, fixed by #3967),
        // which a run group with more than 8 attributes uses.
        h5::Object ocpypl(H5Pcreate(H5P_OBJECT_COPY), H5Pclose, src, from);
        if (!ocpypl.valid() || H5Pset_copy_object(ocpypl.id(), H5O_COPY_WITHOUT_ATTR_FLAG) < 0 ||
            H5Ocopy(from_group.id(), ".", runs.id(), run_id.c_str(), ocpypl.id(), H5P_DEFAULT) < 0) {
            H5Eclear2(H5E_DEFAULT);
            throw Error(fmt::format("cannot copy run '{}' from '{}' into '{}'", run_id, src, dst));
        }
        copy_attrs(from_group, runs.open_group(run_id));
    }
}
}  // namespace

void copy_run(const std::string& src, const std::string& dst, const std::string& run_id) {
    h5::File out = h5::File::open(dst, h5::Mode::create_or_open);
    copy_run_into(src, out, run_id);
    out.flush();
    out.close();
}

std::vector<char> merged_image(const std::string& src, const std::string& dst, const std::string& run_id) {
    std::vector<char> bytes;
    std::error_code ec;
    if (std::filesystem::exists(dst, ec)) {
        std::ifstream in(dst, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        if (!in.good() && !in.eof()) throw Error(fmt::format("cannot read '{}'", dst));
        if (bytes.empty()) throw Error(fmt::format("'{}' is empty, not a kvlab results file", dst));
    }
    // HDF5 refuses to open an image under the name of a file that exists on disk.
    h5::File out = h5::File::open_image(dst + " (in memory)", bytes);
    copy_run_into(src, out, run_id);
    return out.image();
}

void mark_run_failed(const std::string& path, const std::string& run_id, const std::string& error) {
    h5::File f = h5::File::open(path, h5::Mode::read_write);
    if (!f.is_group("runs/" + run_id)) throw Error(fmt::format("'{}' has no run '{}'", path, run_id));
    {
        h5::Group g = f.open_group("runs/" + run_id);
        g.write_attr("status", std::string("failed"));
        g.write_attr("error", error);
    }
    f.flush();
    f.close();
}

// ---------------------------------------------------------------- checkpoints

void write_param_set(const std::string& file, const std::string& group_path, const ParamSet& p) {
    KV_CHECK(!group_path.empty() && group_path != "/", "a parameter set needs its own group, got '{}'", group_path);
    h5::File f = h5::File::open(file, h5::Mode::create_or_open);
    if (f.exists(group_path)) f.delete_link(group_path);
    {
        h5::Group g = f.require_group(group_path);
        write_params_into(g, p, true);
    }
    f.close();
}

ParamSet read_param_set(const std::string& file, const std::string& group_path) {
    h5::File f = h5::File::open(file, h5::Mode::read_only);
    if (!f.is_group(group_path)) throw Error(fmt::format("'{}' has no parameter group '{}'", file, group_path));
    return read_params_from(f.open_group(group_path));
}

// ---------------------------------------------------------------- tables

namespace {

// h5.h has no string datasets; the two helpers below are the only raw HDF5 calls of this
// file. Each id is owned by an h5::Object, so it is closed on every path.
[[noreturn]] void table_fail(const h5::Object& at, const std::string& name, std::string_view what) {
    throw Error(fmt::format("cannot {} the string column '{}/{}' in '{}'", what, at.path(), name, at.file()));
}

h5::Object vlen_utf8(const h5::Object& at, const std::string& name) {
    h5::Object t(H5Tcopy(H5T_C_S1), H5Tclose, at.file(), at.path());
    if (!t.valid() || H5Tset_size(t.id(), H5T_VARIABLE) < 0 || H5Tset_cset(t.id(), H5T_CSET_UTF8) < 0)
        table_fail(at, name, "make the type of");
    return t;
}

void write_strings(h5::Group& g, const std::string& name, const std::vector<std::string>& v) {
    h5::Object type = vlen_utf8(g, name);
    const hsize_t n = v.size();
    h5::Object space(H5Screate_simple(1, &n, nullptr), H5Sclose, g.file(), g.path());
    if (!space.valid()) table_fail(g, name, "make the dataspace of");
    h5::Object d(H5Dcreate2(g.id(), name.c_str(), type.id(), space.id(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                 H5Dclose, g.file(), g.path() + "/" + name);
    if (!d.valid()) table_fail(g, name, "create");
    std::vector<const char*> ptrs;
    for (const auto& s : v) ptrs.push_back(s.c_str());
    if (n > 0 && H5Dwrite(d.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0)
        table_fail(g, name, "write");
}

// nullopt when the dataset does not hold variable-length strings.
std::optional<std::vector<std::string>> read_strings(const h5::Dataset& d, const std::string& name) {
    h5::Object stored(H5Dget_type(d.id()), H5Tclose, d.file(), d.path());
    if (!stored.valid()) table_fail(d, name, "read the type of");
    if (H5Tget_class(stored.id()) != H5T_STRING || H5Tis_variable_str(stored.id()) <= 0) return std::nullopt;
    h5::Object type = vlen_utf8(d, name);
    h5::Object space(H5Dget_space(d.id()), H5Sclose, d.file(), d.path());
    if (!space.valid()) table_fail(d, name, "read the dataspace of");
    std::vector<char*> ptrs(static_cast<size_t>(d.size()), nullptr);
    std::vector<std::string> out;
    if (ptrs.empty()) return out;
    if (H5Dread(d.id(), type.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) < 0) table_fail(d, name, "read");
    for (char* p : ptrs) out.emplace_back(p ? p : "");
    H5Dvlen_reclaim(type.id(), space.id(), H5P_DEFAULT, ptrs.data());
    return out;
}

}  // namespace

void write_table(const std::string& file, const std::string& group_path, const Table& t) {
    KV_CHECK(!group_path.empty() && group_path != "/", "a table needs its own group, got '{}'", group_path);
    size_t rows = 0;
    for (size_t i = 0; i < t.columns.size(); ++i) {
        const auto& [name, col] = t.columns[i];
        KV_CHECK(is_valid_name(name), "column name '{}' is not a valid HDF5 link name", name);
        const size_t n = std::visit([](const auto& v) { return v.size(); }, col);
        KV_CHECK(i == 0 || n == rows, "table '{}': column '{}' has {} rows, the first has {}", group_path, name, n,
                 rows);
        rows = n;
    }
    h5::File f = h5::File::open(file, h5::Mode::create_or_open);
    if (f.exists(group_path)) f.delete_link(group_path);
    {
        h5::Group g = f.require_group(group_path);
        g.write_attrs(t.attrs);
        for (const auto& [name, col] : t.columns) {
            if (const auto* ints = std::get_if<std::vector<int64_t>>(&col))
                g.create_series(name, h5::DType::i64).append(std::span<const int64_t>(*ints));
            else if (const auto* reals = std::get_if<std::vector<double>>(&col))
                g.create_series(name, h5::DType::f64).append(std::span<const double>(*reals));
            else
                write_strings(g, name, std::get<std::vector<std::string>>(col));
        }
    }
    f.close();
}

Table read_table(const std::string& file, const std::string& group_path) {
    h5::File f = h5::File::open(file, h5::Mode::read_only);
    if (!f.is_group(group_path)) throw Error(fmt::format("'{}' has no table group '{}'", file, group_path));
    h5::Group g = f.open_group(group_path);
    Table t;
    t.attrs = g.read_attrs();
    for (const auto& name : g.list()) {
        auto bad = [&](const std::string& why) {
            return Error(fmt::format("'{}/{}' in '{}' is {}; a table holds only 1-D int, float or string datasets",
                                     g.path(), name, file, why));
        };
        if (!g.is_dataset(name)) throw bad("not a dataset");
        h5::Dataset d = g.open_dataset(name);
        if (d.shape().size() != 1) throw bad(fmt::format("{}-D", d.shape().size()));
        if (auto s = read_strings(d, name)) {
            t.columns.emplace_back(name, std::move(*s));
            continue;
        }
        const h5::DType type = d.dtype();   // an Error naming it when it is none of ours
        if (type == h5::DType::i32 || type == h5::DType::i64)
            t.columns.emplace_back(name, d.read_as_i64());
        else
            t.columns.emplace_back(name, d.read_as_f64());
    }
    return t;
}

// ---------------------------------------------------------------- gradient dumps

void write_grad_dump(const std::string& file, const GradDump& d) {
    KV_CHECK(d.params.tensors.size() == d.grads.tensors.size(), "grad dump: {} params but {} grads",
             d.params.tensors.size(), d.grads.tensors.size());
    for (size_t i = 0; i < d.params.tensors.size(); ++i)
        KV_CHECK(d.params.tensors[i].name == d.grads.tensors[i].name &&
                     d.params.tensors[i].shape == d.grads.tensors[i].shape,
                 "grad dump: param '{}' and grad '{}' differ", d.params.tensors[i].name, d.grads.tensors[i].name);
    const size_t bt = static_cast<size_t>(d.B) * static_cast<size_t>(d.T);
    KV_CHECK(d.B > 0 && d.T > 0 && d.inputs.size() == bt && d.targets.size() == bt,
             "grad dump: B={} T={} with {} inputs and {} targets", d.B, d.T, d.inputs.size(), d.targets.size());

    h5::File f = h5::File::open(file, h5::Mode::truncate);
    {
        h5::Group params = f.create_group("params"), grads = f.create_group("grads"), batch = f.create_group("batch");
        write_params_into(params, d.params, true);
        write_params_into(grads, d.grads, false);
        batch.write("inputs", {d.B, d.T}, std::span<const int32_t>(d.inputs));
        batch.write("targets", {d.B, d.T}, std::span<const int32_t>(d.targets));
        f.write_scalar("loss", d.loss);
    }
    f.close();
}

GradDump read_grad_dump(const std::string& file) {
    h5::File f = h5::File::open(file, h5::Mode::read_only);
    for (const char* part : {"params", "grads", "batch/inputs", "batch/targets", "loss"})
        if (!f.exists(part))
            throw Error(fmt::format("'{}' is not a kvlab gradient dump: '/{}' is missing", file, part));
    GradDump d;
    d.params = read_params_from(f.open_group("params"));
    d.grads = read_params_from(f.open_group("grads"));
    if (d.params.tensors.size() != d.grads.tensors.size())
        throw Error(fmt::format("gradient dump '{}': /params has {} tensors, /grads {}", file, d.params.tensors.size(),
                                d.grads.tensors.size()));
    for (size_t i = 0; i < d.params.tensors.size(); ++i) {
        const Tensor &p = d.params.tensors[i], &g = d.grads.tensors[i];
        if (p.name != g.name || p.shape != g.shape)
            throw Error(fmt::format("gradient dump '{}': /params/{} {} does not match /grads/{} {}", file, p.name,
                                    describe_shape(p.shape), g.name, describe_shape(g.shape)));
    }

    h5::Dataset inputs = f.open_dataset("batch/inputs"), targets = f.open_dataset("batch/targets");
    const auto shape = inputs.shape();
    if (shape.size() != 2 || targets.shape() != shape)
        throw Error(fmt::format("gradient dump '{}': /batch/inputs is {} and /batch/targets {}; both must be [B, T]",
                                file, describe_shape(shape), describe_shape(targets.shape())));
    d.B = static_cast<int>(shape[0]);
    d.T = static_cast<int>(shape[1]);
    d.inputs = inputs.read_i32();
    d.targets = targets.read_i32();

    h5::Dataset loss = f.open_dataset("loss");
    auto l = loss.read_f32();
    if (l.size() != 1) throw Error(fmt::format("gradient dump '{}': /loss must be a scalar", file));
    d.loss = l[0];
    return d;
}

}  // namespace kvlab
