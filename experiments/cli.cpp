#include "cli.h"

#include "default_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace kvlab::cli {

std::string Args::opt(const std::string& k, const std::string& fallback) const {
    auto it = options.find(k);
    return it == options.end() ? fallback : it->second;
}

double Args::num(const std::string& k, double fallback) const {
    auto it = options.find(k);
    if (it == options.end()) return fallback;
    char* end = nullptr;
    const double v = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || *end != '\0') throw Error(fmt::format("--{} expects a number, got \"{}\"", k, it->second));
    return v;
}

Args parse_args(int argc, char** argv, int first, const std::set<std::string>& valued, const std::set<std::string>& flags,
                const std::string& cmd) {
    Args a;
    for (int i = first; i < argc; ++i) {
        std::string s = argv[i];
        if (s == "--set") {
            if (i + 1 >= argc) throw Error("--set needs key=value (e.g. --set model.d_model=256)");
            a.overrides.push_back(parse_override(argv[++i]));
        } else if (s.rfind("--set=", 0) == 0) {
            a.overrides.push_back(parse_override(s.substr(6)));
        } else if (s.rfind("--", 0) == 0) {
            std::string key = s.substr(2), val;
            const auto eq = key.find('=');
            if (eq != std::string::npos) val = key.substr(eq + 1), key = key.substr(0, eq);
            if (valued.count(key)) {
                if (eq == std::string::npos) {
                    if (i + 1 >= argc) throw Error(fmt::format("{}: --{} needs a value (see: kvlab {} --help)", cmd, key, cmd));
                    val = argv[++i];
                }
                a.options[key] = val;
            } else if (flags.count(key) && eq == std::string::npos) {
                a.flags.insert(key);
            } else {
                throw Error(fmt::format("{}: unknown option {} (see: kvlab {} --help)", cmd, s, cmd));
            }
        } else {
            a.positional.push_back(s);
        }
    }
    return a;
}

bool wants_help(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i)
        if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") return true;
    return false;
}

ExperimentConfig load(const Args& a, const std::string& cmd, bool allow_default) {
    if (a.positional.empty()) {
        if (!allow_default) throw Error(fmt::format("{}: missing CONFIG (see: kvlab {} --help)", cmd, cmd));
        return load_config_text(kDefaultConfig, "<embedded default>", a.overrides);
    }
    if (a.positional.size() > 1)
        throw Error(fmt::format("{}: expected one CONFIG, got {} arguments (see: kvlab {} --help)", cmd,
                                a.positional.size(), cmd));
    ExperimentConfig cfg = load_config(a.positional[0], a.overrides);
    // Every command but cache-table builds the model (and most train it), so the config
    // must fit in memory; cache-table only evaluates formulas, on production-size configs too.
    if (cmd != "cache-table")
        for (const auto& e : check_memory(cfg)) throw Error(fmt::format("{}: {}", a.positional[0], e.what()));
    return cfg;
}

int64_t int_opt(const Args& a, const std::string& key, int64_t fallback, int64_t lo, int64_t hi, const std::string& cmd) {
    const double v = a.num(key, static_cast<double>(fallback));
    if (v != std::floor(v) || v < static_cast<double>(lo) || v > static_cast<double>(hi))
        throw Error(fmt::format("--{} must be an integer in {}..{}, got {} (see: kvlab {} --help)", key, lo, hi,
                                a.opt(key), cmd));
    return static_cast<int64_t>(v);
}

std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        const size_t end = std::min(s.find(',', start), s.size());
        if (end > start) out.push_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

}  // namespace kvlab::cli
