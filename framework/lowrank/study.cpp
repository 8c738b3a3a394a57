// The study's config reader and measurements (study.h).
#include "lowrank/study.h"

#include "config/yaml_reader.h"
#include "core/error.h"
#include "lowrank/compress.h"
#include "lowrank/lowrank.h"

#include <Eigen/Eigenvalues>
#include <Eigen/SVD>
#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace kvlab {
namespace {

namespace fs = std::filesystem;

// A `set:` map of dotted keys → values, as --set overrides (values kept as flow YAML).
std::vector<Override> read_set(YamlReader& parent, const std::string& key) {
    std::vector<Override> out;
    if (!parent.has(key)) return out;
    auto r = parent.child(key);
    for (const auto& k : r.keys()) out.push_back({k, to_flow(*r.raw(k))});
    r.finish();
    return out;
}

// A list of scalars decoded as T; problems reported at the key.
template <class T>
std::optional<std::vector<T>> read_list(YamlReader& r, const std::string& key, const char* what) {
    const YAML::Node* v = r.raw(key);
    if (!v) return std::nullopt;
    if (!v->IsSequence() || v->size() == 0) {
        r.error(key, fmt::format("expected a non-empty list of {}, got {}", what, describe_value(*v)));
        return std::vector<T>{};
    }
    std::vector<T> out;
    for (size_t i = 0; i < v->size(); ++i) {
        T x{};
        std::string expected, detail;
        if (!decode_value((*v)[i], x, expected, detail)) {
            r.error(key, fmt::format("item {}: expected {}, got {}", i + 1, expected, describe_value((*v)[i])));
            return std::vector<T>{};
        }
        out.push_back(x);
    }
    return out;
}

void read_task(YamlReader& r, StudyTask& t, const std::string& study_source) {
    const std::string config = r.get<std::string>("config");
    const fs::path next_to = fs::path(study_source).parent_path() / config;
    std::error_code ec;
    t.config = fs::path(config).is_relative() && fs::is_regular_file(next_to, ec) ? next_to.lexically_normal().string()
                                                                                 : config;
    if (!config.empty() && !fs::is_regular_file(t.config, ec))
        r.error("config", fmt::format("config file not found; tried: {}{}", config,
                                      fs::path(config).is_relative() ? ", " + next_to.string() : ""));
    t.set = read_set(r, "set");
    if (auto b = read_list<int>(r, "budgets", "integers")) {
        t.budgets = *b;
        for (size_t i = 0; i < t.budgets.size(); ++i) {
            if (t.budgets[i] < 1) r.error("budgets", fmt::format("must be >= 1, got {}", t.budgets[i]));
            if (i > 0 && t.budgets[i] <= t.budgets[i - 1])
                r.error("budgets", fmt::format("must be strictly increasing, got {} after {}", t.budgets[i],
                                               t.budgets[i - 1]));
        }
    } else {
        r.error("budgets", "is required: the KV-cache elements per token per layer to compare at, e.g. [48, 80, 128]");
    }
    auto mla = r.child("mla");
    t.mla_rope_head_dim = mla.get_or<int>("qk_rope_head_dim", t.mla_rope_head_dim);
    t.mla_q_lora_rank = mla.get_or<int>("q_lora_rank", t.mla_q_lora_rank);
    mla.finish();
    if (t.mla_rope_head_dim < 2 || t.mla_rope_head_dim % 2) r.error("mla", "qk_rope_head_dim must be even and >= 2");
    for (int b : t.budgets)
        if (b <= t.mla_rope_head_dim)
            r.error("budgets", fmt::format("{} leaves no room for MLA's latent: the budget is kv_lora_rank + "
                                           "qk_rope_head_dim ({}), so it must exceed {}", b, t.mla_rope_head_dim,
                                           t.mla_rope_head_dim));
    auto ft = r.child("finetune");
    t.finetune_steps = ft.get_or<int>("steps", t.finetune_steps);
    if (t.finetune_steps < 0) ft.error("steps", "must be >= 0 (0 = no fine-tuning)");
    t.finetune_set = read_set(ft, "set");
    for (const auto& o : t.finetune_set)
        if (o.key == "train.batch_size" || o.key == "train.eval_batches" || o.key.rfind("model.", 0) == 0 ||
            o.key.rfind("data.", 0) == 0 || o.key == "train.init_from")
            ft.error("set", fmt::format("{} cannot change for fine-tuning: the +ft numbers must be on the same model, "
                                        "task and validation batches as the rest (set it under set: instead)", o.key));
    ft.finish();
    r.finish();
}

}  // namespace

std::string StudyConfig::results_path() const { return output.empty() ? "results/" + name + ".h5" : output; }
std::string StudyConfig::markdown_path() const {
    return fs::path(results_path()).replace_extension(".md").string();
}
std::string StudyConfig::checkpoint_dir() const {
    return fs::path(results_path()).replace_extension(".compressed").string();
}

StudyConfig load_study_config(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(fmt::format("{}: study config file not found or unreadable", path));
    std::stringstream ss;
    ss << in.rdbuf();
    StudyConfig s;
    s.source = path;
    s.text = ss.str();
    YAML::Node root;
    try {
        root = YAML::Load(s.text);
    } catch (const YAML::Exception& e) {
        throw Error(fmt::format("{}:{}:{}: not valid YAML: {}", path, e.mark.line + 1, e.mark.column + 1, e.msg));
    }
    YamlContext ctx(path);
    YamlReader r(root, ctx);
    s.name = r.get_or<std::string>("name", s.name);
    s.output = r.get_or<std::string>("output", s.output);
    if (auto m = read_list<std::string>(r, "methods", "method names")) {
        s.methods = *m;
        for (const auto& name : s.methods) try {
                make_lowrank(name);
            } catch (const Error& e) {
                r.error("methods", e.what());
            }
    }
    if (auto d = read_list<bool>(r, "data_aware", "booleans")) s.data_aware = *d;
    s.calib_batches = r.get_or<int>("calib_batches", s.calib_batches);
    s.kv_eval_batches = r.get_or<int>("kv_eval_batches", s.kv_eval_batches);
    s.seed = r.get_or<uint64_t>("seed", s.seed);
    s.jobs = r.get_or<int>("jobs", s.jobs);
    if (s.calib_batches < 1) r.error("calib_batches", "must be >= 1");
    if (s.kv_eval_batches < 1) r.error("kv_eval_batches", "must be >= 1");
    if (s.jobs < 1) r.error("jobs", "must be >= 1");
    auto tasks = r.child("tasks");
    for (const auto& name : tasks.keys()) {
        StudyTask t;
        t.name = name;
        auto tr = tasks.child(name);
        read_task(tr, t, path);
        s.tasks.push_back(std::move(t));
    }
    tasks.finish();
    if (s.tasks.empty()) r.error("tasks", "is required: at least one task (e.g. text: {config: ..., budgets: [...]})");
    r.finish();
    ctx.throw_if_errors();

    // The base configs, and the budgets against their models.
    std::vector<std::string> problems;
    for (auto& t : s.tasks) {
        t.base = load_config(t.config, t.set);   // its own positions in its messages
        if (!t.base.sweep.empty())
            problems.push_back(fmt::format("{}: tasks.{}: the base config {} has a sweep: block; give a single config",
                                           path, t.name, t.config));
        try {
            const CompressDims d = compress_dims(t.base.model);
            t.n_kv_heads = d.n_kv_heads;
            t.max_rank = d.max_rank;
        } catch (const Error& e) {
            problems.push_back(fmt::format("{}: tasks.{}: the base model must be mha, gqa or mqa: {}", path, t.name,
                                           e.what()));
            continue;
        }
        for (int b : t.budgets)
            if (b > t.max_rank)
                problems.push_back(fmt::format(
                    "{}: tasks.{}.budgets: {} is above the largest rank of [wk; wv], min(2·n_kv_heads·head_dim, "
                    "d_model) = min({}, {}) = {}", path, t.name, b, 2 * t.n_kv_heads * t.base.model.head_dim,
                    t.base.model.d_model, t.max_rank));
    }
    if (!problems.empty()) throw Error(fmt::format("{}", fmt::join(problems, "\n")));
    return s;
}

ValEval evaluate_val(Transformer<float>& model, const Task& task, int batches, int batch_size) {
    Batch batch;
    double total = 0;
    int64_t scored = 0, correct = 0;
    for (int i = 0; i < batches; ++i) {
        task.val_batch(i, batch_size, batch);
        const double loss = model.forward(batch.inputs.data(), batch.targets.data(), batch.B, batch.T);
        int64_t s = 0, c = 0;
        model.count_correct(batch.targets.data(), s, c);
        total += loss * double(s);
        scored += s;
        correct += c;
    }
    ValEval r;
    r.loss = scored > 0 ? total / double(scored) : 0.0;
    if (task.scores_answers()) r.accuracy = scored > 0 ? double(correct) / double(scored) : 0.0;
    return r;
}

namespace {
const Tensor& find_tensor(const ParamSet& p, const std::string& name) {
    for (const auto& t : p.tensors)
        if (t.name == name) return t;
    throw Error(fmt::format("the parameter set has no tensor '{}'", name));
}
MatD as_mat(const Tensor& t) {
    KV_CHECK(t.shape.size() == 2, "tensor '{}' is not a matrix", t.name);
    return Eigen::Map<const Mat>(t.data.data(), t.shape[0], t.shape[1]).cast<double>();
}
}  // namespace

MatD kv_weight(const ParamSet& p, int layer) {
    const std::string pre = fmt::format("layers.{}.attn.", layer);
    for (const auto& t : p.tensors)
        if (t.name == pre + "wk") {
            const MatD wk = as_mat(t), wv = as_mat(find_tensor(p, pre + "wv"));
            MatD W(wk.rows() + wv.rows(), wk.cols());   // [2·G·dh, D]
            W << wk, wv;
            return W;
        }
    const MatD uk = as_mat(find_tensor(p, pre + "w_uk")), uv = as_mat(find_tensor(p, pre + "w_uv"));
    MatD U(uk.rows() + uv.rows(), uk.cols());           // [2·G·dh, r]
    U << uk, uv;
    return U * as_mat(find_tensor(p, pre + "w_dkv"));   // [2·G·dh, D]
}

KvErrors kv_activation_errors(Transformer<float>& orig, const ParamSet& orig_params, Transformer<float>& comp,
                              const ParamSet& comp_params, const Task& task, int batches, int batch_size) {
    const int L = orig.config().n_layers;
    std::vector<MatD> W(L), Wc(L);
    for (int l = 0; l < L; ++l) W[l] = kv_weight(orig_params, l), Wc[l] = kv_weight(comp_params, l);
    std::vector<double> ref(L, 0), iso(L, 0), e2e(L, 0);
    std::vector<MatD> Xo(L);
    Batch batch;
    for (int i = 0; i < batches; ++i) {
        task.val_batch(i, batch_size, batch);
        orig.forward(batch.inputs.data(), nullptr, batch.B, batch.T);
        for (int l = 0; l < L; ++l) Xo[l] = orig.attention_input(l).cast<double>();   // [B*T, D]
        comp.forward(batch.inputs.data(), nullptr, batch.B, batch.T);
        for (int l = 0; l < L; ++l) {
            const MatD Ko = Xo[l] * W[l].transpose();                                     // [B*T, 2·G·dh]
            const MatD Kc = comp.attention_input(l).cast<double>() * Wc[l].transpose();   // [B*T, 2·G·dh]
            ref[l] += Ko.squaredNorm();
            iso[l] += (Xo[l] * (W[l] - Wc[l]).transpose()).squaredNorm();
            e2e[l] += (Kc - Ko).squaredNorm();
        }
    }
    KvErrors out;
    for (int l = 0; l < L; ++l) {
        out.isolated.push_back(std::sqrt(iso[l] / std::max(ref[l], 1e-300)));
        out.end_to_end.push_back(std::sqrt(e2e[l] / std::max(ref[l], 1e-300)));
    }
    return out;
}

Eigen::VectorXd weight_spectrum(const MatD& W) {
    const Eigen::MatrixXd A = W;
    return Eigen::BDCSVD<Eigen::MatrixXd>(A).singularValues();
}

Eigen::VectorXd activation_spectrum(const MatD& W, const MatD& gram, double n_tokens) {
    const Eigen::MatrixXd C = W * gram * W.transpose() / std::max(n_tokens, 1.0);   // [2·G·dh, 2·G·dh]
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(C);
    Eigen::VectorXd ev = es.eigenvalues().reverse();   // descending
    return ev.cwiseMax(0.0).cwiseSqrt();
}

}  // namespace kvlab
