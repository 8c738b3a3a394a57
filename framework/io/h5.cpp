// RAII over the HDF5 C API; see h5.h for the conventions.
#include "io/h5.h"

#include <fmt/format.h>

#include <limits>

#include <cstdio>
#include <filesystem>
#include <optional>

#include "core/error.h"

namespace kvlab::h5 {
namespace {

namespace fs = std::filesystem;

// Called before the first HDF5 call of any entry point that can come first (File::open):
// the library's own stack dumps to stderr would otherwise precede every one of our
// messages, including the ones for errors we expect and handle (a missing attribute).
void init() {
    static const bool done = [] {
        H5open();
        H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
        return true;
    }();
    (void)done;
}

// The innermost (most specific) description on HDF5's error stack, e.g. "file
// signature not found" under "unable to open file"; clears the stack.
std::string hdf5_reason() {
    std::string out;
    auto walk = [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
        if (e->desc && *e->desc) *static_cast<std::string*>(data) = e->desc;
        return 0;
    };
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk, &out);
    H5Eclear2(H5E_DEFAULT);
    return out;
}

[[noreturn]] void fail(const std::string& file, const std::string& path, std::string_view what) {
    std::string reason = hdf5_reason();
    std::string hint;
    // HDF5 1.10 locks files it opens; the usual cause is a run still writing to it.
    // ("unable to lock file, errno = 11, ..."; not "sblock->base_addr" of a truncated file.)
    if (reason.find("unable to lock") != std::string::npos)
        hint = "; another process (a running kvlab job?) may have it open for writing";
    // File-level failures name just the file: "cannot open for reading 'x.h5' (...)".
    std::string where = path == "/" ? fmt::format("'{}'", file) : fmt::format("'{}' in '{}'", path, file);
    throw Error(fmt::format("{} {}{}{}", what, where, reason.empty() ? "" : fmt::format(" (HDF5: {})", reason), hint));
}

template <class T>
T check(T r, const std::string& file, const std::string& path, std::string_view what) {
    if (r < 0) fail(file, path, what);
    return r;
}

// A temporary id (dataspace, datatype, property list, attribute) closed on scope exit.
struct Tmp {
    hid_t id;
    herr_t (*close)(hid_t);
    Tmp(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
    Tmp(const Tmp&) = delete;
    Tmp& operator=(const Tmp&) = delete;
    ~Tmp() {
        if (id >= 0) close(id);
    }
};

// Variable-length UTF-8 string type: what h5py writes for str and reads back as str.
hid_t make_vlen_string_type() {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    if (H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

// Property list for the groups and files we create: remember link and attribute
// creation order, so listings come back in the order they were written.
void track_order(hid_t plist, const std::string& file, const std::string& path) {
    unsigned flags = H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED;
    check(H5Pset_link_creation_order(plist, flags), file, path, "cannot set link order for");
    check(H5Pset_attr_creation_order(plist, flags), file, path, "cannot set attribute order for");
}

// Splits "a/b/c" into its prefixes "a", "a/b", "a/b/c" (keeping a leading "/").
std::vector<std::string> prefixes(const std::string& path) {
    std::vector<std::string> out;
    std::string cur = path.starts_with('/') ? "/" : "";
    size_t i = path.starts_with('/') ? 1 : 0;
    while (i <= path.size()) {
        size_t j = path.find('/', i);
        if (j == std::string::npos) j = path.size();
        if (j > i) {
            if (!cur.empty() && cur.back() != '/') cur += '/';
            cur += path.substr(i, j - i);
            out.push_back(cur);
        }
        i = j + 1;
    }
    return out;
}

hid_t file_type_of(DType t) {
    switch (t) {
        case DType::f32: return H5T_IEEE_F32LE;
        case DType::f64: return H5T_IEEE_F64LE;
        case DType::i32: return H5T_STD_I32LE;
        case DType::i64: return H5T_STD_I64LE;
    }
    return -1;
}

// "float32", "uint8", "string", ... for messages about a stored type.
std::string describe_type(hid_t type) {
    H5T_class_t cls = H5Tget_class(type);
    size_t bits = H5Tget_size(type) * 8;
    switch (cls) {
        case H5T_INTEGER: return fmt::format("{}int{}", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bits);
        case H5T_FLOAT: return fmt::format("float{}", bits);
        case H5T_STRING: return "string";
        case H5T_COMPOUND: return "compound";
        case H5T_ENUM: return "enum";
        default: return "an unsupported type";
    }
}

// Reads a scalar (or one-element) attribute; nullopt when its type is none of ours.
std::optional<Value> read_attr_id(hid_t attr, const std::string& file, const std::string& where) {
    Tmp space(check(H5Aget_space(attr), file, where, "cannot read the shape of attribute"), H5Sclose);
    if (H5Sget_simple_extent_npoints(space.id) != 1) return std::nullopt;
    Tmp type(check(H5Aget_type(attr), file, where, "cannot read the type of attribute"), H5Tclose);
    switch (H5Tget_class(type.id)) {
        case H5T_INTEGER: {
            int64_t v = 0;
            check(H5Aread(attr, H5T_NATIVE_INT64, &v), file, where, "cannot read attribute");
            return Value{v};
        }
        case H5T_FLOAT: {
            double v = 0;
            check(H5Aread(attr, H5T_NATIVE_DOUBLE, &v), file, where, "cannot read attribute");
            return Value{v};
        }
        case H5T_STRING: {
            if (H5Tis_variable_str(type.id) > 0) {
                // Memory type: variable-length with the stored character set, so HDF5
                // does no conversion; the library mallocs the string, we free it.
                Tmp mem(make_vlen_string_type(), H5Tclose);
                check(mem.id, file, where, "cannot make a string type for");
                H5Tset_cset(mem.id, H5Tget_cset(type.id));
                char* p = nullptr;
                check(H5Aread(attr, mem.id, &p), file, where, "cannot read attribute");
                std::string s = p ? p : "";
                H5free_memory(p);
                return Value{std::move(s)};
            }
            // Fixed-length: read the raw bytes, then drop the padding.
            std::string s(H5Tget_size(type.id), '\0');
            check(H5Aread(attr, type.id, s.data()), file, where, "cannot read attribute");
            if (size_t z = s.find('\0'); z != std::string::npos) s.resize(z);
            if (H5Tget_strpad(type.id) == H5T_STR_SPACEPAD)
                while (!s.empty() && s.back() == ' ') s.pop_back();
            return Value{std::move(s)};
        }
        default: return std::nullopt;
    }
}

}  // namespace

const char* dtype_name(DType t) {
    switch (t) {
        case DType::f32: return "float32";
        case DType::f64: return "float64";
        case DType::i32: return "int32";
        case DType::i64: return "int64";
    }
    return "?";
}

// ---------------------------------------------------------------- Object

Object::Object(Object&& o) noexcept
    : id_(std::exchange(o.id_, -1)), close_(o.close_), file_(std::move(o.file_)), path_(std::move(o.path_)) {}

Object& Object::operator=(Object&& o) noexcept {
    if (this != &o) {
        reset();
        id_ = std::exchange(o.id_, -1);
        close_ = o.close_;
        file_ = std::move(o.file_);
        path_ = std::move(o.path_);
    }
    return *this;
}

Object::~Object() { reset(); }

void Object::reset() noexcept {
    if (id_ >= 0 && close_) {
        // A destructor cannot throw; a failed close of a file may lose data, so say so.
        if (close_(id_) < 0)
            fmt::print(stderr, "warning: HDF5 could not close '{}' in '{}': {}\n", path_, file_, hdf5_reason());
    }
    id_ = -1;
}

void Object::close_checked() {
    if (id_ < 0) return;
    herr_t r = close_(id_);
    id_ = -1;
    check(r, file_, path_, "cannot close");
}

std::string Object::child_path(const std::string& name) const {
    if (name.starts_with('/')) return name;
    return path_ == "/" ? "/" + name : path_ + "/" + name;
}

bool Object::has_attr(const std::string& name) const {
    KV_CHECK(valid(), "attribute '{}' on a closed HDF5 object", name);
    return check(H5Aexists(id_, name.c_str()), file_, path_, fmt::format("cannot look up attribute '{}' on", name)) > 0;
}

void Object::write_attr(const std::string& name, const Value& v) {
    KV_CHECK(valid() && !name.empty(), "attribute '{}' on a closed HDF5 object", name);
    const std::string what = fmt::format("cannot write attribute '{}' on", name);
    // File and memory type of the value, and a pointer to what H5Awrite reads.
    Tmp string_type(std::holds_alternative<std::string>(v) ? make_vlen_string_type() : H5I_INVALID_HID, H5Tclose);
    hid_t ftype = -1, mtype = -1;
    const void* buf = nullptr;
    const char* str = nullptr;
    if (const auto* i = std::get_if<int64_t>(&v)) {
        ftype = H5T_STD_I64LE, mtype = H5T_NATIVE_INT64, buf = i;
    } else if (const auto* d = std::get_if<double>(&v)) {
        ftype = H5T_IEEE_F64LE, mtype = H5T_NATIVE_DOUBLE, buf = d;
    } else {
        ftype = mtype = check(string_type.id, file_, path_, what);
        str = std::get<std::string>(v).c_str();
        buf = &str;
    }
    if (has_attr(name)) {
        // Same type and scalar: write in place, which keeps the attribute's position in
        // creation order (status stays where begin_run put it). Otherwise replace it.
        {
            Tmp attr(check(H5Aopen(id_, name.c_str(), H5P_DEFAULT), file_, path_, what), H5Aclose);
            Tmp type(check(H5Aget_type(attr.id), file_, path_, what), H5Tclose);
            Tmp space(check(H5Aget_space(attr.id), file_, path_, what), H5Sclose);
            if (H5Tequal(type.id, ftype) > 0 && H5Sget_simple_extent_type(space.id) == H5S_SCALAR) {
                check(H5Awrite(attr.id, mtype, buf), file_, path_, what);
                return;
            }
            H5Eclear2(H5E_DEFAULT);
        }  // closed before deleting it
        check(H5Adelete(id_, name.c_str()), file_, path_, what);
    }
    Tmp space(check(H5Screate(H5S_SCALAR), file_, path_, what), H5Sclose);
    Tmp attr(check(H5Acreate2(id_, name.c_str(), ftype, space.id, H5P_DEFAULT, H5P_DEFAULT), file_, path_, what),
             H5Aclose);
    check(H5Awrite(attr.id, mtype, buf), file_, path_, what);
}

void Object::write_attrs(const Values& vs) {
    for (const auto& [k, v] : vs) write_attr(k, v);
}

Value Object::read_attr(const std::string& name) const {
    KV_CHECK(valid(), "attribute '{}' on a closed HDF5 object", name);
    if (!has_attr(name)) throw Error(fmt::format("attribute '{}' is missing on '{}' in '{}'", name, path_, file_));
    const std::string where = fmt::format("{}@{}", path_, name);
    Tmp attr(check(H5Aopen(id_, name.c_str(), H5P_DEFAULT), file_, where, "cannot open attribute"), H5Aclose);
    auto v = read_attr_id(attr.id, file_, where);
    if (!v) throw Error(fmt::format("attribute '{}' in '{}' is not a scalar integer, float or string", where, file_));
    return std::move(*v);
}

Values Object::read_attrs() const {
    KV_CHECK(valid(), "attributes of a closed HDF5 object");
    // Creation order when the object tracks it (ours do), otherwise by name.
    hid_t plist = -1;
    switch (H5Iget_type(id_)) {
        case H5I_FILE: plist = H5Fget_create_plist(id_); break;
        case H5I_GROUP: plist = H5Gget_create_plist(id_); break;
        case H5I_DATASET: plist = H5Dget_create_plist(id_); break;
        default: break;
    }
    unsigned flags = 0;
    if (plist >= 0) {
        H5Pget_attr_creation_order(plist, &flags);
        H5Pclose(plist);
    }
    H5Eclear2(H5E_DEFAULT);
    H5_index_t index = (flags & H5P_CRT_ORDER_TRACKED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME;

    std::vector<std::string> names;
    auto collect = [](hid_t, const char* n, const H5A_info_t*, void* data) -> herr_t {
        static_cast<std::vector<std::string>*>(data)->emplace_back(n);
        return 0;
    };
    check(H5Aiterate2(id_, index, H5_ITER_INC, nullptr, collect, &names), file_, path_,
          "cannot list the attributes of");
    Values out;
    for (const auto& n : names) {
        const std::string where = fmt::format("{}@{}", path_, n);
        Tmp attr(check(H5Aopen(id_, n.c_str(), H5P_DEFAULT), file_, where, "cannot open attribute"), H5Aclose);
        if (auto v = read_attr_id(attr.id, file_, where)) out.emplace_back(n, std::move(*v));
    }
    return out;
}

void Object::delete_attr(const std::string& name) {
    check(H5Adelete(id_, name.c_str()), file_, path_, fmt::format("cannot delete attribute '{}' on", name));
}

// ---------------------------------------------------------------- Location

bool Location::exists(const std::string& path) const {
    KV_CHECK(valid(), "lookup of '{}' in a closed HDF5 object", path);
    for (const auto& p : prefixes(path)) {
        // Negative means a component on the way is not a group: "does not exist" too.
        if (H5Lexists(id(), p.c_str(), H5P_DEFAULT) <= 0) {
            H5Eclear2(H5E_DEFAULT);
            return false;
        }
    }
    return true;
}

Group Location::open_group(const std::string& path) const {
    KV_CHECK(valid(), "open of '{}' in a closed HDF5 object", path);
    const std::string full = child_path(path);
    if (!exists(path)) throw Error(fmt::format("group '{}' does not exist in '{}'", full, file()));
    hid_t g = check(H5Gopen2(id(), path.c_str(), H5P_DEFAULT), file(), full, "cannot open group");
    return Group(g, file(), full);
}

Group Location::create_group(const std::string& path) {
    if (exists(path)) throw Error(fmt::format("'{}' already exists in '{}'", child_path(path), file()));
    return require_group(path);
}

Group Location::require_group(const std::string& path) {
    KV_CHECK(valid(), "group '{}' in a closed HDF5 object", path);
    for (const auto& p : prefixes(path)) {
        if (exists(p)) continue;
        const std::string full = child_path(p);
        Tmp gcpl(check(H5Pcreate(H5P_GROUP_CREATE), file(), full, "cannot create group"), H5Pclose);
        track_order(gcpl.id, file(), full);
        hid_t g =
            check(H5Gcreate2(id(), p.c_str(), H5P_DEFAULT, gcpl.id, H5P_DEFAULT), file(), full, "cannot create group");
        H5Gclose(g);
    }
    return open_group(path);
}

void Location::delete_link(const std::string& path) {
    check(H5Ldelete(id(), path.c_str(), H5P_DEFAULT), file(), child_path(path), "cannot delete");
}

namespace {
H5I_type_t object_type(hid_t loc, const std::string& path) {
    hid_t o = H5Oopen(loc, path.c_str(), H5P_DEFAULT);
    if (o < 0) {
        H5Eclear2(H5E_DEFAULT);
        return H5I_BADID;
    }
    H5I_type_t t = H5Iget_type(o);
    H5Oclose(o);
    return t;
}
}  // namespace

bool Location::is_group(const std::string& path) const { return exists(path) && object_type(id(), path) == H5I_GROUP; }

bool Location::is_dataset(const std::string& path) const {
    return exists(path) && object_type(id(), path) == H5I_DATASET;
}

std::vector<std::string> Location::list() const {
    KV_CHECK(valid(), "listing a closed HDF5 object");
    hid_t plist = H5Iget_type(id()) == H5I_FILE ? H5Fget_create_plist(id()) : H5Gget_create_plist(id());
    unsigned flags = 0;
    if (plist >= 0) {
        H5Pget_link_creation_order(plist, &flags);
        H5Pclose(plist);
    }
    H5Eclear2(H5E_DEFAULT);
    H5_index_t index = (flags & H5P_CRT_ORDER_TRACKED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME;

    H5G_info_t info;
    check(H5Gget_info(id(), &info), file(), path(), "cannot list");
    std::vector<std::string> out;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
        ssize_t n = check(H5Lget_name_by_idx(id(), ".", index, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT), file(), path(),
                          "cannot list");
        std::string name(static_cast<size_t>(n) + 1, '\0');
        check(H5Lget_name_by_idx(id(), ".", index, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT), file(),
              path(), "cannot list");
        name.resize(static_cast<size_t>(n));
        out.push_back(std::move(name));
    }
    return out;
}

Dataset Location::open_dataset(const std::string& path) const {
    KV_CHECK(valid(), "open of '{}' in a closed HDF5 object", path);
    const std::string full = child_path(path);
    if (!exists(path)) throw Error(fmt::format("dataset '{}' does not exist in '{}'", full, file()));
    hid_t d = check(H5Dopen2(id(), path.c_str(), H5P_DEFAULT), file(), full, "cannot open dataset");
    return Dataset(d, file(), full);
}

namespace {
// Contiguous N-d dataset (or scalar for an empty shape) written in one call.
Dataset write_nd(const Location& loc, const std::string& name, const std::vector<int64_t>& shape, DType type,
                 hid_t mem_type, const void* data, size_t n) {
    KV_CHECK(loc.valid(), "writing '{}' into a closed HDF5 object", name);
    int64_t numel = 1;
    std::vector<hsize_t> dims;
    for (int64_t d : shape) {
        KV_CHECK(d >= 0, "dataset '{}': negative dimension {}", name, d);
        numel *= d;
        dims.push_back(static_cast<hsize_t>(d));
    }
    KV_CHECK(numel == static_cast<int64_t>(n), "dataset '{}': shape holds {} elements, data has {}", name, numel, n);
    const std::string full = loc.path() == "/" ? "/" + name : loc.path() + "/" + name;
    const char* what = "cannot write dataset";
    Tmp space(check(shape.empty() ? H5Screate(H5S_SCALAR)
                                  : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                    loc.file(), full, what),
              H5Sclose);
    Dataset ds(
        check(H5Dcreate2(loc.id(), name.c_str(), file_type_of(type), space.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              loc.file(), full, what),
        loc.file(), full);
    if (n > 0) check(H5Dwrite(ds.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), loc.file(), full, what);
    return ds;
}
}  // namespace

Dataset Location::write(const std::string& name, const std::vector<int64_t>& shape, std::span<const float> data) {
    return write_nd(*this, name, shape, DType::f32, H5T_NATIVE_FLOAT, data.data(), data.size());
}

Dataset Location::write(const std::string& name, const std::vector<int64_t>& shape, std::span<const int32_t> data) {
    return write_nd(*this, name, shape, DType::i32, H5T_NATIVE_INT32, data.data(), data.size());
}

Dataset Location::write_scalar(const std::string& name, float v) {
    return write_nd(*this, name, {}, DType::f32, H5T_NATIVE_FLOAT, &v, 1);
}

Dataset Location::create_series(const std::string& name, DType type, int64_t chunk_rows) {
    KV_CHECK(valid() && chunk_rows > 0, "series '{}': chunk_rows {}", name, chunk_rows);
    const std::string full = child_path(name);
    const char* what = "cannot create dataset";
    // Unlimited dimensions require chunked storage; ~1024 rows keeps appends cheap
    // (one chunk stays in the chunk cache) without bloating short runs much (4 KB).
    hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED}, chunk[1] = {static_cast<hsize_t>(chunk_rows)};
    Tmp space(check(H5Screate_simple(1, dims, maxdims), file(), full, what), H5Sclose);
    Tmp dcpl(check(H5Pcreate(H5P_DATASET_CREATE), file(), full, what), H5Pclose);
    check(H5Pset_chunk(dcpl.id, 1, chunk), file(), full, what);
    hid_t d = check(H5Dcreate2(id(), name.c_str(), file_type_of(type), space.id, H5P_DEFAULT, dcpl.id, H5P_DEFAULT),
                    file(), full, what);
    return Dataset(d, file(), full);
}

// ---------------------------------------------------------------- File

File File::open(const std::string& path, Mode mode) {
    init();
    std::error_code ec;
    const bool present = fs::exists(path, ec);
    if (mode == Mode::create_or_open) mode = present ? Mode::read_write : Mode::truncate;

    if (mode == Mode::read_only || mode == Mode::read_write) {
        if (!present) throw Error(fmt::format("file '{}' does not exist", path));
        if (fs::is_directory(path, ec)) throw Error(fmt::format("'{}' is a directory, not an HDF5 file", path));
#if H5_VERSION_GE(1, 12, 0)
        const htri_t is_hdf5 = H5Fis_accessible(path.c_str(), H5P_DEFAULT);
#else
        const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
#endif
        if (is_hdf5 <= 0) {
            H5Eclear2(H5E_DEFAULT);
            throw Error(fmt::format("'{}' is not an HDF5 file", path));
        }
        hid_t f = H5Fopen(path.c_str(), mode == Mode::read_only ? H5F_ACC_RDONLY : H5F_ACC_RDWR, H5P_DEFAULT);
        check(f, path, "/", mode == Mode::read_only ? "cannot open for reading" : "cannot open for writing");
        return File(f, path);
    }

    // Creating: name the missing directory rather than let HDF5 say "unable to open file".
    fs::path parent = fs::path(path).parent_path();
    if (!parent.empty() && !fs::is_directory(parent, ec))
        throw Error(fmt::format("cannot create '{}': directory '{}' does not exist", path, parent.string()));
    Tmp fcpl(check(H5Pcreate(H5P_FILE_CREATE), path, "/", "cannot create"), H5Pclose);
    track_order(fcpl.id, path, "/");
    hid_t f = check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl.id, H5P_DEFAULT), path, "/", "cannot create");
    return File(f, path);
}

File File::open_image(const std::string& name, const std::vector<char>& image) {
    init();
    Tmp fapl(check(H5Pcreate(H5P_FILE_ACCESS), name, "/", "cannot open in memory"), H5Pclose);
    check(H5Pset_fapl_core(fapl.id, 1 << 20, /*backing_store=*/0), name, "/", "cannot open in memory");
    if (image.empty()) {
        Tmp fcpl(check(H5Pcreate(H5P_FILE_CREATE), name, "/", "cannot create in memory"), H5Pclose);
        track_order(fcpl.id, name, "/");
        return File(check(H5Fcreate(name.c_str(), H5F_ACC_TRUNC, fcpl.id, fapl.id), name, "/", "cannot create in memory"),
                    name);
    }
    check(H5Pset_file_image(fapl.id, const_cast<char*>(image.data()), image.size()), name, "/",
          "cannot open in memory");
    return File(check(H5Fopen(name.c_str(), H5F_ACC_RDWR, fapl.id), name, "/", "cannot open (is it an HDF5 file?)"),
                name);
}

std::vector<char> File::image() {
    check(H5Fflush(id(), H5F_SCOPE_GLOBAL), file(), "/", "cannot flush");
    const ssize_t n = H5Fget_file_image(id(), nullptr, 0);
    check(static_cast<herr_t>(n < 0 ? -1 : 0), file(), "/", "cannot take the image of");
    std::vector<char> out(static_cast<size_t>(n));
    check(static_cast<herr_t>(H5Fget_file_image(id(), out.data(), out.size()) < 0 ? -1 : 0), file(), "/",
          "cannot take the image of");
    return out;
}

void File::flush() { check(H5Fflush(id(), H5F_SCOPE_LOCAL), file(), "/", "cannot flush"); }

// ---------------------------------------------------------------- Dataset

std::vector<int64_t> Dataset::shape() const {
    KV_CHECK(valid(), "shape of a closed dataset");
    Tmp space(check(H5Dget_space(id()), file(), path(), "cannot read the shape of"), H5Sclose);
    int rank = check(H5Sget_simple_extent_ndims(space.id), file(), path(), "cannot read the shape of");
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    if (rank > 0)
        check(H5Sget_simple_extent_dims(space.id, dims.data(), nullptr), file(), path(), "cannot read the shape of");
    return {dims.begin(), dims.end()};
}

int64_t Dataset::size() const {
    int64_t n = 1;
    for (int64_t d : shape()) {
        if (d < 0 || (d > 0 && n > std::numeric_limits<int64_t>::max() / d))
            throw Error(fmt::format("dataset '{}' in '{}' claims more than 2^63 elements: the file is damaged", path(),
                                    file()));
        n *= d;
    }
    return n;
}

// The element count to allocate for reading, after checking that the file holds that many:
// a damaged or crafted file can claim any shape, and the claim must not become a huge
// allocation. Unfiltered storage must hold every byte; filtered (compressed) storage at
// least 1/2048 of them (deflate's ratio is at most about 1032:1).
size_t Dataset::readable_count() const {
    const int64_t n = size();
    if (n == 0) return 0;
    Tmp type(check(H5Dget_type(id()), file(), path(), "cannot read the type of"), H5Tclose);
    Tmp dcpl(check(H5Dget_create_plist(id()), file(), path(), "cannot read the storage of"), H5Pclose);
    const int filters = H5Pget_nfilters(dcpl.id);
    const double claimed = double(n) * double(H5Tget_size(type.id));
    const double stored = double(H5Dget_storage_size(id()));
    if (claimed > (filters > 0 ? 2048.0 * stored : stored))
        throw Error(fmt::format("dataset '{}' in '{}' claims {} elements ({:.0f} bytes) but the file stores {:.0f} bytes "
                                "of it: the file is damaged",
                                path(), file(), n, claimed, stored));
    return static_cast<size_t>(n);
}

DType Dataset::dtype() const {
    KV_CHECK(valid(), "type of a closed dataset");
    Tmp type(check(H5Dget_type(id()), file(), path(), "cannot read the type of"), H5Tclose);
    H5T_class_t cls = H5Tget_class(type.id);
    size_t size = H5Tget_size(type.id);
    if (cls == H5T_FLOAT && size == 4) return DType::f32;
    if (cls == H5T_FLOAT && size == 8) return DType::f64;
    if (cls == H5T_INTEGER && H5Tget_sign(type.id) == H5T_SGN_2) {
        if (size == 4) return DType::i32;
        if (size == 8) return DType::i64;
    }
    throw Error(fmt::format("dataset '{}' in '{}' holds {}; kvlab reads float32, float64, int32 or int64", path(),
                            file(), describe_type(type.id)));
}

void Dataset::read_raw(hid_t mem_type, void* out) const {
    if (size() == 0) return;
    check(H5Dread(id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), file(), path(), "cannot read dataset");
}

namespace {
void expect_type(const Dataset& d, bool ok, const char* expected) {
    if (ok) return;
    // dtype() throws its own message for types outside our set.
    throw Error(
        fmt::format("dataset '{}' in '{}' is {}; expected {}", d.path(), d.file(), dtype_name(d.dtype()), expected));
}
}  // namespace

std::vector<float> Dataset::read_f32() const {
    expect_type(*this, dtype() == DType::f32, "float32");
    std::vector<float> out(readable_count());
    read_raw(H5T_NATIVE_FLOAT, out.data());
    return out;
}

std::vector<int32_t> Dataset::read_i32() const {
    expect_type(*this, dtype() == DType::i32, "int32");
    std::vector<int32_t> out(readable_count());
    read_raw(H5T_NATIVE_INT32, out.data());
    return out;
}

std::vector<int64_t> Dataset::read_as_i64() const {
    DType t = dtype();
    expect_type(*this, t == DType::i32 || t == DType::i64, "an integer type");
    std::vector<int64_t> out(readable_count());
    read_raw(H5T_NATIVE_INT64, out.data());
    return out;
}

std::vector<double> Dataset::read_as_f64() const {
    DType t = dtype();
    expect_type(*this, t == DType::f32 || t == DType::f64, "a floating-point type");
    std::vector<double> out(readable_count());
    read_raw(H5T_NATIVE_DOUBLE, out.data());
    return out;
}

void Dataset::append_raw(hid_t mem_type, const void* rows, int64_t n) {
    KV_CHECK(valid(), "append to a closed dataset");
    if (n == 0) return;
    auto dims = shape();
    KV_CHECK(dims.size() == 1, "append to '{}', which has rank {}", path(), dims.size());
    const char* what = "cannot append to dataset";
    hsize_t start[1] = {static_cast<hsize_t>(dims[0])}, count[1] = {static_cast<hsize_t>(n)};
    hsize_t new_dims[1] = {start[0] + count[0]};
    check(H5Dset_extent(id(), new_dims), file(), path(), what);
    Tmp fspace(check(H5Dget_space(id()), file(), path(), what), H5Sclose);
    check(H5Sselect_hyperslab(fspace.id, H5S_SELECT_SET, start, nullptr, count, nullptr), file(), path(), what);
    Tmp mspace(check(H5Screate_simple(1, count, nullptr), file(), path(), what), H5Sclose);
    check(H5Dwrite(id(), mem_type, mspace.id, fspace.id, H5P_DEFAULT, rows), file(), path(), what);
}

void Dataset::append(std::span<const float> rows) { append_raw(H5T_NATIVE_FLOAT, rows.data(), std::ssize(rows)); }
void Dataset::append(std::span<const double> rows) { append_raw(H5T_NATIVE_DOUBLE, rows.data(), std::ssize(rows)); }
void Dataset::append(std::span<const int32_t> rows) { append_raw(H5T_NATIVE_INT32, rows.data(), std::ssize(rows)); }
void Dataset::append(std::span<const int64_t> rows) { append_raw(H5T_NATIVE_INT64, rows.data(), std::ssize(rows)); }

}  // namespace kvlab::h5
