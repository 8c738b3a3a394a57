// Loading experiment configs (config.md): YAML file → --set overrides → typed
// ExperimentConfig → validation (value rules, then the attention plugin and the task
// check their own keys). Every problem of a pass is reported at once, one line each:
//   configs/cmp.yaml:7:15: model.n_kv_heads: expected an integer, got "two"
// A single problem is thrown as ConfigError, several as one Error; a missing or
// unreadable file, or YAML that does not parse, is an Error naming the file.
#pragma once

#include "config/experiment_config.h"
#include "core/error.h"

#include <string>
#include <vector>

namespace kvlab {

// One `--set key=value`. The value is parsed as YAML (a scalar, or flow like [0.9, 0.95])
// and put into the tree before typed parsing, so it gets the same checks; messages about
// it say "<--set>" instead of a file position. An unknown key is an error like in a file.
// Keys under sweep: take the rest as one key: `--set sweep.seed=[0,1,2]`.
struct Override {
    std::string key;
    std::string value;
};

// "model.d_model=256" → {"model.d_model", "256"}. Error if there is no '=' or no key.
Override parse_override(const std::string& arg);

// Reads and validates a config file. Priority: defaults < file < overrides.
ExperimentConfig load_config(const std::string& path, const std::vector<Override>& overrides = {});
// Same, from text. `source_name` appears in messages, and its directory is where a
// relative data.path is looked up second (after the path as given, before $KVLAB_DATA_DIR).
ExperimentConfig load_config_text(const std::string& yaml_text, const std::string& source_name,
                                  const std::vector<Override>& overrides = {});

// The fully resolved YAML (every key, defaults included): what --dump-config prints and
// the results' `config` attribute. Loading it back gives the same config (run_id aside,
// which is a comment). Floats are written so that PyYAML reads them as floats too.
std::string dump_config(const ExperimentConfig& cfg);

// The points of the config's sweep (config.md): the Cartesian product of the sweep axes
// in file order (the first axis varies slowest). An axis "a.b+c.d: [[x, 1], [y, 2]]" ties
// its keys (the values are zipped). Each point is the base re-loaded with its values
// applied like --set overrides (after the base's own overrides), so it passes the same
// checks; all points are validated here and every problem is thrown at once, each line
// ending in "(sweep point <run_id>)". A point has the base's name, an empty sweep and
// run_id "<last key segment>-<value>" joined by "_" (see ExperimentConfig::run_id).
// Without a sweep: {base}.
std::vector<ExperimentConfig> expand_sweep(const ExperimentConfig& base);

// The value rules of config.md, one sentence per rule; returns one ConfigError (dotted key,
// sentence, no position) per broken rule. Plugin- and task-specific rules live in the
// plugins' factories.
std::vector<ConfigError> validate(const ExperimentConfig& cfg);
// The model part of validate(), also applied to the hyper-parameters a checkpoint's
// attributes describe: positive dimensions, vocab_size 256, n_heads·head_dim small enough
// for the model's int sizes.
std::vector<ConfigError> validate_model(const ModelConfig& m);
// Whether the model's weights (checkpoints: with_training false), or the weights, gradients,
// Adam state and a batch's activations (with_training), can fit in this machine's memory:
// lower bounds computed in floating point, so that absurd dimensions are reported instead
// of overflowing integer sizes, failing an allocation or running for ever. One ConfigError
// per problem, keyed "model" or "train.batch_size".
std::vector<ConfigError> check_memory(const ModelConfig& m);
std::vector<ConfigError> check_memory(const ExperimentConfig& cfg);

}  // namespace kvlab
