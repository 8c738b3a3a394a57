// A small reader over a parsed YAML tree, used only by the config loader (loader.cpp).
// It walks CONST nodes (a non-const operator[] inserts keys), knows the dotted path of
// every value, records which keys were consumed, and collects every problem of a pass
// so they can be thrown together, one line each:
//   configs/cmp.yaml:7:15: model.n_kv_heads: expected an integer, got "two"
// Positions come from YAML::Node::Mark() (0-based, printed 1-based). Values that came
// from --set (or a sweep point) are reported at their origin ("<--set>") instead.
//
//   YamlContext ctx("configs/cmp.yaml");
//   YamlReader root(tree, ctx);
//   auto m = root.child("model");
//   cfg.d_model = m.get<int>("d_model");                        // required
//   cfg.rope_theta = m.get_or<double>("rope_theta", 10000.0);   // default
//   m.finish();                    // unknown keys of model: become errors
//   ctx.throw_if_errors();         // one ConfigError, or one Error with one line per problem
// Also the few YAML text writers that the resolved dump and sweep values need.
#pragma once

#include <yaml-cpp/yaml.h>

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace kvlab {

// Shared state of one pass: the source name, where overridden values came from, and
// the problems found so far.
class YamlContext {
public:
    explicit YamlContext(std::string source) : source_(std::move(source)) {}

    const std::string& source() const { return source_; }

    // Values at `dotted` (and below it) came from somewhere other than the file, e.g.
    // "<--set>"; messages about them use `where`.
    void add_origin(const std::string& dotted, std::string where) { origins_[dotted] = std::move(where); }
    // The origin of `dotted` or of one of its parent keys, if any.
    std::optional<std::string> origin(const std::string& dotted) const;

    // "source:line:col" of a mark (1-based), or just the source if the mark is unknown.
    std::string position(const YAML::Mark& mark) const;

    // Records one problem. `where` may be empty; line/col (0-based) order the report.
    void error(std::string where, std::string key, std::string message, int line = -1, int col = -1);
    // Records a problem at `node` (or at the origin of `dotted`).
    void error_at(const YAML::Node& node, const std::string& dotted, std::string message);

    bool ok() const { return problems_.empty(); }
    size_t count() const { return problems_.size(); }
    // Throws if anything was recorded: a ConfigError for one problem, else an Error with
    // one line per problem, ordered by position in the file (--set problems last).
    void throw_if_errors();

private:
    struct Problem {
        std::string where, key, message;
        int line, col;
    };
    std::string source_;
    std::map<std::string, std::string> origins_;
    std::vector<Problem> problems_;
};

// A view of one map (section) of the tree at a dotted path.
class YamlReader {
public:
    // The document root (must be a map; anything else is reported).
    YamlReader(const YAML::Node& root, YamlContext& ctx);

    const std::string& path() const { return path_; }
    std::string dotted(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
    YamlContext& context() { return *ctx_; }

    // Whether the key is present (marks it as a known key of this section).
    bool has(const std::string& key);
    // The keys present, in file order.
    std::vector<std::string> keys() const;
    // A known key that may be present without being read here (listed as allowed).
    void allow(const std::string& key) { known_.push_back(key); }
    // The raw value (marks it consumed), or nullptr when absent. Valid while this reader lives.
    const YAML::Node* raw(const std::string& key);
    // A nested section. Absent or empty (null) → an empty section whose missing keys are
    // reported at this map; not a map → an error, and the section reads as empty.
    YamlReader child(const std::string& key);

    // Typed values. Supported T: int, uint64_t, double, bool, std::string,
    // std::array<double, 2> ("a list of two numbers").
    template <class T>
    T get(const std::string& key);                 // required: missing → error, returns T{}
    template <class T>
    T get_or(const std::string& key, T fallback);  // absent → fallback; bad → error, fallback
    template <class T>
    std::optional<T> read(const std::string& key); // absent or bad → nullopt (bad is reported)

    // Position of a key's value (its origin for --set values); this map's position when
    // the key is absent.
    std::string where(const std::string& key) const;
    std::string where() const { return where_; }

    // Records a problem about `key` (a key of this section) at its position.
    void error(const std::string& key, std::string message);

    // Reports every present key that was neither read nor allowed, with the allowed keys
    // and a "did you mean" hint.
    void finish();

private:
    YamlReader(YAML::Node node, std::string path, std::string where, int line, int col, YamlContext& ctx,
               bool quiet_missing);
    // The value node of `key`, or nullptr; the key node too if wanted.
    const YAML::Node* find(const std::string& key, const YAML::Node** key_node = nullptr) const;
    void note_missing(const std::string& key);
    struct Place {
        std::string where;
        int line, col;
    };
    Place locate(const std::string& key) const;

    YAML::Node node_;     // only const member functions are called on it
    std::vector<std::pair<YAML::Node, YAML::Node>> entries_;   // key, value in file order
    std::string path_, where_;
    int line_ = -1, col_ = -1;
    YamlContext* ctx_;
    bool quiet_missing_ = false;   // this section is broken; don't also report its missing keys
    std::vector<std::string> known_;
    std::set<std::string> consumed_;
};

// Decoding of one scalar/list value. `expected` names the type ("an integer").
bool decode_value(const YAML::Node& n, int& out, std::string& expected, std::string& detail);
bool decode_value(const YAML::Node& n, uint64_t& out, std::string& expected, std::string& detail);
bool decode_value(const YAML::Node& n, double& out, std::string& expected, std::string& detail);
bool decode_value(const YAML::Node& n, bool& out, std::string& expected, std::string& detail);
bool decode_value(const YAML::Node& n, std::string& out, std::string& expected, std::string& detail);
bool decode_value(const YAML::Node& n, std::array<double, 2>& out, std::string& expected, std::string& detail);

// How a value reads in a message: "two" (quoted), a list, a map, nothing.
std::string describe_value(const YAML::Node& n);

// YAML text out, for the resolved dump and sweep values.
std::string yaml_quote(const std::string& s);     // a double-quoted YAML string
std::string yaml_string(const std::string& s);    // plain when every YAML reader (PyYAML too) reads it back as this string
std::string yaml_double(double v);                // shortest round trip, always a float: 0.001, 1.0e-06, 10000.0
std::string yaml_number(double v);                // integers as integers, else yaml_double
std::string to_flow(const YAML::Node& n);         // one line of flow YAML; plain scalars stay plain ("4" stays a number)

template <class T>
std::optional<T> YamlReader::read(const std::string& key) {
    known_.push_back(key);
    const YAML::Node* v = find(key);
    if (!v) return std::nullopt;
    consumed_.insert(key);
    T out{};
    std::string expected, detail;
    if (decode_value(*v, out, expected, detail)) return out;
    std::string msg = "expected " + expected + ", got " + describe_value(*v);
    if (!detail.empty()) msg += " (" + detail + ")";
    error(key, std::move(msg));
    return std::nullopt;
}

template <class T>
T YamlReader::get(const std::string& key) {
    if (!find(key)) {
        known_.push_back(key);
        note_missing(key);
        return T{};
    }
    return read<T>(key).value_or(T{});
}

template <class T>
T YamlReader::get_or(const std::string& key, T fallback) {
    return read<T>(key).value_or(fallback);
}

}  // namespace kvlab
