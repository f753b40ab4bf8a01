#include "mixsim/data/corpus.hpp"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "mixsim/core/error.hpp"

namespace mixsim {
namespace fs = std::filesystem;
namespace {

constexpr std::size_t kMaxProblemsKept = 5;

enum class FileType { ignored, text, jsonl };

FileType classify(const std::string& name) {
  std::string_view base = name;
  if (base.ends_with(".gz")) base.remove_suffix(3);
  if (base.ends_with(".txt")) return FileType::text;
  if (base.ends_with(".jsonl")) return FileType::jsonl;
  return FileType::ignored;
}

// The byte length of the valid UTF-8 sequence starting at text[i], or 0 when it is invalid
// (overlong forms, surrogates and code points above U+10FFFF are invalid).
std::size_t utf8_sequence_length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return 1;
  std::size_t length;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF)
    length = 2;
  else if (c == 0xE0)
    length = 3, lo = 0xA0;
  else if (c == 0xED)
    length = 3, hi = 0x9F;
  else if (c >= 0xE1 && c <= 0xEF)
    length = 3;
  else if (c == 0xF0)
    length = 4, lo = 0x90;
  else if (c == 0xF4)
    length = 4, hi = 0x8F;
  else if (c >= 0xF1 && c <= 0xF3)
    length = 4;
  else
    return 0;
  if (i + length > text.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < length; ++k)
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  return length;
}

// JSON must be UTF-8, but crawled text often is not. To keep such bytes as they are, each invalid
// byte b (always >= 0x80) is carried through the JSON parser as the private-use code point
// U+10FF00+b and turned back into b afterwards.
std::string escape_invalid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 16);
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_sequence_length(text, i);
    if (n > 0) {
      out.append(text.substr(i, n));
      i += n;
      continue;
    }
    const unsigned cp = 0x10FF00u + static_cast<unsigned char>(text[i]);
    out += static_cast<char>(0xF4);
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
    ++i;
  }
  return out;
}

std::string unescape_invalid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  for (std::size_t i = 0; i < text.size();) {
    if (i + 3 < text.size() && byte(i) == 0xF4 && byte(i + 1) == 0x8F &&
        (byte(i + 2) == 0xBE || byte(i + 2) == 0xBF) && (byte(i + 3) & 0xC0) == 0x80) {
      const unsigned low =
          (static_cast<unsigned>(byte(i + 2) & 0x3F) - 0x3C) << 6 | (byte(i + 3) & 0x3F);
      out += static_cast<char>(low);
      i += 4;
    } else {
      out += text[i++];
    }
  }
  return out;
}

bool is_blank(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  });
}

std::string read_gzip(const fs::path& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) fail("cannot read '{}': {}", path.string(), std::strerror(errno));
  struct Closer {
    gzFile f;
    ~Closer() { gzclose_r(f); }
  } closer{file};
  gzbuffer(file, 1 << 17);
  std::string out;
  std::vector<char> buffer(1 << 16);
  for (;;) {
    const int n = gzread(file, buffer.data(), static_cast<unsigned>(buffer.size()));
    if (n < 0) {
      int code = 0;
      const char* message = gzerror(file, &code);
      fail("cannot decompress '{}': {} (the gzip file is truncated or corrupt)", path.string(),
           message ? message : "unknown error");
    }
    // zlib reads non-gzip data through unchanged; a .gz name promises compression.
    if (gzdirect(file))
      fail("'{}' is not gzip-compressed although its name ends in .gz", path.string());
    if (n == 0) break;
    out.append(buffer.data(), static_cast<std::size_t>(n));
  }
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  if (code != Z_OK && code != Z_STREAM_END)
    fail("cannot decompress '{}': {} (the gzip file is truncated or corrupt)", path.string(),
         message ? message : "unknown error");
  return out;
}

std::string read_plain(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read '{}': {}", path.string(), std::strerror(errno));
  std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read '{}': I/O error", path.string());
  return out;
}

class CorpusReader {
 public:
  CorpusReader(Corpus& corpus, const ReadOptions& options) : corpus_(corpus), options_(options) {}

  void read_file(const fs::path& path, const std::string& relative, FileType type) {
    std::string content;
    try {
      content = read_file_bytes(path);  // decompresses .gz
    } catch (const Error& e) {
      skip_or_throw(e.what(), /*file=*/true);
      return;
    }
    ++corpus_.stats.files;
    if (type == FileType::text)
      add(std::move(content), relative);
    else
      read_jsonl(content, relative, path);
  }

 private:
  void read_jsonl(const std::string& content, const std::string& relative, const fs::path& path) {
    std::size_t line_number = 0;
    std::size_t start = 0;
    while (start < content.size()) {
      std::size_t end = content.find('\n', start);
      if (end == std::string::npos) end = content.size();
      std::string_view line(content.data() + start, end - start);
      start = end + 1;
      ++line_number;
      if (line.ends_with('\r')) line.remove_suffix(1);
      if (is_blank(line)) continue;
      const std::string where = fmt::format("{}:{}", path.string(), line_number);
      const bool escaped = !is_valid_utf8(line);
      nlohmann::json object;
      try {
        object = escaped ? nlohmann::json::parse(escape_invalid_utf8(line))
                         : nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        skip_or_throw(fmt::format("{}: malformed JSON line ({})", where, e.what()), false);
        continue;
      }
      const auto field = object.is_object() ? object.find(options_.jsonl_field) : object.end();
      if (!object.is_object() || field == object.end() || !field->is_string()) {
        skip_or_throw(fmt::format("{}: no string field '{}' in this JSON line (set "
                                  "data.jsonl_field to the field that holds the text)",
                                  where, options_.jsonl_field),
                      false);
        continue;
      }
      std::string text = field->get<std::string>();
      if (escaped) text = unescape_invalid_utf8(text);
      add(std::move(text), fmt::format("{}:{}", relative, line_number));
    }
  }

  void add(std::string text, std::string source) {
    if (is_blank(text)) {
      ++corpus_.stats.empty;
      return;
    }
    if (!is_valid_utf8(text)) ++corpus_.stats.invalid_utf8;
    corpus_.stats.bytes += text.size();
    ++corpus_.stats.documents;
    corpus_.documents.push_back({std::move(text), std::move(source)});
  }

  void skip_or_throw(const std::string& message, bool file) {
    if (!options_.skip_bad_files)
      throw Error(message + " (set data.skip_bad_files = true to skip and count bad input)");
    ++(file ? corpus_.stats.skipped_files : corpus_.stats.skipped_lines);
    if (corpus_.stats.problems.size() < kMaxProblemsKept) corpus_.stats.problems.push_back(message);
  }

  Corpus& corpus_;
  const ReadOptions& options_;
};

bool hidden(const fs::path& relative) {
  for (const auto& part : relative)
    if (part.string().starts_with('.')) return true;
  return false;
}

std::string corpus_name(const fs::path& dir) {
  fs::path normal = dir.lexically_normal();
  if (normal.filename().empty()) normal = normal.parent_path();
  return normal.filename().string();
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_sequence_length(text, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string read_file_bytes(const fs::path& path) {
  return path.string().ends_with(".gz") ? read_gzip(path) : read_plain(path);
}

Corpus read_corpus(const fs::path& dir, const ReadOptions& options) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail("corpus directory '{}' does not exist", dir.string());
  if (!fs::is_directory(dir, ec))
    fail("'{}' is not a directory (a corpus is a directory of documents)", dir.string());
  Corpus corpus;
  corpus.name = corpus_name(dir);
  corpus.dir = dir;

  // Collect first, then read in path order: the result must not depend on the file system's order.
  std::vector<std::pair<std::string, fs::path>> files;
  fs::recursive_directory_iterator it(dir, fs::directory_options::none, ec);
  if (ec) fail("cannot list corpus directory '{}': {}", dir.string(), ec.message());
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) fail("cannot list corpus directory '{}': {}", dir.string(), ec.message());
    const fs::path relative = it->path().lexically_relative(dir);
    if (hidden(relative)) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_directory(ec)) continue;
    files.emplace_back(relative.generic_string(), it->path());
  }
  std::sort(files.begin(), files.end());

  CorpusReader reader(corpus, options);
  for (const auto& [relative, path] : files) {
    const FileType type = classify(path.filename().string());
    if (type == FileType::ignored) {
      ++corpus.stats.ignored_files;
      continue;
    }
    reader.read_file(path, relative, type);
  }
  return corpus;
}

std::vector<fs::path> list_partitions(const fs::path& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec))
    fail(
        "corpus root '{}' is not a directory (data.root names a directory whose subdirectories "
        "are the partitions)",
        root.string());
  std::vector<fs::path> dirs;
  for (const auto& entry : fs::directory_iterator(root, ec))
    if (entry.is_directory() && !entry.path().filename().string().starts_with('.'))
      dirs.push_back(entry.path());
  if (ec) fail("cannot list corpus root '{}': {}", root.string(), ec.message());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

}  // namespace mixsim
