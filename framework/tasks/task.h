// Tasks produce batches of byte tokens (vocab 256). A task is a registered plugin like
// attention: tasks/registry.cpp holds the list.
#pragma once

#include "core/rng.h"

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace kvlab {

struct DataConfig;
struct KeySpec;

// inputs, targets: [B*T] row-major, batch-major. A target of -1 is not scored.
struct Batch {
    int B = 0, T = 0;
    std::vector<int32_t> inputs, targets;
};

class Task {
public:
    virtual ~Task() = default;
    virtual std::string_view name() const = 0;
    // A fresh training batch drawn with rng.
    virtual void train_batch(Rng& rng, int B, Batch& out) const = 0;
    // The i-th fixed validation batch (the same for every call, run and variant).
    virtual void val_batch(int i, int B, Batch& out) const = 0;
    // True when the task scores answers (reports accuracy over non-ignored targets).
    virtual bool scores_answers() const = 0;
};

struct TaskEntry {
    std::string_view name;
    std::string_view description;
    std::vector<std::string_view> own_keys;   // keys under data: that this task reads
    std::unique_ptr<Task> (*make)(const DataConfig&);
};

const std::vector<TaskEntry>& task_registry();
const TaskEntry& find_task(std::string_view name);   // ConfigError("data.task") listing names
std::unique_ptr<Task> make_task(const DataConfig& cfg);

}  // namespace kvlab
