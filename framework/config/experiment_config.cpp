// ExperimentConfig helpers and the value rules of config.md (validate). The YAML side is
// in loader.cpp and yaml_reader.cpp.
#include "config/experiment_config.h"

#include "config/loader.h"
#include "core/error.h"

#include <fmt/format.h>

#include <cctype>
#include <cmath>

namespace kvlab {

int64_t ModelConfig::plugin_int(const std::string& key, int64_t fallback) const {
    const auto it = plugin.find(key);
    if (it == plugin.end()) return fallback;
    const double v = it->second;
    if (!std::isfinite(v) || v != std::floor(v) || std::fabs(v) > 9007199254740992.0)
        throw ConfigError("model." + key, fmt::format("expected an integer, got {}", v));
    return static_cast<int64_t>(v);
}

int64_t ModelConfig::plugin_int(const std::string& key) const {
    if (!has(key))
        throw ConfigError("model." + key, fmt::format("missing; attention \"{}\" needs it", attention));
    return plugin_int(key, 0);
}

std::string ExperimentConfig::results_path() const {
    return output.path.empty() ? "results/" + name + ".h5" : output.path;
}

namespace {

// One rule: check(cond, key, "sentence").
struct Checker {
    std::vector<ConfigError> errors;
    template <class... Args>
    void operator()(bool ok, const char* key, fmt::format_string<Args...> sentence, Args&&... args) {
        if (!ok) errors.emplace_back(key, fmt::format(sentence, std::forward<Args>(args)...));
    }
};

bool file_name_safe(const std::string& s) {
    if (s.empty() || s == "." || s == "..") return false;
    for (const char c : s)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-')) return false;
    return true;
}

void validate_top(const ExperimentConfig& c, Checker& check) {
    check(file_name_safe(c.name), "name",
          "must be usable as a file and HDF5 group name (letters, digits, '_', '.', '-'), got \"{}\"", c.name);
}

void validate_model(const ModelConfig& m, Checker& check) {
    check(m.vocab_size == 256, "model.vocab_size", "must be 256 (kvlab's tokenizer is bytes), got {}", m.vocab_size);
    check(m.d_model > 0, "model.d_model", "must be > 0, got {}", m.d_model);
    check(m.n_layers > 0, "model.n_layers", "must be > 0, got {}", m.n_layers);
    check(m.n_heads > 0, "model.n_heads", "must be > 0, got {}", m.n_heads);
    check(m.head_dim > 0, "model.head_dim", "must be > 0, got {}", m.head_dim);
    check(m.mlp_hidden > 0, "model.mlp_hidden", "must be > 0, got {}", m.mlp_hidden);
    check(m.rope_theta > 0, "model.rope_theta", "must be > 0, got {}", m.rope_theta);
    check(m.norm_eps > 0, "model.norm_eps", "must be > 0, got {}", m.norm_eps);
}

void validate_data(const DataConfig& d, Checker& check) {
    check(d.seq_len >= 2, "data.seq_len", "must be >= 2 (an input and a next-byte target), got {}", d.seq_len);
    check(d.val_fraction > 0 && d.val_fraction < 1, "data.val_fraction", "must be in (0, 1), got {}",
          d.val_fraction);
}

void validate_train(const TrainConfig& t, Checker& check) {
    check(t.steps >= 1, "train.steps", "must be >= 1, got {}", t.steps);
    check(t.batch_size >= 1, "train.batch_size", "must be >= 1, got {}", t.batch_size);
    check(t.lr > 0, "train.lr", "must be > 0, got {}", t.lr);
    check(t.min_lr >= 0 && t.min_lr <= t.lr, "train.min_lr", "must be in [0, lr = {}], got {}", t.lr, t.min_lr);
    check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0, got {}", t.warmup_steps);
    check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0, got {}", t.weight_decay);
    check(t.beta1 >= 0 && t.beta1 < 1 && t.beta2 >= 0 && t.beta2 < 1, "train.betas",
          "both must be in [0, 1), got [{}, {}]", t.beta1, t.beta2);
    check(t.adam_eps > 0, "train.adam_eps", "must be > 0, got {}", t.adam_eps);
    check(t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = no clipping), got {}", t.grad_clip);
    check(t.eval_every >= 1, "train.eval_every", "must be >= 1, got {}", t.eval_every);
    check(t.eval_batches >= 1, "train.eval_batches", "must be >= 1, got {}", t.eval_batches);
    check(t.log_every >= 1, "train.log_every", "must be >= 1, got {}", t.log_every);
    check(t.threads >= 0, "train.threads", "must be >= 0 (0 = all cores), got {}", t.threads);
    check(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0 (0 = no checkpoints), got {}",
          t.checkpoint_every);
}

}  // namespace

std::vector<ConfigError> validate(const ExperimentConfig& cfg) {
    Checker check;
    validate_top(cfg, check);
    validate_model(cfg.model, check);
    validate_data(cfg.data, check);
    validate_train(cfg.train, check);
    return std::move(check.errors);
}

}  // namespace kvlab
