#include "mixsim/io/hdf5.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <system_error>

#include "mixsim/core/error.hpp"

namespace mixsim::h5 {
namespace {

// HDF5 prints its error stack to stderr by default; we turn that into one exception message.
void silence_hdf5() {
  static const bool done = [] {
    H5open();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

herr_t keep_innermost(unsigned, const H5E_error2_t* entry, void* data) {
  if (entry->desc && *entry->desc) *static_cast<std::string*>(data) = entry->desc;
  return 0;
}

// The most specific message on HDF5's error stack (then cleared), e.g. "file signature not found".
std::string hdf5_reason() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, keep_innermost, &text);
  H5Eclear2(H5E_DEFAULT);
  return text.empty() ? "no details from HDF5" : text;
}

[[noreturn]] void fail_h5(const std::string& what) {
  fail("{} (HDF5: {})", what, hdf5_reason());
}

Handle check_id(hid_t id, const std::function<std::string()>& what) {
  if (id < 0) fail_h5(what());
  return Handle(id);
}

void check_status(herr_t status, const std::function<std::string()>& what) {
  if (status < 0) fail_h5(what());
}

Handle string_type(H5T_cset_t cset = H5T_CSET_UTF8) {
  Handle type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), cset);
  return type;
}

std::size_t element_count(hid_t space) {
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  return n < 0 ? 0 : static_cast<std::size_t>(n);
}

// Reads `count` strings of the stored string type `stored` through `read(mem_type, buffer)`,
// for fixed-length and variable-length strings alike (h5py writes either).
std::vector<std::string> read_string_values(hid_t stored, std::size_t count,
                                            const std::function<herr_t(hid_t, void*)>& read,
                                            const std::function<std::string()>& what) {
  std::vector<std::string> out;
  out.reserve(count);
  if (count == 0) return out;
  if (H5Tis_variable_str(stored) > 0) {
    Handle mem = string_type(H5Tget_cset(stored));
    std::vector<char*> pointers(count, nullptr);
    check_status(read(mem.get(), pointers.data()), what);
    for (char* p : pointers) {
      out.emplace_back(p ? p : "");
      if (p) H5free_memory(p);
    }
    return out;
  }
  const std::size_t width = H5Tget_size(stored);
  Handle mem(H5Tcopy(stored));
  std::vector<char> buffer(width * count, '\0');
  check_status(read(mem.get(), buffer.data()), what);
  for (std::size_t i = 0; i < count; ++i) {
    std::string s(buffer.data() + i * width, width);
    s.resize(s.find('\0') == std::string::npos ? width : s.find('\0'));
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<const char*> c_strings(const std::vector<std::string>& values) {
  std::vector<const char*> out;
  out.reserve(values.size());
  for (const auto& v : values) out.push_back(v.c_str());
  return out;
}

Handle link_create_plist() {
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  return lcpl;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Handle

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.release();
  }
  return *this;
}

hid_t Handle::release() {
  hid_t id = id_;
  id_ = H5I_INVALID_HID;
  return id;
}

void Handle::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      H5Fclose(id_);
      break;
    case H5I_GROUP:
      H5Gclose(id_);
      break;
    case H5I_DATASET:
      H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      H5Tclose(id_);
      break;
    case H5I_ATTR:
      H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      H5Pclose(id_);
      break;
    default:
      H5Idec_ref(id_);
      break;
  }
  H5Eclear2(H5E_DEFAULT);
  id_ = H5I_INVALID_HID;
}

// ---------------------------------------------------------------------------------------------
// Object and attributes

std::string Object::path() const {
  const ssize_t n = H5Iget_name(id(), nullptr, 0);
  if (n <= 0) return "?";
  std::string name(static_cast<std::size_t>(n) + 1, '\0');
  H5Iget_name(id(), name.data(), name.size());
  name.resize(static_cast<std::size_t>(n));
  return name;
}

std::string Object::describe() const {
  return fmt::format("'{}' in file '{}'", path(), file_);
}

bool Object::has_attribute(const std::string& name) const {
  const htri_t found = H5Aexists(id(), name.c_str());
  if (found < 0) fail_h5(fmt::format("cannot look up attribute '{}' of {}", name, describe()));
  return found > 0;
}

std::vector<std::string> Object::attribute_names() const {
  std::vector<std::string> names;
  hsize_t index = 0;
  auto collect = [](hid_t, const char* attr_name, const H5A_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->emplace_back(attr_name);
    return 0;
  };
  check_status(H5Aiterate2(id(), H5_INDEX_NAME, H5_ITER_INC, &index, collect, &names),
               [&] { return fmt::format("cannot list the attributes of {}", describe()); });
  return names;
}

Handle Object::open_attribute(const std::string& name) const {
  if (!has_attribute(name))
    fail("attribute '{}' is missing on {} (is this file from another mixsim version?)", name,
         describe());
  return check_id(H5Aopen(id(), name.c_str(), H5P_DEFAULT), [&] {
    return fmt::format("cannot open attribute '{}' of {}", name, describe());
  });
}

void Object::write_attribute(const std::string& name, hid_t mem_type, hid_t disk_type,
                             const void* data, std::size_t count, bool scalar) const {
  auto what = [&] { return fmt::format("cannot write attribute '{}' of {}", name, describe()); };
  if (has_attribute(name)) check_status(H5Adelete(id(), name.c_str()), what);
  const hsize_t dims[1] = {count};
  Handle space(scalar ? H5Screate(H5S_SCALAR)
                      : (count == 0 ? H5Screate(H5S_NULL) : H5Screate_simple(1, dims, nullptr)));
  Handle attr = check_id(
      H5Acreate2(id(), name.c_str(), disk_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  if (count > 0) check_status(H5Awrite(attr.get(), mem_type, data), what);
}

void Object::set_attribute(const std::string& name, const std::string& value) const {
  Handle type = string_type();
  const char* pointer = value.c_str();
  write_attribute(name, type.get(), type.get(), &pointer, 1, /*scalar=*/true);
}

void Object::set_attribute(const std::string& name, const std::vector<std::string>& values) const {
  Handle type = string_type();
  auto pointers = c_strings(values);
  write_attribute(name, type.get(), type.get(), pointers.data(), pointers.size(),
                  /*scalar=*/false);
}

std::size_t Object::attribute_size(const std::string& name) const {
  Handle attr = open_attribute(name);
  Handle space(H5Aget_space(attr.get()));
  return element_count(space.get());
}

void Object::read_attribute(const std::string& name, hid_t mem_type, void* data,
                            std::size_t count) const {
  Handle attr = open_attribute(name);
  Handle type(H5Aget_type(attr.get()));
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_INTEGER && cls != H5T_FLOAT)
    fail("attribute '{}' of {} is not a number", name, describe());
  Handle space(H5Aget_space(attr.get()));
  const std::size_t stored = element_count(space.get());
  if (stored != count)
    fail("attribute '{}' of {} holds {} values, expected {}", name, describe(), stored, count);
  if (count == 0) return;
  check_status(H5Aread(attr.get(), mem_type, data),
               [&] { return fmt::format("cannot read attribute '{}' of {}", name, describe()); });
}

std::vector<std::string> Object::strings_attribute(const std::string& name) const {
  Handle attr = open_attribute(name);
  Handle type(H5Aget_type(attr.get()));
  if (H5Tget_class(type.get()) != H5T_STRING)
    fail("attribute '{}' of {} is not a string", name, describe());
  Handle space(H5Aget_space(attr.get()));
  return read_string_values(
      type.get(), element_count(space.get()),
      [&](hid_t mem, void* buffer) { return H5Aread(attr.get(), mem, buffer); },
      [&] { return fmt::format("cannot read attribute '{}' of {}", name, describe()); });
}

std::string Object::string_attribute(const std::string& name) const {
  auto values = strings_attribute(name);
  if (values.size() != 1)
    fail("attribute '{}' of {} holds {} strings, expected one", name, describe(), values.size());
  return values[0];
}

// ---------------------------------------------------------------------------------------------
// Dataset

std::vector<std::size_t> Dataset::shape() const {
  Handle space(H5Dget_space(id()));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail_h5(fmt::format("cannot read the shape of {}", describe()));
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return {dims.begin(), dims.end()};
}

std::size_t Dataset::size() const {
  Handle space(H5Dget_space(id()));
  return element_count(space.get());
}

void Dataset::read_into(hid_t mem_type, void* data, std::size_t offset, std::size_t count) const {
  Handle type(H5Dget_type(id()));
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_INTEGER && cls != H5T_FLOAT) fail("dataset {} is not numeric", describe());
  const std::size_t total = size();
  if (offset + count > total || offset + count < offset)
    fail("cannot read elements [{}, {}) of {}: it has {} elements", offset, offset + count,
         describe(), total);
  if (count == 0) return;
  auto what = [&] { return fmt::format("cannot read dataset {}", describe()); };
  if (offset == 0 && count == total) {
    check_status(H5Dread(id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
    return;
  }
  if (shape().size() != 1) fail("partial reads need a 1-D dataset; {} is not", describe());
  Handle file_space(H5Dget_space(id()));
  const hsize_t start[1] = {offset};
  const hsize_t n[1] = {count};
  check_status(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, n, nullptr),
               what);
  Handle mem_space(H5Screate_simple(1, n, nullptr));
  check_status(H5Dread(id(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, data), what);
}

std::vector<std::string> Dataset::read_strings() const {
  Handle type(H5Dget_type(id()));
  if (H5Tget_class(type.get()) != H5T_STRING) fail("dataset {} does not hold strings", describe());
  return read_string_values(
      type.get(), size(),
      [&](hid_t mem, void* buffer) {
        return H5Dread(id(), mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer);
      },
      [&] { return fmt::format("cannot read dataset {}", describe()); });
}

// ---------------------------------------------------------------------------------------------
// Group

Group Group::create_group(const std::string& path) const {
  if (exists(path)) fail("cannot create group '{}' in {}: it exists", path, describe());
  Handle lcpl = link_create_plist();
  return Group(
      check_id(H5Gcreate2(id(), path.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
               [&] { return fmt::format("cannot create group '{}' in {}", path, describe()); }),
      file_);
}

Group Group::open_group(const std::string& path) const {
  if (kind(path) != Kind::group) fail("group '{}' is missing in {}", path, describe());
  return Group(
      check_id(H5Gopen2(id(), path.c_str(), H5P_DEFAULT),
               [&] { return fmt::format("cannot open group '{}' in {}", path, describe()); }),
      file_);
}

Dataset Group::open_dataset(const std::string& path) const {
  if (kind(path) != Kind::dataset) fail("dataset '{}' is missing in {}", path, describe());
  return Dataset(
      check_id(H5Dopen2(id(), path.c_str(), H5P_DEFAULT),
               [&] { return fmt::format("cannot open dataset '{}' in {}", path, describe()); }),
      file_);
}

bool Group::exists(const std::string& path) const {
  // H5Lexists fails (rather than answering false) when a parent is missing: check each prefix.
  std::string prefix = path.starts_with('/') ? "/" : "";
  std::size_t start = prefix.size();
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) {
      if (!prefix.empty() && prefix.back() != '/') prefix += '/';
      prefix += path.substr(start, end - start);
      const htri_t found = H5Lexists(id(), prefix.c_str(), H5P_DEFAULT);
      if (found <= 0) {
        H5Eclear2(H5E_DEFAULT);
        return false;
      }
    }
    start = end + 1;
  }
  return !prefix.empty() && prefix != "/";
}

Kind Group::kind(const std::string& path) const {
  if (!exists(path)) return Kind::none;
  Handle object(H5Oopen(id(), path.c_str(), H5P_DEFAULT));
  if (!object.valid()) {
    H5Eclear2(H5E_DEFAULT);
    return Kind::other;  // e.g. a dangling soft link
  }
  switch (H5Iget_type(object.get())) {
    case H5I_GROUP:
      return Kind::group;
    case H5I_DATASET:
      return Kind::dataset;
    default:
      return Kind::other;
  }
}

std::vector<std::string> Group::children() const {
  std::vector<std::string> names;
  auto collect = [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
    static_cast<std::vector<std::string>*>(data)->emplace_back(name);
    return 0;
  };
  check_status(H5Literate(id(), H5_INDEX_NAME, H5_ITER_INC, nullptr, collect, &names),
               [&] { return fmt::format("cannot list the members of {}", describe()); });
  return names;
}

Dataset Group::create_dataset(const std::string& path, hid_t mem_type, hid_t disk_type,
                              const void* data, std::size_t count, std::vector<std::size_t> shape,
                              const DatasetOptions& options) const {
  if (shape.empty()) shape = {count};
  const std::size_t product =
      std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
  MIXSIM_CHECK(product == count, "dataset '{}': shape holds {} elements, data {}", path, product,
               count);
  auto what = [&] { return fmt::format("cannot write dataset '{}' in {}", path, describe()); };
  if (exists(path)) fail("{}: it exists", what());

  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  if (count > 0 && options.chunk_elements > 0) {
    // Chunks hold whole rows: the first dimension is cut, the others kept.
    const std::size_t row = count / shape[0];
    std::vector<hsize_t> chunk = dims;
    chunk[0] =
        std::clamp<hsize_t>(options.chunk_elements / std::max<std::size_t>(row, 1), 1, dims[0]);
    check_status(H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data()), what);
    if (options.shuffle) check_status(H5Pset_shuffle(dcpl.get()), what);
    if (options.deflate_level > 0)
      check_status(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(options.deflate_level)), what);
  }
  Handle lcpl = link_create_plist();
  Dataset dataset(check_id(H5Dcreate2(id(), path.c_str(), disk_type, space.get(), lcpl.get(),
                                      dcpl.get(), H5P_DEFAULT),
                           what),
                  file_);
  if (count > 0)
    check_status(H5Dwrite(dataset.id(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
  return dataset;
}

Dataset Group::write_strings(const std::string& path,
                             const std::vector<std::string>& values) const {
  auto what = [&] { return fmt::format("cannot write dataset '{}' in {}", path, describe()); };
  if (exists(path)) fail("{}: it exists", what());
  Handle type = string_type();
  const hsize_t dims[1] = {values.size()};
  Handle space(H5Screate_simple(1, dims, nullptr));
  Handle lcpl = link_create_plist();
  Dataset dataset(check_id(H5Dcreate2(id(), path.c_str(), type.get(), space.get(), lcpl.get(),
                                      H5P_DEFAULT, H5P_DEFAULT),
                           what),
                  file_);
  auto pointers = c_strings(values);
  if (!values.empty())
    check_status(H5Dwrite(dataset.id(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, pointers.data()),
                 what);
  return dataset;
}

// ---------------------------------------------------------------------------------------------
// File

File File::create(const std::filesystem::path& path) {
  silence_hdf5();
  // SEMI: closing fails while objects are open, so close() can promise the bytes are written.
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_SEMI);
  File file(check_id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                     [&] {
                       return fmt::format(
                           "cannot create HDF5 file '{}': check that its directory "
                           "exists and is writable",
                           path.string());
                     }),
            path.string(), true);
  return file;
}

File File::open(const std::filesystem::path& path, Mode mode) {
  silence_hdf5();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail("HDF5 file '{}' does not exist", path.string());
  if (!is_hdf5(path))
    fail("'{}' is not an HDF5 file (or it is truncated): rewrite it with the stage that makes it",
         path.string());
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  if (mode == Mode::read_write) H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_SEMI);
  const unsigned flags = mode == Mode::read ? H5F_ACC_RDONLY : H5F_ACC_RDWR;
  return File(check_id(H5Fopen(path.c_str(), flags, fapl.get()),
                       [&] { return fmt::format("cannot open HDF5 file '{}'", path.string()); }),
              path.string(), mode == Mode::read_write);
}

bool File::is_hdf5(const std::filesystem::path& path) {
  silence_hdf5();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  const htri_t result = H5Fis_hdf5(path.c_str());
  H5Eclear2(H5E_DEFAULT);
  return result > 0;
}

void File::flush() const {
  check_status(H5Fflush(id(), H5F_SCOPE_GLOBAL),
               [&] { return fmt::format("cannot flush HDF5 file '{}'", file_); });
}

void File::close() {
  if (!handle_.valid()) return;
  if (writable_) {
    const ssize_t count = H5Fget_obj_count(id(), H5F_OBJ_ALL | H5F_OBJ_LOCAL);
    if (count > 1) {
      std::vector<hid_t> ids(static_cast<std::size_t>(count));
      H5Fget_obj_ids(id(), H5F_OBJ_ALL | H5F_OBJ_LOCAL, ids.size(), ids.data());
      std::string names;
      for (hid_t object : ids) {
        if (H5Iget_type(object) == H5I_FILE) continue;
        char name[256] = "?";
        H5Iget_name(object, name, sizeof name);
        names += (names.empty() ? "'" : ", '") + std::string(name) + "'";
      }
      MIXSIM_CHECK(false,
                   "closing '{}' while {} is still open (close every group and dataset first)",
                   file_, names);
    }
  }
  check_status(H5Fclose(handle_.release()),
               [&] { return fmt::format("cannot close HDF5 file '{}' (disk full?)", file_); });
}

// ---------------------------------------------------------------------------------------------
// AtomicFile

namespace {
std::filesystem::path temp_name(const std::filesystem::path& final_path) {
  auto name = final_path.filename().string() + ".tmp." + std::to_string(::getpid());
  return final_path.parent_path() / name;
}

// The renamed file must survive a machine crash too, not only a process crash.
void sync_file(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}
}  // namespace

AtomicFile::AtomicFile(std::filesystem::path final_path)
    : final_(std::move(final_path)), temp_(temp_name(final_)), file_(File::create(temp_)) {}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  file_.discard();
  std::error_code ec;
  std::filesystem::remove(temp_, ec);
}

void AtomicFile::commit() {
  MIXSIM_CHECK(!committed_, "AtomicFile::commit twice for '{}'", final_.string());
  file_.close();
  sync_file(temp_);
  std::error_code ec;
  std::filesystem::rename(temp_, final_, ec);
  if (ec)
    fail("cannot move '{}' into place as '{}': {}", temp_.string(), final_.string(), ec.message());
  committed_ = true;
}

}  // namespace mixsim::h5
