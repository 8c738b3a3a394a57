#include "train/trainer.h"

#include "core/error.h"
#include "core/rng.h"
#include "dist/data_parallel.h"
#include "io/results.h"
#include "model/checkpoint.h"
#include "model/transformer.h"
#include "tasks/task.h"
#include "train/optim.h"

#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>

namespace kvlab {
namespace {

using Clock = std::chrono::steady_clock;

std::string human_duration(double s) {
    if (s < 60) return fmt::format("{:.0f}s", s);
    if (s < 3600) return fmt::format("{}m{:02d}s", int(s) / 60, int(s) % 60);
    return fmt::format("{}h{:02d}m", int(s) / 3600, (int(s) % 3600) / 60);
}

struct EvalResult {
    double loss = 0;
    std::optional<double> accuracy;
};

EvalResult evaluate(Transformer<float>& model, const Task& task, int batches, int B, const dist::DataParallel& dp) {
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

}  // namespace

int set_threads(int threads) {
    const int n = threads > 0 ? threads : std::max(1, omp_get_num_procs());
    omp_set_num_threads(n);
    Eigen::setNbThreads(n);
    return n;
}

RunSummary train_run(const ExperimentConfig& cfg, const RunOptions& opt) {
    const auto& tc = cfg.train;
    RunSummary sum;
    sum.run_id = cfg.run_id;
    sum.results_path = cfg.results_path();
    sum.threads = set_threads(tc.threads);

    // Everything that can fail on bad input happens before the results file is touched.
    auto task = make_task(cfg.data);
    Transformer<float> model(cfg.model);
    model.init(cfg.seed);
    sum.n_params = model.n_params();
    sum.kv_elements_per_token = model.kv_elements_per_token();
    {   // bytes per token as allocated by the decode cache
        auto st = model.new_decode_state(cfg.data.seq_len);
        sum.kv_bytes_per_token = st.bytes() / cfg.data.seq_len;
    }
    std::vector<AdamW::Group> groups;
    for (const auto& np : model.params()) groups.push_back({np.offset, np.spec.numel(), np.spec.decay()});
    AdamW opt_state(model.n_params(), groups, tc.beta1, tc.beta2, tc.adam_eps, tc.weight_decay);

    const dist::DataParallel dp(opt.data_parallel, tc.batch_size);
    dist::RootLogger log(dp, sum.results_path, cfg.run_id, opt.overwrite);
    log.begin_run(cfg.resolved_yaml, cfg.model.attention,
                  {{"seed", static_cast<int64_t>(cfg.seed)},
                   {"n_params", sum.n_params},
                   {"kv_cache_elements_per_token", sum.kv_elements_per_token},
                   {"kv_cache_bytes_per_token", sum.kv_bytes_per_token},
                   {"threads", static_cast<int64_t>(sum.threads)},
                   {"task", cfg.data.task}});

    const bool tty = isatty(fileno(stderr));
    Rng data_rng = Rng::stream(cfg.seed, /*stream id: training batches*/ 2);
    Batch batch;
    const auto t0 = Clock::now();
    double train_seconds = 0;
    int64_t tokens = 0;
    EvalResult last_eval;
    auto fail = [&](const std::string& msg) {
        log.fail_run(msg);
        throw Error(fmt::format("run '{}' failed: {}", cfg.run_id, msg));
    };
    for (int step = 0; step < tc.steps; ++step) {
        const auto ts = Clock::now();
        task->train_batch(data_rng, tc.batch_size, batch);
        dp.shard(batch);   // this rank's rows (all of them in one process)
        model.zero_grad();
        double loss = model.forward(batch.inputs.data(), batch.targets.data(), batch.B, batch.T);
        model.backward();
        loss = dp.reduce_gradients(model.grad_data(), model.n_params(), loss, batch);
        if (!std::isfinite(loss)) fail(fmt::format("training loss is {} at step {}", loss, step + 1));
        const double gnorm = clip_grad_norm(model.grad_data(), model.n_params(), tc.grad_clip);
        if (!std::isfinite(gnorm)) fail(fmt::format("gradient norm is {} at step {}", gnorm, step + 1));
        const double lr = lr_at(step, tc.steps, tc.lr, tc.min_lr, tc.warmup_steps);
        opt_state.step(model.param_data(), model.grad_data(), lr);
        train_seconds += std::chrono::duration<double>(Clock::now() - ts).count();
        tokens += static_cast<int64_t>(tc.batch_size) * batch.T;

        const int done = step + 1;
        if (done % tc.log_every == 0 || done == tc.steps || done == 1) log.log_train(done, loss, lr);
        if (done % tc.eval_every == 0 || done == tc.steps) {
            last_eval = evaluate(model, *task, tc.eval_batches, tc.batch_size, dp);
            if (!std::isfinite(last_eval.loss)) fail(fmt::format("validation loss is {} at step {}", last_eval.loss, done));
            log.log_eval(done, last_eval.loss, last_eval.accuracy);
        }
        if (opt.progress && (done % tc.log_every == 0 || done == tc.steps)) {
            const double tps = double(tokens) / std::max(train_seconds, 1e-9);
            const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
            const double eta = elapsed / done * (tc.steps - done);
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
    }
    sum.wall_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    sum.tokens_per_second = double(tokens) / std::max(train_seconds, 1e-9);
    sum.val_loss = last_eval.loss;
    sum.val_bits_per_byte = last_eval.loss / std::log(2.0);
    sum.val_accuracy = last_eval.accuracy;

    log.set_attrs({{"tokens_per_second", sum.tokens_per_second}, {"wall_seconds", sum.wall_seconds}});
    Attrs fin = {{"val_loss", sum.val_loss}, {"val_bits_per_byte", sum.val_bits_per_byte}};
    if (sum.val_accuracy) fin.emplace_back("val_accuracy", *sum.val_accuracy);
    log.end_run(fin, to_param_set(model));
    return sum;
}

}  // namespace kvlab
