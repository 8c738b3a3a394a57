// Test helper for io/results tables (kvlab bench, lowrank-study, decode-bench output): one
// column by name, with the expected element type; a missing column or another type fails
// the test.
#pragma once

#include "io/results.h"

#include <doctest/doctest.h>

#include <string>
#include <vector>

namespace kvlab::test {

template <class T>
const std::vector<T>& column(const Table& t, const std::string& name) {
    for (const auto& [k, v] : t.columns)
        if (k == name) {
            REQUIRE_MESSAGE(std::holds_alternative<std::vector<T>>(v), "column " << name << " has another type");
            return std::get<std::vector<T>>(v);
        }
    FAIL("no column " << name);
    static const std::vector<T> none;
    return none;
}

}  // namespace kvlab::test
