// The comparison table of a results file (see report.h).
#include "train/report.h"

#include "attention/cache_table.h"
#include "attention/registry.h"
#include "core/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>

namespace kvlab {
namespace {

using Flat = std::vector<std::pair<std::string, std::string>>;

std::string trim(const std::string& s) {
    const auto b = s.find_first_not_of(" \t\r");
    if (b == std::string::npos) return {};
    return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

std::string lookup(const Flat& f, const std::string& key) {
    for (const auto& [k, v] : f)
        if (k == key) return v;
    return {};
}

template <class T>
std::optional<T> attr(const Attrs& attrs, const std::string& name) {
    for (const auto& [k, v] : attrs) {
        if (k != name) continue;
        if (const auto* x = std::get_if<T>(&v)) return *x;
        if constexpr (std::is_same_v<T, double>)
            if (const auto* i = std::get_if<int64_t>(&v)) return double(*i);
    }
    return std::nullopt;
}

// Keys that do not distinguish variants: seeds and learning rates are aggregated over;
// threads, names and checkpointing (a resumed run ends as an uninterrupted one) do not
// change what is measured.
bool ignored_key(const std::string& k) {
    return k == "seed" || k == "train.lr" || k == "train.threads" || k == "name" || k == "output.path" ||
           k == "train.checkpoint_every";
}

bool plugin_key_of_other(const std::string& key, const std::string& attention) {
    if (key.rfind("model.", 0) != 0) return false;
    const std::string k = key.substr(6);
    bool owned_by_any = false, owned_by_this = false;
    for (const auto& e : attention_registry())
        for (const auto& ks : e.own_keys)
            if (ks.name == k) {
                owned_by_any = true;
                owned_by_this |= e.name == attention;
            }
    return owned_by_any && !owned_by_this;
}

bool is_plugin_key(const std::string& key) { return plugin_key_of_other(key, ""); }

int64_t as_int(const std::string& s) { return std::strtoll(s.c_str(), nullptr, 10); }

// The dims of a run as a ModelConfig (only what the cache table reads).
ModelConfig model_of(const Flat& f) {
    ModelConfig m;
    m.attention = lookup(f, "model.attention");
    m.d_model = int(as_int(lookup(f, "model.d_model")));
    m.n_layers = int(as_int(lookup(f, "model.n_layers")));
    m.n_heads = int(as_int(lookup(f, "model.n_heads")));
    m.head_dim = int(as_int(lookup(f, "model.head_dim")));
    m.mlp_hidden = int(as_int(lookup(f, "model.mlp_hidden")));
    for (const auto& e : attention_registry())
        if (e.name == m.attention)
            for (const auto& ks : e.own_keys)
                if (auto v = lookup(f, "model." + std::string(ks.name)); !v.empty())
                    m.plugin[std::string(ks.name)] = std::strtod(v.c_str(), nullptr);
    return m;
}

// Keys per query head, with this run's numbers.
std::string sharing(const ModelConfig& m, const std::string& generic) {
    const int64_t H = m.n_heads;
    if (m.attention == "mha") return "1 K/V head per query head";
    if (m.attention == "gqa") {
        const int64_t G = m.plugin_int("n_kv_heads", 1);
        return fmt::format("{} query heads per K/V head ({} K/V heads)", G > 0 ? H / G : 0, G);
    }
    if (m.attention == "mqa") return fmt::format("all {} query heads share 1 K/V head", H);
    if (m.attention == "mla")
        return fmt::format("latent: K/V of all heads from c_KV (d_c {}) + shared RoPE key (d_R {})",
                           m.plugin_int("kv_lora_rank", 0), m.plugin_int("qk_rope_head_dim", 0));
    return generic;
}

std::string fmt_num(double v) { return fmt::format("{:g}", v); }

std::string fmt_stat(const MeanStd& s, int digits) {
    if (s.n == 0) return "";
    if (s.n == 1 || !std::isfinite(s.std)) return fmt::format("{:.{}f}", s.mean, digits);
    return fmt::format("{:.{}f} ± {:.{}f}", s.mean, digits, s.std, digits);
}

std::string fmt_lr(const ReportRow& r) {
    if (r.lrs.size() <= 1) return fmt_num(r.lr);
    std::vector<std::string> all;
    for (double x : r.lrs) all.push_back(fmt_num(x));
    return fmt::format("{} (best {} of {})", fmt_num(r.lr), r.metric, fmt::join(all, ", "));
}

std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
}

std::string csv_real(double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : ""; }

struct Run {
    const RunRecord* rec;
    double lr;
    std::optional<double> loss, bpb, acc;
};

}  // namespace

ReportMetric parse_report_metric(const std::string& s) {
    if (s == "auto") return ReportMetric::automatic;
    if (s == "val_loss") return ReportMetric::val_loss;
    if (s == "val_accuracy") return ReportMetric::val_accuracy;
    throw Error(fmt::format("--metric: expected auto, val_loss or val_accuracy, got \"{}\"", s));
}

MeanStd mean_std(const std::vector<double>& xs) {
    MeanStd s;
    s.n = int(xs.size());
    if (xs.empty()) return s;
    double sum = 0;
    for (double x : xs) sum += x;
    s.mean = sum / double(xs.size());
    if (xs.size() > 1) {
        double ss = 0;
        for (double x : xs) ss += (x - s.mean) * (x - s.mean);
        s.std = std::sqrt(ss / double(xs.size() - 1));
    }
    return s;
}

Flat flatten_resolved_config(const std::string& yaml) {
    Flat out;
    std::string section;
    size_t pos = 0;
    while (pos <= yaml.size()) {
        size_t nl = yaml.find('\n', pos);
        if (nl == std::string::npos) nl = yaml.size();
        const std::string line = yaml.substr(pos, nl - pos);
        pos = nl + 1;
        const std::string t = trim(line);
        if (t.empty() || t[0] == '#') continue;
        const bool nested = line[0] == ' ';
        const auto colon = t.find(':');
        if (colon == std::string::npos) continue;
        const std::string key = trim(t.substr(0, colon));
        std::string value = trim(t.substr(colon + 1));
        if (!value.empty() && value[0] == '"') {   // double-quoted (yaml_string): unescape \" and \\ .
            std::string s;
            for (size_t i = 1; i < value.size() && value[i] != '"'; ++i) s += value[i] == '\\' ? value[++i] : value[i];
            value = s;
        } else if (const auto hash = value.find(" #"); hash != std::string::npos) {
            value = trim(value.substr(0, hash));
        } else if (!value.empty() && value[0] == '#') {
            value.clear();
        }
        if (!nested) {
            if (value.empty()) {
                section = key;
                continue;
            }
            section.clear();
            out.emplace_back(key, value);
        } else if (!section.empty()) {
            out.emplace_back(section + "." + key, value);
        }
    }
    return out;
}

void check_report_runs(const std::vector<RunRecord>& runs, const std::string& file) {
    auto has = [](const Attrs& attrs, const std::string& name) {
        for (const auto& [k, v] : attrs)
            if (k == name) return true;
        return false;
    };
    for (const auto& r : runs) {
        auto bad = [&](const std::string& what) {
            return Error(fmt::format("'{}': run '/runs/{}' {}; the file is damaged or was not written by kvlab", file,
                                     r.id, what));
        };
        if (has(r.attrs, "status") && !attr<std::string>(r.attrs, "status"))
            throw bad("has a 'status' attribute that is not a string");
        if (attr<std::string>(r.attrs, "status").value_or("") != "completed") continue;
        if (!attr<std::string>(r.attrs, "config")) throw bad("is completed but has no 'config' string attribute");
        if (!attr<double>(r.final_attrs, "val_loss")) throw bad("is completed but has no numeric final/val_loss");
    }
}

Report build_report(const std::vector<RunRecord>& runs, ReportMetric metric) {
    Report rep;
    // Group completed runs by their config without the ignored keys.
    std::vector<std::string> keys;                 // group keys in order of first appearance
    std::map<std::string, std::vector<Run>> groups;
    std::map<std::string, Flat> group_flat;        // the variant-defining entries of a group
    for (const auto& r : runs) {
        const std::string status = attr<std::string>(r.attrs, "status").value_or("");
        if (status == "failed") {
            rep.failed.emplace_back(r.id, attr<std::string>(r.attrs, "error").value_or("(no error recorded)"));
            continue;
        }
        if (status != "completed") {
            rep.unfinished.emplace_back(r.id, status.empty() ? "no status" : status);
            continue;
        }
        const Flat flat = flatten_resolved_config(attr<std::string>(r.attrs, "config").value_or(""));
        const std::string attention = attr<std::string>(r.attrs, "attention").value_or(lookup(flat, "model.attention"));
        Flat defining;
        std::string key;
        for (const auto& [k, v] : flat) {
            if (ignored_key(k) || plugin_key_of_other(k, attention)) continue;
            defining.emplace_back(k, v);
            key += k + "=" + v + "\n";
        }
        Run run{&r, std::strtod(lookup(flat, "train.lr").c_str(), nullptr), attr<double>(r.final_attrs, "val_loss"),
                attr<double>(r.final_attrs, "val_bits_per_byte"), attr<double>(r.final_attrs, "val_accuracy")};
        if (!groups.count(key)) keys.push_back(key), group_flat[key] = defining;
        groups[key].push_back(run);
    }

    // Keys whose value differs between groups name the rows (besides attention and its dims).
    std::set<std::string> differing;
    for (const auto& k : keys)
        for (const auto& [name, v] : group_flat[k]) {
            if (name == "model.attention" || is_plugin_key(name)) continue;
            for (const auto& k2 : keys)
                if (lookup(group_flat[k2], name) != v) differing.insert(name);
        }

    for (const auto& k : keys) {
        const auto& g = groups[k];
        const Flat& flat = group_flat[k];
        ReportRow row;
        const RunRecord& first = *g.front().rec;
        row.attention = attr<std::string>(first.attrs, "attention").value_or("?");
        row.task = lookup(flat, "data.task");
        const ModelConfig m = model_of(flat);
        std::vector<std::string> dims, extra;
        for (const auto& e : attention_registry())
            if (e.name == row.attention)
                for (const auto& ks : e.own_keys)
                    if (auto v = lookup(flat, "model." + std::string(ks.name)); !v.empty())
                        dims.push_back(fmt::format("{} {}", ks.name, v));
        for (const auto& [name, v] : flat)
            if (differing.count(name))
                extra.push_back(fmt::format("{} {}", name.substr(name.rfind('.') + 1), v));
        row.variant = row.attention + (dims.empty() ? "" : fmt::format(" ({})", fmt::join(dims, ", "))) +
                      (extra.empty() ? "" : fmt::format(", {}", fmt::join(extra, ", ")));
        std::string generic;
        for (const auto& e : attention_registry())
            if (e.name == row.attention) generic = e.description;
        try {
            for (const auto& c : cache_table(m))
                if (c.variant == row.attention) {
                    row.reduction = c.reduction.empty() ? c.sharing : c.reduction;
                    row.formula = c.substituted;
                }
        } catch (const Error&) {   // dims the plugin rejects: leave the descriptive columns empty
        }
        row.kv_sharing = sharing(m, generic);
        row.kv_elements_per_token = attr<int64_t>(first.attrs, "kv_cache_elements_per_token").value_or(0);
        row.kv_bytes_per_token = attr<int64_t>(first.attrs, "kv_cache_bytes_per_token").value_or(0);
        row.n_params = attr<int64_t>(first.attrs, "n_params").value_or(0);

        // Best learning rate by the mean metric.
        bool has_acc = false;
        for (const auto& r : g) has_acc |= r.acc.has_value();
        const bool use_acc = metric == ReportMetric::val_accuracy ? has_acc : metric == ReportMetric::automatic && has_acc;
        row.metric = use_acc ? "val_accuracy" : "val_loss";
        std::map<double, std::vector<const Run*>> by_lr;
        for (const auto& r : g) by_lr[r.lr].push_back(&r);
        double best = std::numeric_limits<double>::quiet_NaN();
        row.lr = by_lr.begin()->first;
        for (const auto& [lr, rs] : by_lr) {
            row.lrs.push_back(lr);
            std::vector<double> xs;
            for (const Run* r : rs)
                if (auto x = use_acc ? r->acc : r->loss; x && std::isfinite(*x)) xs.push_back(*x);
            const double mean = mean_std(xs).mean;
            if (std::isfinite(mean) && (!std::isfinite(best) || (use_acc ? mean > best : mean < best))) {
                best = mean;
                row.lr = lr;
            }
        }
        std::vector<double> loss, bpb, acc;
        for (const Run* r : by_lr[row.lr]) {
            row.run_ids.push_back(r->rec->id);
            if (r->loss) loss.push_back(*r->loss);
            if (r->bpb) bpb.push_back(*r->bpb);
            if (r->acc) acc.push_back(*r->acc);
        }
        std::sort(row.run_ids.begin(), row.run_ids.end());
        row.val_loss = mean_std(loss);
        row.val_bits_per_byte = mean_std(bpb);
        row.val_accuracy = mean_std(acc);
        rep.rows.push_back(std::move(row));
    }
    return rep;
}

std::string report_markdown(const Report& r) {
    bool any_text = false, any_acc = false;
    for (const auto& row : r.rows) {
        any_text |= row.task == "text";
        any_acc |= row.val_accuracy.n > 0;
    }
    std::vector<std::string> head = {"variant", "keys per query head", "cache reduction", "KV elements/token",
                                     "KV bytes/token", "params", "lr", "val loss"};
    if (any_text) head.push_back("bits/byte");
    if (any_acc) head.push_back("accuracy");
    head.push_back("n");
    std::string out = fmt::format("| {} |\n|", fmt::join(head, " | "));
    for (size_t i = 0; i < head.size(); ++i) out += i >= 3 && i <= 5 ? "---:|" : "---|";
    out += "\n";
    for (const auto& row : r.rows) {
        std::vector<std::string> cells = {
            row.variant, row.kv_sharing, row.reduction,
            row.formula.empty() ? fmt::format("{}", row.kv_elements_per_token)
                                : fmt::format("{} = {}", row.kv_elements_per_token, row.formula),
            fmt::format("{}", row.kv_bytes_per_token), fmt::format("{}", row.n_params), fmt_lr(row),
            fmt_stat(row.val_loss, 4)};
        if (any_text) cells.push_back(row.task == "text" ? fmt_stat(row.val_bits_per_byte, 4) : "");
        if (any_acc) cells.push_back(fmt_stat(row.val_accuracy, 3));
        cells.push_back(fmt::format("n={}", row.run_ids.size()));
        for (auto& c : cells)   // a '|' inside a cell would split it
            for (size_t p = 0; (p = c.find('|', p)) != std::string::npos; p += 2) c.replace(p, 1, "\\|");
        out += fmt::format("| {} |\n", fmt::join(cells, " | "));
    }
    if (r.rows.empty()) out += "\n(no completed runs)\n";
    if (!r.failed.empty()) {
        out += "\nfailed (left out):\n";
        for (const auto& [id, err] : r.failed) out += fmt::format("- {}: {}\n", id, err);
    }
    if (!r.unfinished.empty()) {
        out += "\nunfinished (left out):\n";
        for (const auto& [id, st] : r.unfinished) out += fmt::format("- {}: status {}\n", id, st);
    }
    return out;
}

std::string report_csv(const Report& r) {
    std::string out =
        "variant,attention,task,keys_per_query_head,reduction,kv_cache_elements_per_token,formula,"
        "kv_cache_bytes_per_token,n_params,lr,lrs_tried,lr_metric,n,val_loss_mean,val_loss_std,"
        "val_bits_per_byte_mean,val_bits_per_byte_std,val_accuracy_mean,val_accuracy_std,runs\n";
    for (const auto& row : r.rows) {
        std::vector<std::string> lrs;
        for (double x : row.lrs) lrs.push_back(fmt_num(x));
        std::vector<std::string> cells = {row.variant,
                                          row.attention,
                                          row.task,
                                          row.kv_sharing,
                                          row.reduction,
                                          fmt::format("{}", row.kv_elements_per_token),
                                          row.formula,
                                          fmt::format("{}", row.kv_bytes_per_token),
                                          fmt::format("{}", row.n_params),
                                          fmt_num(row.lr),
                                          fmt::format("{}", fmt::join(lrs, " ")),
                                          row.metric,
                                          fmt::format("{}", row.run_ids.size()),
                                          csv_real(row.val_loss.mean),
                                          csv_real(row.val_loss.std),
                                          csv_real(row.val_bits_per_byte.mean),
                                          csv_real(row.val_bits_per_byte.std),
                                          csv_real(row.val_accuracy.mean),
                                          csv_real(row.val_accuracy.std),
                                          fmt::format("{}", fmt::join(row.run_ids, " "))};
        for (auto& c : cells) c = csv_field(c);
        out += fmt::format("{}\n", fmt::join(cells, ","));
    }
    return out;
}

}  // namespace kvlab
