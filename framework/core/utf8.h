// UTF-8 validation for text kvlab reads (configs, --set values, text data files).
#pragma once

#include <cstdint>
#include <string_view>

namespace kvlab {

// The offset of the first byte that is not part of well-formed UTF-8 (a stray
// continuation byte, an overlong or out-of-range lead byte, a truncated sequence), or -1.
inline int64_t first_invalid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<uint8_t>(s[i]);
        size_t n;   // continuation bytes
        if (c < 0x80)
            n = 0;
        else if (c >= 0xC2 && c <= 0xDF)
            n = 1;
        else if ((c >> 4) == 0xE)
            n = 2;
        else if (c >= 0xF0 && c <= 0xF4)
            n = 3;
        else
            return static_cast<int64_t>(i);
        if (n > 0 && i + n >= s.size()) return static_cast<int64_t>(i);   // truncated sequence
        for (size_t k = 1; k <= n; ++k)
            if ((static_cast<uint8_t>(s[i + k]) & 0xC0) != 0x80) return static_cast<int64_t>(i);
        i += n + 1;
    }
    return -1;
}

}  // namespace kvlab
