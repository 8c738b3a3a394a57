// Typed experiment configuration (config.md). Parsed once from YAML at the edge
// (config/loader.cpp); nothing else in kvlab sees a YAML node.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kvlab {

// model: — the common keys of model.md, plus the keys owned by attention plugins.
struct ModelConfig {
    std::string attention = "mha";
    int vocab_size = 256;
    int d_model = 0;
    int n_layers = 0;
    int n_heads = 0;
    int head_dim = 0;
    int mlp_hidden = 0;
    double rope_theta = 10000.0;
    double norm_eps = 1e-6;
    bool tie_embeddings = false;
    // Keys owned by attention plugins (n_kv_heads, kv_lora_rank, q_lora_rank,
    // qk_rope_head_dim, ...), as given in the file. The registry says which plugin owns
    // which key; a plugin reads its own with plugin_int().
    std::map<std::string, double> plugin;

    bool has(const std::string& key) const { return plugin.count(key) != 0; }
    // The integer value of a plugin key, or `fallback` when absent. Throws ConfigError
    // ("model.<key>") when the value is not an integer.
    int64_t plugin_int(const std::string& key, int64_t fallback) const;
    // Same, but the key is required.
    int64_t plugin_int(const std::string& key) const;
};

// data: — task selection and the task's own keys.
struct DataConfig {
    std::string task = "mqar";
    int seq_len = 64;
    // text
    std::string path;               // as written in the config
    std::string resolved_path;      // after lookup (as given, next to the config, $KVLAB_DATA_DIR)
    double val_fraction = 0.1;
    // mqar (Zoology, arXiv 2312.04927): keys 1..127, values 128..255
    int num_kv_pairs = 8;
    int num_queries = 0;            // 0 = one query per key, as many as fit
    // Numeric keys owned by a registered task (TaskEntry::own_keys) that have no typed
    // field above, as given in the file (the loader stores them here, like ModelConfig::plugin).
    std::map<std::string, double> plugin;
};

struct TrainConfig {
    int steps = 1000;
    int batch_size = 32;
    double lr = 1e-3;
    double min_lr = 1e-4;
    int warmup_steps = 100;
    double weight_decay = 0.1;
    double beta1 = 0.9, beta2 = 0.95;
    double adam_eps = 1e-8;
    double grad_clip = 1.0;         // 0 = no clipping
    int eval_every = 100;
    int eval_batches = 50;
    int log_every = 10;             // rows of train/loss are written every log_every steps
    int threads = 0;                // 0 = all cores
    // Start from these weights instead of the random init (fine-tuning): a checkpoint spec
    // of model/checkpoint.h's read_checkpoint (FILE.h5, FILE.h5:/runs/<id>, FILE.h5:/group).
    // Only the weights: the optimizer state and the schedule start afresh. "" = random init.
    std::string init_from;          // as written in the config
    std::string init_from_resolved; // after lookup: as given, then next to the config
    int checkpoint_every = 0;       // steps between training checkpoints (resume); 0 = none
};

struct OutputConfig {
    std::string path;               // default results/<name>.h5
};

// One swept key and its values, each value kept as YAML text so that a point can be
// applied to the tree like a --set override and validated by the same code.
struct SweepAxis {
    std::string key;                // dotted; several keys joined by "+" are tied (zipped)
    std::vector<std::string> values;
};

struct ExperimentConfig {
    std::string name = "run";
    uint64_t seed = 0;
    ModelConfig model;
    DataConfig data;
    TrainConfig train;
    OutputConfig output;
    std::vector<SweepAxis> sweep;

    // The results group of this run (/runs/<run_id>). A single config: `name`. A sweep
    // point (expand_sweep): the swept values as "<last key segment>-<value>" joined by
    // "_", e.g. "attention-mla_seed-1" for {model.attention: mla, seed: 1}; characters
    // outside [A-Za-z0-9_.-] become '-'. Not a config key: dump_config writes it as a comment.
    std::string run_id = "run";

    std::string source;             // the config file ("" for an embedded default)
    std::string resolved_yaml;      // the fully resolved config (what --dump-config prints)
    // What the config was loaded from, so expand_sweep can re-load each point with the
    // file's positions in its messages: the YAML text and the --set arguments ("key=value").
    std::string source_text;
    std::vector<std::string> overrides;

    std::string results_path() const;
};

}  // namespace kvlab
