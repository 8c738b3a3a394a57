// YamlReader / YamlContext (see yaml_reader.h).
#include "config/yaml_reader.h"

#include "core/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <climits>
#include <cmath>

namespace kvlab {
namespace {

// A quoted scalar ('128' or "128") has the non-specific tag "!"; plain scalars have "?".
bool is_quoted(const YAML::Node& n) { return n.IsScalar() && n.Tag() == "!"; }

template <class T>
bool parse_number(std::string_view s, T& out) {
    if (!s.empty() && s.front() == '+') s.remove_prefix(1);
    if (s.empty()) return false;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && end == s.data() + s.size();
}

// Edit distance counting an adjacent swap as one edit ("modle" → "model" is 1).
size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i)
        for (size_t j = 1; j <= b.size(); ++j) {
            d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    return d[a.size()][b.size()];
}

}  // namespace

// ---- decoding ----------------------------------------------------------------------

bool decode_value(const YAML::Node& n, int& out, std::string& expected, std::string& detail) {
    expected = "an integer";
    if (!n.IsScalar() || is_quoted(n)) return false;
    long long v = 0;
    if (!parse_number(n.Scalar(), v)) return false;
    if (v < INT_MIN || v > INT_MAX) {
        detail = "out of range";
        return false;
    }
    out = static_cast<int>(v);
    return true;
}

bool decode_value(const YAML::Node& n, uint64_t& out, std::string& expected, std::string& /*detail*/) {
    expected = "a non-negative integer";
    if (!n.IsScalar() || is_quoted(n)) return false;
    unsigned long long v = 0;
    if (!parse_number(n.Scalar(), v)) return false;
    out = v;
    return true;
}

bool decode_value(const YAML::Node& n, double& out, std::string& expected, std::string& /*detail*/) {
    expected = "a number";
    if (!n.IsScalar() || is_quoted(n)) return false;
    double v = 0;
    if (!parse_number(n.Scalar(), v) || !std::isfinite(v)) return false;
    out = v;
    return true;
}

bool decode_value(const YAML::Node& n, bool& out, std::string& expected, std::string& /*detail*/) {
    expected = "a boolean (true or false)";
    if (!n.IsScalar() || is_quoted(n)) return false;
    const std::string& s = n.Scalar();
    if (s == "true" || s == "True" || s == "TRUE") return out = true, true;
    if (s == "false" || s == "False" || s == "FALSE") return out = false, true;
    return false;
}

bool decode_value(const YAML::Node& n, std::string& out, std::string& expected, std::string& /*detail*/) {
    expected = "a string";
    if (!n.IsScalar()) return false;
    out = n.Scalar();
    return true;
}

bool decode_value(const YAML::Node& n, std::array<double, 2>& out, std::string& expected, std::string& detail) {
    expected = "a list of two numbers";
    if (!n.IsSequence() || n.size() != 2) return false;
    std::string e;
    for (size_t i = 0; i < 2; ++i)
        if (!decode_value(n[i], out[i], e, detail)) {
            detail = fmt::format("item {} is {}", i + 1, describe_value(n[i]));
            return false;
        }
    return true;
}

std::string describe_value(const YAML::Node& n) {
    if (!n.IsDefined() || n.IsNull()) return "nothing";
    if (n.IsSequence()) return n.size() == 0 ? "an empty list" : fmt::format("a list of {}", n.size());
    if (n.IsMap()) return "a map";
    std::string s = n.Scalar();
    if (s.size() > 60) s = s.substr(0, 57) + "...";
    return is_quoted(n) ? fmt::format("the quoted string \"{}\"", s) : fmt::format("\"{}\"", s);
}

// ---- YamlContext -------------------------------------------------------------------

std::optional<std::string> YamlContext::origin(const std::string& dotted) const {
    if (origins_.empty()) return std::nullopt;
    std::string key = dotted;
    while (true) {
        if (auto it = origins_.find(key); it != origins_.end()) return it->second;
        const auto dot = key.rfind('.');
        if (dot == std::string::npos) return std::nullopt;
        key.resize(dot);
    }
}

std::string YamlContext::position(const YAML::Mark& mark) const {
    if (mark.line < 0 || mark.column < 0) return source_;
    return fmt::format("{}:{}:{}", source_, mark.line + 1, mark.column + 1);
}

void YamlContext::error(std::string where, std::string key, std::string message, int line, int col) {
    problems_.push_back({std::move(where), std::move(key), std::move(message), line, col});
}

void YamlContext::error_at(const YAML::Node& node, const std::string& dotted, std::string message) {
    if (auto o = origin(dotted)) return error(*o, dotted, std::move(message));
    const YAML::Mark m = node.Mark();
    error(position(m), dotted, std::move(message), m.line, m.column);
}

void YamlContext::throw_if_errors() {
    if (problems_.empty()) return;
    std::stable_sort(problems_.begin(), problems_.end(), [](const Problem& a, const Problem& b) {
        const bool a_pos = a.line >= 0, b_pos = b.line >= 0;
        if (a_pos != b_pos) return a_pos;
        return a_pos && std::pair(a.line, a.col) < std::pair(b.line, b.col);
    });
    std::vector<Problem> ps;
    std::set<std::string> seen;
    std::string text;
    for (auto& p : problems_) {
        const ConfigError e(p.key, p.message, p.where);
        if (!seen.insert(e.what()).second) continue;   // the same line twice
        text += (text.empty() ? "" : "\n") + std::string(e.what());
        ps.push_back(p);
    }
    problems_.clear();
    if (ps.size() == 1) throw ConfigError(ps[0].key, ps[0].message, ps[0].where);
    throw Error(text);
}

// ---- YamlReader --------------------------------------------------------------------

YamlReader::YamlReader(const YAML::Node& root, YamlContext& ctx)
    : YamlReader(root, "", ctx.position(root.Mark()), root.Mark().line, root.Mark().column, ctx, false) {
    if (!root.IsMap() && !root.IsNull()) {
        ctx.error(where_, "", fmt::format("a config is a map of sections (model:, data:, train:, ...), got {}",
                                          describe_value(root)),
                  line_, col_);
        quiet_missing_ = true;
    }
}

YamlReader::YamlReader(YAML::Node node, std::string path, std::string where, int line, int col, YamlContext& ctx,
                       bool quiet_missing)
    : node_(std::move(node)), path_(std::move(path)), where_(std::move(where)), line_(line), col_(col), ctx_(&ctx),
      quiet_missing_(quiet_missing) {
    if (!node_.IsMap()) return;
    const YAML::Node& n = node_;
    for (auto it = n.begin(); it != n.end(); ++it) {
        const YAML::Node k = it->first, v = it->second;
        if (!k.IsScalar()) {
            ctx_->error_at(k, path_, fmt::format("keys must be plain names, got {}", describe_value(k)));
            continue;
        }
        const auto dup = std::find_if(entries_.begin(), entries_.end(),
                                      [&](const auto& e) { return e.first.Scalar() == k.Scalar(); });
        if (dup != entries_.end()) {
            ctx_->error_at(k, dotted(k.Scalar()),
                           fmt::format("duplicate key (first given at {})", ctx_->position(dup->first.Mark())));
            continue;
        }
        entries_.emplace_back(k, v);
    }
}

const YAML::Node* YamlReader::find(const std::string& key, const YAML::Node** key_node) const {
    for (const auto& [k, v] : entries_)
        if (k.Scalar() == key) {
            if (key_node) *key_node = &k;
            return &v;
        }
    return nullptr;
}

bool YamlReader::has(const std::string& key) {
    known_.push_back(key);
    return find(key) != nullptr;
}

std::vector<std::string> YamlReader::keys() const {
    std::vector<std::string> out;
    for (const auto& e : entries_) out.push_back(e.first.Scalar());
    return out;
}

const YAML::Node* YamlReader::raw(const std::string& key) {
    known_.push_back(key);
    const YAML::Node* v = find(key);
    if (v) consumed_.insert(key);
    return v;
}

YamlReader::Place YamlReader::locate(const std::string& key) const {
    const YAML::Node* k = nullptr;
    const YAML::Node* v = find(key, &k);
    if (!v) return {where_, line_, col_};
    if (auto o = ctx_->origin(dotted(key))) return {*o, -1, -1};
    // yaml-cpp marks an empty value at the start of the next token: use the key instead.
    const YAML::Mark m = v->IsNull() ? k->Mark() : v->Mark();
    return {ctx_->position(m), m.line, m.column};
}

std::string YamlReader::where(const std::string& key) const { return locate(key).where; }

void YamlReader::error(const std::string& key, std::string message) {
    const Place p = locate(key);
    ctx_->error(p.where, dotted(key), std::move(message), p.line, p.col);
}

void YamlReader::note_missing(const std::string& key) {
    if (quiet_missing_) return;
    ctx_->error(where_, dotted(key), "missing required key", line_, col_);
}

YamlReader YamlReader::child(const std::string& key) {
    known_.push_back(key);
    const YAML::Node* k = nullptr;
    const YAML::Node* v = find(key, &k);
    const std::string sub = dotted(key);
    if (!v) return YamlReader(YAML::Node(), sub, where_, line_, col_, *ctx_, quiet_missing_);
    consumed_.insert(key);
    if (!v->IsMap() && !v->IsNull()) {
        error(key, fmt::format("expected a section (a map of keys), got {}", describe_value(*v)));
        return YamlReader(YAML::Node(), sub, where_, line_, col_, *ctx_, true);
    }
    if (auto o = ctx_->origin(sub)) return YamlReader(*v, sub, *o, -1, -1, *ctx_, quiet_missing_);
    const YAML::Mark m = v->IsMap() ? v->Mark() : k->Mark();
    return YamlReader(*v, sub, ctx_->position(m), m.line, m.column, *ctx_, quiet_missing_);
}

void YamlReader::finish() {
    std::vector<std::string> allowed;
    for (const auto& k : known_)
        if (std::find(allowed.begin(), allowed.end(), k) == allowed.end()) allowed.push_back(k);
    for (const auto& [k, v] : entries_) {
        const std::string& key = k.Scalar();
        if (consumed_.count(key) || std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
        std::string hint;
        size_t best = std::max<size_t>(1, key.size() / 3) + 1;
        for (const auto& a : allowed)
            if (const size_t d = edit_distance(key, a); d < best) best = d, hint = fmt::format("did you mean {}? ", a);
        std::string msg = "unknown key; " + hint;
        msg += allowed.empty() ? std::string("this section takes no keys")
                               : fmt::format("allowed: {}", fmt::join(allowed, ", "));
        const std::string d = dotted(key);
        if (auto o = ctx_->origin(d))
            ctx_->error(*o, d, std::move(msg));
        else
            ctx_->error(ctx_->position(k.Mark()), d, std::move(msg), k.Mark().line, k.Mark().column);
    }
}

// ---- YAML text out -----------------------------------------------------------------

std::string yaml_quote(const std::string& s) {
    std::string out = "\"";
    for (const unsigned char c : s) {
        if (c == '"' || c == '\\')
            out += '\\', out += static_cast<char>(c);
        else if (c == '\n')
            out += "\\n";
        else if (c == '\t')
            out += "\\t";
        else if (c < 0x20 || c == 0x7f)
            out += fmt::format("\\x{:02x}", c);
        else
            out += static_cast<char>(c);
    }
    return out + "\"";
}

// A string that every YAML reader (PyYAML's 1.1 rules included) reads back as this string.
std::string yaml_string(const std::string& s) {
    static const char* const special[] = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"};
    bool plain = !s.empty() && (std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_' || s[0] == '/');
    for (const char c : s)
        plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '/' || c == '-');
    std::string lower;
    for (const char c : s) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (const char* w : special) plain = plain && lower != w;
    return plain ? s : yaml_quote(s);
}

// Shortest round-trip text, with a '.' and a signed exponent so that YAML 1.1 readers
// (PyYAML) also see a float: 0.001, 1.0e-06, 10000.0.
std::string yaml_double(double v) {
    std::string s = fmt::format("{}", v);
    const auto e = s.find('e');
    const std::string mant = s.substr(0, e);
    if (mant.find('.') == std::string::npos && mant.find_first_of("0123456789") != std::string::npos)
        s.insert(e == std::string::npos ? s.size() : e, ".0");
    return s;
}

// A plugin value: integers as integers.
std::string yaml_number(double v) {
    if (std::fabs(v) < 1e15 && v == std::floor(v))
        return fmt::format("{}", static_cast<int64_t>(v));
    return yaml_double(v);
}

// A node as one line of flow YAML, keeping plain scalars plain (so "4" stays a number).
std::string to_flow(const YAML::Node& n) {
    if (!n.IsDefined() || n.IsNull()) return "null";
    if (n.IsScalar()) {
        const std::string& s = n.Scalar();
        const bool flow_safe = !s.empty() && s.find_first_of(",[]{}#:\"'\n") == std::string::npos &&
                               s.front() != ' ' && s.back() != ' ';
        return (n.Tag() == "!" || !flow_safe) ? yaml_quote(s) : s;
    }
    std::vector<std::string> items;
    if (n.IsSequence()) {
        for (size_t i = 0; i < n.size(); ++i) items.push_back(to_flow(n[i]));
        return fmt::format("[{}]", fmt::join(items, ", "));
    }
    for (auto it = n.begin(); it != n.end(); ++it)
        items.push_back(fmt::format("{}: {}", to_flow(it->first), to_flow(it->second)));
    return fmt::format("{{{}}}", fmt::join(items, ", "));
}

}  // namespace kvlab
