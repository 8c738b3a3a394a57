// ExperimentConfig helpers and the value rules of config.md (validate). The YAML side is
// in loader.cpp and yaml_reader.cpp.
#include "config/experiment_config.h"

#include "config/loader.h"
#include "core/error.h"

#include <fmt/format.h>

#include <cctype>
#include <cmath>

#include <unistd.h>

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

// Physical memory of this machine in bytes (24 GiB when the system cannot say).
double physical_memory_bytes() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? double(pages) * double(page) : 24.0 * (1 << 30);
}

double gib(double bytes) { return bytes / double(1 << 30); }

// A lower bound on the parameter count of any attention variant with these dimensions:
// the byte embedding, and per layer the MLP (two d_model x mlp_hidden matrices at least),
// the output projection (n_heads·head_dim x d_model) and one d_model-wide matrix per
// plugin key (n_kv_heads, the latent and rope ranks). Doubles: the dimensions may be absurd.
double min_param_count(const ModelConfig& m) {
    const double d = m.d_model, qdim = double(m.n_heads) * double(m.head_dim);
    double per_layer = 2.0 * d * m.mlp_hidden + qdim * d;
    for (const auto& [key, v] : m.plugin)
        if (std::isfinite(v) && v > 0) per_layer += d * v;
    return double(m.vocab_size) * d + double(m.n_layers) * per_layer;
}

void validate_model_size(const ModelConfig& m, Checker& check) {
    if (m.d_model <= 0 || m.n_layers <= 0 || m.n_heads <= 0 || m.head_dim <= 0 || m.mlp_hidden <= 0) return;
    // Sizes that int arithmetic inside the model (n_heads·head_dim, ...) must not overflow.
    const double limit = 1 << 24;
    check(double(m.n_heads) * m.head_dim <= limit, "model.n_heads", "n_heads x head_dim = {} is more than kvlab allows "
          "({}); got n_heads {}, head_dim {}", double(m.n_heads) * m.head_dim, limit, m.n_heads, m.head_dim);
}

void check_weights_memory(const ModelConfig& m, Checker& check) {
    if (m.d_model <= 0 || m.n_layers <= 0 || m.n_heads <= 0 || m.head_dim <= 0 || m.mlp_hidden <= 0) return;
    const double weights = 4.0 * min_param_count(m), ram = physical_memory_bytes();
    check(weights <= ram, "model", "these dimensions need at least {:.3g} float32 parameters ({:.1f} GiB of "
          "weights alone), more than this machine's {:.1f} GiB of memory", weights / 4, gib(weights), gib(ram));
}

// Training holds weights, gradients and two Adam moments (4 copies), and per layer at
// least the residual stream of every token of a batch and the attention probabilities.
void validate_train_size(const ExperimentConfig& c, Checker& check) {   // after check_weights_memory
    const auto& m = c.model;
    if (m.d_model <= 0 || m.n_layers <= 0 || m.n_heads <= 0 || c.data.seq_len < 2 || c.train.batch_size < 1) return;
    const double ram = physical_memory_bytes();
    const double state = 16.0 * min_param_count(m);
    if (state > ram) return;   // validate_model_size reports the weights already when they alone are too big
    const double B = c.train.batch_size, T = c.data.seq_len;
    const double acts = 4.0 * B * T * m.n_layers * (m.d_model + m.n_heads * T);
    check(state + acts <= ram, "train.batch_size", "batch_size {} x seq_len {} on this model needs at least {:.1f} GiB "
          "for weights, gradients, optimizer state and activations, more than this machine's {:.1f} GiB of memory",
          c.train.batch_size, c.data.seq_len, gib(state + acts), gib(ram));
}

void validate_model(const ModelConfig& m, Checker& check) {
    check(m.vocab_size == 256, "model.vocab_size", "must be 256 (kvlab's tokenizer is bytes), got {}", m.vocab_size);
    check(m.d_model > 0, "model.d_model", "must be > 0, got {}", m.d_model);
    check(m.n_layers > 0, "model.n_layers", "must be > 0, got {}", m.n_layers);
    check(m.n_heads > 0, "model.n_heads", "must be > 0, got {}", m.n_heads);
    check(m.head_dim > 0, "model.head_dim", "must be > 0, got {}", m.head_dim);
    check(m.mlp_hidden > 0, "model.mlp_hidden", "must be > 0, got {}", m.mlp_hidden);
    check(std::isfinite(m.rope_theta) && m.rope_theta > 0, "model.rope_theta", "must be > 0, got {}", m.rope_theta);
    check(std::isfinite(m.norm_eps) && m.norm_eps > 0, "model.norm_eps", "must be > 0, got {}", m.norm_eps);
    validate_model_size(m, check);
}

void validate_data(const DataConfig& d, Checker& check) {
    check(d.seq_len >= 2, "data.seq_len", "must be >= 2 (an input and a next-byte target), got {}", d.seq_len);
    check(d.val_fraction > 0 && d.val_fraction < 1, "data.val_fraction", "must be in (0, 1), got {}",
          d.val_fraction);
}

void validate_train(const TrainConfig& t, Checker& check) {
    check(t.steps >= 1, "train.steps", "must be >= 1, got {}", t.steps);
    check(t.batch_size >= 1, "train.batch_size", "must be >= 1, got {}", t.batch_size);
    check(std::isfinite(t.lr) && t.lr > 0, "train.lr", "must be > 0, got {}", t.lr);
    check(t.min_lr >= 0 && t.min_lr <= t.lr, "train.min_lr", "must be in [0, lr = {}], got {}", t.lr, t.min_lr);
    check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0, got {}", t.warmup_steps);
    check(std::isfinite(t.weight_decay) && t.weight_decay >= 0, "train.weight_decay", "must be >= 0, got {}", t.weight_decay);
    check(t.beta1 >= 0 && t.beta1 < 1 && t.beta2 >= 0 && t.beta2 < 1, "train.betas",
          "both must be in [0, 1), got [{}, {}]", t.beta1, t.beta2);
    check(std::isfinite(t.adam_eps) && t.adam_eps > 0, "train.adam_eps", "must be > 0, got {}", t.adam_eps);
    check(std::isfinite(t.grad_clip) && t.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = no clipping), got {}", t.grad_clip);
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

std::vector<ConfigError> check_memory(const ModelConfig& m) {
    Checker check;
    check_weights_memory(m, check);
    return std::move(check.errors);
}

std::vector<ConfigError> check_memory(const ExperimentConfig& cfg) {
    Checker check;
    check_weights_memory(cfg.model, check);
    if (check.errors.empty()) validate_train_size(cfg, check);
    return std::move(check.errors);
}

std::vector<ConfigError> validate_model(const ModelConfig& m) {
    Checker check;
    validate_model(m, check);
    return std::move(check.errors);
}

}  // namespace kvlab
