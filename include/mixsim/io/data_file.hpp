// data.h5: the tokenized data every training and evaluation stage reads. Base units, eval sets
// and the seed corpus as uint16 token arrays with their provenance, the tokenizer's description
// and the settings that made them. Layout and attributes: docs/file-formats.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "mixsim/data/token_set.hpp"
#include "mixsim/data/tokenizer.hpp"
#include "mixsim/io/hdf5.hpp"

namespace mixsim {

inline constexpr const char* kDataFormat = "mixsim-data";
inline constexpr std::int64_t kDataFormatVersion = 1;

// The settings a data file was made with; a rerun of prepare compares them to decide whether the
// file is up to date. Inputs are "name=directory" lines.
struct DataSettings {
  std::uint64_t unit_tokens = 0;
  std::string split_salt;
  double valid_fraction = 0;
  double test_fraction = 0;
  std::string eval_split;
  std::uint64_t eval_max_docs = 0;
  std::uint64_t eval_max_tokens = 0;
  std::uint64_t eval_seed = 0;
  std::string jsonl_field;
  std::vector<std::string> partitions;  // "news=data/brown/news"
  std::vector<std::string> eval_dirs;   // "fortunes=data/eval/fortunes"
  std::string seed_corpus;              // directory, "" when none
  std::string eval_cut = "spread";      // spread | prefix ("prefix" in files made before it existed)
  bool operator==(const DataSettings&) const = default;
};

// A partition: what was read and how it was split. Group /units/<name>.
struct PartitionRecord {
  std::string name;
  std::string source;  // directory
  std::uint64_t files = 0, documents = 0, bytes = 0, tokens = 0;
  std::uint64_t train_documents = 0, valid_documents = 0, test_documents = 0;
  std::uint64_t train_tokens = 0;
  std::uint64_t units = 0;
  std::uint64_t empty_documents = 0, invalid_utf8_documents = 0;
  std::uint64_t skipped_files = 0, skipped_lines = 0, ignored_files = 0;
};

// A base unit. Group /units/<partition>/<index>, datasets tokens and documents.
struct UnitRecord {
  std::string name;  // "news/0"
  std::string partition;
  std::uint64_t index = 0;
  std::uint64_t documents = 0, bytes = 0, tokens = 0;
  double upsample = 1.0;  // max(1, unit_tokens / tokens): how often training repeats the unit
};

// An eval set. Group /eval/<name>, datasets tokens and documents.
struct EvalSetRecord {
  std::string name;
  std::string kind;       // "partition": held out of the partition of the same name; "ood"
  std::string partition;  // the own partition (kind "partition"), else ""
  std::string split;      // "valid" | "test" for partitions, "all" for out-of-domain sets
  std::string source;     // directory
  std::uint64_t available_documents = 0;  // before the sample and the token limit
  std::uint64_t documents = 0, bytes = 0, tokens = 0;
  std::uint64_t scored_tokens = 0;  // tokens - 1: every token but the first is a target
  bool truncated = false;           // the last document was cut at eval_max_tokens
};

// The seed corpus. Group /seed, datasets tokens and documents.
struct SeedRecord {
  std::string source;
  std::uint64_t documents = 0, bytes = 0, tokens = 0;
};

// Writes data.h5 under a temporary name; commit() moves it into place. The counts of tokens,
// documents and bytes in the records are taken from the token sets.
class DataFileWriter {
 public:
  DataFileWriter(const std::filesystem::path& path, const DataSettings& settings,
                 const TokenizerInfo& tokenizer, const std::string& created_by);
  void add_partition(const PartitionRecord& partition);
  UnitRecord add_unit(UnitRecord unit, const TokenSet& tokens);
  EvalSetRecord add_eval_set(EvalSetRecord eval_set, const TokenSet& tokens);
  SeedRecord set_seed(SeedRecord seed, const TokenSet& tokens);
  void commit();

 private:
  void write_tokens(const h5::Group& group, const TokenSet& tokens);
  h5::AtomicFile file_;
  std::vector<std::string> unit_names_;
  std::vector<std::string> eval_names_;
};

// Reads data.h5: the catalogue on open, token arrays on demand.
class DataFile {
 public:
  // Throws Error when the file is missing, not HDF5, not a mixsim data file, or of another version.
  static DataFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const DataSettings& settings() const { return settings_; }
  const TokenizerInfo& tokenizer() const { return tokenizer_; }
  const std::vector<PartitionRecord>& partitions() const { return partitions_; }
  const std::vector<UnitRecord>& units() const { return units_; }  // in prepare's order
  const std::vector<EvalSetRecord>& eval_sets() const { return eval_sets_; }
  const std::optional<SeedRecord>& seed() const { return seed_; }

  // Lookups by name; an Error lists the names that exist.
  const UnitRecord& unit(const std::string& name) const;
  const EvalSetRecord& eval_set(const std::string& name) const;

  std::vector<Token> unit_tokens(const std::string& name) const;
  std::vector<Token> eval_tokens(const std::string& name) const;
  std::vector<Token> seed_tokens() const;  // Error when the file has no seed corpus
  std::vector<std::string> unit_documents(const std::string& name) const;
  std::vector<std::string> eval_documents(const std::string& name) const;
  std::vector<std::string> seed_documents() const;

 private:
  DataFile(std::filesystem::path path, h5::File file);
  std::vector<Token> read_tokens(const std::string& group) const;
  std::filesystem::path path_;
  h5::File file_;
  DataSettings settings_;
  TokenizerInfo tokenizer_;
  std::vector<PartitionRecord> partitions_;
  std::vector<UnitRecord> units_;
  std::vector<EvalSetRecord> eval_sets_;
  std::optional<SeedRecord> seed_;
};

// Reads only the settings of an existing data file (for prepare's up-to-date check).
DataSettings read_data_settings(const std::filesystem::path& path);

}  // namespace mixsim
