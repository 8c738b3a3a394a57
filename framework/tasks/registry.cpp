// The list of tasks. Add a line here (and the source to CMakeLists.txt).
#include "tasks/task.h"

#include "config/experiment_config.h"
#include "core/error.h"

#include <fmt/format.h>

namespace kvlab {

std::unique_ptr<Task> make_text_task(const DataConfig&);   // text.cpp
std::unique_ptr<Task> make_mqar_task(const DataConfig&);   // mqar.cpp

const std::vector<TaskEntry>& task_registry() {
    static const std::vector<TaskEntry> entries = {
        {"mqar", "multi-query associative recall (Zoology): key-value pairs, then queries; scores answers",
         {"num_kv_pairs", "num_queries"}, make_mqar_task},
        {"text", "byte-level language modelling of a UTF-8 text file (train/validation split)",
         {"path", "val_fraction"}, make_text_task},
    };
    return entries;
}

const TaskEntry& find_task(std::string_view name) {
    for (const auto& e : task_registry())
        if (e.name == name) return e;
    std::string names;
    for (const auto& e : task_registry()) names += (names.empty() ? "" : ", ") + std::string(e.name);
    throw ConfigError("data.task", fmt::format("unknown task \"{}\"; registered: {} (see: kvlab list)", name, names));
}

std::unique_ptr<Task> make_task(const DataConfig& cfg) { return find_task(cfg.task).make(cfg); }

}  // namespace kvlab
