// A small RAII layer over the HDF5 C API: files, groups, datasets and attributes, every id owned
// by one object, every failure a mixsim::Error naming the file and the object. Shared by data.h5,
// checkpoints and results; the files it writes are plain HDF5 that h5dump and h5py read.
#pragma once

#include <hdf5.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace mixsim::h5 {

// Owns one HDF5 id and closes it with the matching H5*close. Move-only.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept : id_(other.release()) {}
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  hid_t release();
  void reset();  // closes the id now; errors are ignored (use File::close to see them)

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// The element types datasets and attributes can hold, with their in-memory and on-disk HDF5 types.
// On disk integers and floats are always little-endian, whatever the machine.
template <class T>
concept Element = std::is_same_v<T, std::uint8_t> || std::is_same_v<T, std::int8_t> ||
    std::is_same_v<T, std::uint16_t> || std::is_same_v<T, std::int16_t> ||
    std::is_same_v<T, std::uint32_t> || std::is_same_v<T, std::int32_t> ||
    std::is_same_v<T, std::uint64_t> || std::is_same_v<T, std::int64_t> ||
    std::is_same_v<T, float> || std::is_same_v<T, double>;

template <Element T>
hid_t memory_type() {
  if constexpr (std::is_same_v<T, std::uint8_t>)
    return H5T_NATIVE_UINT8;
  else if constexpr (std::is_same_v<T, std::int8_t>)
    return H5T_NATIVE_INT8;
  else if constexpr (std::is_same_v<T, std::uint16_t>)
    return H5T_NATIVE_UINT16;
  else if constexpr (std::is_same_v<T, std::int16_t>)
    return H5T_NATIVE_INT16;
  else if constexpr (std::is_same_v<T, std::uint32_t>)
    return H5T_NATIVE_UINT32;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    return H5T_NATIVE_UINT64;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return H5T_NATIVE_INT64;
  else if constexpr (std::is_same_v<T, float>)
    return H5T_NATIVE_FLOAT;
  else
    return H5T_NATIVE_DOUBLE;
}
template <Element T>
hid_t file_type() {
  if constexpr (std::is_same_v<T, std::uint8_t>)
    return H5T_STD_U8LE;
  else if constexpr (std::is_same_v<T, std::int8_t>)
    return H5T_STD_I8LE;
  else if constexpr (std::is_same_v<T, std::uint16_t>)
    return H5T_STD_U16LE;
  else if constexpr (std::is_same_v<T, std::int16_t>)
    return H5T_STD_I16LE;
  else if constexpr (std::is_same_v<T, std::uint32_t>)
    return H5T_STD_U32LE;
  else if constexpr (std::is_same_v<T, std::int32_t>)
    return H5T_STD_I32LE;
  else if constexpr (std::is_same_v<T, std::uint64_t>)
    return H5T_STD_U64LE;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return H5T_STD_I64LE;
  else if constexpr (std::is_same_v<T, float>)
    return H5T_IEEE_F32LE;
  else
    return H5T_IEEE_F64LE;
}

// How a numeric dataset is stored. Chunked storage is what makes compression and partial reads
// possible; empty datasets are always stored contiguous (HDF5 needs chunks no larger than data).
struct DatasetOptions {
  std::size_t chunk_elements = 1 << 16;  // elements per chunk (rows are kept whole); 0: contiguous
  int deflate_level = 4;                 // gzip level 1..9; 0: no compression
  bool shuffle = true;                   // byte shuffle before deflate (helps small integers)
};

class Dataset;
class Group;

// A file, group or dataset: it has a path in the file and attributes.
class Object {
 public:
  hid_t id() const { return handle_.get(); }
  const std::string& file_name() const { return file_; }
  std::string path() const;  // the object's name inside the file, e.g. "/units/news/0"

  bool has_attribute(const std::string& name) const;
  std::vector<std::string> attribute_names() const;

  // Attributes are replaced when they exist. Strings are stored as variable-length UTF-8.
  void set_attribute(const std::string& name, const std::string& value) const;
  void set_attribute(const std::string& name, const char* value) const {
    set_attribute(name, std::string(value));
  }
  template <Element T>
  void set_attribute(const std::string& name, T value) const {
    write_attribute(name, memory_type<T>(), file_type<T>(), &value, 1, /*scalar=*/true);
  }
  template <Element T>
  void set_attribute(const std::string& name, std::span<const T> values) const {
    write_attribute(name, memory_type<T>(), file_type<T>(), values.data(), values.size(),
                    /*scalar=*/false);
  }
  template <Element T>
  void set_attribute(const std::string& name, const std::vector<T>& values) const {
    set_attribute(name, std::span<const T>(values));
  }
  void set_attribute(const std::string& name, const std::vector<std::string>& values) const;

  // Reading converts between numeric types as HDF5 does (e.g. a stored uint32 read as int64);
  // a missing attribute or a string read as a number is an Error naming object and attribute.
  std::string string_attribute(const std::string& name) const;
  std::vector<std::string> strings_attribute(const std::string& name) const;
  template <Element T>
  T attribute(const std::string& name) const {
    T value{};
    read_attribute(name, memory_type<T>(), &value, 1);
    return value;
  }
  template <Element T>
  std::vector<T> vector_attribute(const std::string& name) const {
    std::vector<T> values(attribute_size(name));
    read_attribute(name, memory_type<T>(), values.data(), values.size());
    return values;
  }

 protected:
  Object(Handle handle, std::string file) : handle_(std::move(handle)), file_(std::move(file)) {}
  std::string describe() const;  // "'/path' in file 'x.h5'", for messages

  Handle handle_;
  std::string file_;

 private:
  void write_attribute(const std::string& name, hid_t mem_type, hid_t disk_type, const void* data,
                       std::size_t count, bool scalar) const;
  void read_attribute(const std::string& name, hid_t mem_type, void* data, std::size_t count) const;
  std::size_t attribute_size(const std::string& name) const;
  Handle open_attribute(const std::string& name) const;
};

class Dataset : public Object {
 public:
  std::vector<std::size_t> shape() const;
  std::size_t size() const;  // number of elements

  // The whole dataset, converted to T.
  template <Element T>
  std::vector<T> read() const {
    std::vector<T> out(size());
    read_into(memory_type<T>(), out.data(), 0, out.size());
    return out;
  }
  // `out.size()` elements starting at element `offset` of a 1-D dataset.
  template <Element T>
  void read(std::span<T> out, std::size_t offset = 0) const {
    read_into(memory_type<T>(), out.data(), offset, out.size());
  }
  std::vector<std::string> read_strings() const;

 private:
  friend class Group;
  Dataset(Handle handle, std::string file) : Object(std::move(handle), std::move(file)) {}
  void read_into(hid_t mem_type, void* data, std::size_t offset, std::size_t count) const;
};

enum class Kind { none, group, dataset, other };

class Group : public Object {
 public:
  // Paths are relative to this group ("a/b" or "b"); create_group makes missing parents.
  Group create_group(const std::string& path) const;
  Group open_group(const std::string& path) const;
  Dataset open_dataset(const std::string& path) const;
  bool exists(const std::string& path) const;  // false also when a parent is missing
  Kind kind(const std::string& path) const;
  std::vector<std::string> children() const;  // link names, in HDF5's name order

  // A dataset of the given shape (empty shape: 1-D, data.size() elements).
  template <Element T>
  Dataset write_dataset(const std::string& path, std::span<const T> data,
                        std::vector<std::size_t> shape = {},
                        const DatasetOptions& options = {}) const {
    return create_dataset(path, memory_type<T>(), file_type<T>(), data.data(), data.size(),
                          std::move(shape), options);
  }
  template <Element T>
  Dataset write_dataset(const std::string& path, const std::vector<T>& data,
                        std::vector<std::size_t> shape = {},
                        const DatasetOptions& options = {}) const {
    return write_dataset(path, std::span<const T>(data), std::move(shape), options);
  }
  // A 1-D dataset of variable-length UTF-8 strings.
  Dataset write_strings(const std::string& path, const std::vector<std::string>& values) const;

 protected:
  friend class File;
  Group(Handle handle, std::string file) : Object(std::move(handle), std::move(file)) {}

 private:
  Dataset create_dataset(const std::string& path, hid_t mem_type, hid_t disk_type, const void* data,
                         std::size_t count, std::vector<std::size_t> shape,
                         const DatasetOptions& options) const;
};

// A file; as a Group it is the root group "/".
class File : public Group {
 public:
  enum class Mode { read, read_write };
  static File create(const std::filesystem::path& path);  // truncates an existing file
  static File open(const std::filesystem::path& path, Mode mode = Mode::read);
  // True when `path` exists and has the HDF5 signature.
  static bool is_hdf5(const std::filesystem::path& path);

  void flush() const;
  // Closes the file and reports failure. A file being written must have no group or dataset
  // still open (they would keep it open past close): that is checked.
  void close();
  void discard() noexcept { handle_.reset(); }  // closes without checks, for error paths
  bool writable() const { return writable_; }

 private:
  File(Handle handle, std::string file, bool writable)
      : Group(std::move(handle), std::move(file)), writable_(writable) {}
  bool writable_ = false;
};

// Writes a file under a temporary name in the same directory and renames it into place on
// commit(): readers never see a half-written file, and a crash leaves only the temporary.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path final_path);
  ~AtomicFile();  // not committed: closes and removes the temporary
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  File& file() { return file_; }
  const std::filesystem::path& temp_path() const { return temp_; }
  const std::filesystem::path& final_path() const { return final_; }
  void commit();  // close, then rename over final_path

 private:
  std::filesystem::path final_;
  std::filesystem::path temp_;
  File file_;
  bool committed_ = false;
};

}  // namespace mixsim::h5
