// kvlab lowrank-study: learned MLA against post-hoc compressed MHA at equal KV-cache
// budgets (docs/lowrank.md, "The study"; the config is described in lowrank/study.h).
//
// Four phases, each resumable:
//   1. train  the MHA base and MLA at every budget: a sweep (worker processes, `jobs` at a
//             time) into the study's results file; completed runs are skipped on rerun.
//   2. compress the base with every method × weight-only/data-aware × budget into latent_kv
//             checkpoints (<stem>.compressed/), measure the factorisation and K/V errors, the
//             spectra and the validation loss/accuracy. Deterministic, so it is redone.
//   3. finetune every compressed checkpoint, and the base itself as the control, via
//             train.init_from: a second sweep; completed runs are skipped on rerun.
//   4. tables /study/<task>/{models,layers,spectra} into the results file, and Markdown.
#include "cli.h"
#include "config/yaml_reader.h"
#include "core/rng.h"
#include "io/results.h"
#include "lowrank/compress.h"
#include "lowrank/study.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "tasks/task.h"
#include "train/sweep.h"
#include "train/trainer.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

namespace kvlab::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

const char* kStudyHelp = R"(usage: kvlab lowrank-study STUDY.yaml [--jobs N] [--threads T] [--dry-run] [--overwrite]

The post-hoc KV-compression study (docs/lowrank.md, "The study"). For each task of
STUDY.yaml and each KV-cache budget b (elements per token per layer) it compares:
  mla       MLA trained from scratch with kv_lora_rank + qk_rope_head_dim = b
  METHOD    the trained MHA base compressed to latent_kv at rank b by each low-rank method
            (svd, qrcp, rsvd, cur), weight-only and data-aware (kvlab compress)
  +ft       each compressed model fine-tuned for a few steps (train.init_from), and the
            base fine-tuned as long as the control
and records per layer the relative error of the [wk; wv] factorisation and of the cached
K/V on validation batches, the singular spectra of [wk; wv] and of the K/V activations,
and each model's validation loss, bits per byte (text) or accuracy (MQAR).

Writes (default names from the study's name):
  results/<name>.h5     /runs/<id> every training run (config.md), /study/<task>/ the tables
  results/<name>.md     the comparison table (also printed)
  results/<name>.compressed/  the compressed checkpoints (kvlab generate loads them)
Plots: /usr/bin/python3 scripts/plot_lowrank_study.py results/<name>.h5

Rerunning resumes: completed training and fine-tuning runs are skipped (the compression
phase, a minute or so, is redone; it is deterministic). Ctrl-C stops (exit 130).

  --jobs N       training runs at a time (default: the study's jobs, else 2)
  --threads T    threads per training run (default cores/N) and for the compression phase
                 (default all cores)
  --dry-run      list the runs, compressions and fine-tunes it would do, and exit
  --overwrite    rerun completed training runs too
)";

volatile std::sig_atomic_t g_interrupts = 0;
extern "C" void on_study_interrupt(int) { g_interrupts = g_interrupts + 1; }

std::string mode_name(bool data_aware) { return data_aware ? "data" : "weight"; }
std::string base_id(const StudyTask& t) { return t.name + "-mha"; }
std::string mla_id(const StudyTask& t, int b) { return fmt::format("{}-mla-b{}", t.name, b); }
std::string comp_name(const StudyTask& t, const std::string& m, bool da, int b) {
    return fmt::format("{}-{}-{}-b{}", t.name, m, mode_name(da), b);
}
std::string ckpt_path(const StudyConfig& s, const std::string& name) {
    return (fs::path(s.checkpoint_dir()) / (name + ".h5")).string();
}

// A training run of the study: the task's base config with `extra` overrides, into the
// study's results file under `id`.
ExperimentConfig make_point(const StudyConfig& s, const StudyTask& t, const std::string& id, std::vector<Override> extra) {
    std::vector<Override> sets = t.set;
    sets.insert(sets.end(), extra.begin(), extra.end());
    sets.push_back({"output.path", yaml_quote(s.results_path())});
    ExperimentConfig c = load_config(t.config, sets);
    c.run_id = id;
    c.resolved_yaml = dump_config(c);
    return c;
}

std::vector<Override> mla_overrides(const StudyTask& t, int b) {
    return {{"model.attention", "mla"},
            {"model.kv_lora_rank", std::to_string(b - t.mla_rope_head_dim)},
            {"model.qk_rope_head_dim", std::to_string(t.mla_rope_head_dim)},
            {"model.q_lora_rank", std::to_string(t.mla_q_lora_rank)}};
}

// Fine-tuning: finetune_steps with a tenth of them warm-up and one final evaluation, then
// the study's own finetune.set, then the weights to start from.
std::vector<Override> finetune_overrides(const StudyTask& t, const std::string& init_from) {
    std::vector<Override> o = {{"train.steps", std::to_string(t.finetune_steps)},
                               {"train.eval_every", std::to_string(t.finetune_steps)},
                               {"train.warmup_steps", std::to_string(std::max(1, t.finetune_steps / 10))}};
    o.insert(o.end(), t.finetune_set.begin(), t.finetune_set.end());
    o.push_back({"train.init_from", yaml_quote(init_from)});
    return o;
}

// One row of /study/<task>/models: a trained, compressed or fine-tuned model.
struct ModelRow {
    std::string kind;              // mha | mla | compressed
    std::string method;            // mha, mla, or the approximator
    int64_t data_aware = -1;       // compressed: 0 / 1; else -1
    int64_t budget = 0;            // KV-cache elements per token per layer
    int64_t kv_total = 0;          // summed over layers
    int64_t n_params = 0;
    double val_loss = kNaN, val_accuracy = kNaN, weight_rel_error = kNaN, kv_rel_error = kNaN;
    double ft_val_loss = kNaN, ft_val_accuracy = kNaN;
    std::string run_id, ft_run_id, checkpoint;
};

struct LayerRow {
    std::string method;
    int64_t data_aware = 0, budget = 0, layer = 0;
    double weight_rel_error = 0, kv_rel_error_calib = 0, kv_rel_error_val_isolated = 0, kv_rel_error_val = 0;
};

struct TaskResult {
    bool measured = false;
    std::string problem;           // why the task could not be measured
    std::vector<ModelRow> models;
    std::vector<LayerRow> layers;
    ParamSet spectra;              // weight [L, min(2·G·dh, D)], activation [L, 2·G·dh]
};

std::optional<double> real_attr(const Attrs& attrs, const std::string& k) {
    for (const auto& [n, v] : attrs)
        if (n == k) {
            if (auto d = std::get_if<double>(&v)) return *d;
            if (auto i = std::get_if<int64_t>(&v)) return double(*i);
        }
    return std::nullopt;
}
std::string text_attr(const Attrs& attrs, const std::string& k) {
    for (const auto& [n, v] : attrs)
        if (n == k)
            if (auto s = std::get_if<std::string>(&v)) return *s;
    return {};
}

// The completed runs of the results file by id (none when it does not exist yet).
std::map<std::string, RunRecord> completed_runs(const std::string& path) {
    std::map<std::string, RunRecord> out;
    std::error_code ec;
    if (!fs::exists(path, ec)) return out;
    for (auto& r : read_runs(path))
        if (text_attr(r.attrs, "status") == "completed") out.emplace(r.id, std::move(r));
    return out;
}

// A row for a trained run (mha, mla) from its results.
ModelRow trained_row(const RunRecord& r, const std::string& kind, int64_t budget, int n_layers) {
    ModelRow m;
    m.kind = m.method = kind;
    m.budget = budget;
    m.kv_total = int64_t(real_attr(r.attrs, "kv_cache_elements_per_token").value_or(budget * n_layers));
    m.n_params = int64_t(real_attr(r.attrs, "n_params").value_or(0));
    m.val_loss = real_attr(r.final_attrs, "val_loss").value_or(kNaN);
    m.val_accuracy = real_attr(r.final_attrs, "val_accuracy").value_or(kNaN);
    m.run_id = r.id;
    return m;
}

// Phase 2 for one task: compress, measure, evaluate.
TaskResult measure_task(const StudyConfig& s, const StudyTask& t, const std::map<std::string, RunRecord>& runs) {
    TaskResult res;
    const auto base_run = runs.find(base_id(t));
    if (base_run == runs.end()) {
        res.problem = fmt::format("the base run {} did not complete", base_id(t));
        return res;
    }
    const ExperimentConfig& cfg = t.base;
    const int L = cfg.model.n_layers, B = cfg.train.batch_size;
    const CheckpointSource base = read_checkpoint(s.results_path() + ":/runs/" + base_id(t));
    write_param_set(ckpt_path(s, base_id(t)), "/params", base.params);   // the control fine-tune starts here
    auto task = make_task(cfg.data);
    Transformer<float> orig(cfg.model);
    load_param_set(orig, base.params, base.what);
    res.models.push_back(trained_row(base_run->second, "mha", 2LL * t.n_kv_heads * cfg.model.head_dim, L));
    res.models.back().checkpoint = ckpt_path(s, base_id(t));
    for (int b : t.budgets) {
        ModelRow m;
        m.kind = m.method = "mla";
        m.budget = b;
        m.kv_total = int64_t(b) * L;
        m.run_id = mla_id(t, b);
        if (auto it = runs.find(m.run_id); it != runs.end()) m = trained_row(it->second, "mla", b, L);
        res.models.push_back(m);
    }

    // Calibration (data-aware) and the spectra: kvlab compress's calibration stream.
    Rng calib_rng = Rng::stream(cfg.seed + s.seed, /*stream id: calibration*/ 7);
    const std::vector<MatD> grams = attention_input_grams(orig, *task, s.calib_batches, B, calib_rng);
    const double n_tokens = double(s.calib_batches) * B * cfg.data.seq_len;
    {
        Tensor ws{"weight", {}, {}}, as{"activation", {}, {}};
        for (int l = 0; l < L; ++l) {
            const MatD W = kv_weight(base.params, l);
            const Eigen::VectorXd w = weight_spectrum(W), a = activation_spectrum(W, grams[l], n_tokens);
            ws.shape = {L, w.size()};
            as.shape = {L, a.size()};
            for (Eigen::Index i = 0; i < w.size(); ++i) ws.data.push_back(float(w[i]));
            for (Eigen::Index i = 0; i < a.size(); ++i) as.data.push_back(float(a[i]));
        }
        res.spectra.attrs = {{"calib_tokens", n_tokens}};
        res.spectra.tensors = {ws, as};
    }

    for (int b : t.budgets)
        for (const auto& method : s.methods)
            for (bool da : s.data_aware) {
                const auto t0 = Clock::now();
                CompressOptions opt;
                opt.rank = b;
                opt.method = method;
                opt.seed = s.seed;
                opt.data_aware = da;
                std::vector<LayerCompression> report;
                const ParamSet ps = compress_to_latent_kv(base.params, opt, grams, &report);
                const std::string name = comp_name(t, method, da, b), path = ckpt_path(s, name);
                write_param_set(path, "/params", ps);
                Transformer<float> comp(model_config_from_attrs(ps.attrs, path));
                load_param_set(comp, ps, path);
                const ValEval ev = evaluate_val(comp, *task, cfg.train.eval_batches, B);
                const KvErrors kv = kv_activation_errors(orig, base.params, comp, ps, *task, s.kv_eval_batches, B);
                ModelRow m;
                m.kind = "compressed";
                m.method = method;
                m.data_aware = da;
                m.budget = b;
                m.kv_total = comp.kv_elements_per_token();
                m.n_params = comp.n_params();
                m.val_loss = ev.loss;
                m.val_accuracy = ev.accuracy.value_or(kNaN);
                m.checkpoint = path;
                double werr = 0, kerr = 0;
                for (int l = 0; l < L; ++l) {
                    LayerRow lr{method, da, b, l, report[l].weight_rel_error, report[l].output_rel_error,
                                kv.isolated[l], kv.end_to_end[l]};
                    res.layers.push_back(lr);
                    werr += lr.weight_rel_error / L;
                    kerr += lr.kv_rel_error_val / L;
                }
                m.weight_rel_error = werr;
                m.kv_rel_error = kerr;
                res.models.push_back(m);
                fmt::print("  {:<28} weight err {:.4f}  K/V err {:.4f}  val loss {:.4f}{}  ({:.1f} s)\n", name, werr,
                           kerr, ev.loss, ev.accuracy ? fmt::format("  acc {:.4f}", *ev.accuracy) : "",
                           std::chrono::duration<double>(Clock::now() - t0).count());
                std::fflush(stdout);
            }
    res.measured = true;
    return res;
}

Table models_table(const StudyConfig& s, const StudyTask& t, const TaskResult& r) {
    Table tb;
    const bool acc = t.base.data.task != "text" && !r.models.empty() && !std::isnan(r.models.front().val_accuracy);
    tb.attrs = {{"task", t.name},
                {"data_task", t.base.data.task},
                {"metric", std::string(acc ? "val_accuracy" : "val_bits_per_byte")},
                {"base_run", base_id(t)},
                {"base_config", t.base.resolved_yaml},
                {"study_config", s.text},
                {"n_layers", int64_t{t.base.model.n_layers}},
                {"n_kv_heads", int64_t{t.n_kv_heads}},
                {"max_rank", int64_t{t.max_rank}},
                {"calib_batches", int64_t{s.calib_batches}},
                {"kv_eval_batches", int64_t{s.kv_eval_batches}},
                {"eval_batches", int64_t{t.base.train.eval_batches}},
                {"finetune_steps", int64_t{t.finetune_steps}},
                {"seed", static_cast<int64_t>(s.seed)}};
    std::vector<std::string> kind, method, run_id, ft_run_id, checkpoint;
    std::vector<int64_t> data_aware, budget, kv_total, n_params;
    std::vector<double> loss, bpb, accv, werr, kerr, ft_loss, ft_bpb, ft_acc;
    for (const auto& m : r.models) {
        kind.push_back(m.kind), method.push_back(m.method), run_id.push_back(m.run_id), ft_run_id.push_back(m.ft_run_id);
        checkpoint.push_back(m.checkpoint);
        data_aware.push_back(m.data_aware), budget.push_back(m.budget), kv_total.push_back(m.kv_total);
        n_params.push_back(m.n_params);
        loss.push_back(m.val_loss), bpb.push_back(m.val_loss / std::log(2.0)), accv.push_back(m.val_accuracy);
        werr.push_back(m.weight_rel_error), kerr.push_back(m.kv_rel_error);
        ft_loss.push_back(m.ft_val_loss), ft_bpb.push_back(m.ft_val_loss / std::log(2.0));
        ft_acc.push_back(m.ft_val_accuracy);
    }
    tb.columns = {{"kind", kind},
                  {"method", method},
                  {"data_aware", data_aware},
                  {"budget", budget},
                  {"kv_cache_elements_per_token", kv_total},
                  {"n_params", n_params},
                  {"val_loss", loss},
                  {"val_bits_per_byte", bpb},
                  {"val_accuracy", accv},
                  {"weight_rel_error", werr},
                  {"kv_rel_error", kerr},
                  {"ft_val_loss", ft_loss},
                  {"ft_val_bits_per_byte", ft_bpb},
                  {"ft_val_accuracy", ft_acc},
                  {"run_id", run_id},
                  {"ft_run_id", ft_run_id},
                  {"checkpoint", checkpoint}};
    return tb;
}

Table layers_table(const TaskResult& r) {
    Table tb;
    std::vector<std::string> method;
    std::vector<int64_t> da, budget, layer;
    std::vector<double> werr, calib, iso, e2e;
    for (const auto& l : r.layers) {
        method.push_back(l.method), da.push_back(l.data_aware), budget.push_back(l.budget), layer.push_back(l.layer);
        werr.push_back(l.weight_rel_error), calib.push_back(l.kv_rel_error_calib);
        iso.push_back(l.kv_rel_error_val_isolated), e2e.push_back(l.kv_rel_error_val);
    }
    tb.columns = {{"method", method},           {"data_aware", da},
                  {"budget", budget},           {"layer", layer},
                  {"weight_rel_error", werr},   {"kv_rel_error_calib", calib},
                  {"kv_rel_error_val_isolated", iso}, {"kv_rel_error_val", e2e}};
    return tb;
}

std::string fmt_num(double v, const char* spec = "{:.4f}") {
    return std::isnan(v) ? std::string("–") : fmt::format(fmt::runtime(spec), v);
}

std::string markdown(const StudyConfig& s, const std::vector<TaskResult>& results) {
    std::string o = fmt::format("# Post-hoc KV compression vs learned MLA ({})\n\n", s.results_path());
    o += "Cache = KV-cache elements per token per layer. Errors are means over layers: the relative Frobenius\n"
         "error of [wk; wv] and of the cached K/V on validation batches (end to end). +ft: after fine-tuning.\n";
    for (size_t i = 0; i < s.tasks.size(); ++i) {
        const StudyTask& t = s.tasks[i];
        const TaskResult& r = results[i];
        o += fmt::format("\n## {} (data.task {}, {} layers)\n\n", t.name, t.base.data.task, t.base.model.n_layers);
        if (!r.measured) {
            o += fmt::format("Not measured: {}.\n", r.problem);
            continue;
        }
        const bool acc = !r.models.empty() && !std::isnan(r.models.front().val_accuracy);
        const char* cap = acc ? "accuracy" : "bits/byte";
        o += fmt::format("| cache | method | mode | weight err | K/V err | val loss | {} | +ft val loss | +ft {} |\n", cap,
                         cap);
        o += "|---:|---|---|---:|---:|---:|---:|---:|---:|\n";
        auto capv = [&](double loss, double a) { return acc ? fmt_num(a) : fmt_num(loss / std::log(2.0)); };
        for (const auto& m : r.models) {
            const std::string mode = m.kind == "compressed" ? (m.data_aware ? "data-aware" : "weight-only")
                                     : m.kind == "mha"      ? "base"
                                                            : "trained";
            o += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", m.budget, m.method, mode,
                             fmt_num(m.weight_rel_error), fmt_num(m.kv_rel_error), fmt_num(m.val_loss),
                             capv(m.val_loss, m.val_accuracy), fmt_num(m.ft_val_loss),
                             capv(m.ft_val_loss, m.ft_val_accuracy));
        }
    }
    return o;
}

const char* status_word(PointStatus st) {
    return st == PointStatus::skipped ? "skip (completed)" : "run";
}

}  // namespace

int cmd_lowrank_study(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kStudyHelp), 0;
    auto a = parse_args(argc, argv, 2, {"jobs", "threads"}, {"dry-run", "overwrite"}, "lowrank-study");
    if (a.positional.size() != 1) throw Error("expected one STUDY.yaml (see: kvlab lowrank-study --help)");
    const StudyConfig s = load_study_config(a.positional[0]);
    const double jobs = a.num("jobs", s.jobs), threads = a.num("threads", 0);
    if (jobs < 1 || jobs != int(jobs)) throw Error(fmt::format("--jobs must be an integer >= 1, got {}", a.opt("jobs")));
    if (threads < 0 || threads != int(threads))
        throw Error(fmt::format("--threads must be an integer >= 0, got {}", a.opt("threads")));

    // Phase 1's runs (every config validated before anything runs).
    std::vector<ExperimentConfig> train_points;
    for (const auto& t : s.tasks) {
        train_points.push_back(make_point(s, t, base_id(t), {}));
        for (int b : t.budgets) train_points.push_back(make_point(s, t, mla_id(t, b), mla_overrides(t, b)));
    }
    SweepOptions so;
    so.jobs = int(jobs);
    so.threads = int(threads);
    so.overwrite = a.flag("overwrite");
    so.quiet = true;

    if (a.flag("dry-run")) {
        const auto plan = plan_sweep(train_points, so.overwrite);
        const auto statuses = run_statuses(s.results_path());
        auto status_of = [&](const std::string& id) {
            for (const auto& [rid, st] : statuses)
                if (rid == id && st == "completed") return "skip (completed)";
            return "run";
        };
        fmt::print("study {} -> {} (table {}, checkpoints {}/); {} training run(s) at a time\n", s.source,
                   s.results_path(), s.markdown_path(), s.checkpoint_dir(), so.jobs);
        size_t k = 0;
        int n_train = 0, n_ft = 0;
        int64_t train_steps = 0, ft_steps = 0;
        for (const auto& t : s.tasks) {
            fmt::print("\ntask {}: {} base ({}; KV cache {} elements/token/layer), budgets {}\n", t.name,
                       t.base.model.attention, t.config, 2 * t.n_kv_heads * t.base.model.head_dim,
                       fmt::join(t.budgets, ", "));
            for (size_t j = 0; j <= t.budgets.size(); ++j, ++k) {
                const auto& p = train_points[k];
                const std::string what = j == 0 ? "MHA base"
                                                : fmt::format("MLA, kv_lora_rank {} + qk_rope_head_dim {}",
                                                              t.budgets[j - 1] - t.mla_rope_head_dim,
                                                              t.mla_rope_head_dim);
                fmt::print("  train     {:<30} {:<40} {} steps  {}\n", p.run_id, what, p.train.steps,
                           status_word(plan[k].status));
                if (plan[k].status != PointStatus::skipped) ++n_train, train_steps += p.train.steps;
            }
            const size_t n_comp = t.budgets.size() * s.methods.size() * s.data_aware.size();
            fmt::print("  compress  {} latent_kv models: methods {} x {} x budgets {}; eval {} val batches, "
                       "K/V errors on {}\n", n_comp, fmt::join(s.methods, "/"),
                       s.data_aware.size() == 2 ? "weight-only/data-aware" : mode_name(s.data_aware[0]) + "-aware",
                       fmt::join(t.budgets, "/"), t.base.train.eval_batches, s.kv_eval_batches);
            if (t.finetune_steps == 0) continue;
            std::vector<std::string> ids = {base_id(t) + "-ft"};
            for (int b : t.budgets)
                for (const auto& m : s.methods)
                    for (bool da : s.data_aware) ids.push_back(comp_name(t, m, da, b) + "-ft");
            for (const auto& id : ids) {
                const char* st = so.overwrite ? "run" : status_of(id);
                fmt::print("  finetune  {:<30} {} steps  {}\n", id, t.finetune_steps, st);
                if (std::string(st) == "run") ++n_ft, ft_steps += t.finetune_steps;
            }
        }
        fmt::print("\nto do: {} training run(s) ({} steps), {} fine-tune(s) ({} steps), then the tables\n", n_train,
                   train_steps, n_ft, ft_steps);
        return 0;
    }

    std::error_code ec;
    if (const auto dir = fs::path(s.results_path()).parent_path(); !dir.empty()) fs::create_directories(dir, ec);
    fs::create_directories(s.checkpoint_dir(), ec);
    if (ec) throw Error(fmt::format("cannot create '{}': {}", s.checkpoint_dir(), ec.message()));
    so.exe = "/proc/self/exe";   // the workers are this very binary
    so.interrupts = &g_interrupts;
    struct sigaction sa {}, old_int {}, old_term {};
    sa.sa_handler = on_study_interrupt;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    struct Restore {
        struct sigaction i, t;
        ~Restore() { sigaction(SIGINT, &i, nullptr), sigaction(SIGTERM, &t, nullptr); }
    } restore{old_int, old_term};
    const auto t0 = Clock::now();
    int failed = 0;

    fmt::print("== 1. training: {} run(s), {} at a time\n", train_points.size(), so.jobs);
    std::fflush(stdout);
    const SweepOutcome trained = run_sweep(train_points, so);
    failed += trained.count(PointStatus::failed);
    if (trained.interrupted) return fmt::print("interrupted: rerun the same command to resume\n"), 130;

    fmt::print("== 2. compression\n");
    set_threads(int(threads));
    auto runs = completed_runs(s.results_path());
    std::vector<TaskResult> results;
    for (const auto& t : s.tasks) {
        fmt::print("task {}:\n", t.name);
        results.push_back(measure_task(s, t, runs));
        if (!results.back().measured) fmt::print("  skipped: {}\n", results.back().problem), ++failed;
        if (g_interrupts) return fmt::print("interrupted: rerun the same command to resume\n"), 130;
    }

    std::vector<ExperimentConfig> ft_points;
    for (size_t i = 0; i < s.tasks.size(); ++i) {
        const StudyTask& t = s.tasks[i];
        if (!results[i].measured || t.finetune_steps == 0) continue;
        for (auto& m : results[i].models) {
            if (m.kind == "mla") continue;
            m.ft_run_id = (m.kind == "mha" ? base_id(t) : comp_name(t, m.method, m.data_aware, int(m.budget))) + "-ft";
            auto o = finetune_overrides(t, m.checkpoint);
            if (m.kind == "compressed")   // the latent_kv model of the checkpoint
                o.insert(o.begin(), {{"model.attention", "latent_kv"},
                                     {"model.latent_rank", std::to_string(m.budget)},
                                     {"model.n_kv_heads", std::to_string(t.n_kv_heads)}});
            ft_points.push_back(make_point(s, t, m.ft_run_id, o));
        }
    }
    if (!ft_points.empty()) {
        fmt::print("== 3. fine-tuning: {} run(s), {} at a time\n", ft_points.size(), so.jobs);
        std::fflush(stdout);
        SweepOptions fo = so;
        fo.overwrite = false;   // a fine-tune starts from a deterministic checkpoint: done is done
        const SweepOutcome tuned = run_sweep(ft_points, fo);
        failed += tuned.count(PointStatus::failed);
        if (tuned.interrupted) return fmt::print("interrupted: rerun the same command to resume\n"), 130;
        runs = completed_runs(s.results_path());
        for (auto& r : results)
            for (auto& m : r.models)
                if (auto it = runs.find(m.ft_run_id); !m.ft_run_id.empty() && it != runs.end()) {
                    m.ft_val_loss = real_attr(it->second.final_attrs, "val_loss").value_or(kNaN);
                    m.ft_val_accuracy = real_attr(it->second.final_attrs, "val_accuracy").value_or(kNaN);
                }
    }

    fmt::print("== 4. tables\n");
    for (size_t i = 0; i < s.tasks.size(); ++i) {
        if (!results[i].measured) continue;
        const std::string g = "/study/" + s.tasks[i].name;
        write_table(s.results_path(), g + "/models", models_table(s, s.tasks[i], results[i]));
        write_table(s.results_path(), g + "/layers", layers_table(results[i]));
        write_param_set(s.results_path(), g + "/spectra", results[i].spectra);
    }
    const std::string md = markdown(s, results);
    {
        std::ofstream f(s.markdown_path(), std::ios::binary | std::ios::trunc);
        f << md;
        if (!f) throw Error(fmt::format("cannot write '{}'", s.markdown_path()));
    }
    fmt::print("\n{}\nwrote {} and {}; {:.1f} min{}\n", md, s.results_path(), s.markdown_path(),
               std::chrono::duration<double>(Clock::now() - t0).count() / 60,
               failed ? fmt::format("; {} piece(s) failed (see above); rerun to retry", failed) : "");
    return failed ? 1 : 0;
}

}  // namespace kvlab::cli
