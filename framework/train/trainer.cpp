#include "train/trainer.h"

#include "core/error.h"
#include "core/rng.h"
#include "dist/data_parallel.h"
#include "dist/mpi.h"
#include "io/results.h"
#include "io/safe_write.h"
#include "io/train_checkpoint.h"
#include "model/batch_split.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "tasks/task.h"
#include "train/optim.h"
#include "train/sweep.h"

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace kvlab {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string human_duration(double s) {
    if (s < 60) return fmt::format("{:.0f}s", s);
    if (s < 3600) return fmt::format("{}m{:02d}s", int(s) / 60, int(s) % 60);
    return fmt::format("{}h{:02d}m", int(s) / 3600, (int(s) % 3600) / 60);
}

std::string signal_name(int sig) {
    switch (sig) {
        case SIGINT: return "SIGINT";
        case SIGTERM: return "SIGTERM";
        default: return fmt::format("signal {}", sig);
    }
}

struct EvalResult {
    double loss = 0;
    std::optional<double> accuracy;
};

EvalResult evaluate(BatchSplit<float>& model, const Task& task, int batches, int B, const dist::DataParallel& dp) {
    Batch batch;
    double total = 0;
    int64_t scored = 0, n_correct = 0, n_answers = 0;
    for (int i = 0; i < batches; ++i) {
        task.val_batch(i, B, batch);
        dp.shard(batch);
        const double loss = model.forward(batch.inputs.data(), batch.targets.data(), batch.B, batch.T);
        int64_t s, c;
        model.count_correct(batch.targets.data(), s, c);
        total += loss * double(s);
        scored += s;
        n_answers += s;
        n_correct += c;
    }
    dp.reduce_eval(total, scored, n_correct);
    n_answers = scored;
    EvalResult r;
    r.loss = scored > 0 ? total / double(scored) : 0.0;
    if (task.scores_answers()) r.accuracy = n_answers > 0 ? double(n_correct) / double(n_answers) : 0.0;
    return r;
}

// Where backward first produced a non-finite gradient. Backward runs from lm_head down to
// embed, so of the tensors with a non-finite entry the one latest in model order is the
// first one computed: the closest to where the NaN/Inf arose (earlier layers only inherit it).
std::string non_finite_gradient(const Transformer<float>& model) {
    const float* g = model.grad_data();
    const NamedParam* first = nullptr;
    float value = 0;
    int n_bad = 0;
    for (const auto& np : model.params()) {
        for (int64_t i = 0; i < np.spec.numel(); ++i)
            if (!std::isfinite(g[np.offset + i])) {
                first = &np;
                value = g[np.offset + i];
                ++n_bad;
                break;
            }
    }
    if (!first) return "the gradient norm is not finite";
    return fmt::format("the gradient of {} is {} (the first non-finite gradient in backward order; {} of {} tensors)",
                       first->spec.name, value, n_bad, model.params().size());
}

// An arena-sized vector (AdamW moments) as a ParamSet with the model's names and shapes.
ParamSet arena_set(const Transformer<float>& model, const std::vector<float>& arena) {
    ParamSet p;
    for (const auto& np : model.params())
        p.tensors.push_back({np.spec.name, np.spec.shape,
                             std::vector<float>(arena.begin() + np.offset, arena.begin() + np.offset + np.spec.numel())});
    return p;
}

void load_arena(const Transformer<float>& model, const ParamSet& p, std::vector<float>& arena, const std::string& what) {
    for (const auto& np : model.params()) {
        const Tensor* t = nullptr;
        for (const auto& x : p.tensors)
            if (x.name == np.spec.name) t = &x;
        if (!t || t->shape != np.spec.shape)
            throw Error(fmt::format("{}: tensor '{}' is missing or has another shape", what, np.spec.name));
        std::copy(t->data.begin(), t->data.end(), arena.begin() + np.offset);
    }
}

void remove_quietly(const std::string& path) {
    std::error_code ec;
    fs::remove(path, ec);
    const fs::path dir = fs::path(path).parent_path();
    if (!dir.empty()) fs::remove(dir, ec);   // only when empty
}

}  // namespace

int set_threads(int threads) {
    const int n = threads > 0 ? threads : std::max(1, omp_get_num_procs());
    omp_set_num_threads(n);
    Eigen::setNbThreads(n);
    return n;
}

std::string default_part_path(const ExperimentConfig& cfg) { return parts_dir(cfg) + "/" + cfg.run_id + ".h5"; }

RunSummary train_run(const ExperimentConfig& cfg, const RunOptions& opt) {
    const auto& tc = cfg.train;
    RunSummary sum;
    sum.run_id = cfg.run_id;
    sum.results_path = cfg.results_path();
    sum.threads = set_threads(tc.threads);
    const std::string results = sum.results_path;
    const std::string part = opt.part_path.empty() ? default_part_path(cfg) : opt.part_path;
    const std::string ckpt = checkpoint_path(results, cfg.run_id);

    // Everything that can fail on bad input happens before anything is written.
    auto task = make_task(cfg.data);
    Transformer<float> model(cfg.model);
    model.init(cfg.seed);
    if (!tc.init_from.empty()) init_from_checkpoint(model, tc.init_from_resolved.empty() ? tc.init_from : tc.init_from_resolved);
    sum.n_params = model.n_params();
    // Training steps split the batch between the threads (model/batch_split.h).
    BatchSplit<float> split(model, batch_shards_from_env(sum.threads, tc.batch_size));
    sum.kv_elements_per_token = model.kv_elements_per_token();
    {   // bytes per token as allocated by the decode cache
        auto st = model.new_decode_state(cfg.data.seq_len);
        sum.kv_bytes_per_token = st.bytes() / cfg.data.seq_len;
    }
    std::vector<AdamW::Group> groups;
    for (const auto& np : model.params()) groups.push_back({np.offset, np.spec.numel(), np.spec.decay()});
    AdamW opt_state(model.n_params(), groups, tc.beta1, tc.beta2, tc.adam_eps, tc.weight_decay);
    const dist::DataParallel dp(opt.data_parallel, tc.batch_size);
    const bool root = dp.root();
    if (dp.ranks() > 1) dist::diverge();   // from here only rank 0 touches files: its errors are its own
    if (opt.merge && root) {
        check_results_writable(results);
        for (const auto& [id, status] : run_statuses(results))
            if (id == cfg.run_id && status == "completed") {
                if (!opt.overwrite)
                    throw Error(fmt::format("run '{}' already completed in {}; use --overwrite or another name",
                                            cfg.run_id, results));
                remove_quietly(ckpt);   // left by a run killed after its merge: stale
            }
    }

    // Resume from a checkpoint of this very run and config (every rank reads it; only
    // rank 0 writes checkpoints, the part file and the results file).
    Rng data_rng = Rng::stream(cfg.seed, /*stream id: training batches*/ 2);
    std::optional<TrainCheckpoint> resume;
    std::error_code ec;
    if (fs::exists(ckpt, ec)) {
        TrainCheckpoint c = read_train_checkpoint(ckpt);
        if (c.run_id != cfg.run_id || c.config != cfg.resolved_yaml) {
            fmt::print(stderr, "note: {} was written for another config of run '{}'; starting the run over\n", ckpt,
                       cfg.run_id);
        } else if (c.step >= tc.steps) {
            fmt::print(stderr, "note: {} is at step {} of {}; starting the run over\n", ckpt, c.step, tc.steps);
        } else {
            load_param_set(model, c.params, ckpt);
            load_arena(model, c.adam_m, opt_state.m(), ckpt);
            load_arena(model, c.adam_v, opt_state.v(), ckpt);
            opt_state.set_steps_taken(c.adam_t);
            if (!data_rng.set_state(c.data_rng)) throw Error(fmt::format("{}: the data_rng state is unreadable", ckpt));
            if (c.threads != sum.threads)
                fmt::print(stderr,
                           "note: {} was written with {} thread(s), this run has {}; results may differ in the last "
                           "bits from an uninterrupted run\n",
                           ckpt, c.threads, sum.threads);
            resume = std::move(c);
        }
    }

    std::unique_ptr<RunLogger> log;   // rank 0 only
    if (root) {
        const fs::path dir = fs::path(part).parent_path();
        if (!dir.empty()) fs::create_directories(dir, ec);
        if (ec) throw Error(fmt::format("cannot create '{}': {}", dir.string(), ec.message()));
        fs::remove(part, ec);   // a stale part of an earlier, killed run: the checkpoint is what resumes
        log = std::make_unique<RunLogger>(part, cfg.run_id, /*overwrite=*/true);
        Attrs attrs = {{"seed", static_cast<int64_t>(cfg.seed)},
                       {"n_params", sum.n_params},
                       {"kv_cache_elements_per_token", sum.kv_elements_per_token},
                       {"kv_cache_bytes_per_token", sum.kv_bytes_per_token},
                       {"threads", static_cast<int64_t>(sum.threads)},
                       {"task", cfg.data.task}};
        if (dp.ranks() > 1) attrs.emplace_back("data_parallel_ranks", static_cast<int64_t>(dp.ranks()));
        log->begin_run(cfg.resolved_yaml, cfg.model.attention, attrs);
    }

    // The series so far, kept for checkpoints (and replayed into the part file on resume).
    TrainCheckpoint curves;
    int start = 0;
    double train_seconds = 0, wall_before = 0;
    int64_t tokens = 0;
    EvalResult last_eval;
    if (resume) {
        curves = std::move(*resume);
        start = static_cast<int>(curves.step);
        train_seconds = curves.train_seconds;
        wall_before = curves.wall_seconds;
        tokens = curves.tokens;
        last_eval.loss = curves.last_eval_loss;
        last_eval.accuracy = curves.last_eval_accuracy;
        for (size_t i = 0; log && i < curves.train_step.size(); ++i)
            log->log_train(curves.train_step[i], curves.train_loss[i], curves.train_lr[i]);
        for (size_t i = 0; log && i < curves.eval_step.size(); ++i) {
            std::optional<double> acc;
            if (!curves.eval_accuracy.empty() && !std::isnan(curves.eval_accuracy[i])) acc = curves.eval_accuracy[i];
            log->log_eval(curves.eval_step[i], curves.eval_loss[i], acc);
        }
        if (log) log->set_attrs({{"resumed_from_step", int64_t{start}}});
        sum.resumed_from = start;
        if (opt.progress) fmt::print(stderr, "[{}] resuming at step {} from {}\n", cfg.run_id, start, ckpt);
    }
    curves.params = {};
    curves.adam_m = {};
    curves.adam_v = {};

    const bool tty = isatty(fileno(stderr));
    Batch batch;
    const auto t0 = Clock::now();
    auto wall = [&] { return wall_before + std::chrono::duration<double>(Clock::now() - t0).count(); };
    auto merge = [&] {
        log.reset();   // closes the part file
        if (!opt.merge || !root) return;
        merge_run(part, results, cfg.run_id);
        remove_quietly(part);
    };
    auto fail = [&](const std::string& msg) {
        if (log) log->fail_run(msg);
        merge();
        if (root) remove_quietly(ckpt);   // a non-finite value comes back on every resume
        throw RunFailed(fmt::format("run '{}' failed: {}", cfg.run_id, msg));
    };
    auto write_checkpoint = [&](int done) {
        if (!root) return;
        curves.run_id = cfg.run_id;
        curves.config = cfg.resolved_yaml;
        curves.step = done;
        curves.adam_t = opt_state.steps_taken();
        curves.data_rng = data_rng.state();
        curves.threads = sum.threads;
        curves.train_seconds = train_seconds;
        curves.wall_seconds = wall();
        curves.tokens = tokens;
        curves.last_eval_loss = last_eval.loss;
        curves.last_eval_accuracy = last_eval.accuracy;
        curves.params = to_param_set(model);
        curves.adam_m = arena_set(model, opt_state.m());
        curves.adam_v = arena_set(model, opt_state.v());
        write_train_checkpoint(ckpt, curves);
        curves.params = curves.adam_m = curves.adam_v = {};
    };
    auto stop_signal = [&] { return opt.stop ? int(*opt.stop) : 0; };

    for (int step = start; step < tc.steps; ++step) {
        const auto ts = Clock::now();
        const int done = step + 1;
        task->train_batch(data_rng, tc.batch_size, batch);
        dp.shard(batch);   // this rank's rows (all of them in one process)
        model.zero_grad();
        double loss = split.forward(batch.inputs.data(), batch.targets.data(), batch.B, batch.T);
        split.backward();
        // the whole batch's loss and gradient, summed over the ranks (every rank sees the same)
        loss = dp.reduce_gradients(model.grad_data(), model.n_params(), loss, batch);
        if (!std::isfinite(loss)) fail(fmt::format("step {}: the training loss is {}", done, loss));
        if (opt.after_backward) opt.after_backward(done, model);
        const double gnorm = clip_grad_norm(model.grad_data(), model.n_params(), tc.grad_clip);
        if (!std::isfinite(gnorm)) fail(fmt::format("step {}: {}", done, non_finite_gradient(model)));
        const double lr = lr_at(step, tc.steps, tc.lr, tc.min_lr, tc.warmup_steps);
        opt_state.step(model.param_data(), model.grad_data(), lr);
        train_seconds += std::chrono::duration<double>(Clock::now() - ts).count();
        tokens += static_cast<int64_t>(tc.batch_size) * batch.T;

        if (done % tc.log_every == 0 || done == tc.steps || done == 1) {
            if (log) log->log_train(done, loss, lr);
            curves.train_step.push_back(done);
            curves.train_loss.push_back(loss);
            curves.train_lr.push_back(lr);
        }
        if (done % tc.eval_every == 0 || done == tc.steps) {
            last_eval = evaluate(split, *task, tc.eval_batches, tc.batch_size, dp);
            if (!std::isfinite(last_eval.loss))
                fail(fmt::format("step {}: the validation loss is {}", done, last_eval.loss));
            if (log) log->log_eval(done, last_eval.loss, last_eval.accuracy);
            if (last_eval.accuracy && curves.eval_accuracy.empty())
                curves.eval_accuracy.assign(curves.eval_step.size(), std::nan(""));
            curves.eval_step.push_back(done);
            curves.eval_loss.push_back(last_eval.loss);
            if (!curves.eval_accuracy.empty()) curves.eval_accuracy.push_back(last_eval.accuracy.value_or(std::nan("")));
        }
        if (opt.progress && (done % tc.log_every == 0 || done == tc.steps)) {
            const double tps = double(tokens) / std::max(train_seconds, 1e-9);
            const double eta = (wall() - wall_before) / (done - start) * (tc.steps - done);
            std::string line = fmt::format("[{}] step {}/{} | loss {:.4f} | lr {:.2e} | {:.1f}k tok/s | ETA {}",
                                           cfg.run_id, done, tc.steps, loss, lr, tps / 1000, human_duration(eta));
            if (last_eval.loss > 0)
                line += last_eval.accuracy ? fmt::format(" | val {:.4f} acc {:.3f}", last_eval.loss, *last_eval.accuracy)
                                           : fmt::format(" | val {:.4f}", last_eval.loss);
            if (tty)
                fmt::print(stderr, "\r{:<110}", line);
            else
                fmt::print(stderr, "{}\n", line);
            if (tty && done == tc.steps) fmt::print(stderr, "\n");
        }

        if (done == tc.steps) break;   // the last step: completed, whatever signal came
        const int sig = stop_signal();
        if (tc.checkpoint_every > 0 && (done % tc.checkpoint_every == 0 || sig != 0)) write_checkpoint(done);
        if (sig != 0) {
            if (tty && opt.progress) fmt::print(stderr, "\n");
            if (log) {
                log->set_attrs({{"tokens_per_second", double(tokens) / std::max(train_seconds, 1e-9)},
                                {"wall_seconds", wall()}});
                log->interrupt_run(signal_name(sig), done);
            }
            merge();
            sum.status = "interrupted";
            sum.stop_signal = sig;
            sum.steps_done = done;
            sum.wall_seconds = wall();
            return sum;
        }
    }
    sum.status = "completed";
    sum.steps_done = tc.steps;
    sum.wall_seconds = wall();
    sum.tokens_per_second = double(tokens) / std::max(train_seconds, 1e-9);
    sum.val_loss = last_eval.loss;
    sum.val_bits_per_byte = last_eval.loss / std::log(2.0);
    sum.val_accuracy = last_eval.accuracy;

    if (log) {
        log->set_attrs({{"tokens_per_second", sum.tokens_per_second}, {"wall_seconds", sum.wall_seconds}});
        Attrs fin = {{"val_loss", sum.val_loss}, {"val_bits_per_byte", sum.val_bits_per_byte}};
        if (sum.val_accuracy) fin.emplace_back("val_accuracy", *sum.val_accuracy);
        log->end_run(fin, to_param_set(model));
    }
    merge();
    if (opt.merge && root) remove_quietly(ckpt);   // a sweep's parent deletes it after its own merge
    return sum;
}

}  // namespace kvlab
