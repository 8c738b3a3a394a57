// Tests for `kvlab bench` (experiments/cmd_bench.cpp) through the built binary: the tables
// it writes, their FLOP and byte counts against model.md's shapes worked out here by hand,
// and the relations between its columns. No speed is asserted (machines are noisy).
#include "io/results.h"
#include "support/process.h"
#include "support/table.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

using namespace kvlab;
using namespace kvlab::test;

namespace {

// ASan's shadow memory and quarantine inflate the resident set, so the memory bound is
// only checked in uninstrumented builds.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

// The small configuration of `kvlab bench --help`, from model.md's parameter shapes.
constexpr double D = 128, L = 2, H = 4, dh = 32, F = 344, V = 256, B = 32, T = 128;
constexpr double dc = 64, dR = 16, dcp = 96;   // mla
constexpr double kMlpMatrices = 3 * D * F;     // w_gate, w_up [F, D], w_down [D, F]

double attention_matrices(const std::string& plugin) {
    if (plugin == "mha") return 4 * D * H * dh;   // wq, wk, wv [H·dh, D], wo [D, H·dh]
    // mla: w_dq [dcp, D], w_uq [H·dh, dcp], w_qr [H·dR, dcp], w_dkv [dc, D], w_kr [dR, D],
    // w_uk, w_uv [H·dh, dc], wo [D, H·dh]
    return dcp * D + H * dh * dcp + H * dR * dcp + dc * D + dR * D + 2 * H * dh * dc + D * H * dh;
}
double attention_gains(const std::string& plugin) { return plugin == "mla" ? dcp + dc : 0; }

// 6 × (every matrix multiplied by, lm_head included, the embedding table not) × tokens
// + 3 × L × H × 2·(dq + dv) × B × T(T+1)/2 causal (query, key) pairs.
double expected_flops(const std::string& plugin) {
    const double matrices = L * (attention_matrices(plugin) + kMlpMatrices) + V * D;
    const double dq = plugin == "mla" ? dh + dR : dh, dv = dh;
    return 6 * matrices * B * T + 3 * L * H * 2 * (dq + dv) * B * T * (T + 1) / 2;
}
double expected_params(const std::string& plugin) {
    return L * (attention_matrices(plugin) + attention_gains(plugin) + kMlpMatrices + 2 * D) + 2 * V * D + D;
}

}  // namespace

TEST_CASE("kvlab bench writes its four tables, with the model FLOPs and cache bytes of the formulas") {
    TempDir tmp;
    const std::string out = tmp / "bench.h5";
    const auto r = run_kvlab(fmt::format("bench --config small --plugins mha,mla --threads 1 --steps 1 "
                                         "--decode-contexts 8,16 --decode-steps 4 --decode-repeats 1 --out {}",
                                         out));
    INFO(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("GEMM peak (best of all rows, either library), 1 thread(s)") != std::string::npos);

    // GEMM: the square shape plus the small model's, at 1 thread, then Eigen's own GEMM.
    const Table g = read_table(out, "/bench/gemm");
    const auto& shape = column<std::string>(g, "shape");
    const auto& gm = column<int64_t>(g, "m");
    const auto& gk = column<int64_t>(g, "k");
    const auto& gn = column<int64_t>(g, "n");
    const auto& best = column<double>(g, "best_gflops");
    const auto& med = column<double>(g, "median_gflops");
    REQUIRE(shape.size() >= 2);
    CHECK(shape[0] == "square 1024^3");
    double peak = 0;
    for (size_t i = 0; i < shape.size(); ++i) {
        CAPTURE(shape[i]);
        CHECK(column<int64_t>(g, "threads")[i] == 1);
        CHECK(best[i] >= med[i]);
        CHECK(med[i] > 0);
        if (shape[i] == "small: x w_up^T [N,D][F,D]^T") {
            CHECK(gm[i] == B * T);
            CHECK(gk[i] == D);
            CHECK(gn[i] == F);
        }
        peak = std::max(peak, best[i]);
    }
    CHECK(shape.back() == "Eigen GEMM 1024^3");

    // Training: one row per plugin; FLOPs and parameters as worked out above.
    const Table t = read_table(out, "/bench/train");
    const auto& plugin = column<std::string>(t, "plugin");
    REQUIRE(plugin.size() == 2);
    const auto& flops = column<double>(t, "flops_per_step");
    const auto& secs = column<double>(t, "step_seconds");
    const auto& tps = column<double>(t, "tokens_per_second");
    const auto& gflops = column<double>(t, "gflops");
    const auto& frac = column<double>(t, "fraction_of_gemm_peak");
    for (size_t i = 0; i < plugin.size(); ++i) {
        CAPTURE(plugin[i]);
        CHECK(column<std::string>(t, "config")[i] == "small");
        CHECK(column<int64_t>(t, "batch")[i] == B);
        CHECK(column<int64_t>(t, "seq_len")[i] == T);
        CHECK(double(column<int64_t>(t, "n_params")[i]) == expected_params(plugin[i]));
        CHECK(flops[i] == doctest::Approx(expected_flops(plugin[i])).epsilon(1e-12));
        CHECK(column<double>(t, "flops_per_step_dense")[i] > flops[i]);
        REQUIRE(secs[i] > 0);
        CHECK(tps[i] == doctest::Approx(B * T / secs[i]).epsilon(1e-9));
        CHECK(gflops[i] == doctest::Approx(flops[i] / secs[i] / 1e9).epsilon(1e-9));
        CHECK(frac[i] == doctest::Approx(gflops[i] / peak).epsilon(1e-9));
        // the per-op times are parts of the one timed step
        const double fwd = column<double>(t, "forward_seconds")[i], bwd = column<double>(t, "backward_seconds")[i];
        CHECK(fwd > 0);
        CHECK(bwd > 0);
        CHECK(fwd + bwd <= secs[i]);
        CHECK(column<double>(t, "attn_forward_seconds")[i] <= fwd);
        CHECK(column<double>(t, "mlp_backward_seconds")[i] <= bwd);
    }
    CHECK(plugin[0] == "mha");
    CHECK(plugin[1] == "mla");

    // Decode (the large model): cache bytes = context × 4 layers × elements per token × 4.
    const Table d = read_table(out, "/bench/decode");
    const auto& dplugin = column<std::string>(d, "plugin");
    const auto& ctx = column<int64_t>(d, "context");
    const auto& cache = column<int64_t>(d, "cache_bytes");
    REQUIRE(dplugin.size() == 4);
    for (size_t i = 0; i < dplugin.size(); ++i) {
        CAPTURE(dplugin[i]);
        const int64_t per_token = dplugin[i] == "mha" ? 2 * 8 * 32 : 128 + 16;   // 2·H·dh | dc + dR
        CHECK(cache[i] == ctx[i] * 4 * per_token * 4);
        CHECK(column<double>(d, "tokens_per_second")[i] > 0);
        // the memory bound: weights (all but the 256 x 256 embedding) + cache, over the read bandwidth
        const int64_t bytes = column<int64_t>(d, "bytes_per_token")[i];
        if (dplugin[i] == "mha") CHECK(bytes == (3280128 - 256 * 256) * 4 + cache[i]);   // large mha: 3,280,128 params
        CHECK(bytes > cache[i]);
        CHECK(column<double>(d, "read_gbs")[i] > 0);
        CHECK(column<double>(d, "bound_tokens_per_second")[i] ==
              doctest::Approx(column<double>(d, "read_gbs")[i] * 1e9 / double(bytes)));
    }
    CHECK(column<std::string>(d, "impl")[2] == "absorbed");

    // Memory: what the child training process held, against the count.
    const Table m = read_table(out, "/bench/memory");
    const auto& mplugin = column<std::string>(m, "plugin");
    REQUIRE(mplugin.size() == 2);
    for (size_t i = 0; i < mplugin.size(); ++i) {
        CAPTURE(mplugin[i]);
        const int64_t params = column<int64_t>(m, "param_bytes")[i], act = column<int64_t>(m, "activation_bytes")[i];
        const int64_t count = column<int64_t>(m, "count_bytes")[i], peak_rss = column<int64_t>(m, "peak_rss_bytes")[i];
        CHECK(double(params) == 4 * expected_params(mplugin[i]));
        CHECK(act > 0);
        const int64_t shards = column<int64_t>(m, "batch_shards")[i];
        CHECK(shards == 1);   // --threads 1
        CHECK(column<int64_t>(m, "replica_grad_bytes")[i] == (shards - 1) * params);
        CHECK(count == 4 * params + act + (shards - 1) * params);
        CHECK(column<double>(m, "ratio")[i] == doctest::Approx(double(peak_rss) / double(count)));
        // everything counted is allocated and written by a training step, so it is resident
        CHECK(peak_rss >= count);
        if (!kAsan) CHECK(column<double>(m, "ratio_net")[i] <= 1.3);
    }
}

TEST_CASE("kvlab bench rejects bad options before measuring anything") {
    TempDir tmp;
    struct Case {
        std::string args, message;
    };
    const std::vector<Case> cases = {
        {"--config medium", "--config must be small, large or all"},
        {"--parts gemm,speed", "--parts: unknown part \"speed\""},
        {"--plugins nope", "--plugins"},
        {"--decode-contexts 8 --decode-steps 16", "--decode-contexts: 8 is below --decode-steps 16"},
        {fmt::format("--out {}/missing/b.h5", tmp.dir.string()), "does not exist"},
        {"--steps 0", "--steps"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.args);
        const auto r = run_kvlab("bench " + c.args);
        INFO(r.output);
        CHECK(r.status == 2);
        CHECK(r.output.find(c.message) != std::string::npos);
        CHECK(r.output.find("GEMM peak") == std::string::npos);
    }
}
