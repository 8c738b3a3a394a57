// kvlab bench: how fast kvlab trains and decodes on this machine, against the GEMM limit
// measured in the same run (issue "Performance: ... near the GEMM limit"):
//   (a) single-precision GEMM GFLOP/s of the model's GEMM (core/gemm.h: OpenBLAS or Eigen),
//       per thread count, on 1024³ and on the shapes the benchmark models multiply, and
//       Eigen's own GEMM on 1024³ beside it;
//   (b) training tokens/s and model GFLOP/s per plugin, configuration and thread count;
//   (c) per-op times of a training step (Transformer::OpTimes, the optimizer timed here);
//   (d) single-sequence decode tokens/s of the large model (time_decode, shared with
//       decode-bench);
//   (e) peak RSS of a training run (a child process per configuration and plugin) against
//       the bytes of parameters, gradients, the two AdamW states and the activations.
#include "attention/registry.h"
#include "cli.h"
#include "core/gemm.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "io/results.h"
#include "model/batch_split.h"
#include "model/transformer.h"
#include "train/optim.h"
#include "train/trainer.h"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <numeric>

namespace kvlab::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

const char* kBenchHelp = R"(usage: kvlab bench [--config small|large|all] [--plugins LIST] [--threads LIST] [--steps N]
                   [--parts LIST] [--decode-contexts LIST] [--decode-steps N] [--decode-repeats R]
                   [--out FILE.h5]

Measures kvlab's speed against the GEMM limit of this machine, in one run:

  gemm     single-precision GEMM GFLOP/s of the model's GEMM (OpenBLAS with the core type
           kvlab chose, or Eigen: the backend line says which and why) per thread count:
           1024x1024x1024 and the benchmark models' typical shapes (activation x weight^T,
           weight gradients, the attention products of one head), and Eigen's own GEMM on
           1024^3 beside it (its result checked against the model's GEMM). best = fastest
           of the repeats, median = their median; the GEMM peak is the best row of either.
  train    training tokens/s and model GFLOP/s per plugin, configuration and thread count,
           from the median step time of N timed steps (after 2 untimed ones); a step is
           zero_grad, forward, backward, gradient clipping and AdamW, on random bytes
           (vocab 256, targets = the next byte). "of peak" is GFLOP/s over the GEMM peak
           of the same thread count; "CPU ms/step" is the process CPU time per step (all
           threads, median): at 1 thread on a busy machine it is the better estimate of
           the unloaded step time. Per-op medians of the same steps:
           attention forward/backward (the plugin), MLP forward/backward (GEMMs and SwiGLU),
           RMSNorms and residual adds, LM head + loss (final norm, lm_head, cross-entropy),
           embedding, optimizer (clip + AdamW) and zero_grad.
  decode   batch-1 decode tokens/s of the large model at each context (the mechanics of
           kvlab decode-bench, each plugin's default decode implementation), against its
           memory bound: a step reads every weight it multiplies by and the whole cache
           once, so tokens/s cannot pass (read bandwidth) / (those bytes), the bandwidth
           measured in the same run by reading as many bytes with the same threads.
  memory   peak RSS (getrusage ru_maxrss) of a training run of each configuration and
           plugin, each in its own child process, against parameters + gradients + 2 AdamW
           states + the activation buffers the model and plugins allocated (every batch
           shard's) + the batch-shard replicas' gradient arenas.

Training splits each batch between the threads (one shard of sequences per thread, each
on its own replica of the model, single-threaded products; model/batch_split.h);
KVLAB_BATCH_SPLIT=off makes the products share the threads instead, for comparison.

Configurations (vocab 256, untied lm_head; gqa n_kv_heads 2; AdamW lr 1e-3, betas 0.9/0.95):
  small  d_model 128, 2 layers, 4 heads x 32, mlp_hidden 344, seq 128, batch 32;
         mla kv_lora_rank 64, qk_rope_head_dim 16, q_lora_rank 96
  large  d_model 256, 4 layers, 8 heads x 32, mlp_hidden 683, seq 256, batch 16;
         mla kv_lora_rank 128, qk_rope_head_dim 16, q_lora_rank 192

Model FLOPs per training step (the GFLOP/s figure) = 6 x M x tokens + attention, where M
counts the parameters of every matrix the model multiplies by (all but the embedding
table, which is a lookup; lm_head included; the RMSNorm gains are left out), and
attention = 3 x n_layers x H x (dq + dv) x T(T+1)/2 x B: forward 2·(dq + dv) per
(query, key) pair for q k^T and P v over the T(T+1)/2 causal pairs of a sequence,
backward twice the forward. dq = dv = head_dim for mha/gqa/mqa; mla dq = head_dim +
qk_rope_head_dim, dv = head_dim. Counting all T^2 pairs instead (PaLM's 12·L·H·d·T per
token) is written too (flops_per_step_dense).

  --config C            small, large or all (default all)
  --plugins LIST        attention plugins (default mha,gqa,mqa,mla)
  --threads LIST        OpenMP/Eigen thread counts (default 1,2)
  --steps N             timed training steps per row (default 10)
  --parts LIST          any of gemm,train,decode,memory (default all four)
  --decode-contexts L   contexts of the decode measurement (default 256,512,1024,2048,4096)
  --decode-steps N      timed decode steps at the end of each context (default 32)
  --decode-repeats R    repeats of the timed decode steps; the median counts (default 5)
  --out FILE.h5         write the tables /bench/gemm, /bench/train, /bench/decode and
                        /bench/memory (one 1-D dataset per column; attributes cpu, backend,
                        date); nothing is written without it

Every table row carries its thread count; the CPU and the GEMM backend head every table.
Timings on a shared machine are noisy: the load average is printed before each part.
)";

std::vector<int> int_list(const Args& a, const std::string& key, const std::string& fallback, int lo, int hi) {
    std::vector<int> out;
    for (const auto& s : split_list(a.opt(key, fallback))) {
        char* end = nullptr;
        const long v = std::strtol(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0' || v < lo || v > hi)
            throw Error(fmt::format("--{}: \"{}\" must be an integer in {}..{}", key, s, lo, hi));
        out.push_back(static_cast<int>(v));
    }
    if (out.empty()) throw Error(fmt::format("--{} needs at least one entry", key));
    return out;
}

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
        }
    return "unknown CPU";
}

std::string cpu_description() {
    return fmt::format("{} ({} logical CPUs)", cpu_model(), sysconf(_SC_NPROCESSORS_ONLN));
}

std::string backend() {
    return fmt::format("{}; Eigen {}.{}.{} ({}); OpenMP", gemm::init().describe(), EIGEN_WORLD_VERSION,
                       EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION, Eigen::SimdInstructionSetsInUse());
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string a, b, c;
    in >> a >> b >> c;
    return fmt::format("{} {} {}", a, b, c);
}

// ---------------------------------------------------------------------------- the models
struct BenchModel {
    std::string name;
    int batch = 0, seq = 0;
    ModelConfig model;
};

BenchModel bench_model(const std::string& name) {
    BenchModel b;
    b.name = name;
    ModelConfig& m = b.model;
    m.vocab_size = 256;
    m.head_dim = 32;
    if (name == "small") {
        b.batch = 32, b.seq = 128;
        m.d_model = 128, m.n_layers = 2, m.n_heads = 4, m.mlp_hidden = 344;
        m.plugin = {{"n_kv_heads", 2}, {"kv_lora_rank", 64}, {"qk_rope_head_dim", 16}, {"q_lora_rank", 96}};
    } else {
        b.batch = 16, b.seq = 256;
        m.d_model = 256, m.n_layers = 4, m.n_heads = 8, m.mlp_hidden = 683;
        m.plugin = {{"n_kv_heads", 2}, {"kv_lora_rank", 128}, {"qk_rope_head_dim", 16}, {"q_lora_rank", 192}};
    }
    return b;
}

ModelConfig with_plugin(ModelConfig m, const std::string& plugin) {
    m.attention = plugin;
    return m;
}

// Model FLOPs of one training step (see the help): {causal count, dense count}.
std::pair<double, double> step_flops(const Transformer<float>& m, int B, int T) {
    const ModelConfig& c = m.config();
    double matrix_params = 0;
    for (const auto& np : m.params())
        if (np.spec.shape.size() == 2 && np.spec.name != "embed") matrix_params += double(np.spec.numel());
    if (c.tie_embeddings) matrix_params += double(c.vocab_size) * c.d_model;   // embed doubles as lm_head
    const bool mla = c.attention == "mla";
    const double dq = c.head_dim + (mla ? double(c.plugin_int("qk_rope_head_dim")) : 0.0), dv = c.head_dim;
    const double tokens = double(B) * T;
    const double lin = 6.0 * matrix_params * tokens;
    const double per_pair = 3.0 * c.n_layers * c.n_heads * 2.0 * (dq + dv);   // fwd + bwd, all layers and heads
    return {lin + per_pair * B * (double(T) * (T + 1) / 2.0), lin + per_pair * B * double(T) * T};
}

// ---------------------------------------------------------------------------- (a) GEMM
struct GemmShape {
    std::string name;
    char kind;   // 'N': C = A B;  'T': C = A Bᵀ (activation × weightᵀ);  'G': C = Aᵀ B (weight gradient)
    Eigen::Index m, k, n;
};

struct GemmRow {
    std::string shape;
    int threads = 0;
    int64_t m = 0, k = 0, n = 0;
    double best_gflops = 0, median_gflops = 0;
};

// C [m, n] from A and B laid out as the model lays them out (row-major), through the
// model's own calls (gemm::nn/nt/tn). Each repeat runs the product often enough to last
// about 20 ms.
GemmRow measure_gemm(const GemmShape& s, int threads, int repeats) {
    Rng rng(11);
    auto random = [&](Eigen::Index r, Eigen::Index c) {
        Mat x(r, c);
        for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(rng.uniform() - 0.5);
        return x;
    };
    const Mat A = s.kind == 'G' ? random(s.k, s.m) : random(s.m, s.k);
    const Mat Bm = s.kind == 'T' ? random(s.n, s.k) : random(s.k, s.n);
    Mat C(s.m, s.n);
    auto run = [&]() {
        if (s.kind == 'N')
            gemm::nn(C, A, Bm);
        else if (s.kind == 'T')
            gemm::nt(C, A, Bm);
        else
            gemm::tn(C, A, Bm);
    };
    run();
    const double flops = 2.0 * double(s.m) * double(s.k) * double(s.n);
    auto t0 = Clock::now();
    run();
    const double once = std::max(seconds_since(t0), 1e-7);
    const int inner = std::max(1, static_cast<int>(0.02 / once));
    std::vector<double> g;
    for (int r = 0; r < repeats; ++r) {
        t0 = Clock::now();
        for (int i = 0; i < inner; ++i) run();
        g.push_back(flops * inner / seconds_since(t0) / 1e9);
    }
    GemmRow row{s.name, threads, s.m, s.k, s.n, *std::max_element(g.begin(), g.end()), median(g)};
    return row;
}

// Eigen's own GEMM on the square shape beside the model's: the comparison that decided
// the backend (core/gemm.h), measured again on every run. Its result is checked against
// the model's product of the same matrices; max_rel_err is max |C_eigen - C_model| / max
// |C_model|.
struct EigenGemm {
    GemmRow row;
    double max_rel_err = 0;
};

EigenGemm measure_eigen_gemm(int threads, int repeats) {
    const int n = 1024;
    Rng rng(11);
    Mat A(n, n), B(n, n), C(n, n), ref(n, n);
    for (Eigen::Index i = 0; i < A.size(); ++i) A.data()[i] = static_cast<float>(rng.uniform() - 0.5);
    for (Eigen::Index i = 0; i < B.size(); ++i) B.data()[i] = static_cast<float>(rng.uniform() - 0.5);
    auto run = [&]() { gemm::eigen_nn(C, A, B); };
    run();
    gemm::nn(ref, A, B);
    EigenGemm e;
    e.max_rel_err = double((C - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff());
    const double flops = 2.0 * n * n * n;
    auto t0 = Clock::now();
    run();
    const int inner = std::max(1, static_cast<int>(0.02 / std::max(seconds_since(t0), 1e-7)));
    std::vector<double> g;
    for (int r = 0; r < repeats; ++r) {
        t0 = Clock::now();
        for (int i = 0; i < inner; ++i) run();
        g.push_back(flops * inner / seconds_since(t0) / 1e9);
    }
    e.row = {"Eigen GEMM 1024^3", threads, n, n, n, *std::max_element(g.begin(), g.end()), median(g)};
    return e;
}

std::vector<GemmShape> gemm_shapes(const std::vector<BenchModel>& models) {
    std::vector<GemmShape> shapes = {{"square 1024^3", 'N', 1024, 1024, 1024}};
    for (const auto& bm : models) {
        const ModelConfig& c = bm.model;
        const Eigen::Index N = Eigen::Index(bm.batch) * bm.seq, D = c.d_model, F = c.mlp_hidden, T = bm.seq,
                           dh = c.head_dim;
        const std::string p = bm.name + ": ";
        shapes.push_back({p + "x w_up^T [N,D][F,D]^T", 'T', N, D, F});
        shapes.push_back({p + "hmid w_down^T [N,F][D,F]^T", 'T', N, F, D});
        shapes.push_back({p + "dw_up += da^T x [N,F]^T[N,D]", 'G', F, N, D});
        shapes.push_back({p + "dx = da w_up [N,F][F,D]", 'N', N, F, D});
        shapes.push_back({p + "x wq^T [N,D][H*dh,D]^T", 'T', N, D, Eigen::Index(c.n_heads) * dh});
        shapes.push_back({p + "q k^T one head [T,dh][T,dh]^T", 'T', T, dh, T});
        shapes.push_back({p + "P v one head [T,T][T,dh]", 'N', T, T, dh});
    }
    return shapes;
}

// ---------------------------------------------------------------------------- (b, c) training
struct TrainRow {
    std::string config, plugin;
    int threads = 0, B = 0, T = 0, steps = 0;
    int shards = 1;   // batch shards (model/batch_split.h)
    int64_t n_params = 0;
    double flops = 0, flops_dense = 0;                         // per step
    double step_seconds = 0, tokens_per_second = 0, gflops = 0, peak_fraction = 0;
    double step_cpu_seconds = 0;   // process CPU time (all threads) per step, median: robust to load at 1 thread
    // per-op medians, seconds per step
    double fwd = 0, bwd = 0, attn_fwd = 0, attn_bwd = 0, mlp_fwd = 0, mlp_bwd = 0, norm = 0, head_fwd = 0,
           head_bwd = 0, embed = 0, optimizer = 0, zero_grad = 0;
};

void random_batch(Rng& rng, int B, int T, int V, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
    std::vector<int32_t> seq(static_cast<size_t>(T) + 1);
    inputs.resize(static_cast<size_t>(B) * T);
    targets.resize(inputs.size());
    for (int b = 0; b < B; ++b) {
        for (auto& t : seq) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
        std::copy(seq.begin(), seq.end() - 1, inputs.begin() + static_cast<ptrdiff_t>(b) * T);
        std::copy(seq.begin() + 1, seq.end(), targets.begin() + static_cast<ptrdiff_t>(b) * T);
    }
}

std::unique_ptr<AdamW> make_adamw(const Transformer<float>& m) {
    const TrainConfig tc;   // config.md's defaults: betas 0.9/0.95, eps 1e-8, weight decay 0.1
    std::vector<AdamW::Group> groups;
    for (const auto& np : m.params()) groups.push_back({np.offset, np.spec.numel(), np.spec.decay()});
    return std::make_unique<AdamW>(m.n_params(), groups, tc.beta1, tc.beta2, tc.adam_eps, tc.weight_decay);
}

TrainRow measure_training(const BenchModel& bm, const std::string& plugin, int threads, int steps) {
    set_threads(threads);
    Transformer<float> m(with_plugin(bm.model, plugin));
    m.init(0);
    auto opt = make_adamw(m);
    const int B = bm.batch, T = bm.seq, V = bm.model.vocab_size;
    BatchSplit<float> split(m, batch_shards_from_env(threads, B));
    Rng rng = Rng::stream(0, 2);
    std::vector<int32_t> inputs, targets;
    TrainRow r;
    r.config = bm.name;
    r.plugin = plugin;
    r.threads = threads;
    r.shards = split.shards();
    r.B = B, r.T = T, r.steps = steps;
    r.n_params = m.n_params();
    std::tie(r.flops, r.flops_dense) = step_flops(m, B, T);
    std::vector<double> step, cpu, fwd, bwd, optim, zero, attn_f, attn_b, mlp_f, mlp_b, norm, head_f, head_b, embed;
    const int warmup = 2;
    for (int s = 0; s < warmup + steps; ++s) {
        random_batch(rng, B, T, V, inputs, targets);
        const bool timed = s >= warmup;
        m.set_op_timing(timed);
        m.op_times() = {};
        const double c0 = cpu_seconds();
        const auto t0 = Clock::now();
        m.zero_grad();
        const auto t1 = Clock::now();
        const double loss = split.forward(inputs.data(), targets.data(), B, T);
        const auto t2 = Clock::now();
        split.backward();
        const auto t3 = Clock::now();
        clip_grad_norm(m.grad_data(), m.n_params(), 1.0);
        opt->step(m.param_data(), m.grad_data(), 1e-3);
        const auto t4 = Clock::now();
        const double c1 = cpu_seconds();
        KV_CHECK(std::isfinite(loss), "bench: non-finite loss {} ({}, {})", loss, bm.name, plugin);
        if (!timed) continue;
        auto sec = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
        step.push_back(sec(t0, t4));
        cpu.push_back(c1 - c0);
        zero.push_back(sec(t0, t1));
        fwd.push_back(sec(t1, t2));
        bwd.push_back(sec(t2, t3));
        optim.push_back(sec(t3, t4));
        const auto& o = m.op_times();
        attn_f.push_back(o.attn_fwd), attn_b.push_back(o.attn_bwd), mlp_f.push_back(o.mlp_fwd);
        mlp_b.push_back(o.mlp_bwd), norm.push_back(o.norm_fwd + o.norm_bwd), head_f.push_back(o.head_fwd);
        head_b.push_back(o.head_bwd), embed.push_back(o.embed);
    }
    m.set_op_timing(false);
    r.step_seconds = median(step);
    r.step_cpu_seconds = median(cpu);
    r.tokens_per_second = double(B) * T / r.step_seconds;
    r.gflops = r.flops / r.step_seconds / 1e9;
    r.fwd = median(fwd), r.bwd = median(bwd), r.optimizer = median(optim), r.zero_grad = median(zero);
    r.attn_fwd = median(attn_f), r.attn_bwd = median(attn_b), r.mlp_fwd = median(mlp_f), r.mlp_bwd = median(mlp_b);
    r.norm = median(norm), r.head_fwd = median(head_f), r.head_bwd = median(head_b), r.embed = median(embed);
    return r;
}

// ---------------------------------------------------------------------------- (d) decode
struct DecodeRow {
    std::string plugin, impl;
    int threads = 0, context = 0, steps = 0;
    int64_t cache_bytes = 0;
    double tokens_per_second = 0, step_seconds = 0, prefill_seconds = 0;
    // The memory bound: a step reads every weight it multiplies by and the whole cache once.
    int64_t bytes_per_token = 0;    // weights (all but the embedding table) + cache bytes
    double read_gbs = 0;            // sequential read of that many bytes, GB/s, best pass
    double bound_tokens_per_second = 0;   // read_gbs / bytes_per_token
};

// GB/s of reading `bytes` (a float buffer, split in contiguous shares between `threads`),
// the best of `passes` passes: what a decode step that reads as much could at most reach.
double read_bandwidth(int64_t bytes, int threads, int passes = 30) {
    const Eigen::Index n = std::max<Eigen::Index>(Eigen::Index(bytes / int64_t(sizeof(float))), 1024);
    Eigen::VectorXf buf = Eigen::VectorXf::LinSpaced(n, 0.f, 1.f);
    std::vector<float> sums(static_cast<size_t>(threads));
    double best = 1e30;
    for (int r = 0; r < passes; ++r) {
        const auto t0 = Clock::now();
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), m = omp_get_num_threads();
            const Eigen::Index a = n * t / m, b = n * (t + 1) / m;
            sums[size_t(t)] += buf.segment(a, b - a).sum();
        }
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
    }
    KV_CHECK(std::isfinite(std::accumulate(sums.begin(), sums.end(), 0.0)), "bench: read bandwidth check");
    return double(n) * sizeof(float) / best / 1e9;
}

// ---------------------------------------------------------------------------- (e) memory
struct MemoryRow {
    std::string config, plugin;
    int threads = 0;
    int64_t maxrss_bytes = 0, hwm_bytes = 0, baseline_bytes = 0;   // ru_maxrss, VmHWM, ru_maxrss before the model
    int shards = 1;
    // count = 4 x params (θ, g, m, v) + the batch shards' activations + the replicas' gradients
    int64_t param_bytes = 0, activation_bytes = 0, replica_grad_bytes = 0, count_bytes = 0;
    double ratio = 0, ratio_net = 0;                                  // peak / count, (peak - baseline) / count
};

int64_t maxrss_bytes() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<int64_t>(u.ru_maxrss) * 1024;   // Linux: kilobytes
}

int64_t vm_hwm_bytes() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
    return -1;
}

// The child side: one short training run, then one line of numbers on stdout.
int memory_probe(const BenchModel& bm, const std::string& plugin, int threads) {
    set_threads(threads);
    const int64_t baseline = maxrss_bytes();
    Transformer<float> m(with_plugin(bm.model, plugin));
    m.init(0);
    auto opt = make_adamw(m);
    BatchSplit<float> split(m, batch_shards_from_env(threads, bm.batch));
    Rng rng = Rng::stream(0, 2);
    std::vector<int32_t> inputs, targets;
    for (int s = 0; s < 3; ++s) {
        random_batch(rng, bm.batch, bm.seq, bm.model.vocab_size, inputs, targets);
        m.zero_grad();
        split.forward(inputs.data(), targets.data(), bm.batch, bm.seq);
        split.backward();
        clip_grad_norm(m.grad_data(), m.n_params(), 1.0);
        opt->step(m.param_data(), m.grad_data(), 1e-3);
    }
    fmt::print("kvlab-memory-probe {} {} {} {} {} {}\n", maxrss_bytes(), vm_hwm_bytes(), baseline, m.n_params(),
               split.activation_bytes(), split.shards());
    return 0;
}

MemoryRow run_memory_probe(const std::string& exe, const BenchModel& bm, const std::string& plugin, int threads) {
    const std::string cmd = fmt::format("'{}' bench --memory-probe --config {} --plugins {} --threads {}", exe,
                                        bm.name, plugin, threads);
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) throw Error(fmt::format("bench: cannot run '{}'", cmd));
    char buf[512];
    std::string out;
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    const int status = pclose(p);
    MemoryRow r;
    r.config = bm.name, r.plugin = plugin, r.threads = threads;
    long long rss = 0, hwm = 0, base = 0, params = 0, act = 0;
    int shards = 0;
    if (status != 0 || std::sscanf(out.c_str(), "kvlab-memory-probe %lld %lld %lld %lld %lld %d", &rss, &hwm, &base,
                                   &params, &act, &shards) != 6)
        throw Error(fmt::format("bench: the memory probe '{}' failed (status {}): {}", cmd, status, out));
    r.maxrss_bytes = rss, r.hwm_bytes = hwm, r.baseline_bytes = base;
    r.param_bytes = params * static_cast<int64_t>(sizeof(float));
    r.activation_bytes = act;
    r.shards = shards;
    r.replica_grad_bytes = (shards - 1) * r.param_bytes;
    r.count_bytes = 4 * r.param_bytes + r.activation_bytes + r.replica_grad_bytes;
    r.ratio = double(r.maxrss_bytes) / double(r.count_bytes);
    r.ratio_net = double(r.maxrss_bytes - r.baseline_bytes) / double(r.count_bytes);
    return r;
}

std::string mib(int64_t bytes) { return fmt::format("{:.1f}", double(bytes) / (1 << 20)); }

// Column helper: one column of a table from a member of its rows.
template <class Row, class F>
auto column(const std::vector<Row>& rows, F get) {
    std::vector<std::decay_t<decltype(get(rows[0]))>> v;
    for (const auto& r : rows) v.push_back(get(r));
    return v;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
    if (wants_help(argc, argv, 2)) return fmt::print("{}", kBenchHelp), 0;
    auto a = parse_args(argc, argv, 2,
                        {"config", "plugins", "threads", "steps", "parts", "decode-contexts", "decode-steps",
                         "decode-repeats", "out"},
                        {"memory-probe"}, "bench");
    if (!a.positional.empty()) throw Error("bench takes no positional arguments (see: kvlab bench --help)");
    const std::string which = a.opt("config", "all");
    if (which != "small" && which != "large" && which != "all")
        throw Error(fmt::format("--config must be small, large or all, got \"{}\"", which));
    std::vector<BenchModel> models;
    if (which != "large") models.push_back(bench_model("small"));
    if (which != "small") models.push_back(bench_model("large"));
    const auto plugins = split_list(a.opt("plugins", "mha,gqa,mqa,mla"));
    if (plugins.empty()) throw Error("--plugins needs at least one entry");
    for (const auto& p : plugins)
        for (const auto& bm : models) try {
                (void)make_attention<float>(with_plugin(bm.model, p));
            } catch (const ConfigError& e) {
                throw Error(fmt::format("--plugins: {}", e.what()));
            }
    const auto threads = int_list(a, "threads", "1,2", 1, 1024);
    const int steps = static_cast<int>(int_opt(a, "steps", 10, 1, 100000, "bench"));

    if (a.flag("memory-probe")) {   // hidden: the child process of the memory part
        KV_CHECK(models.size() == 1 && plugins.size() == 1 && threads.size() == 1, "memory probe: one of each");
        return memory_probe(models[0], plugins[0], threads[0]);
    }

    std::set<std::string> parts;
    for (const auto& p : split_list(a.opt("parts", "gemm,train,decode,memory"))) {
        if (p != "gemm" && p != "train" && p != "decode" && p != "memory")
            throw Error(fmt::format("--parts: unknown part \"{}\" (gemm, train, decode, memory)", p));
        parts.insert(p);
    }
    const auto contexts = int_list(a, "decode-contexts", "256,512,1024,2048,4096", 1, 1 << 20);
    const int dsteps = static_cast<int>(int_opt(a, "decode-steps", 32, 1, 1 << 20, "bench"));
    const int drepeats = static_cast<int>(int_opt(a, "decode-repeats", 5, 1, 1000, "bench"));
    for (int c : contexts)
        if (c < dsteps) throw Error(fmt::format("--decode-contexts: {} is below --decode-steps {}", c, dsteps));
    const std::string out = a.opt("out");
    if (!out.empty() && fs::path(out).has_parent_path() && !fs::exists(fs::path(out).parent_path()))
        throw Error(fmt::format("--out: directory '{}' does not exist", fs::path(out).parent_path().string()));

    const std::string cpu = cpu_description(), be = backend();
    const std::string date = fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", fmt::gmtime(std::time(nullptr)));
    auto header = [&](const char* what) {
        fmt::print("\n== {} | CPU: {} | GEMM: {} | load average {}\n", what, cpu, be, load_average());
        std::fflush(stdout);
    };
    const Attrs common = {{"cpu", cpu}, {"backend", be}, {"date", date}};

    // (e) first, while this process is small: a child's ru_maxrss starts from its parent's
    // high-water mark at exec, so the children are started before anything is allocated here.
    std::vector<MemoryRow> mem;
    if (parts.count("memory")) {
        char exe[4096];
        const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0) throw Error("bench: cannot find the kvlab executable (/proc/self/exe)");
        exe[n] = '\0';
        header("memory: peak RSS of a training run (3 steps, child process) vs parameters + gradients + 2 AdamW "
               "states + activations");
        for (const auto& bm : models)
            for (const auto& p : plugins) mem.push_back(run_memory_probe(exe, bm, p, threads.front()));
        fmt::print("{:<6} {:<5} {:>7} {:>6} {:>10} {:>9} {:>10} {:>12} {:>11} {:>10} {:>10} {:>7} {:>9}\n", "config",
                   "attn", "threads", "shards", "params MiB", "x4 MiB", "activ. MiB", "rep. grad MiB", "count MiB",
                   "peak MiB", "base MiB", "ratio", "net ratio");
        for (const auto& r : mem)
            fmt::print("{:<6} {:<5} {:>7} {:>6} {:>10} {:>9} {:>10} {:>12} {:>11} {:>10} {:>10} {:>7.2f} {:>9.2f}\n",
                       r.config, r.plugin, r.threads, r.shards, mib(r.param_bytes), mib(4 * r.param_bytes),
                       mib(r.activation_bytes), mib(r.replica_grad_bytes), mib(r.count_bytes), mib(r.maxrss_bytes),
                       mib(r.baseline_bytes), r.ratio, r.ratio_net);
        fmt::print("peak = ru_maxrss of the child (VmHWM agrees: {}); base = its ru_maxrss before the model was "
                   "built; net ratio = (peak - base) / count\n",
                   std::all_of(mem.begin(), mem.end(),
                               [](const MemoryRow& r) { return std::llabs(r.hwm_bytes - r.maxrss_bytes) < (1 << 20); })
                       ? "yes"
                       : "no");
    }

    // (a)
    std::vector<GemmRow> gemm;
    std::map<int, double> peak;   // threads -> best GFLOP/s over the shapes
    if (parts.count("gemm")) {
        header("GEMM, single precision");
        fmt::print("{:<44} {:>7} {:>6} {:>6} {:>6} {:>12} {:>14}\n", "shape (C = ...)", "threads", "m", "k", "n",
                   "best GFLOP/s", "median GFLOP/s");
        for (int th : threads) {
            set_threads(th);
            for (const auto& s : gemm_shapes(models)) {
                gemm.push_back(measure_gemm(s, th, 7));
                const auto& r = gemm.back();
                fmt::print("{:<44} {:>7} {:>6} {:>6} {:>6} {:>12.1f} {:>14.1f}\n", r.shape, r.threads, r.m, r.k, r.n,
                           r.best_gflops, r.median_gflops);
                std::fflush(stdout);
                peak[th] = std::max(peak[th], r.best_gflops);
            }
            const EigenGemm e = measure_eigen_gemm(th, 7);
            gemm.push_back(e.row);
            const auto& r = gemm.back();
            fmt::print("{:<44} {:>7} {:>6} {:>6} {:>6} {:>12.1f} {:>14.1f}   max rel. difference from the model's "
                       "GEMM {:.1e}\n",
                       r.shape, r.threads, r.m, r.k, r.n, r.best_gflops, r.median_gflops, e.max_rel_err);
            KV_CHECK(e.max_rel_err < 1e-4, "Eigen's GEMM and the model's GEMM disagree (max rel. difference {})",
                     e.max_rel_err);
            peak[th] = std::max(peak[th], r.best_gflops);
        }
        for (int th : threads)
            fmt::print("GEMM peak (best of all rows, either library), {} thread(s): {:.1f} GFLOP/s\n", th, peak[th]);
    }

    // (b, c)
    std::vector<TrainRow> train;
    if (parts.count("train")) {
        header("training");
        for (const auto& bm : models)
            for (const auto& p : plugins)
                for (int th : threads) {
                    train.push_back(measure_training(bm, p, th, steps));
                    auto& r = train.back();
                    if (peak.count(th)) r.peak_fraction = r.gflops / peak[th];
                    fmt::print(stderr, "bench: {} {} {} thread(s): {:.0f} tokens/s\n", bm.name, p, th,
                               r.tokens_per_second);
                }
        fmt::print("{:<6} {:<5} {:>7} {:>6} {:>10} {:>11} {:>10} {:>9} {:>8} {:>9} {:>11}\n", "config", "attn",
                   "threads", "shards", "params", "GFLOP/step", "step ms", "tokens/s", "GFLOP/s", "of peak",
                   "CPU ms/step");
        for (const auto& r : train)
            fmt::print("{:<6} {:<5} {:>7} {:>6} {:>10} {:>11.2f} {:>10.1f} {:>9.0f} {:>8.1f} {:>9} {:>11.1f}\n",
                       r.config, r.plugin, r.threads, r.shards, r.n_params, r.flops / 1e9, r.step_seconds * 1e3,
                       r.tokens_per_second,
                       r.gflops, r.peak_fraction > 0 ? fmt::format("{:.0f}%", 100 * r.peak_fraction) : "-",
                       r.step_cpu_seconds * 1e3);
        fmt::print("median of {} timed steps after 2 untimed; model FLOPs = 6 x matrix params x tokens + causal "
                   "attention (kvlab bench --help); shards = batch shards, one per thread (KVLAB_BATCH_SPLIT)\n\n"
                   "per-op medians, ms per step (of the first batch shard when there are several):\n",
                   steps);
        fmt::print("{:<6} {:<5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                   "config", "attn", "threads", "fwd", "bwd", "attn.f", "attn.b", "mlp.f", "mlp.b", "norm+res",
                   "head.f", "head.b", "embed", "optim", "zero");
        for (const auto& r : train)
            fmt::print("{:<6} {:<5} {:>7} {:>8.1f} {:>8.1f} {:>8.1f} {:>8.1f} {:>8.1f} {:>8.1f} {:>8.1f} {:>8.1f} "
                       "{:>8.1f} {:>8.2f} {:>8.1f} {:>8.2f}\n",
                       r.config, r.plugin, r.threads, r.fwd * 1e3, r.bwd * 1e3, r.attn_fwd * 1e3, r.attn_bwd * 1e3,
                       r.mlp_fwd * 1e3, r.mlp_bwd * 1e3, r.norm * 1e3, r.head_fwd * 1e3, r.head_bwd * 1e3,
                       r.embed * 1e3, r.optimizer * 1e3, r.zero_grad * 1e3);
    }

    // (d)
    std::vector<DecodeRow> dec;
    if (parts.count("decode")) {
        header("decode, batch 1, large model");
        const BenchModel bm = bench_model("large");
        Rng tok_rng = Rng::stream(0, 7);
        std::vector<int32_t> tokens(static_cast<size_t>(*std::max_element(contexts.begin(), contexts.end())));
        for (auto& t : tokens) t = static_cast<int32_t>(tok_rng.below(256));
        for (const auto& p : plugins) {
            Transformer<float> m(with_plugin(bm.model, p));
            m.init(0);
            const std::string impl = m.attention(0).decode_impls().front();
            const int64_t weight_bytes =
                (m.n_params() - int64_t(bm.model.vocab_size) * bm.model.d_model) * int64_t(sizeof(float));
            for (int th : threads) {
                set_threads(th);
                for (int C : contexts) {
                    const DecodeTiming t = time_decode(m, impl, C, dsteps, drepeats, tokens);
                    DecodeRow r{p, impl, th, C, dsteps, t.cache_bytes, t.tokens_per_second, t.step_seconds,
                                t.prefill_seconds};
                    r.bytes_per_token = weight_bytes + t.cache_bytes;
                    r.read_gbs = read_bandwidth(r.bytes_per_token, th);
                    r.bound_tokens_per_second = r.read_gbs * 1e9 / double(r.bytes_per_token);
                    dec.push_back(r);
                    fmt::print(stderr, "bench: decode {}/{} {} thread(s) context {}: {:.0f} tokens/s\n", p, impl, th,
                               C, t.tokens_per_second);
                }
            }
        }
        fmt::print("{:<5} {:<9} {:>7} {:>8} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9}\n", "attn", "impl",
                   "threads", "context", "cache bytes", "tokens/s", "prefill s", "MB/token", "read GB/s", "bound t/s",
                   "of bound");
        for (const auto& r : dec)
            fmt::print("{:<5} {:<9} {:>7} {:>8} {:>12} {:>10.1f} {:>10.2f} {:>9.1f} {:>9.1f} {:>9.0f} {:>8.0f}%\n",
                       r.plugin, r.impl, r.threads, r.context, r.cache_bytes, r.tokens_per_second, r.prefill_seconds,
                       r.bytes_per_token / 1e6, r.read_gbs, r.bound_tokens_per_second,
                       100 * r.tokens_per_second / r.bound_tokens_per_second);
        fmt::print("tokens/s = {} timed decode steps ending at the context / their median time over {} repeats;\n"
                   "MB/token = the weights a step multiplies by (all but the embedding table) + the cache; read GB/s "
                   "= a sequential read of that many bytes with the same threads (best of 30 passes); bound t/s = "
                   "read GB/s / MB/token: the memory bound of the step\n",
                   dsteps, drepeats);
    }

    if (!out.empty()) {
        if (!gemm.empty()) {
            Table t;
            t.attrs = common;
            t.columns = {{"shape", column(gemm, [](const GemmRow& r) { return r.shape; })},
                         {"threads", column(gemm, [](const GemmRow& r) { return int64_t{r.threads}; })},
                         {"m", column(gemm, [](const GemmRow& r) { return r.m; })},
                         {"k", column(gemm, [](const GemmRow& r) { return r.k; })},
                         {"n", column(gemm, [](const GemmRow& r) { return r.n; })},
                         {"best_gflops", column(gemm, [](const GemmRow& r) { return r.best_gflops; })},
                         {"median_gflops", column(gemm, [](const GemmRow& r) { return r.median_gflops; })}};
            write_table(out, "/bench/gemm", t);
        }
        if (!train.empty()) {
            Table t;
            t.attrs = common;
            t.attrs.push_back({"flops_formula", std::string("6 * matrix params * tokens + 3 * n_layers * n_heads * "
                                                            "2 * (dq + dv) * B * T * (T + 1) / 2")});
            t.columns = {
                {"config", column(train, [](const TrainRow& r) { return r.config; })},
                {"plugin", column(train, [](const TrainRow& r) { return r.plugin; })},
                {"threads", column(train, [](const TrainRow& r) { return int64_t{r.threads}; })},
                {"batch_shards", column(train, [](const TrainRow& r) { return int64_t{r.shards}; })},
                {"batch", column(train, [](const TrainRow& r) { return int64_t{r.B}; })},
                {"seq_len", column(train, [](const TrainRow& r) { return int64_t{r.T}; })},
                {"timed_steps", column(train, [](const TrainRow& r) { return int64_t{r.steps}; })},
                {"n_params", column(train, [](const TrainRow& r) { return r.n_params; })},
                {"flops_per_step", column(train, [](const TrainRow& r) { return r.flops; })},
                {"flops_per_step_dense", column(train, [](const TrainRow& r) { return r.flops_dense; })},
                {"step_seconds", column(train, [](const TrainRow& r) { return r.step_seconds; })},
                {"step_cpu_seconds", column(train, [](const TrainRow& r) { return r.step_cpu_seconds; })},
                {"tokens_per_second", column(train, [](const TrainRow& r) { return r.tokens_per_second; })},
                {"gflops", column(train, [](const TrainRow& r) { return r.gflops; })},
                {"fraction_of_gemm_peak", column(train, [](const TrainRow& r) { return r.peak_fraction; })},
                {"forward_seconds", column(train, [](const TrainRow& r) { return r.fwd; })},
                {"backward_seconds", column(train, [](const TrainRow& r) { return r.bwd; })},
                {"attn_forward_seconds", column(train, [](const TrainRow& r) { return r.attn_fwd; })},
                {"attn_backward_seconds", column(train, [](const TrainRow& r) { return r.attn_bwd; })},
                {"mlp_forward_seconds", column(train, [](const TrainRow& r) { return r.mlp_fwd; })},
                {"mlp_backward_seconds", column(train, [](const TrainRow& r) { return r.mlp_bwd; })},
                {"norm_residual_seconds", column(train, [](const TrainRow& r) { return r.norm; })},
                {"head_loss_forward_seconds", column(train, [](const TrainRow& r) { return r.head_fwd; })},
                {"head_loss_backward_seconds", column(train, [](const TrainRow& r) { return r.head_bwd; })},
                {"embed_seconds", column(train, [](const TrainRow& r) { return r.embed; })},
                {"optimizer_seconds", column(train, [](const TrainRow& r) { return r.optimizer; })},
                {"zero_grad_seconds", column(train, [](const TrainRow& r) { return r.zero_grad; })}};
            write_table(out, "/bench/train", t);
        }
        if (!dec.empty()) {
            Table t;
            t.attrs = common;
            t.attrs.push_back({"model", std::string("large")});
            t.attrs.push_back({"repeats", int64_t{drepeats}});
            t.columns = {{"plugin", column(dec, [](const DecodeRow& r) { return r.plugin; })},
                         {"impl", column(dec, [](const DecodeRow& r) { return r.impl; })},
                         {"threads", column(dec, [](const DecodeRow& r) { return int64_t{r.threads}; })},
                         {"context", column(dec, [](const DecodeRow& r) { return int64_t{r.context}; })},
                         {"timed_steps", column(dec, [](const DecodeRow& r) { return int64_t{r.steps}; })},
                         {"cache_bytes", column(dec, [](const DecodeRow& r) { return r.cache_bytes; })},
                         {"tokens_per_second", column(dec, [](const DecodeRow& r) { return r.tokens_per_second; })},
                         {"step_seconds", column(dec, [](const DecodeRow& r) { return r.step_seconds; })},
                         {"prefill_seconds", column(dec, [](const DecodeRow& r) { return r.prefill_seconds; })},
                         {"bytes_per_token", column(dec, [](const DecodeRow& r) { return r.bytes_per_token; })},
                         {"read_gbs", column(dec, [](const DecodeRow& r) { return r.read_gbs; })},
                         {"bound_tokens_per_second",
                          column(dec, [](const DecodeRow& r) { return r.bound_tokens_per_second; })}};
            write_table(out, "/bench/decode", t);
        }
        if (!mem.empty()) {
            Table t;
            t.attrs = common;
            t.columns = {{"config", column(mem, [](const MemoryRow& r) { return r.config; })},
                         {"plugin", column(mem, [](const MemoryRow& r) { return r.plugin; })},
                         {"threads", column(mem, [](const MemoryRow& r) { return int64_t{r.threads}; })},
                         {"batch_shards", column(mem, [](const MemoryRow& r) { return int64_t{r.shards}; })},
                         {"peak_rss_bytes", column(mem, [](const MemoryRow& r) { return r.maxrss_bytes; })},
                         {"vm_hwm_bytes", column(mem, [](const MemoryRow& r) { return r.hwm_bytes; })},
                         {"baseline_rss_bytes", column(mem, [](const MemoryRow& r) { return r.baseline_bytes; })},
                         {"param_bytes", column(mem, [](const MemoryRow& r) { return r.param_bytes; })},
                         {"activation_bytes", column(mem, [](const MemoryRow& r) { return r.activation_bytes; })},
                         {"replica_grad_bytes", column(mem, [](const MemoryRow& r) { return r.replica_grad_bytes; })},
                         {"count_bytes", column(mem, [](const MemoryRow& r) { return r.count_bytes; })},
                         {"ratio", column(mem, [](const MemoryRow& r) { return r.ratio; })},
                         {"ratio_net", column(mem, [](const MemoryRow& r) { return r.ratio_net; })}};
            write_table(out, "/bench/memory", t);
        }
        fmt::print("\nwrote {}:/bench\n", out);
    }
    return 0;
}

}  // namespace kvlab::cli
