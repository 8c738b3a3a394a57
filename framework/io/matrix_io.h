// Single 2-D float matrices in HDF5, for tools that exchange plain matrices (kvlab approx:
// read one dataset by path, write the factors). Not part of model.md or config.md.
#pragma once

#include "core/tensor.h"
#include "io/results.h"

#include <string>
#include <utility>
#include <vector>

namespace kvlab {

// The 2-D dataset `dataset_path` of `file` ("/weights/A" or "A"), as float32 row-major.
// Stored float32 is read exactly; float64 is rounded to float32. kvlab::Error for a missing
// file or dataset, a dataset that is not 2-D, or a non-floating element type.
Mat read_matrix(const std::string& file, const std::string& dataset_path);

// Creates (replaces) `file` with one float32 dataset per matrix at the root, in the order
// given, and `attrs` on the root group.
void write_matrices(const std::string& file, const std::vector<std::pair<std::string, Mat>>& matrices,
                    const Attrs& attrs = {});

}  // namespace kvlab
