// mqar: multi-query associative recall (Arora et al., Zoology, arXiv 2312.04927),
// generated in-process. Byte vocabulary: keys 1..127, values 128..255, 0 = padding.
// One sequence of seq_len + 1 tokens:
//   k_1 v_1 k_2 v_2 … k_n v_n | q_1 a_1 q_2 a_2 … q_m a_m | 0 0 …
// with n = num_kv_pairs distinct keys, values drawn independently, and m queries that
// are distinct keys of the context (in random order) each followed by its value.
// Inputs are tokens 0..T-1 and targets tokens 1..T; only the targets that follow a
// query key are scored (the answers), all others are -1. Chance accuracy is 1/128.
#include "config/experiment_config.h"
#include "core/error.h"
#include "tasks/task.h"

#include <fmt/format.h>

#include <numeric>

namespace kvlab {
namespace {

constexpr int kKeyLo = 1, kKeyCount = 127, kValueLo = 128, kValueCount = 128;

class MqarTask final : public Task {
public:
    explicit MqarTask(const DataConfig& c) : T_(c.seq_len), n_(c.num_kv_pairs) {
        if (n_ < 1 || n_ > kKeyCount)
            throw ConfigError("data.num_kv_pairs", fmt::format("must be in 1..{} (distinct keys 1..127), got {}", kKeyCount, n_));
        const int room = (T_ + 1 - 2 * n_) / 2;   // query/answer pairs that fit after the context
        if (room < 1)
            throw ConfigError("data.seq_len", fmt::format("seq_len {} leaves no room for a query after {} key-value pairs "
                                                          "(need seq_len >= {})", T_, n_, 2 * n_ + 1));
        m_ = c.num_queries > 0 ? c.num_queries : std::min(n_, room);
        if (m_ > n_ || m_ > room)
            throw ConfigError("data.num_queries", fmt::format("must be at most num_kv_pairs ({}) and fit in seq_len "
                                                              "(at most {} here), got {}", n_, std::min(n_, room), m_));
    }

    std::string_view name() const override { return "mqar"; }
    bool scores_answers() const override { return true; }

    void train_batch(Rng& rng, int B, Batch& out) const override { fill(rng, B, out); }
    void val_batch(int i, int B, Batch& out) const override {
        Rng rng = Rng::stream(0x3a9, static_cast<uint64_t>(i));
        fill(rng, B, out);
    }

private:
    void fill(Rng& rng, int B, Batch& out) const {
        out.B = B;
        out.T = T_;
        out.inputs.assign(static_cast<size_t>(B) * T_, 0);
        out.targets.assign(static_cast<size_t>(B) * T_, -1);
        std::vector<int32_t> seq(T_ + 1), keys(kKeyCount), values(n_), order(n_);
        for (int b = 0; b < B; ++b) {
            std::fill(seq.begin(), seq.end(), 0);
            // n distinct keys: a partial Fisher-Yates shuffle of 1..127
            std::iota(keys.begin(), keys.end(), kKeyLo);
            for (int i = 0; i < n_; ++i) std::swap(keys[i], keys[i + rng.below(kKeyCount - i)]);
            for (int i = 0; i < n_; ++i) {
                values[i] = kValueLo + static_cast<int32_t>(rng.below(kValueCount));
                seq[2 * i] = keys[i];
                seq[2 * i + 1] = values[i];
            }
            std::iota(order.begin(), order.end(), 0);
            for (int i = 0; i < m_; ++i) std::swap(order[i], order[i + rng.below(n_ - i)]);
            int32_t* in = &out.inputs[static_cast<size_t>(b) * T_];
            int32_t* tg = &out.targets[static_cast<size_t>(b) * T_];
            for (int j = 0; j < m_; ++j) {
                const int p = 2 * n_ + 2 * j;   // query key position
                seq[p] = keys[order[j]];
                seq[p + 1] = values[order[j]];
                tg[p] = values[order[j]];        // the answer follows the query key
            }
            for (int t = 0; t < T_; ++t) in[t] = seq[t];
        }
    }

    int T_, n_, m_ = 0;
};

}  // namespace

std::unique_ptr<Task> make_mqar_task(const DataConfig& c) { return std::make_unique<MqarTask>(c); }

}  // namespace kvlab
