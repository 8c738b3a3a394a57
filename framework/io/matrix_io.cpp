#include "io/matrix_io.h"

#include "core/error.h"
#include "io/h5.h"

#include <fmt/format.h>

#include <cmath>

namespace kvlab {

Mat read_matrix(const std::string& file, const std::string& dataset_path) {
    h5::File f = h5::File::open(file, h5::Mode::read_only);
    if (!f.is_dataset(dataset_path))
        throw Error(fmt::format("'{}' has no dataset '{}'", file, dataset_path));
    const h5::Dataset d = f.open_dataset(dataset_path);
    const auto shape = d.shape();
    if (shape.size() != 2)
        throw Error(fmt::format("dataset '{}' in '{}' has {} dimensions; a matrix needs 2", d.path(), file, shape.size()));
    if (shape[0] == 0 || shape[1] == 0)
        throw Error(fmt::format("dataset '{}' in '{}' is an empty [{}, {}] matrix", d.path(), file, shape[0], shape[1]));
    Mat A(shape[0], shape[1]);
    if (d.dtype() == h5::DType::f32) {
        const auto v = d.read_f32();
        std::copy(v.begin(), v.end(), A.data());
    } else {
        const auto v = d.read_as_f64();   // kvlab::Error naming the type unless floating-point
        for (size_t i = 0; i < v.size(); ++i) A.data()[i] = static_cast<float>(v[i]);
    }
    for (Eigen::Index i = 0; i < A.size(); ++i)
        if (!std::isfinite(A.data()[i]))
            throw Error(fmt::format("dataset '{}' in '{}' holds a non-finite value ({}) at row {}, column {}", d.path(), file,
                                    A.data()[i], i / A.cols(), i % A.cols()));
    return A;
}

void write_matrices(const std::string& file, const std::vector<std::pair<std::string, Mat>>& matrices,
                    const Attrs& attrs) {
    h5::File f = h5::File::open(file, h5::Mode::truncate);
    f.write_attrs(attrs);
    for (const auto& [name, M] : matrices) {
        KV_CHECK(!name.empty() && name.find('/') == std::string::npos, "matrix name '{}' is not a plain link name", name);
        f.write(name, {M.rows(), M.cols()}, std::span<const float>(M.data(), static_cast<size_t>(M.size())));
    }
    f.close();
}

}  // namespace kvlab
