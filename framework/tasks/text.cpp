// text: byte-level language modelling of a UTF-8 file. The first 1 − val_fraction of
// the bytes train, the rest validate. A training sample is a random window of
// seq_len + 1 bytes (inputs = window[0:T], targets = window[1:T+1]); the validation
// batches are windows at positions drawn from a fixed stream, identical for every run.
#include "config/experiment_config.h"
#include "core/error.h"
#include "core/utf8.h"
#include "tasks/task.h"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iterator>

namespace kvlab {
namespace {

class TextTask final : public Task {
public:
    explicit TextTask(const DataConfig& c) : T_(c.seq_len) {
        const std::string& path = c.resolved_path.empty() ? c.path : c.resolved_path;
        if (path.empty()) throw ConfigError("data.path", "the text task needs data.path (a UTF-8 text file)");
        std::error_code ec;
        if (std::filesystem::is_directory(path, ec))
            throw ConfigError("data.path", fmt::format("{} is a directory, not a text file", path));
        std::ifstream in(path, std::ios::binary);
        if (!in) throw ConfigError("data.path", fmt::format("cannot open {}", path));
        bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        if (bytes_.empty()) throw ConfigError("data.path", fmt::format("{} is empty", path));
        if (auto bad = first_invalid_utf8({reinterpret_cast<const char*>(bytes_.data()), bytes_.size()}); bad >= 0)
            throw ConfigError("data.path", fmt::format("{} is not UTF-8 text (invalid byte 0x{:02x} at offset {})", path,
                                                       bytes_[bad], bad));
        split_ = static_cast<int64_t>(static_cast<double>(bytes_.size()) * (1.0 - c.val_fraction));
        const int64_t need = T_ + 1;
        if (split_ < need || static_cast<int64_t>(bytes_.size()) - split_ < need)
            throw ConfigError("data.path",
                              fmt::format("{} has {} bytes: too short for seq_len {} with val_fraction {} (each split "
                                          "needs at least seq_len + 1 = {} bytes)",
                                          path, bytes_.size(), T_, c.val_fraction, need));
    }

    std::string_view name() const override { return "text"; }
    bool scores_answers() const override { return false; }

    void train_batch(Rng& rng, int B, Batch& out) const override {
        fill(rng, B, 0, split_, out);
    }
    void val_batch(int i, int B, Batch& out) const override {
        Rng rng = Rng::stream(0x7e57, static_cast<uint64_t>(i));
        fill(rng, B, split_, static_cast<int64_t>(bytes_.size()), out);
    }

private:
    void fill(Rng& rng, int B, int64_t lo, int64_t hi, Batch& out) const {
        out.B = B;
        out.T = T_;
        out.inputs.resize(static_cast<size_t>(B) * T_);
        out.targets.resize(static_cast<size_t>(B) * T_);
        const uint64_t span = static_cast<uint64_t>(hi - lo - T_);   // windows start in [lo, hi - T - 1]
        for (int b = 0; b < B; ++b) {
            const int64_t s = lo + static_cast<int64_t>(rng.below(span));
            for (int t = 0; t < T_; ++t) {
                out.inputs[static_cast<size_t>(b) * T_ + t] = bytes_[s + t];
                out.targets[static_cast<size_t>(b) * T_ + t] = bytes_[s + t + 1];
            }
        }
    }

    int T_;
    std::vector<uint8_t> bytes_;
    int64_t split_ = 0;
};

}  // namespace

std::unique_ptr<Task> make_text_task(const DataConfig& c) { return std::make_unique<TextTask>(c); }

}  // namespace kvlab
