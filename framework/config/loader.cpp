// The config loader (loader.h): YAML text → overrides → typed structs → value rules →
// plugin and task checks, each pass reporting all of its problems at once. Also the
// resolved dump and the sweep expansion.
#include "config/loader.h"

#include "attention/registry.h"
#include "config/yaml_reader.h"
#include "core/utf8.h"
#include "tasks/task.h"

#include <fmt/format.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace kvlab {
namespace {

namespace fs = std::filesystem;

const char* const kSetOrigin = "<--set>";

// ---- small helpers -------------------------------------------------------------------

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    size_t start = 0;
    while (true) {
        const size_t at = s.find(sep, start);
        out.push_back(s.substr(start, at == std::string::npos ? std::string::npos : at - start));
        if (at == std::string::npos) return out;
        start = at + 1;
    }
}

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t\r\n");
    if (b == std::string::npos) return "";
    return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// "model.d_model" → {model, d_model}; "sweep.model.attention" → {sweep, model.attention}
// (a sweep key is one dotted key). Empty if a segment is empty.
std::vector<std::string> key_segments(const std::string& key) {
    std::vector<std::string> segs;
    if (key.rfind("sweep.", 0) == 0)
        segs = {"sweep", key.substr(6)};
    else
        segs = split(key, '.');
    for (const auto& s : segs)
        if (s.empty()) return {};
    return segs;
}

// Keys under model: that some registered attention plugin owns, in registry order.
std::vector<std::string> model_plugin_keys() {
    std::vector<std::string> keys;
    for (const auto& e : attention_registry())
        for (const auto& k : e.own_keys)
            if (std::find(keys.begin(), keys.end(), k.name) == keys.end()) keys.emplace_back(k.name);
    return keys;
}

// Keys under data: that some registered task owns, in registry order.
std::vector<std::string> data_task_keys() {
    std::vector<std::string> keys;
    for (const auto& e : task_registry())
        for (const auto& k : e.own_keys)
            if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.emplace_back(k);
    return keys;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

// ---- YAML text in --------------------------------------------------------------------

// "line:col" (1-based) of byte `offset` of `text`.
std::string line_col(const std::string& text, size_t offset) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < offset && i < text.size(); ++i) {
        if (text[i] == '\n') ++line, col = 0;
        ++col;
    }
    return fmt::format("{}:{}", line, col);
}

// Where each document starts, and nothing else: for counting documents.
struct DocumentStarts final : YAML::EventHandler {
    std::vector<YAML::Mark> marks;
    void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnMapEnd() override {}
};

// One YAML document. The text must be UTF-8 (YAML readers disagree on anything else) and
// hold a single document: a second one after "---" would otherwise be ignored silently.
// Documents are counted by a parser that stops at the second one, not by YAML::LoadAll:
// yaml-cpp 0.7's LoadAll never returns when a document starts with a ',' (the text's
// first token, or one after a complete top-level node), because its parser then yields an
// empty document at that same place forever (found by fuzzing: the file ",").
YAML::Node parse_yaml(const std::string& text, const std::string& where_prefix) {
    if (const int64_t bad = first_invalid_utf8(text); bad >= 0)
        throw Error(fmt::format("{}:{}: not UTF-8 text (invalid byte 0x{:02x} at offset {})", where_prefix,
                                line_col(text, static_cast<size_t>(bad)), static_cast<uint8_t>(text[bad]), bad));
    try {
        std::istringstream in(text);
        YAML::Parser parser(in);
        DocumentStarts starts;
        while (starts.marks.size() < 2 && parser.HandleNextDocument(starts)) {
        }
        if (starts.marks.size() == 2) {
            const YAML::Mark& m = starts.marks[1];
            const bool stuck = m.pos == starts.marks[0].pos;
            const char c = m.pos >= 0 && static_cast<size_t>(m.pos) < text.size() ? text[m.pos] : '?';
            if (stuck || c == ',')
                throw Error(fmt::format("{}:{}:{}: invalid YAML: unexpected '{}' where a value should start",
                                        where_prefix, m.line + 1, m.column + 1, c));
            throw Error(fmt::format("{}:{}:{}: a second YAML document (after \"---\"); a config is one document",
                                    where_prefix, m.line + 1, m.column + 1));
        }
        return starts.marks.empty() ? YAML::Node() : YAML::Load(text);
    } catch (const YAML::DeepRecursion& e) {
        throw Error(fmt::format("{}:{}:{}: invalid YAML: nested more than {} levels deep", where_prefix, e.mark.line + 1,
                                e.mark.column + 1, e.depth() - 1));
    } catch (const YAML::ParserException& e) {
        const std::string pos = e.mark.is_null() ? where_prefix
                                                 : fmt::format("{}:{}:{}", where_prefix, e.mark.line + 1, e.mark.column + 1);
        throw Error(fmt::format("{}: invalid YAML: {}", pos, e.msg));
    } catch (const YAML::Exception& e) {
        throw Error(fmt::format("{}: invalid YAML: {}", where_prefix, e.what()));
    }
}

// Puts `value` at the dotted `key` of the tree, creating sections on the way.
void set_in(YAML::Node node, const std::vector<std::string>& segs, size_t i, const YAML::Node& value) {
    if (i + 1 == segs.size()) {
        node[segs[i]] = value;
        return;
    }
    set_in(node[segs[i]], segs, i + 1, value);
}

// Why `key` cannot be set: the first section on its way that is a value, not a map.
std::string blocking_value(const YAML::Node& m, const std::vector<std::string>& segs, size_t i) {
    if (i + 1 >= segs.size() || !m.IsMap()) return "";
    const YAML::Node child = m[segs[i]];   // const operator[]: never inserts
    if (!child.IsDefined() || child.IsNull()) return "";
    if (!child.IsMap())
        return fmt::format("{} is {}, not a section", fmt::join(segs.begin(), segs.begin() + static_cast<long>(i) + 1, "."),
                           describe_value(child));
    return blocking_value(child, segs, i + 1);
}

void apply_value(YAML::Node& root, const std::string& key, const YAML::Node& value, const std::string& where,
                 YamlContext& ctx) {
    const auto segs = key_segments(key);
    if (segs.empty()) return ctx.error(where, key, "not a valid key (write dotted names, e.g. model.d_model)");
    if (auto why = blocking_value(root, segs, 0); !why.empty())
        return ctx.error(where, key, "cannot set it: " + why);
    set_in(root, segs, 0, value);
    ctx.add_origin(key, where);
}

// Where a dotted key is in the tree: its value, else the closest section that exists.
struct Located {
    std::string where;
    int line, col;
};
Located locate_key(const YAML::Node& root, const std::string& key, const YamlContext& ctx) {
    if (auto o = ctx.origin(key)) return {*o, -1, -1};
    YAML::Mark mark = root.Mark();
    YAML::Node node = root;
    for (const auto& seg : key_segments(key)) {
        const YAML::Node& m = node;
        if (!m.IsMap()) break;
        bool found = false;
        for (auto it = m.begin(); it != m.end() && !found; ++it)
            if (it->first.IsScalar() && it->first.Scalar() == seg) {
                found = true;
                mark = it->second.IsNull() ? it->first.Mark() : it->second.Mark();
                node.reset(it->second);   // rebind; `node = ...` would overwrite the tree
            }
        if (!found) break;
    }
    return {ctx.position(mark), mark.line, mark.column};
}

// Where the sweep entry `axis` is written (its key), for messages about a point's values.
std::string sweep_entry_position(const YAML::Node& root, const std::string& axis, const YamlContext& ctx) {
    if (auto o = ctx.origin("sweep." + axis)) return *o;
    const YAML::Node sweep = root["sweep"];   // root is const here: no insert
    if (sweep.IsMap())
        for (auto it = sweep.begin(); it != sweep.end(); ++it)
            if (it->first.IsScalar() && it->first.Scalar() == axis) return ctx.position(it->first.Mark());
    return locate_key(root, "sweep", ctx).where;
}

void report(YamlContext& ctx, const YAML::Node& root, const ConfigError& e) {
    if (!e.where().empty()) return ctx.error(e.where(), e.key(), e.message());
    const Located at = locate_key(root, e.key().empty() ? "data" : e.key(), ctx);
    ctx.error(at.where, e.key(), e.message(), at.line, at.col);
}

// ---- typed reading -----------------------------------------------------------------

// A plugin- or task-owned key: stored as a number, and every one read so far is an
// integer (plugins read them with plugin_int), so an integer is what the file must hold.
std::optional<double> read_plugin_value(YamlReader& r, const std::string& key) {
    const YAML::Node* v = r.raw(key);
    if (!v) return std::nullopt;
    double x = 0;
    std::string expected, detail;
    if (decode_value(*v, x, expected, detail) && x == std::floor(x) && std::fabs(x) < 9007199254740992.0) return x;
    r.error(key, "expected an integer, got " + describe_value(*v));
    return std::nullopt;
}

void read_model(YamlReader& r, ModelConfig& m) {
    m.attention = r.get_or<std::string>("attention", m.attention);
    m.vocab_size = r.get_or<int>("vocab_size", m.vocab_size);
    m.d_model = r.get<int>("d_model");
    m.n_layers = r.get<int>("n_layers");
    m.n_heads = r.get<int>("n_heads");
    m.head_dim = r.get<int>("head_dim");
    m.mlp_hidden = r.get<int>("mlp_hidden");
    m.rope_theta = r.get_or<double>("rope_theta", m.rope_theta);
    m.norm_eps = r.get_or<double>("norm_eps", m.norm_eps);
    m.tie_embeddings = r.get_or<bool>("tie_embeddings", m.tie_embeddings);
    for (const auto& key : model_plugin_keys())
        if (auto v = read_plugin_value(r, key)) m.plugin[key] = *v;
    r.finish();
}

void read_data(YamlReader& r, DataConfig& d) {
    d.task = r.get_or<std::string>("task", d.task);
    d.seq_len = r.get_or<int>("seq_len", d.seq_len);
    for (const auto& key : data_task_keys()) {
        if (key == "path")
            d.path = r.get_or<std::string>(key, d.path);
        else if (key == "val_fraction")
            d.val_fraction = r.get_or<double>(key, d.val_fraction);
        else if (key == "num_kv_pairs")
            d.num_kv_pairs = r.get_or<int>(key, d.num_kv_pairs);
        else if (key == "num_queries")
            d.num_queries = r.get_or<int>(key, d.num_queries);
        else if (auto v = read_plugin_value(r, key))
            d.plugin[key] = *v;
    }
    r.finish();
}

void read_train(YamlReader& r, TrainConfig& t) {
    t.steps = r.get<int>("steps");
    t.batch_size = r.get_or<int>("batch_size", t.batch_size);
    t.lr = r.get_or<double>("lr", t.lr);
    t.min_lr = r.get_or<double>("min_lr", t.min_lr);
    t.warmup_steps = r.get_or<int>("warmup_steps", t.warmup_steps);
    t.weight_decay = r.get_or<double>("weight_decay", t.weight_decay);
    const auto betas = r.get_or<std::array<double, 2>>("betas", {t.beta1, t.beta2});
    t.beta1 = betas[0], t.beta2 = betas[1];
    t.adam_eps = r.get_or<double>("adam_eps", t.adam_eps);
    t.grad_clip = r.get_or<double>("grad_clip", t.grad_clip);
    t.eval_every = r.get_or<int>("eval_every", t.eval_every);
    t.eval_batches = r.get_or<int>("eval_batches", t.eval_batches);
    t.log_every = r.get_or<int>("log_every", t.log_every);
    t.threads = r.get_or<int>("threads", t.threads);
    t.init_from = r.get_or<std::string>("init_from", t.init_from);
    t.checkpoint_every = r.get_or<int>("checkpoint_every", t.checkpoint_every);
    r.finish();
}

// sweep: {dotted key (or keys joined by '+'): [values]}; values are kept as flow YAML.
void read_sweep(YamlReader& r, std::vector<SweepAxis>& axes) {
    std::vector<std::string> seen;
    for (const auto& key : r.keys()) {
        const YAML::Node& v = *r.raw(key);
        const auto parts = split(key, '+');
        bool ok = true;
        for (const auto& p : parts) {
            if (key_segments(p).empty() || p.rfind("sweep", 0) == 0 || p == "name") {
                r.error(key, fmt::format("\"{}\" cannot be swept (sweep dotted config keys like model.attention or "
                                         "seed; tie keys with '+')", p));
                ok = false;
            } else if (contains(seen, p)) {
                r.error(key, fmt::format("{} is swept twice", p));
                ok = false;
            }
            seen.push_back(p);
        }
        if (!v.IsSequence() || v.size() == 0) {
            r.error(key, fmt::format("expected a non-empty list of values, got {}", describe_value(v)));
            continue;
        }
        SweepAxis axis{key, {}};
        for (size_t i = 0; i < v.size(); ++i) {
            if (parts.size() > 1 && (!v[i].IsSequence() || v[i].size() != parts.size())) {
                r.error(key, fmt::format("item {} must be a list of {} values (one per tied key), got {}", i + 1,
                                         parts.size(), to_flow(v[i])));
                ok = false;
            }
            axis.values.push_back(to_flow(v[i]));
        }
        if (ok) axes.push_back(std::move(axis));
    }
}

void read_config(YamlReader& root, ExperimentConfig& cfg) {
    cfg.name = root.get_or<std::string>("name", cfg.name);
    cfg.seed = root.get_or<uint64_t>("seed", cfg.seed);
    auto model = root.child("model");
    read_model(model, cfg.model);
    auto data = root.child("data");
    read_data(data, cfg.data);
    auto train = root.child("train");
    read_train(train, cfg.train);
    auto output = root.child("output");
    cfg.output.path = output.get_or<std::string>("path", cfg.output.path);
    output.finish();
    auto sweep = root.child("sweep");
    read_sweep(sweep, cfg.sweep);
    root.finish();
}

// ---- checks beyond the types -------------------------------------------------------

// For a task that reads files (owns "path"): as given, next to the config, in $KVLAB_DATA_DIR.
void resolve_data_path(DataConfig& d, const std::string& source, YamlContext& ctx, const YAML::Node& root) {
    const auto& owner = find_task(d.task);
    if (std::find(owner.own_keys.begin(), owner.own_keys.end(), "path") == owner.own_keys.end()) return;
    auto fail = [&](std::string msg) { report(ctx, root, ConfigError("data.path", std::move(msg))); };
    if (d.path.empty()) return fail(fmt::format("task \"{}\" needs data.path (a text file, e.g. tinyshakespeare.txt)", d.task));
    std::vector<std::string> tried;
    auto attempt = [&](const fs::path& p) {
        std::error_code ec;
        if (fs::is_regular_file(p, ec)) {
            d.resolved_path = p.lexically_normal().string();
            return true;
        }
        std::string what = p.string();
        if (fs::is_directory(p, ec))
            what += " (a directory)";
        else if (fs::exists(p, ec))
            what += " (not a regular file)";
        if (!contains(tried, what)) tried.push_back(what);
        return false;
    };
    const fs::path given(d.path);
    if (attempt(given)) return;
    if (given.is_relative()) {
        const fs::path dir = fs::path(source).parent_path();
        if (!dir.empty() && attempt(dir / given)) return;
        if (const char* env = std::getenv("KVLAB_DATA_DIR"); env && *env) {
            if (attempt(fs::path(env) / given)) return;
        } else {
            tried.push_back("$KVLAB_DATA_DIR/" + d.path + " (KVLAB_DATA_DIR is not set)");
        }
    }
    fail(fmt::format("file not found; tried: {}", fmt::join(tried, ", ")));
}

// train.init_from: the file part of the spec as given, then next to the config. Whether its
// tensors fit the model is checked when training starts (model/checkpoint.h).
void resolve_init_from(TrainConfig& t, const std::string& source, YamlContext& ctx, const YAML::Node& root) {
    if (t.init_from.empty()) return;
    const auto colon = t.init_from.find(":/");
    const std::string file = t.init_from.substr(0, colon), group = colon == std::string::npos ? "" : t.init_from.substr(colon);
    std::vector<fs::path> candidates = {fs::path(file)};
    if (fs::path(file).is_relative() && !fs::path(source).parent_path().empty())
        candidates.push_back(fs::path(source).parent_path() / file);
    std::vector<std::string> tried;
    for (const auto& p : candidates) {
        std::error_code ec;
        if (fs::is_regular_file(p, ec)) {
            t.init_from_resolved = p.lexically_normal().string() + group;
            return;
        }
        tried.push_back(p.string());
    }
    report(ctx, root,
           ConfigError("train.init_from",
                       fmt::format("checkpoint file not found; tried: {} (write FILE.h5, FILE.h5:/runs/<id> or "
                                   "FILE.h5:/group)", fmt::join(tried, ", "))));
}

struct PointValue {
    std::string key;      // one dotted key
    YAML::Node value;
    std::string axis;     // the sweep: key it comes from (for its position)
};

ExperimentConfig load_impl(const std::string& text, const std::string& source, const std::vector<Override>& sets,
                           const std::vector<PointValue>& point, const std::string& run_id) {
    YAML::Node root = parse_yaml(text, source);
    if (root.IsNull())
        throw Error(fmt::format("{}: the config is empty; it needs at least model: (d_model, n_layers, n_heads, "
                                "head_dim, mlp_hidden) and train: (steps)", source));
    YamlContext ctx(source);
    if (!root.IsMap())
        throw Error(fmt::format("{}: a config is a map of sections (name, seed, model, data, train, output, sweep), "
                                "got {}", ctx.position(root.Mark()), describe_value(root)));

    // Pass 1: overrides, then types, required and unknown keys.
    for (const auto& s : sets) apply_value(root, s.key, parse_yaml(s.value, std::string(kSetOrigin) + " " + s.key), kSetOrigin, ctx);
    for (const auto& p : point) apply_value(root, p.key, p.value, sweep_entry_position(root, p.axis, ctx), ctx);
    ctx.throw_if_errors();
    ExperimentConfig cfg;
    YamlReader reader(root, ctx);
    read_config(reader, cfg);
    ctx.throw_if_errors();

    // Pass 2: value rules, plugin and task names, the data file.
    for (const auto& e : validate(cfg)) report(ctx, root, e);
    bool names_ok = true;
    for (auto check : {+[](const ExperimentConfig& c) { find_attention(c.model.attention); },
                       +[](const ExperimentConfig& c) { find_task(c.data.task); }}) {
        try {
            check(cfg);
        } catch (const ConfigError& e) {
            report(ctx, root, e);
            names_ok = false;
        }
    }
    if (names_ok) resolve_data_path(cfg.data, source, ctx, root);
    resolve_init_from(cfg.train, source, ctx, root);
    ctx.throw_if_errors();

    // Pass 3: the plugin and the task check their own keys and dimensions.
    try {
        (void)make_attention<float>(cfg.model);
    } catch (const ConfigError& e) {
        report(ctx, root, e);
    }
    try {
        (void)make_task(cfg.data);
    } catch (const ConfigError& e) {
        report(ctx, root, e);
    } catch (const Error& e) {
        report(ctx, root, ConfigError("data", e.what()));
    }
    ctx.throw_if_errors();

    cfg.source = source;
    cfg.source_text = text;
    for (const auto& s : sets) cfg.overrides.push_back(s.key + "=" + s.value);
    cfg.run_id = run_id.empty() ? cfg.name : run_id;
    if (!point.empty()) cfg.sweep.clear();
    cfg.resolved_yaml = dump_config(cfg);
    return cfg;
}

std::string run_id_part(const std::string& key, const YAML::Node& value) {
    std::string v = value.IsScalar() ? value.Scalar() : to_flow(value);
    for (char& c : v)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-')) c = '-';
    const auto dot = key.rfind('.');
    return (dot == std::string::npos ? key : key.substr(dot + 1)) + "-" + v;
}

}  // namespace

// ---- public API ----------------------------------------------------------------------

Override parse_override(const std::string& arg) {
    const auto eq = arg.find('=');
    if (eq == std::string::npos)
        throw Error(fmt::format("--set {}: expected key=value, e.g. --set model.d_model=256", arg));
    if (const int64_t bad = first_invalid_utf8(arg); bad >= 0)
        throw Error(fmt::format("--set: the argument is not UTF-8 text (invalid byte 0x{:02x} at offset {})",
                                static_cast<uint8_t>(arg[bad]), bad));
    Override o{trim(arg.substr(0, eq)), trim(arg.substr(eq + 1))};
    if (key_segments(o.key).empty())
        throw Error(fmt::format("--set {}: \"{}\" is not a config key (write dotted names, e.g. model.d_model=256)",
                                arg, o.key));
    return o;
}

ExperimentConfig load_config(const std::string& path, const std::vector<Override>& overrides) {
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw Error(fmt::format("{}: config file not found (working directory {})", path, fs::current_path(ec).string()));
    if (fs::is_directory(path, ec)) throw Error(fmt::format("{}: is a directory, not a config file", path));
    // Not a device or a pipe (/dev/zero would never end), and not something huge.
    if (!fs::is_regular_file(path, ec)) throw Error(fmt::format("{}: is not a regular file", path));
    constexpr uintmax_t max_bytes = 1 << 22;
    if (const uintmax_t n = fs::file_size(path, ec); !ec && n > max_bytes)
        throw Error(fmt::format("{}: {} bytes is too big for a config file (at most {} bytes)", path, n, max_bytes));
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in || in.bad()) throw Error(fmt::format("{}: cannot read the config file", path));
    return load_config_text(text.str(), path, overrides);
}

ExperimentConfig load_config_text(const std::string& yaml_text, const std::string& source_name,
                                  const std::vector<Override>& overrides) {
    return load_impl(yaml_text, source_name, overrides, {}, "");
}

std::string dump_config(const ExperimentConfig& c) {
    std::string o = "# kvlab experiment config, fully resolved (every key, defaults included)\n";
    if (!c.run_id.empty() && c.run_id != c.name) o += fmt::format("# sweep point, run_id: {}\n", c.run_id);
    auto line = [&](int indent, const std::string& key, const std::string& value) {
        o += fmt::format("{:{}}{}: {}\n", "", indent, key, value);
    };
    line(0, "name", yaml_string(c.name));
    line(0, "seed", fmt::format("{}", c.seed));
    const auto& m = c.model;
    o += "model:\n";
    line(2, "attention", yaml_string(m.attention));
    for (const auto& [k, v] : {std::pair{"vocab_size", m.vocab_size}, {"d_model", m.d_model}, {"n_layers", m.n_layers},
                               {"n_heads", m.n_heads}, {"head_dim", m.head_dim}})
        line(2, k, fmt::format("{}", v));
    for (const auto& [k, v] : m.plugin) line(2, k, yaml_number(v));
    line(2, "mlp_hidden", fmt::format("{}", m.mlp_hidden));
    line(2, "rope_theta", yaml_double(m.rope_theta));
    line(2, "norm_eps", yaml_double(m.norm_eps));
    line(2, "tie_embeddings", m.tie_embeddings ? "true" : "false");
    const auto& d = c.data;
    auto task_keys = data_task_keys();   // the selected task's keys first
    for (const auto& e : task_registry())
        if (e.name == d.task)
            std::stable_partition(task_keys.begin(), task_keys.end(), [&](const std::string& k) {
                return std::find(e.own_keys.begin(), e.own_keys.end(), k) != e.own_keys.end();
            });
    o += "data:\n";
    line(2, "task", yaml_string(d.task));
    line(2, "seq_len", fmt::format("{}", d.seq_len));
    for (const auto& k : task_keys) {
        if (k == "path") {
            if (d.path.empty()) continue;
            const bool moved = !d.resolved_path.empty() && d.resolved_path != d.path;
            line(2, k, yaml_string(d.path) + (moved ? "   # found at " + d.resolved_path : ""));
        } else if (k == "val_fraction") {
            line(2, k, yaml_double(d.val_fraction));
        } else if (k == "num_kv_pairs") {
            line(2, k, fmt::format("{}", d.num_kv_pairs));
        } else if (k == "num_queries") {
            line(2, k, fmt::format("{}", d.num_queries));
        } else if (auto it = d.plugin.find(k); it != d.plugin.end()) {
            line(2, k, yaml_number(it->second));
        }
    }
    const auto& t = c.train;
    o += "train:\n";
    line(2, "steps", fmt::format("{}", t.steps));
    line(2, "batch_size", fmt::format("{}", t.batch_size));
    line(2, "lr", yaml_double(t.lr));
    line(2, "min_lr", yaml_double(t.min_lr));
    line(2, "warmup_steps", fmt::format("{}", t.warmup_steps));
    line(2, "weight_decay", yaml_double(t.weight_decay));
    line(2, "betas", fmt::format("[{}, {}]", yaml_double(t.beta1), yaml_double(t.beta2)));
    line(2, "adam_eps", yaml_double(t.adam_eps));
    line(2, "grad_clip", yaml_double(t.grad_clip));
    line(2, "eval_every", fmt::format("{}", t.eval_every));
    line(2, "eval_batches", fmt::format("{}", t.eval_batches));
    line(2, "log_every", fmt::format("{}", t.log_every));
    line(2, "threads", fmt::format("{}", t.threads));
    if (!t.init_from.empty()) {
        const bool moved = !t.init_from_resolved.empty() && t.init_from_resolved != t.init_from;
        line(2, "init_from", yaml_string(t.init_from) + (moved ? "   # found at " + t.init_from_resolved : ""));
    }
    line(2, "checkpoint_every", fmt::format("{}", t.checkpoint_every));
    o += "output:\n";
    if (c.output.path.empty())
        o += fmt::format("  # path: {} (the default, results/<name>.h5)\n", c.results_path());
    else
        line(2, "path", yaml_string(c.output.path));
    if (!c.sweep.empty()) {
        o += "sweep:\n";
        for (const auto& a : c.sweep) line(2, yaml_string(a.key), fmt::format("[{}]", fmt::join(a.values, ", ")));
    }
    return o;
}

std::vector<ExperimentConfig> expand_sweep(const ExperimentConfig& base) {
    if (base.sweep.empty()) return {base};
    const bool from_text = !base.source_text.empty();
    const std::string text = from_text ? base.source_text : dump_config(base);
    const std::string source = base.source.empty() ? "<config>" : base.source;
    std::vector<Override> sets;
    if (from_text)
        for (const auto& s : base.overrides) sets.push_back(parse_override(s));

    std::vector<std::string> problems;   // in order of first appearance
    std::vector<std::vector<std::string>> problem_points;
    auto add_problem = [&](const std::string& line, const std::string& id) {
        const auto it = std::find(problems.begin(), problems.end(), line);
        if (it == problems.end()) {
            problems.push_back(line);
            problem_points.push_back({id});
        } else {
            problem_points[static_cast<size_t>(it - problems.begin())].push_back(id);
        }
    };
    for (const auto& s : sets)
        for (const auto& a : base.sweep)
            if (contains(split(a.key, '+'), s.key))
                throw ConfigError(s.key, fmt::format("is swept; to change its values use --set sweep.{}=[...]", a.key),
                                  kSetOrigin);

    // The Cartesian product, first axis slowest.
    size_t total = 1;
    for (const auto& a : base.sweep) total *= a.values.size();
    std::vector<ExperimentConfig> points;
    std::vector<std::string> ids;
    for (size_t n = 0; n < total; ++n) {
        std::vector<PointValue> pv;
        std::vector<std::string> id_parts;
        size_t rest = n;
        std::vector<size_t> index(base.sweep.size());
        for (size_t a = base.sweep.size(); a-- > 0;) {
            index[a] = rest % base.sweep[a].values.size();
            rest /= base.sweep[a].values.size();
        }
        for (size_t a = 0; a < base.sweep.size(); ++a) {
            const auto& axis = base.sweep[a];
            const YAML::Node value = parse_yaml(axis.values[index[a]], "sweep." + axis.key);
            const auto keys = split(axis.key, '+');
            for (size_t k = 0; k < keys.size(); ++k) {
                const YAML::Node v = keys.size() == 1 ? value : value[k];
                pv.push_back({keys[k], v, axis.key});
                id_parts.push_back(run_id_part(keys[k], v));
            }
        }
        const std::string id = fmt::format("{}", fmt::join(id_parts, "_"));
        if (contains(ids, id)) add_problem(fmt::format("sweep: two points get the run id \"{}\"; remove repeated values", id), id);
        ids.push_back(id);
        try {
            points.push_back(load_impl(text, source, sets, pv, id));
        } catch (const Error& e) {
            for (const auto& l : split(e.what(), '\n')) add_problem(l, id);
        }
    }
    if (problems.empty()) return points;
    std::vector<std::string> lines;
    for (size_t i = 0; i < problems.size(); ++i) {
        const auto& ps = problem_points[i];
        if (ps.size() == total && total > 1)
            lines.push_back(fmt::format("{} (all {} sweep points)", problems[i], total));
        else
            lines.push_back(fmt::format("{} (sweep point{} {})", problems[i], ps.size() > 1 ? "s" : "", fmt::join(ps, ", ")));
    }
    throw Error(fmt::format("{}", fmt::join(lines, "\n")));
}

}  // namespace kvlab
