// kvlab generate, decode-bench, cache-table: autoregressive decoding through the plugins'
// KV caches, its speed and memory, and DeepSeek-V2's Table 1 from the plugins' own counts.
#include "attention/cache_table.h"
#include "attention/registry.h"
#include "cli.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "io/results.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "train/trainer.h"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <numeric>

namespace kvlab::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// 1966080 → "1,966,080"
std::string grouped(int64_t v) {
    const std::string digits = std::to_string(v < 0 ? -v : v);
    std::string s = v < 0 ? "-" : "";
    for (size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0) s += ',';
        s += digits[i];
    }
    return s;
}

// ---------------------------------------------------------------------------- generate
const char* kGenerateHelp = R"(usage: kvlab generate CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T]
                      [--top-k K] [--seed S] [--impl NAME] [--threads N]

Loads a trained model and continues a prompt byte by byte through the attention
plugin's KV cache (decode_step: each token is fed once; nothing is recomputed). Prints
the prompt and the continuation, then a newline, on stdout; a summary (tokens/s, KV
cache size) goes to stderr.

CHECKPOINT is one of
  FILE.h5               a results file with exactly one run (its /runs/<id>/params), or a
                        checkpoint / gradient dump holding /params; with several runs the
                        error lists their ids
  FILE.h5:/runs/<id>    that run's parameters (the run must have completed)
  FILE.h5:/path/group   any group holding model.md's parameters and hyper-parameter attributes
The model (attention plugin and dimensions) is built from the group's attributes.

  --prompt TEXT       bytes to start from (default empty: an empty prompt starts from a
                      single newline byte, which is fed to the model but not printed)
  --tokens N          bytes to generate (default 200); prompt + N is at most 65536
  --temperature T     softmax temperature (default 1.0); 0 = greedy (argmax)
  --top-k K           sample only among the K most likely bytes (default 0 = all 256)
  --seed S            sampling seed (default 0); the same seed gives the same text
  --impl NAME         the plugin's decode implementation (mla: absorbed (default) | naive;
                      others: default)
  --threads N         OpenMP / Eigen threads (default 1: decoding one token is a chain of
                      small matrix-vector products, where extra threads only add
                      synchronisation; on a busy machine a lot of it)

Positions beyond the training seq_len work (RoPE extrapolates) but the model never saw
them, so expect the text to degrade there.
)";

constexpr int64_t kMaxGenerate = 65536;

// The parameters CHECKPOINT names, and a description of where they came from.
std::pair<ParamSet, std::string> load_checkpoint(const std::string& spec) {
    std::string file = spec, group;
    if (const auto pos = spec.find(":/"); pos != std::string::npos)
        file = spec.substr(0, pos), group = spec.substr(pos + 1);
    std::error_code ec;
    if (!fs::exists(file, ec)) throw Error(fmt::format("checkpoint file '{}' not found", file));
    auto describe = [](const RunRecord& r) {
        for (const auto& [k, v] : r.attrs)
            if (k == "status" && std::holds_alternative<std::string>(v)) return std::get<std::string>(v);
        return std::string("unknown");
    };
    if (group.empty()) {
        std::vector<RunRecord> runs;
        try {
            runs = read_runs(file);
        } catch (const Error& not_results) {
            try {   // a checkpoint or a gradient dump keeps its parameters in /params
                return {read_param_set(file, "/params"), file + ":/params"};
            } catch (const Error& no_params) {
                // A file HDF5 cannot open fails both ways alike: say it once.
                if (std::string_view(no_params.what()) == not_results.what()) throw;
                throw Error(fmt::format("no parameters found: {}; and reading /params: {}. Name the group "
                                        "that holds them: {}:/path/to/params", not_results.what(), no_params.what(), file));
            }
        }
        if (runs.empty()) throw Error(fmt::format("'{}' has no runs", file));
        if (runs.size() > 1) {
            std::string ids;
            for (const auto& r : runs) ids += fmt::format("\n  {}:/runs/{}  ({})", file, r.id, describe(r));
            throw Error(fmt::format("'{}' has {} runs; pick one:{}", file, runs.size(), ids));
        }
        group = "/runs/" + runs[0].id;
    }
    // "/runs/<id>" is a run of a results file: its parameters are in /runs/<id>/params.
    std::string g = group;
    while (g.size() > 1 && g.back() == '/') g.pop_back();
    if (g.rfind("/runs/", 0) == 0 && g.find('/', 6) == std::string::npos) {
        const std::string id = g.substr(6);
        std::string ids;
        for (const auto& r : read_runs(file)) {
            if (r.id == id) {
                if (describe(r) != "completed")
                    throw Error(fmt::format("run '{}' in '{}' has status '{}'; only completed runs have parameters",
                                            id, file, describe(r)));
                return {read_param_set(file, g + "/params"), fmt::format("{}:{}/params", file, g)};
            }
            ids += (ids.empty() ? "" : ", ") + r.id;
        }
        throw Error(fmt::format("'{}' has no run '{}'; runs: {}", file, id, ids.empty() ? "(none)" : ids));
    }
    return {read_param_set(file, g), file + ":" + g};
}

// Greedy when temperature == 0; otherwise softmax(logits / temperature) over the top_k
// largest logits (all when top_k == 0), ties broken by byte value, so a seed means the
// same text everywhere.
int sample(const std::vector<float>& logits, double temperature, int top_k, Rng& rng, std::vector<int>& idx,
           std::vector<double>& p) {
    const int V = static_cast<int>(logits.size());
    if (temperature == 0) return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    idx.resize(V);
    std::iota(idx.begin(), idx.end(), 0);
    const int k = top_k > 0 && top_k < V ? top_k : V;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                      [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    const double mx = logits[idx[0]];
    double sum = 0;
    p.resize(k);
    for (int i = 0; i < k; ++i) sum += (p[i] = std::exp((logits[idx[i]] - mx) / temperature));
    double u = rng.uniform() * sum;
    for (int i = 0; i < k; ++i)
        if ((u -= p[i]) < 0) return idx[i];
    return idx[k - 1];
}

}  // namespace

int cmd_generate(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kGenerateHelp), 0;
    auto a = parse_args(argc, argv, 2, {"prompt", "tokens", "temperature", "top-k", "seed", "impl", "threads"}, {},
                        "generate");
    if (a.positional.size() != 1)
        throw Error(fmt::format("expected one CHECKPOINT, got {} (see: kvlab generate --help)",
                                a.positional.size()));
    const std::string prompt = a.opt("prompt");
    const int64_t n_tokens = int_opt(a, "tokens", 200, 0, kMaxGenerate, "generate");
    const double temperature = a.num("temperature", 1.0);
    if (!(temperature >= 0) || !std::isfinite(temperature))
        throw Error(fmt::format("--temperature must be >= 0 (0 = greedy), got {}", a.opt("temperature")));
    const int top_k = static_cast<int>(int_opt(a, "top-k", 0, 0, 1 << 20, "generate"));
    const auto seed = static_cast<uint64_t>(int_opt(a, "seed", 0, 0, int64_t{1} << 53, "generate"));
    set_threads(static_cast<int>(int_opt(a, "threads", 1, 1, 1024, "generate")));
    // An empty prompt starts from a newline byte, as if at the start of a line of text.
    const std::string fed = prompt.empty() ? std::string("\n") : prompt;
    const int64_t max_T = static_cast<int64_t>(fed.size()) + n_tokens;
    if (max_T > kMaxGenerate)
        throw Error(fmt::format("the prompt ({} bytes) plus --tokens ({}) is {} positions; the limit is {}",
                                fed.size(), n_tokens, max_T, kMaxGenerate));

    auto [params, what] = load_checkpoint(a.positional[0]);
    const ModelConfig mc = model_config_from_attrs(params.attrs, what);
    Transformer<float> m(mc);
    load_param_set(m, params, what);
    const auto impls = m.attention(0).decode_impls();
    const std::string impl = a.opt("impl", impls.front());
    auto state = m.new_decode_state(static_cast<int>(max_T), impl);   // Error naming the available impls

    const auto t0 = Clock::now();
    std::vector<float> logits(static_cast<size_t>(mc.vocab_size));
    for (unsigned char c : fed) m.decode_step(state, c, logits.data());
    fmt::print("{}", prompt);
    std::fflush(stdout);
    Rng rng(seed);
    std::vector<int> idx;
    std::vector<double> p;
    for (int64_t i = 0; i < n_tokens; ++i) {
        const int tok = sample(logits, temperature, top_k, rng, idx, p);
        std::fputc(tok, stdout);
        std::fflush(stdout);
        if (i + 1 < n_tokens) m.decode_step(state, tok, logits.data());
    }
    fmt::print("\n");
    const double s = seconds_since(t0);
    fmt::print(stderr, "generate: {} ({} / {}): fed {} prompt bytes, generated {} in {:.2f} s ({:.0f} positions/s); "
               "KV cache {} bytes for {} positions\n", what, mc.attention, impl, fed.size(), n_tokens, s,
               static_cast<double>(state.length()) / std::max(s, 1e-9), grouped(state.bytes()), max_T);
    return 0;
}

// ---------------------------------------------------------------------------- decode-bench
namespace {

const char* kDecodeBenchHelp = R"(usage: kvlab decode-bench [CONFIG] [--set key=value]... [--contexts LIST]
                          [--plugins LIST] [--steps N] [--repeats R] [--out FILE.h5] [--threads N]

Measures single-sequence decoding speed and KV-cache memory of each attention plugin
and each of its decode implementations (MLA: mla/absorbed and mla/naive side by side).
For every context length C it allocates a decode state for exactly C positions, fills
C - N of them by decode steps (random bytes; the prefill time is reported too), then
times the last N decode steps R times, rewinding the cache to C - N tokens in between
(the same tokens overwrite the same positions): tokens/s = N / the median time of the N
steps. It checks that the allocated cache is exactly C × KV elements per token (all
layers) × 4 bytes.

Without CONFIG the model is a built-in one with random weights (init seed 0):
d_model 256, 4 layers, 8 heads × 32, mlp_hidden 683, gqa n_kv_heads 2, mla kv_lora_rank
128, q_lora_rank 192, qk_rope_head_dim 16. With CONFIG, its model section (and seed)
is used, with model.attention replaced by each plugin in turn; --set applies to either.

  --contexts LIST   context lengths C (default 256,512,1024,2048,4096); each >= N
  --plugins LIST    registered attention plugins (default mha,gqa,mqa,mla)
  --steps N         timed decode steps per repeat (default 32)
  --repeats R       timed repeats per row; the median counts (default 5)
  --out FILE.h5     where the table goes (default results/decode_bench.h5, directory
                    created if missing): group /decode_bench, one 1-D dataset per column
                    (plugin, impl, context, kv_elements_per_token_per_layer,
                    kv_elements_per_token, cache_bytes, tokens_per_second, step_seconds,
                    prefill_seconds), attributes threads, date, steps, repeats, seed,
                    config, eigen
  --threads N       OpenMP / Eigen threads (default 1: one sequence is mostly
                    matrix-vector work, and one thread is the steadiest measurement)

Exits 1 if a plugin's allocated cache differs from its formula. Progress on stderr.
)";

const char* kDecodeBenchModel = R"(# kvlab decode-bench's built-in model (random weights).
name: decode-bench
seed: 0
model:
  attention: mha
  d_model: 256
  n_layers: 4
  n_heads: 8
  head_dim: 32
  n_kv_heads: 2
  kv_lora_rank: 128
  q_lora_rank: 192
  qk_rope_head_dim: 16
  mlp_hidden: 683
data:
  task: mqar
train:
  steps: 1
)";

struct BenchRow {
    std::string plugin, impl;
    int64_t context = 0, per_layer = 0, per_token = 0, bytes = 0;
    double tokens_per_second = 0, step_seconds = 0, prefill_seconds = 0;   // step_seconds: median of N steps
    bool bytes_ok = false;
};

}  // namespace

DecodeTiming time_decode(Transformer<float>& m, const std::string& impl, int C, int steps, int repeats,
                         const std::vector<int32_t>& tokens) {
    KV_CHECK(steps >= 1 && steps <= C && static_cast<int64_t>(tokens.size()) >= C && repeats >= 1,
             "time_decode: context {}, steps {}, repeats {}, {} tokens", C, steps, repeats, tokens.size());
    DecodeTiming r;
    std::vector<float> logits(static_cast<size_t>(m.config().vocab_size));
    auto state = m.new_decode_state(C, impl);
    r.cache_bytes = state.bytes();
    auto t0 = Clock::now();
    for (int t = 0; t < C - steps; ++t) m.decode_step(state, tokens[t], logits.data());
    r.prefill_seconds = seconds_since(t0);
    std::vector<double> times;
    for (int rep = 0; rep < repeats; ++rep) {
        for (auto& layer : state.layers) layer->length = C - steps;   // rewind: truncates the cache
        t0 = Clock::now();
        for (int t = C - steps; t < C; ++t) m.decode_step(state, tokens[t], logits.data());
        times.push_back(seconds_since(t0));
    }
    KV_CHECK(state.length() == C, "decode state holds {} tokens, expected {}", state.length(), C);
    std::sort(times.begin(), times.end());
    r.step_seconds = times[times.size() / 2];
    r.tokens_per_second = steps / std::max(r.step_seconds, 1e-12);
    return r;
}

int cmd_decode_bench(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kDecodeBenchHelp), 0;
    auto a =
        parse_args(argc, argv, 2, {"contexts", "plugins", "steps", "repeats", "out", "threads"}, {}, "decode-bench");
    const ExperimentConfig cfg = a.positional.empty()
                                     ? load_config_text(kDecodeBenchModel, "<decode-bench model>", a.overrides)
                                     : load(a, "decode-bench", false);
    const int steps = static_cast<int>(int_opt(a, "steps", 32, 1, 1 << 20, "decode-bench"));
    const int repeats = static_cast<int>(int_opt(a, "repeats", 5, 1, 1000, "decode-bench"));
    const int threads = set_threads(static_cast<int>(int_opt(a, "threads", 1, 1, 1024, "decode-bench")));
    std::vector<int> contexts;
    for (const auto& s : split_list(a.opt("contexts", "256,512,1024,2048,4096"))) {
        char* end = nullptr;
        const long c = std::strtol(s.c_str(), &end, 10);
        if (*end != '\0' || c < steps || c > (1 << 20))
            throw Error(fmt::format("--contexts: \"{}\" must be an integer in {}..{} (at least --steps)",
                                    s, steps, 1 << 20));
        contexts.push_back(static_cast<int>(c));
    }
    const auto plugins = split_list(a.opt("plugins", "mha,gqa,mqa,mla"));
    if (contexts.empty() || plugins.empty()) throw Error("--contexts and --plugins need at least one entry");
    // Every plugin is checked on the config's dimensions before the first measurement.
    for (const auto& name : plugins) {
        ModelConfig mc = cfg.model;
        mc.attention = name;
        try {
            (void)make_attention<float>(mc);
        } catch (const ConfigError& e) {
            if (e.key() == "model.attention") throw Error(fmt::format("--plugins: {}", e.what()));
            throw Error(
                fmt::format("plugin '{}': {} (set it in CONFIG or with --set {}=...)", name, e.what(), e.key()));
        }
    }
    std::string out = a.opt("out");
    if (out.empty()) {
        out = "results/decode_bench.h5";
        fs::create_directories("results");
    }

    Rng tok_rng = Rng::stream(cfg.seed, 7);
    std::vector<int32_t> tokens(static_cast<size_t>(*std::max_element(contexts.begin(), contexts.end())));
    for (auto& t : tokens) t = static_cast<int32_t>(tok_rng.below(static_cast<uint64_t>(cfg.model.vocab_size)));
    std::vector<BenchRow> rows;
    for (const auto& name : plugins) {
        ModelConfig mc = cfg.model;
        mc.attention = name;
        Transformer<float> m(mc);
        m.init(cfg.seed);
        for (const auto& impl : m.attention(0).decode_impls()) {
            for (const int C : contexts) {
                BenchRow r{name, impl, C, m.attention(0).kv_elements_per_token(), m.kv_elements_per_token()};
                fmt::print(stderr, "decode-bench: {}/{} context {}: prefill {} tokens ... ", name, impl, C, C - steps);
                std::fflush(stderr);
                const DecodeTiming dt = time_decode(m, impl, C, steps, repeats, tokens);
                r.bytes = dt.cache_bytes;
                r.bytes_ok = r.bytes == int64_t{C} * r.per_token * static_cast<int64_t>(sizeof(float));
                r.prefill_seconds = dt.prefill_seconds;
                r.step_seconds = dt.step_seconds;
                r.tokens_per_second = dt.tokens_per_second;
                fmt::print(stderr, "{:.2f} s; {} steps, median of {}: {:.4f} s: {:.1f} tokens/s\n", r.prefill_seconds,
                           steps, repeats, r.step_seconds, r.tokens_per_second);
                rows.push_back(r);
            }
        }
    }

    fmt::print("decode-bench: {} layers, d_model {}, {} heads × {}; tokens/s from the median of {} × {} timed "
               "steps at the full context; {} thread(s)\n", cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads,
               cfg.model.head_dim, repeats, steps, threads);
    fmt::print("{:<8} {:<9} {:>8} {:>20} {:>13} {:>11} {:>10} {:>8} {:>6}\n", "plugin", "impl", "context",
               "KV elem/token/layer", "cache bytes", "tokens/s", "prefill s", "threads", "check");
    bool all_ok = true;
    for (const auto& r : rows) {
        fmt::print("{:<8} {:<9} {:>8} {:>20} {:>13} {:>11.1f} {:>10.2f} {:>8} {:>6}\n", r.plugin, r.impl, r.context,
                   r.per_layer, grouped(r.bytes), r.tokens_per_second, r.prefill_seconds, threads,
                   r.bytes_ok ? "ok" : "WRONG");
        all_ok &= r.bytes_ok;
    }
    fmt::print("cache bytes = context × KV elements/token/layer × {} layers × 4 (float32)\n", cfg.model.n_layers);

    Table t;
    t.attrs = {{"threads", int64_t{threads}},
               {"date", fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", fmt::gmtime(std::time(nullptr)))},
               {"steps", int64_t{steps}},
               {"repeats", int64_t{repeats}},
               {"seed", static_cast<int64_t>(cfg.seed)},
               {"config", cfg.resolved_yaml},
               {"eigen", fmt::format("Eigen {}.{}.{}", EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION)}};
    auto column = [&](auto get) {
        std::vector<std::decay_t<decltype(get(rows[0]))>> v;
        for (const auto& r : rows) v.push_back(get(r));
        return v;
    };
    t.columns = {{"plugin", column([](const BenchRow& r) { return r.plugin; })},
                 {"impl", column([](const BenchRow& r) { return r.impl; })},
                 {"context", column([](const BenchRow& r) { return r.context; })},
                 {"kv_elements_per_token_per_layer", column([](const BenchRow& r) { return r.per_layer; })},
                 {"kv_elements_per_token", column([](const BenchRow& r) { return r.per_token; })},
                 {"cache_bytes", column([](const BenchRow& r) { return r.bytes; })},
                 {"tokens_per_second", column([](const BenchRow& r) { return r.tokens_per_second; })},
                 {"step_seconds", column([](const BenchRow& r) { return r.step_seconds; })},
                 {"prefill_seconds", column([](const BenchRow& r) { return r.prefill_seconds; })}};
    write_table(out, "/decode_bench", t);
    fmt::print("wrote {}:/decode_bench ({} rows)\n", out, rows.size());
    if (!all_ok) fmt::print(stderr, "decode-bench: a plugin's allocated cache differs from its formula (WRONG rows)\n");
    return all_ok ? 0 : 1;
}

// ---------------------------------------------------------------------------- cache-table
namespace {

const char* kCacheTableHelp = R"(usage: kvlab cache-table CONFIG [--set key=value]...

Prints DeepSeek-V2's Table 1 (arXiv 2405.04434) for CONFIG's dimensions: for MHA, GQA,
MQA and MLA, how keys and values are shared between query heads, how the variant
shrinks the cache, the paper's formula for the KV cache per token (all layers), and the
number of elements. The numbers come from each registered plugin's own
kv_elements_per_token() (built on CONFIG's dimensions; no weights are allocated, so
full-size configs work) and are checked against the formula; a variant whose keys are
missing from CONFIG (gqa: n_kv_heads; mla: kv_lora_rank, qk_rope_head_dim) is skipped
with a note. Other registered plugins are listed with their own counts.

Try: kvlab cache-table configs/deepseek_v2.yaml   (DeepSeek-V2's real dimensions)

Exits 1 if a plugin's count differs from the paper's formula.
)";

}  // namespace

int cmd_cache_table(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kCacheTableHelp), 0;
    auto a = parse_args(argc, argv, 2, {}, {}, "cache-table");
    const ExperimentConfig cfg = load(a, "cache-table", false);
    const ModelConfig& m = cfg.model;
    const auto rows = cache_table(m);

    std::string dims = fmt::format("n_h = {} (n_heads), d_h = {} (head_dim), l = {} (n_layers)", m.n_heads,
                                   m.head_dim, m.n_layers);
    for (auto [sym, key] : {std::pair{"n_g", "n_kv_heads"}, {"d_c", "kv_lora_rank"}, {"d_R", "qk_rope_head_dim"}})
        if (m.has(key)) dims += fmt::format(", {} = {} ({})", sym, m.plugin.at(key), key);
    fmt::print("KV cache per token (elements, all layers), DeepSeek-V2 Table 1 (arXiv 2405.04434), for {}\n  {}\n"
               "  elements = the plugin's kv_elements_per_token() × l, checked against the formula\n\n",
               cfg.source, dims);
    fmt::print("{:<9} {:<14} {:<20} {:>15} {:>9} {:>17}  {:<18} {}\n", "variant", "formula", "on these dims",
               "elements/token", "× d_h·l", "fp32 bytes/token", "paper's capability", "check");
    bool all_ok = true;
    for (const auto& r : rows) {
        if (!r.skipped.empty()) {
            fmt::print("{:<9} {:<14} skipped: {}\n", r.label, r.formula, r.skipped);
            continue;
        }
        const char* check = !r.in_table1 ? "-" : r.ok() ? "ok" : "MISMATCH";
        fmt::print("{:<9} {:<14} {:<20} {:>15} {:>9} {:>17}  {:<18} {}\n", r.label, r.in_table1 ? r.formula : "-",
                   r.in_table1 ? r.substituted : "-", grouped(r.plugin_elements), fmt::format("{:g}", r.per_dh_l),
                   grouped(r.plugin_elements * 4), r.in_table1 ? r.paper_capability : "-", check);
        if (r.in_table1 && !r.ok())
            fmt::print("          the formula gives {}; the plugin reports {}\n", grouped(r.formula_elements),
                       grouped(r.plugin_elements));
        all_ok &= r.ok();
    }
    fmt::print("\n");
    for (const auto& r : rows) {
        if (!r.in_table1) {
            fmt::print("{:<9} (not in Table 1):     {}\n", r.label, r.sharing);
            continue;
        }
        fmt::print("{:<9} key-to-query sharing: {}\n", r.label, r.sharing);
        fmt::print("{:<9} cache reduction:      {}\n", "", r.reduction);
    }
    const CacheTableRow *mha = nullptr, *mla = nullptr;
    for (const auto& r : rows) {
        if (r.variant == "mha" && r.ok()) mha = &r;
        if (r.variant == "mla" && r.ok()) mla = &r;
    }
    if (mla)
        fmt::print("\nMLA caches {} elements per token = {:g}·d_h·l{}.\n", grouped(mla->plugin_elements),
                   mla->per_dh_l,
                   mha ? fmt::format(", {:.2f}% of MHA's {}", 100.0 * mla->plugin_elements / mha->plugin_elements,
                                     grouped(mha->plugin_elements))
                       : "");
    fmt::print("The capability column is the paper's claim; kvlab's experiments measure it.\n");
    if (!all_ok) fmt::print(stderr, "cache-table: a plugin's count differs from the paper's formula (MISMATCH rows)\n");
    return all_ok ? 0 : 1;
}

}  // namespace kvlab::cli
