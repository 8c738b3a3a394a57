// Training checkpoints (see train_checkpoint.h).
#include "io/train_checkpoint.h"

#include "core/error.h"
#include "io/h5.h"
#include "io/safe_write.h"

#include <fmt/format.h>

#include <filesystem>

namespace kvlab {
namespace {

namespace fs = std::filesystem;

constexpr const char* kKind = "kvlab train checkpoint";
constexpr int64_t kFormatVersion = 1;

template <class T>
void write_series(h5::Group& g, const std::string& name, h5::DType type, const std::vector<T>& v) {
    h5::Dataset d = g.create_series(name, type);
    if (!v.empty()) d.append(std::span<const T>(v));
}

}  // namespace

std::string checkpoint_path(const std::string& results, const std::string& run_id) {
    const fs::path p(results);
    return (p.parent_path() / (p.stem().string() + ".ckpt") / (run_id + ".h5")).string();
}

void write_train_checkpoint(const std::string& path, const TrainCheckpoint& c) {
    const fs::path dir = fs::path(path).parent_path();
    std::error_code ec;
    if (!dir.empty()) fs::create_directories(dir, ec);
    if (ec) throw Error(fmt::format("cannot create the checkpoint directory '{}': {}", dir.string(), ec.message()));
    const std::string tmp = path + ".tmp";
    try {
        {
            h5::File f = h5::File::open(tmp, h5::Mode::truncate);
            f.write_attrs({{"kind", std::string(kKind)},
                           {"format_version", kFormatVersion},
                           {"run_id", c.run_id},
                           {"config", c.config},
                           {"step", c.step},
                           {"adam_t", c.adam_t},
                           {"data_rng", c.data_rng},
                           {"threads", c.threads},
                           {"train_seconds", c.train_seconds},
                           {"wall_seconds", c.wall_seconds},
                           {"tokens", c.tokens},
                           {"last_eval_loss", c.last_eval_loss}});
            if (c.last_eval_accuracy) f.write_attr("last_eval_accuracy", *c.last_eval_accuracy);
            h5::Group train = f.create_group("train"), eval = f.create_group("eval");
            write_series(train, "step", h5::DType::i64, c.train_step);
            write_series(train, "loss", h5::DType::f64, c.train_loss);
            write_series(train, "lr", h5::DType::f64, c.train_lr);
            write_series(eval, "step", h5::DType::i64, c.eval_step);
            write_series(eval, "loss", h5::DType::f64, c.eval_loss);
            if (!c.eval_accuracy.empty()) write_series(eval, "accuracy", h5::DType::f64, c.eval_accuracy);
            train = h5::Group();
            eval = h5::Group();
            f.close();
        }
        write_param_set(tmp, "/params", c.params);
        write_param_set(tmp, "/optim/m", c.adam_m);
        write_param_set(tmp, "/optim/v", c.adam_v);
        commit_file(tmp, path);
    } catch (...) {
        fs::remove(tmp, ec);
        throw;
    }
}

TrainCheckpoint read_train_checkpoint(const std::string& path) {
    TrainCheckpoint c;
    auto bad = [&](const std::string& why) {
        return Error(fmt::format("'{}' is not a usable kvlab training checkpoint: {} (delete it to start the run over)",
                                 path, why));
    };
    {
        h5::File f = h5::File::open(path, h5::Mode::read_only);
        const h5::Values attrs = f.read_attrs();
        auto find = [&](const char* name) -> const h5::Value* {
            for (const auto& [k, v] : attrs)
                if (k == name) return &v;
            return nullptr;
        };
        auto text = [&](const char* name) {
            const auto* v = find(name);
            const auto* s = v ? std::get_if<std::string>(v) : nullptr;
            if (!s) throw bad(fmt::format("attribute '{}' is missing or not a string", name));
            return *s;
        };
        auto integer = [&](const char* name) {
            const auto* v = find(name);
            const auto* i = v ? std::get_if<int64_t>(v) : nullptr;
            if (!i) throw bad(fmt::format("attribute '{}' is missing or not an integer", name));
            return *i;
        };
        auto real = [&](const char* name) {
            const auto* v = find(name);
            const auto* d = v ? std::get_if<double>(v) : nullptr;
            if (!d) throw bad(fmt::format("attribute '{}' is missing or not a float", name));
            return *d;
        };
        if (text("kind") != kKind) throw bad(fmt::format("its kind is '{}'", text("kind")));
        if (integer("format_version") != kFormatVersion)
            throw bad(fmt::format("format_version {}; this kvlab reads {}", integer("format_version"), kFormatVersion));
        c.run_id = text("run_id");
        c.config = text("config");
        c.data_rng = text("data_rng");
        c.step = integer("step");
        c.adam_t = integer("adam_t");
        c.threads = integer("threads");
        c.tokens = integer("tokens");
        c.train_seconds = real("train_seconds");
        c.wall_seconds = real("wall_seconds");
        c.last_eval_loss = real("last_eval_loss");
        if (find("last_eval_accuracy")) c.last_eval_accuracy = real("last_eval_accuracy");
        if (c.step < 0 || c.adam_t < 0) throw bad(fmt::format("negative step {} or adam_t {}", c.step, c.adam_t));
        for (const char* part : {"train/step", "train/loss", "train/lr", "eval/step", "eval/loss", "params", "optim/m",
                                 "optim/v"})
            if (!f.exists(part)) throw bad(fmt::format("'/{}' is missing", part));
        c.train_step = f.open_dataset("train/step").read_as_i64();
        c.train_loss = f.open_dataset("train/loss").read_as_f64();
        c.train_lr = f.open_dataset("train/lr").read_as_f64();
        c.eval_step = f.open_dataset("eval/step").read_as_i64();
        c.eval_loss = f.open_dataset("eval/loss").read_as_f64();
        if (f.is_dataset("eval/accuracy")) c.eval_accuracy = f.open_dataset("eval/accuracy").read_as_f64();
    }
    if (c.train_loss.size() != c.train_step.size() || c.train_lr.size() != c.train_step.size())
        throw bad("the train/ series differ in length");
    if (c.eval_loss.size() != c.eval_step.size() ||
        (!c.eval_accuracy.empty() && c.eval_accuracy.size() != c.eval_step.size()))
        throw bad("the eval/ series differ in length");
    c.params = read_param_set(path, "/params");
    c.adam_m = read_param_set(path, "/optim/m");
    c.adam_v = read_param_set(path, "/optim/v");
    for (const ParamSet* s : {&c.adam_m, &c.adam_v}) {
        bool same = s->tensors.size() == c.params.tensors.size();
        for (size_t i = 0; same && i < s->tensors.size(); ++i)
            same = s->tensors[i].name == c.params.tensors[i].name && s->tensors[i].shape == c.params.tensors[i].shape;
        if (!same) throw bad("the optimizer moments do not match the parameters in names or shapes");
    }
    return c;
}

}  // namespace kvlab
