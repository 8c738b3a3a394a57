#include "model/checkpoint.h"

#include "attention/registry.h"
#include "config/loader.h"
#include "core/error.h"

#include <fmt/format.h>

#include <cmath>
#include <filesystem>

namespace kvlab {

template <class S>
Attrs model_attrs(const Transformer<S>& m) {
    Attrs a;
    for (const auto& [k, v] : m.hyper_params()) {
        if (k == "rope_theta" || k == "norm_eps")
            a.emplace_back(k, v);
        else
            a.emplace_back(k, static_cast<int64_t>(std::llround(v)));
    }
    a.emplace_back("attention", m.config().attention);
    a.emplace_back("format_version", int64_t{1});
    return a;
}

namespace {
template <class S>
ParamSet pack(const Transformer<S>& m, const S* arena) {
    ParamSet p;
    p.attrs = model_attrs(m);
    for (const auto& np : m.params()) {
        Tensor t{np.spec.name, np.spec.shape, std::vector<float>(np.spec.numel())};
        for (int64_t i = 0; i < np.spec.numel(); ++i) t.data[i] = static_cast<float>(arena[np.offset + i]);
        p.tensors.push_back(std::move(t));
    }
    return p;
}
}  // namespace

template <class S>
ParamSet to_param_set(const Transformer<S>& m) {
    return pack(m, m.param_data());
}
template <class S>
ParamSet grads_to_param_set(const Transformer<S>& m) {
    return pack(m, m.grad_data());
}

template <class S>
void load_param_set(Transformer<S>& m, const ParamSet& p, const std::string& what) {
    auto shape_str = [](const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); };
    for (const auto& np : m.params()) {
        const Tensor* t = nullptr;
        for (const auto& x : p.tensors)
            if (x.name == np.spec.name) t = &x;
        if (!t)
            throw Error(fmt::format("{}: missing parameter '{}' (shape {}) that the {} model needs", what, np.spec.name,
                                    shape_str(np.spec.shape), m.config().attention));
        if (t->shape != np.spec.shape)
            throw Error(fmt::format("{}: parameter '{}' has shape {}, the config needs {}", what, np.spec.name,
                                    shape_str(t->shape), shape_str(np.spec.shape)));
        if (static_cast<int64_t>(t->data.size()) != np.spec.numel())
            throw Error(fmt::format("{}: parameter '{}' holds {} values, expected {}", what, np.spec.name, t->data.size(),
                                    np.spec.numel()));
        for (int64_t i = 0; i < np.spec.numel(); ++i) {
            if (!std::isfinite(t->data[i]))
                throw Error(fmt::format("{}: parameter '{}' holds a non-finite value at index {}", what, np.spec.name, i));
            m.param_data()[np.offset + i] = static_cast<S>(t->data[i]);
        }
    }
    for (const auto& x : p.tensors) {
        bool known = false;
        for (const auto& np : m.params()) known |= np.spec.name == x.name;
        if (!known)
            throw Error(fmt::format("{}: unexpected parameter '{}' for a {} model with these dimensions", what, x.name,
                                    m.config().attention));
    }
}

ModelConfig model_config_from_attrs(const Attrs& attrs, const std::string& what) {
    ModelConfig c;
    bool have_attention = false;
    auto num = [&](const std::string& k, const AttrValue& v) -> double {
        if (auto i = std::get_if<int64_t>(&v)) return double(*i);
        if (auto d = std::get_if<double>(&v)) return *d;
        throw Error(fmt::format("{}: attribute '{}' should be a number", what, k));
    };
    // A dimension: an integer that fits an int (a double out of int's range would be UB to convert).
    auto dim = [&](const std::string& k, const AttrValue& v) -> int {
        const double x = num(k, v);
        if (!std::isfinite(x) || x != std::floor(x) || x < -2147483648.0 || x > 2147483647.0)
            throw Error(fmt::format("{}: attribute '{}' = {} is not an integer that kvlab can use", what, k, x));
        return static_cast<int>(x);
    };
    for (const auto& [k, v] : attrs) {
        if (k == "attention") {
            if (auto s = std::get_if<std::string>(&v)) c.attention = *s, have_attention = true;
        } else if (k == "format_version") {
            if (num(k, v) != 1) throw Error(fmt::format("{}: format_version {} is not supported (expected 1)", what, num(k, v)));
        } else if (k == "vocab_size") c.vocab_size = dim(k, v);
        else if (k == "d_model") c.d_model = dim(k, v);
        else if (k == "n_layers") c.n_layers = dim(k, v);
        else if (k == "n_heads") c.n_heads = dim(k, v);
        else if (k == "head_dim") c.head_dim = dim(k, v);
        else if (k == "mlp_hidden") c.mlp_hidden = dim(k, v);
        else if (k == "rope_theta") c.rope_theta = num(k, v);
        else if (k == "norm_eps") c.norm_eps = num(k, v);
        else if (k == "tie_embeddings") c.tie_embeddings = num(k, v) != 0;
        else c.plugin[k] = num(k, v);
    }
    if (!have_attention) throw Error(fmt::format("{}: no 'attention' attribute; not a kvlab checkpoint", what));
    for (auto [key, val] : {std::pair{"d_model", c.d_model}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                            {"head_dim", c.head_dim}, {"mlp_hidden", c.mlp_hidden}, {"vocab_size", c.vocab_size}})
        if (val <= 0) throw Error(fmt::format("{}: attribute '{}' is missing or not positive", what, key));
    // The config rules (vocab_size, sizes that fit in memory), then the plugin's own
    // checks of its keys and dimensions, all named after the checkpoint's attributes.
    for (const auto& e : validate_model(c))
        throw Error(fmt::format("{}: attributes disagree with kvlab's model rules: {}", what, e.what()));
    for (const auto& e : check_memory(c))
        throw Error(fmt::format("{}: attributes disagree with kvlab's model rules: {}", what, e.what()));
    try {
        (void)make_attention<float>(c);
    } catch (const ConfigError& e) {
        throw Error(fmt::format("{}: attributes do not describe a valid {} model: {}", what, c.attention, e.what()));
    }
    return c;
}

namespace {
std::string run_status(const RunRecord& r) {
    for (const auto& [k, v] : r.attrs)
        if (k == "status" && std::holds_alternative<std::string>(v)) return std::get<std::string>(v);
    return "unknown";
}
std::string run_config(const RunRecord& r) {
    for (const auto& [k, v] : r.attrs)
        if (k == "config" && std::holds_alternative<std::string>(v)) return std::get<std::string>(v);
    return {};
}
}  // namespace

CheckpointSource read_checkpoint(const std::string& spec) {
    std::string file = spec, group;
    if (const auto pos = spec.find(":/"); pos != std::string::npos) file = spec.substr(0, pos), group = spec.substr(pos + 1);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(file, ec)) throw Error(fmt::format("checkpoint file '{}' not found", file));
    std::vector<RunRecord> runs;
    bool is_results = true;
    std::string not_results;
    try {
        runs = read_runs(file);
    } catch (const Error& e) {
        is_results = false;
        not_results = e.what();
    }
    if (group.empty()) {
        if (!is_results) {
            try {   // a checkpoint or a gradient dump keeps its parameters in /params
                return {read_param_set(file, "/params"), file + ":/params", {}};
            } catch (const Error&) {
                throw Error(fmt::format("no parameters found: {}, and there is no /params group. Name the group "
                                        "that holds them: {}:/path/to/params", not_results, file));
            }
        }
        if (runs.size() != 1) {
            std::string ids;
            for (const auto& r : runs) ids += fmt::format("\n  {}:/runs/{}  ({})", file, r.id, run_status(r));
            throw Error(runs.empty() ? fmt::format("'{}' has no runs", file)
                                     : fmt::format("'{}' has {} runs; pick one:{}", file, runs.size(), ids));
        }
        group = "/runs/" + runs[0].id;
    }
    while (group.size() > 1 && group.back() == '/') group.pop_back();
    // "/runs/<id>" is a run of a results file: its parameters are in /runs/<id>/params.
    if (is_results && group.rfind("/runs/", 0) == 0 && group.find('/', 6) == std::string::npos) {
        const std::string id = group.substr(6);
        std::string ids;
        for (const auto& r : runs) {
            if (r.id == id) {
                if (run_status(r) != "completed")
                    throw Error(fmt::format("run '{}' in '{}' has status '{}'; only completed runs have parameters", id,
                                            file, run_status(r)));
                return {read_param_set(file, group + "/params"), file + ":" + group + "/params", run_config(r)};
            }
            ids += (ids.empty() ? "" : ", ") + r.id;
        }
        throw Error(fmt::format("'{}' has no run '{}'; runs: {}", file, id, ids.empty() ? "(none)" : ids));
    }
    return {read_param_set(file, group), file + ":" + group, {}};
}

template <class S>
void init_from_checkpoint(Transformer<S>& m, const std::string& spec) {
    CheckpointSource src;
    try {
        src = read_checkpoint(spec);
    } catch (const Error& e) {
        throw Error(fmt::format("train.init_from: {}", e.what()));
    }
    load_param_set(m, src.params, fmt::format("train.init_from ({})", src.what));
}

template Attrs model_attrs(const Transformer<float>&);
template Attrs model_attrs(const Transformer<double>&);
template ParamSet to_param_set(const Transformer<float>&);
template ParamSet to_param_set(const Transformer<double>&);
template ParamSet grads_to_param_set(const Transformer<float>&);
template ParamSet grads_to_param_set(const Transformer<double>&);
template void load_param_set(Transformer<float>&, const ParamSet&, const std::string&);
template void load_param_set(Transformer<double>&, const ParamSet&, const std::string&);
template void init_from_checkpoint(Transformer<float>&, const std::string&);
template void init_from_checkpoint(Transformer<double>&, const std::string&);

}  // namespace kvlab
