// Deterministic random numbers. std::normal_distribution differs between standard
// libraries, so the normal sampler is written out (Box-Muller on mt19937_64) to make
// a seed mean the same weights and batches everywhere.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>

namespace kvlab {

class Rng {
public:
    explicit Rng(uint64_t seed) : gen_(seed) {}

    // Uniform in [0, 1) with 53 random bits.
    double uniform() { return static_cast<double>(gen_() >> 11) * (1.0 / 9007199254740992.0); }

    // Uniform integer in [0, n).
    uint64_t below(uint64_t n) {
        // Rejection sampling: unbiased and library-independent.
        const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
        uint64_t r;
        do r = gen_();
        while (r >= limit);
        return r % n;
    }

    // Standard normal (Box-Muller, both values used).
    double normal() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        double u1;
        do u1 = uniform();
        while (u1 <= 0.0);
        const double u2 = uniform();
        const double r = std::sqrt(-2.0 * std::log(u1));
        spare_ = r * std::sin(2.0 * M_PI * u2);
        has_spare_ = true;
        return r * std::cos(2.0 * M_PI * u2);
    }

    // A child generator for an independent stream (e.g. data vs. init), derived
    // deterministically from this one's seed and a stream id.
    static Rng stream(uint64_t seed, uint64_t id) {
        std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32),
                          static_cast<uint32_t>(id), static_cast<uint32_t>(id >> 32)};
        std::mt19937_64 g(seq);
        return Rng(g());
    }

    // The whole state as text (the standard's portable textual form of mt19937_64, then the
    // Box-Muller spare as its bit pattern), so a training checkpoint can restore the data
    // stream exactly. set_state returns false, leaving the generator as it was, on text
    // that state() did not write.
    std::string state() const {
        std::ostringstream s;
        s << gen_ << ' ' << int(has_spare_) << ' ' << std::bit_cast<uint64_t>(spare_);
        return s.str();
    }
    bool set_state(const std::string& text) {
        std::istringstream s(text);
        std::mt19937_64 g;
        int has = 0;
        uint64_t bits = 0;
        if (!(s >> g >> has >> bits) || (has != 0 && has != 1)) return false;
        s >> std::ws;
        if (!s.eof()) return false;
        gen_ = g;
        has_spare_ = has == 1;
        spare_ = std::bit_cast<double>(bits);
        return true;
    }

private:
    std::mt19937_64 gen_;
    bool has_spare_ = false;
    double spare_ = 0.0;
};

}  // namespace kvlab
