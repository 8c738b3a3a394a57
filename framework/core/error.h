// Error types. User mistakes (config, files, command line) throw kvlab::Error and
// end the program with exit status 2 and one clean message; broken invariants throw
// InternalError via KV_CHECK (always on, carries file:line). The library never exits.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kvlab {

// A user-facing error: the message says what is wrong and, where it helps, what to do.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A config error about one dotted key. `where` is "file:line:col" when known; the
// config loader fills it in for errors raised by code that only knows the key
// (plugins validating their dimensions, for instance).
class ConfigError : public Error {
public:
    ConfigError(std::string key, std::string message, std::string where = {})
        : Error(compose(where, key, message)), key_(std::move(key)), message_(std::move(message)),
          where_(std::move(where)) {}
    const std::string& key() const { return key_; }
    const std::string& message() const { return message_; }
    const std::string& where() const { return where_; }

private:
    static std::string compose(const std::string& where, const std::string& key, const std::string& msg) {
        std::string s;
        if (!where.empty()) s += where + ": ";
        if (!key.empty()) s += key + ": ";
        return s + msg;
    }
    std::string key_, message_, where_;
};

class InternalError : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

}  // namespace kvlab

// Always-on invariant check: KV_CHECK(n > 0, "n must be positive, got {}", n).
#define KV_CHECK(cond, ...)                                                                     \
    do {                                                                                        \
        if (!(cond))                                                                            \
            throw ::kvlab::InternalError(fmt::format("{}:{}: check failed: {}: {}", __FILE__, __LINE__, \
                                                     #cond, fmt::format(__VA_ARGS__)));         \
    } while (0)
