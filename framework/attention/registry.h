// The registry of attention plugins: an explicit list in registry.cpp (no static
// self-registration, which breaks in static libraries). Conformance tests, `kvlab list`,
// config validation and checkpoints iterate it, so a new plugin needs one line there.
#pragma once

#include "attention/attention.h"

#include <memory>
#include <string_view>
#include <vector>

namespace kvlab {

// A config key owned by a plugin (under model:). Values are numbers; plugins read them
// with ModelConfig::plugin_int.
struct KeySpec {
    std::string_view name;
    std::string_view help;
};

struct AttentionEntry {
    std::string_view name;
    std::string_view description;
    std::vector<KeySpec> own_keys;
    std::unique_ptr<Attention<float>> (*make_float)(const ModelConfig&);
    std::unique_ptr<Attention<double>> (*make_double)(const ModelConfig&);
};

const std::vector<AttentionEntry>& attention_registry();
// Throws ConfigError("model.attention") listing every registered name.
const AttentionEntry& find_attention(std::string_view name);

// Builds the plugin named by cfg.attention. Throws ConfigError for impossible dimensions.
template <class S>
std::unique_ptr<Attention<S>> make_attention(const ModelConfig& cfg);

}  // namespace kvlab
