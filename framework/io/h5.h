// Thin RAII layer over the HDF5 C API (style.md §7). The only place in the tree that
// calls H5* functions directly, together with h5.cpp.
//
// * File, Group and Dataset own one hid_t each and close it in their destructor; they
//   are move-only. Each remembers its file name and absolute object path so that every
//   failing call throws kvlab::Error("<what> '<path>' in '<file>' (HDF5: <reason>)").
// * HDF5's automatic error-stack printing is switched off on first use; the innermost
//   message of the stack is folded into our exception instead.
// * On-disk types are fixed little-endian standard types (F32LE, I32LE, F64LE, I64LE),
//   so files are the same on every host. Strings are scalar, variable-length, UTF-8:
//   h5py returns those as Python str (fixed-length strings would come back as bytes).
// * Groups we create track link and attribute creation order, so listing a group (or
//   its attributes) returns names in the order they were written; groups made by other
//   tools are listed by name. (Tracking needs HDF5 >= 1.8 to read; h5py follows it too.)
// * Files are written with the library's default (earliest) format bounds. Such files
//   carry no "open for writing" flag in the superblock, so a process killed after a
//   flush leaves a file that h5py and h5dump open without h5clear.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace kvlab::h5 {

// An attribute value; the same type as kvlab::AttrValue in results.h.
using Value = std::variant<int64_t, double, std::string>;
using Values = std::vector<std::pair<std::string, Value>>;

enum class Mode {
    read_only,       // must exist and be HDF5
    read_write,      // must exist and be HDF5
    create_or_open,  // opened read-write if it exists, else created
    truncate,        // created, replacing any existing file
};

// Element types we store. Reading checks the stored class and size against these.
enum class DType { f32, f64, i32, i64 };

// Owner of one hid_t plus its context (file name, object path) for messages.
class Object {
public:
    Object() = default;
    Object(const Object&) = delete;
    Object& operator=(const Object&) = delete;
    Object(Object&& o) noexcept;
    Object& operator=(Object&& o) noexcept;
    ~Object();

    bool valid() const { return id_ >= 0; }
    hid_t id() const { return id_; }
    const std::string& file() const { return file_; }
    const std::string& path() const { return path_; }  // absolute, "/" for the root

    // Attributes (scalar). write_attr replaces an attribute of the same name.
    bool has_attr(const std::string& name) const;
    void write_attr(const std::string& name, const Value& v);
    void write_attrs(const Values& vs);
    Value read_attr(const std::string& name) const;  // kvlab::Error if missing or unsupported type
    // Every attribute whose type is a scalar (or one-element) integer, float or string;
    // others (h5py bools, arrays) are skipped since our Value cannot hold them.
    Values read_attrs() const;
    void delete_attr(const std::string& name);

    // Adopts an open id that `close` will release.
    using Closer = herr_t (*)(hid_t);
    Object(hid_t id, Closer close, std::string file, std::string path)
        : id_(id), close_(close), file_(std::move(file)), path_(std::move(path)) {}

protected:
    // Closes now; throws on failure (the destructor closes silently instead).
    void close_checked();
    // "<path>/<name>" for messages and for the objects we open.
    std::string child_path(const std::string& name) const;

private:
    void reset() noexcept;
    hid_t id_ = -1;
    Closer close_ = nullptr;
    std::string file_, path_;
};

class Dataset;
class Group;

// A file or a group: something that holds links.
class Location : public Object {
public:
    using Object::Object;

    // Relative paths ("runs/r0/train"); a leading "/" is taken from the file root.
    bool exists(const std::string& path) const;  // every component along the way exists
    Group open_group(const std::string& path) const;
    Group create_group(const std::string& path);   // creates intermediate groups; error if it exists
    Group require_group(const std::string& path);  // opens, or creates with intermediates
    void delete_link(const std::string& path);     // space is not reclaimed (h5repack does that)
    bool is_group(const std::string& path) const;
    bool is_dataset(const std::string& path) const;
    // Names of the direct children, in creation order when tracked, else by name.
    std::vector<std::string> list() const;

    Dataset open_dataset(const std::string& path) const;
    // Contiguous N-d datasets; an empty shape makes a scalar. data.size() must equal
    // the product of shape.
    Dataset write(const std::string& name, const std::vector<int64_t>& shape, std::span<const float> data);
    Dataset write(const std::string& name, const std::vector<int64_t>& shape, std::span<const int32_t> data);
    Dataset write_scalar(const std::string& name, float v);
    // An empty 1-D dataset of unlimited length (chunked, `chunk_rows` rows per chunk)
    // to be grown with Dataset::append.
    Dataset create_series(const std::string& name, DType type, int64_t chunk_rows = 1024);
};

class Group : public Location {
public:
    Group() = default;
    Group(hid_t id, std::string file, std::string path) : Location(id, H5Gclose, std::move(file), std::move(path)) {}
};

class File : public Location {
public:
    File() = default;
    // A missing file (read modes) or a missing parent directory (create modes) is a
    // kvlab::Error naming it, as is a file that is not HDF5.
    static File open(const std::string& path, Mode mode);
    // A file held in memory (HDF5's core driver, nothing written to disk): opened read-write
    // from `image`, the bytes of an HDF5 file, or created empty when `image` is empty.
    // `name` is for messages and must not name an existing file (HDF5 refuses to open an
    // image under such a name). image() returns the bytes as they stand.
    static File open_image(const std::string& name, const std::vector<char>& image);
    std::vector<char> image();
    void flush();
    void close() { close_checked(); }

private:
    File(hid_t id, std::string file) : Location(id, H5Fclose, std::move(file), "/") {}
};

class Dataset : public Object {
public:
    Dataset() = default;
    Dataset(hid_t id, std::string file, std::string path) : Object(id, H5Dclose, std::move(file), std::move(path)) {}

    std::vector<int64_t> shape() const;  // {} for a scalar
    int64_t size() const;                // number of elements
    // The stored element type, or a kvlab::Error naming it when it is none of ours.
    DType dtype() const;

    // Strict reads: the stored type must be exactly float32 / int32.
    std::vector<float> read_f32() const;
    std::vector<int32_t> read_i32() const;
    // Lenient reads: any integer (resp. floating) type, converted by HDF5.
    std::vector<int64_t> read_as_i64() const;
    std::vector<double> read_as_f64() const;

    // Grows a 1-D series by rows.size() and writes them at the end; HDF5 converts the
    // memory type to the stored one.
    void append(std::span<const float> rows);
    void append(std::span<const double> rows);
    void append(std::span<const int32_t> rows);
    void append(std::span<const int64_t> rows);

private:
    void append_raw(hid_t mem_type, const void* rows, int64_t n);
    void read_raw(hid_t mem_type, void* out) const;
    size_t readable_count() const;
};

// Name of a DType for messages ("float32", ...).
const char* dtype_name(DType t);

}  // namespace kvlab::h5
