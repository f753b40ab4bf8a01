// Corpus readers: a corpus (a partition, the seed corpus, an eval set) is a directory of documents.
// `.txt` files hold one document each, `.jsonl` files one JSON object per line with the text in a
// named field; either may be gzip-compressed (`.gz`). Bad input is an Error naming the file and
// line, or, with skip_bad_files, skipped and counted.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace mixsim {

struct Document {
  std::string text;    // raw bytes, as read (invalid UTF-8 is kept)
  std::string source;  // the file relative to the corpus directory; "file.jsonl:LINE" for jsonl
};

struct ReadOptions {
  std::string jsonl_field = "text";
  bool skip_bad_files = false;  // skip (and count) unreadable files and malformed lines
};

// What reading a corpus met, for the log and the data file.
struct ReadStats {
  std::uint64_t files = 0;            // document files read (.txt, .jsonl, and .gz of either)
  std::uint64_t documents = 0;        // documents kept
  std::uint64_t bytes = 0;            // text bytes kept
  std::uint64_t empty = 0;            // empty documents, skipped
  std::uint64_t invalid_utf8 = 0;     // documents kept although their text is not valid UTF-8
  std::uint64_t skipped_files = 0;    // unreadable or corrupt files skipped (skip_bad_files)
  std::uint64_t skipped_lines = 0;    // malformed jsonl lines skipped (skip_bad_files)
  std::uint64_t ignored_files = 0;    // files of other types (README, .csv, ...), never read
  std::vector<std::string> problems;  // messages of what was skipped (the first few)
};

struct Corpus {
  std::string name;  // the directory's name
  std::filesystem::path dir;
  std::vector<Document> documents;  // files in path order, lines in file order
  ReadStats stats;
};

// Reads every document file under `dir` (recursively; hidden files and directories are skipped).
// Throws Error for a missing directory, and, without skip_bad_files, for an unreadable file,
// a corrupt or truncated gzip file, a malformed JSON line or a line without the text field.
// An empty result is not an error here: the caller decides (see the prepare stage).
Corpus read_corpus(const std::filesystem::path& dir, const ReadOptions& options);

// The subdirectories of `root` (not hidden), sorted by name: the partitions of a corpus root.
std::vector<std::filesystem::path> list_partitions(const std::filesystem::path& root);

// The whole content of a file; `.gz` files are decompressed. Throws Error naming the file.
std::string read_file_bytes(const std::filesystem::path& path);

bool is_valid_utf8(std::string_view text);

}  // namespace mixsim
