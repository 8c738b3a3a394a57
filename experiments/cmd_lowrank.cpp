// kvlab approx, compress: the low-rank approximators on one matrix, and post-hoc KV-cache
// compression of a trained mha/gqa/mqa checkpoint into latent_kv (docs/lowrank.md).
#include "cli.h"
#include "core/rng.h"
#include "io/matrix_io.h"
#include "io/results.h"
#include "lowrank/compress.h"
#include "lowrank/lowrank.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "tasks/task.h"
#include "train/trainer.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>

namespace kvlab::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// "FILE:/path" -> {FILE, /path}; {spec, ""} without ":/".
std::pair<std::string, std::string> split_spec(const std::string& spec) {
    const auto pos = spec.find(":/");
    if (pos == std::string::npos) return {spec, ""};
    return {spec.substr(0, pos), spec.substr(pos + 1)};
}

// ---------------------------------------------------------------------------- approx
const char* kApproxHelp = R"(usage: kvlab approx --method M --rank K IN.h5:/dataset OUT.h5 [--seed S]
                    [--options key=value,...] [--threads N]

Approximates one matrix at rank K with a registered low-rank method (kvlab list) and
reports how close it gets to the best possible rank-K approximation.

  IN.h5:/dataset      a 2-D floating-point dataset A [m, n] (float32; float64 is rounded)
  OUT.h5              written (replaced): datasets L [m, K] and R [K, n], float32, with
                      A ≈ L·R, and root attributes method, rank, seed, options, source,
                      rel_error, optimal_rel_error, ratio, seconds
  --method M          svd | qrcp | rsvd | cur (default svd)
  --rank K            1 <= K <= min(m, n) (required)
  --seed S            seed of the method's random numbers (rsvd; default 0)
  --options k=v,...   the method's own options, e.g. rsvd: oversample=10,power_iters=7;
                      cur: select=qr|leverage
  --threads N         threads for Eigen's products (default 0 = all cores)

Prints the relative Frobenius error ‖A − L·R‖_F / ‖A‖_F, the Eckart–Young optimum
sqrt(Σ_{i>K} σ_i²) / ‖A‖_F (from a double-precision SVD of A), their ratio (1 = optimal)
and the method's runtime (the factorisation only, in float32).
)";

}  // namespace

int cmd_approx(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kApproxHelp), 0;
    auto a = parse_args(argc, argv, 2, {"method", "rank", "seed", "options", "threads"}, {}, "approx");
    if (a.positional.size() != 2)
        throw Error(fmt::format("expected IN.h5:/dataset and OUT.h5, got {} arguments (see: kvlab approx --help)",
                                a.positional.size()));
    const auto [in_file, dataset] = split_spec(a.positional[0]);
    if (dataset.empty())
        throw Error(fmt::format("name the dataset to approximate: {}:/path/to/dataset", a.positional[0]));
    const std::string out = a.positional[1], method = a.opt("method", "svd");
    if (a.opt("rank").empty()) throw Error("--rank K is required (see: kvlab approx --help)");
    const int k = static_cast<int>(int_opt(a, "rank", 0, 1, std::numeric_limits<int>::max(), "approx"));
    const auto seed = static_cast<uint64_t>(int_opt(a, "seed", 0, 0, int64_t{1} << 53, "approx"));
    const int threads = set_threads(static_cast<int>(int_opt(a, "threads", 0, 0, 1024, "approx")));
    const LowRankOptions options = parse_lowrank_options(a.opt("options"));
    auto approx = make_lowrank(method, options);   // Error for an unknown method or option, before any work

    const Mat A = read_matrix(in_file, dataset);   // [m, n]
    if (k > std::min(A.rows(), A.cols()))
        throw Error(fmt::format("--rank {} is impossible for the [{}, {}] matrix {}:{} (need 1 <= rank <= {})", k, A.rows(),
                                A.cols(), in_file, dataset, std::min(A.rows(), A.cols())));
    Rng rng(seed);
    const auto t0 = Clock::now();
    const LowRank lr = approx->approximate(A, k, rng);   // Error naming k and the shape
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double err = lowrank::rel_error<float>(A, lr), opt = lowrank::optimal_rel_error<float>(A, k);
    const double ratio = opt > 0 ? err / opt : (err == 0 ? 1.0 : std::numeric_limits<double>::infinity());

    write_matrices(out, {{"L", lr.left}, {"R", lr.right}},
                   {{"method", method},
                    {"rank", int64_t{k}},
                    {"seed", static_cast<int64_t>(seed)},
                    {"options", a.opt("options")},
                    {"source", a.positional[0]},
                    {"rel_error", err},
                    {"optimal_rel_error", opt},
                    {"ratio", ratio},
                    {"seconds", seconds}});
    fmt::print("{} rank {} of {} [{} x {}] ({} thread(s)):\n", method, k, a.positional[0], A.rows(), A.cols(), threads);
    fmt::print("  relative error ‖A − LR‖_F/‖A‖_F   {:.6e}\n", err);
    fmt::print("  Eckart–Young optimum              {:.6e}\n", opt);
    fmt::print("  ratio                             {:.6f}\n", ratio);
    fmt::print("  runtime                           {:.4f} s\n", seconds);
    fmt::print("wrote {}: L [{}, {}], R [{}, {}]\n", out, lr.left.rows(), lr.left.cols(), lr.right.rows(),
               lr.right.cols());
    return 0;
}

// ---------------------------------------------------------------------------- compress
namespace {

const char* kCompressHelp = R"(usage: kvlab compress CHECKPOINT --rank R --out OUT.h5 [--method M] [--options k=v,...]
                      [--seed S] [--data-aware] [--calib-batches N] [--eval-batches N]
                      [--config CONFIG] [--set key=value]... [--ridge X] [--threads N]

Post-hoc KV-cache compression: turns a trained mha, gqa or mqa checkpoint into a
latent_kv one that caches R numbers per token and layer instead of 2·n_kv_heads·head_dim,
by factoring each layer's [wk; wv] ≈ [w_uk; w_uv]·w_dkv at rank R (docs/lowrank.md).
Every other tensor is copied. OUT.h5 (replaced) holds /params (attention = latent_kv,
latent_rank = R, n_kv_heads as the source) that `kvlab generate OUT.h5` loads, and
/compress, a per-layer table of the factorisation errors.

CHECKPOINT is FILE.h5 (a checkpoint holding /params, or a results file with one run),
FILE.h5:/runs/<id> (that run's parameters) or FILE.h5:/path/group.

  --rank R            latent width, 1 <= R <= min(2·n_kv_heads·head_dim, d_model) (required)
  --out OUT.h5        the compressed checkpoint (required)
  --method M          low-rank method (kvlab list; default svd)
  --options k=v,...   the method's own options (e.g. rsvd: oversample=10,power_iters=7)
  --seed S            seed of randomized methods and of the calibration batches (default 0)
  --data-aware        factor [wk; wv]·L instead, with L Lᵀ = XᵀX + ridge (Cholesky) for the
                      attention inputs X of calibration batches, and map back with L⁻¹
                      (SVD-LLM whitening, arXiv 2403.07378): minimises the error of the
                      keys and values on real inputs instead of the weight error
  --calib-batches N   calibration batches of train.batch_size sequences (default 8)
  --eval-batches N    validation batches on which the original and the compressed model's
                      loss are compared (default 8; 0 = skip)
  --config CONFIG     the config whose data: section (task, seq_len), train.batch_size and
                      seed give the calibration and validation batches; default: the run's
                      own config when CHECKPOINT is a run of a results file. Without either,
                      only weight-only compression is possible and no loss is reported.
  --set key=value     override keys of that config
  --ridge X           λ = X · mean(diag(XᵀX)) (default 1e-6)
  --threads N         threads (default 0 = all cores)
)";

// Mean loss over the first n validation batches.
double val_loss(Transformer<float>& m, const Task& task, int n, int B) {
    Batch batch;
    double sum = 0;
    for (int i = 0; i < n; ++i) {
        task.val_batch(i, B, batch);
        sum += m.forward(batch.inputs.data(), batch.targets.data(), batch.B, batch.T);
    }
    return sum / n;
}

}  // namespace

int cmd_compress(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kCompressHelp), 0;
    auto a = parse_args(argc, argv, 2,
                        {"rank", "out", "method", "options", "seed", "calib-batches", "eval-batches", "config", "ridge",
                         "threads"},
                        {"data-aware"}, "compress");
    if (a.positional.size() != 1)
        throw Error(fmt::format("expected one CHECKPOINT, got {} (see: kvlab compress --help)", a.positional.size()));
    const std::string out = a.opt("out");
    if (out.empty()) throw Error("--out OUT.h5 is required (see: kvlab compress --help)");
    if (a.opt("rank").empty()) throw Error("--rank R is required (see: kvlab compress --help)");
    CompressOptions opt;
    opt.rank = static_cast<int>(int_opt(a, "rank", 0, 1, std::numeric_limits<int>::max(), "compress"));
    opt.method = a.opt("method", "svd");
    opt.method_options = parse_lowrank_options(a.opt("options"));
    opt.seed = static_cast<uint64_t>(int_opt(a, "seed", 0, 0, int64_t{1} << 53, "compress"));
    opt.data_aware = a.flag("data-aware");
    opt.ridge = a.num("ridge", opt.ridge);
    if (!(opt.ridge > 0) || !std::isfinite(opt.ridge))
        throw Error(fmt::format("--ridge must be > 0, got {}", a.opt("ridge")));
    const int calib_batches = static_cast<int>(int_opt(a, "calib-batches", 8, 1, 1 << 20, "compress"));
    const int eval_batches = static_cast<int>(int_opt(a, "eval-batches", 8, 0, 1 << 20, "compress"));
    const int threads = set_threads(static_cast<int>(int_opt(a, "threads", 0, 0, 1024, "compress")));
    make_lowrank(opt.method, opt.method_options);   // Error for an unknown method or option, before any work

    CheckpointSource src = read_checkpoint(a.positional[0]);
    const ModelConfig mc = model_config_from_attrs(src.params.attrs, src.what);
    const CompressDims dims = compress_dims(mc);   // Error for mla, latent_kv, ...
    if (opt.rank > dims.max_rank)
        throw Error(fmt::format("--rank {} is impossible: [wk; wv] is [{}, {}], so the rank must be in 1..{}", opt.rank,
                                2 * dims.n_kv_heads * mc.head_dim, mc.d_model, dims.max_rank));
    // The calibration / validation task: --config, else the run's own config (which may
    // not load here, e.g. its data file is elsewhere: fatal only when calibration is needed).
    std::optional<ExperimentConfig> cfg;
    if (!a.opt("config").empty()) {
        cfg = load_config(a.opt("config"), a.overrides);
    } else if (!src.run_config.empty()) {
        try {
            cfg = load_config_text(src.run_config, src.what + " (its config attribute)", a.overrides);
        } catch (const Error& e) {
            if (opt.data_aware) throw;
            fmt::print(stderr, "note: no calibration or validation data ({}); weight-only, no loss reported\n", e.what());
        }
    }
    if (opt.data_aware && !cfg)
        throw Error("--data-aware needs calibration data: give --config CONFIG (its data: section is the task), or "
                    "a run of a results file, whose own config is used");

    Transformer<float> orig(mc);
    load_param_set(orig, src.params, src.what);
    std::vector<MatD> grams;
    std::unique_ptr<Task> task;
    if (cfg) {
        task = make_task(cfg->data);
        Rng calib_rng = Rng::stream(cfg->seed + opt.seed, /*stream id: calibration*/ 7);
        grams = attention_input_grams(orig, *task, calib_batches, cfg->train.batch_size, calib_rng);
    }
    std::vector<LayerCompression> report;
    const auto t0 = Clock::now();
    ParamSet ps = compress_to_latent_kv(src.params, opt, grams, &report);
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();

    const ModelConfig lc = model_config_from_attrs(ps.attrs, "the compressed checkpoint");
    Transformer<float> comp(lc);
    load_param_set(comp, ps, "the compressed checkpoint");   // the result must load as latent_kv
    std::error_code ec;
    fs::remove(out, ec);
    write_param_set(out, "/params", ps);
    Table t;
    t.attrs = {{"source", src.what},          {"method", opt.method},
               {"options", a.opt("options")}, {"rank", int64_t{opt.rank}},
               {"data_aware", int64_t{opt.data_aware}}, {"calib_batches", int64_t{cfg ? calib_batches : 0}},
               {"seed", static_cast<int64_t>(opt.seed)}, {"ridge", opt.ridge},
               {"seconds", seconds}};
    std::vector<int64_t> layer;
    std::vector<double> werr, oerr;
    for (const auto& r : report) {
        layer.push_back(r.layer);
        werr.push_back(r.weight_rel_error);
        oerr.push_back(r.output_rel_error);
    }
    t.columns = {{"layer", layer}, {"weight_rel_error", werr}, {"output_rel_error", oerr}};

    fmt::print("compress {} ({}) -> {}: latent_kv, latent_rank {}, {}{} ({} thread(s), {:.2f} s)\n", src.what,
               mc.attention, out, opt.rank, opt.method, opt.data_aware ? ", data-aware" : ", weight-only", threads,
               seconds);
    fmt::print("KV cache per token: {} -> {} elements\n", orig.kv_elements_per_token(), comp.kv_elements_per_token());
    fmt::print("{:>6} {:>18} {:>18}\n", "layer", "‖W−W'‖/‖W‖", "‖X(W−W')ᵀ‖/‖XWᵀ‖");
    for (const auto& r : report)
        fmt::print("{:>6} {:>18.4e} {:>18}\n", r.layer, r.weight_rel_error,
                   r.output_rel_error < 0 ? std::string("-") : fmt::format("{:.4e}", r.output_rel_error));
    if (cfg && eval_batches > 0) {
        const int B = cfg->train.batch_size;
        const double l0 = val_loss(orig, *task, eval_batches, B), l1 = val_loss(comp, *task, eval_batches, B);
        fmt::print("val loss over {} batches of task {}: {:.4f} -> {:.4f} ({:+.4f})\n", eval_batches, cfg->data.task, l0,
                   l1, l1 - l0);
        t.attrs.emplace_back("val_loss_before", l0);
        t.attrs.emplace_back("val_loss_after", l1);
    }
    write_table(out, "/compress", t);
    return 0;
}

}  // namespace kvlab::cli
