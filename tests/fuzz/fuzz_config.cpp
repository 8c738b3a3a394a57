// libFuzzer target: YAML text -> load_config_text (+ --set overrides) -> validate ->
// dump -> reload. Every outcome must be a config or a kvlab::Error; anything else (a
// crash, a sanitizer report, an InternalError, std::bad_alloc, any other exception)
// is a finding. Input: the YAML text, optionally followed by a line "#--set" and one
// override per line ("key=value").
#include "config/experiment_config.h"
#include "config/loader.h"
#include "core/error.h"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    std::vector<kvlab::Override> sets;
    if (const auto cut = text.find("\n#--set\n"); cut != std::string::npos) {
        std::string rest = text.substr(cut + 8);
        text.resize(cut);
        size_t start = 0;
        while (start <= rest.size()) {
            size_t end = rest.find('\n', start);
            if (end == std::string::npos) end = rest.size();
            try {
                sets.push_back(kvlab::parse_override(rest.substr(start, end - start)));
            } catch (const kvlab::Error&) {
            }
            start = end + 1;
        }
    }
    try {
        const kvlab::ExperimentConfig cfg = kvlab::load_config_text(text, "<fuzz>", sets);
        (void)kvlab::validate(cfg);
        (void)kvlab::check_memory(cfg);
        // The resolved dump of a valid config is itself a valid config describing the same run.
        const kvlab::ExperimentConfig again = kvlab::load_config_text(cfg.resolved_yaml, "<resolved>", {});
        if (again.resolved_yaml != cfg.resolved_yaml) __builtin_trap();
        // Sweeps: expand only small ones (the product of the axes' lengths).
        size_t points = 1;
        for (const auto& axis : cfg.sweep) points *= std::max<size_t>(axis.values.size(), 1);
        if (points <= 16) (void)kvlab::expand_sweep(cfg);
    } catch (const kvlab::Error&) {
    }
    return 0;
}
