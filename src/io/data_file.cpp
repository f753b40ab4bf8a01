#include "mixsim/io/data_file.hpp"

#include <algorithm>

#include "mixsim/core/error.hpp"

namespace mixsim {
namespace {

// Tokens compress well after byte shuffling (the high byte of a byte-level token is almost
// always 0); 64 Ki tokens per chunk keeps partial reads cheap.
const h5::DatasetOptions kTokenStorage{
    .chunk_elements = 1 << 16, .deflate_level = 4, .shuffle = true};

void write_settings(const h5::Object& root, const DataSettings& s) {
  root.set_attribute("unit_tokens", s.unit_tokens);
  root.set_attribute("split_salt", s.split_salt);
  root.set_attribute("valid_fraction", s.valid_fraction);
  root.set_attribute("test_fraction", s.test_fraction);
  root.set_attribute("eval_split", s.eval_split);
  root.set_attribute("eval_max_docs", s.eval_max_docs);
  root.set_attribute("eval_max_tokens", s.eval_max_tokens);
  root.set_attribute("eval_seed", s.eval_seed);
  root.set_attribute("jsonl_field", s.jsonl_field);
  root.set_attribute("inputs_partitions", s.partitions);
  root.set_attribute("inputs_eval_dirs", s.eval_dirs);
  root.set_attribute("inputs_seed_corpus", s.seed_corpus);
  root.set_attribute("eval_cut", s.eval_cut);
}

DataSettings read_settings(const h5::Object& root) {
  DataSettings s;
  s.unit_tokens = root.attribute<std::uint64_t>("unit_tokens");
  s.split_salt = root.string_attribute("split_salt");
  s.valid_fraction = root.attribute<double>("valid_fraction");
  s.test_fraction = root.attribute<double>("test_fraction");
  s.eval_split = root.string_attribute("eval_split");
  s.eval_max_docs = root.attribute<std::uint64_t>("eval_max_docs");
  s.eval_max_tokens = root.attribute<std::uint64_t>("eval_max_tokens");
  s.eval_seed = root.attribute<std::uint64_t>("eval_seed");
  s.jsonl_field = root.string_attribute("jsonl_field");
  s.partitions = root.strings_attribute("inputs_partitions");
  s.eval_dirs = root.strings_attribute("inputs_eval_dirs");
  s.seed_corpus = root.string_attribute("inputs_seed_corpus");
  // Files made before eval sets could be spread over their documents cut them as a prefix.
  s.eval_cut = root.has_attribute("eval_cut") ? root.string_attribute("eval_cut") : "prefix";
  return s;
}

void check_format(const h5::File& file) {
  if (!file.has_attribute("format") || file.string_attribute("format") != kDataFormat)
    fail(
        "'{}' is an HDF5 file but not a mixsim data file (no format = \"{}\" attribute): make "
        "data files with mixsim prepare",
        file.file_name(), kDataFormat);
  const auto version = file.attribute<std::int64_t>("format_version");
  if (version != kDataFormatVersion)
    fail(
        "'{}' is a mixsim data file of format version {}, this build reads version {}: rerun "
        "mixsim prepare with this build",
        file.file_name(), version, kDataFormatVersion);
}

PartitionRecord read_partition(const h5::Group& g, const std::string& name) {
  PartitionRecord p;
  p.name = name;
  p.source = g.string_attribute("source");
  auto u = [&](const char* key) { return g.attribute<std::uint64_t>(key); };
  p.files = u("files");
  p.documents = u("documents");
  p.bytes = u("bytes");
  p.tokens = u("tokens");
  p.train_documents = u("train_documents");
  p.valid_documents = u("valid_documents");
  p.test_documents = u("test_documents");
  p.train_tokens = u("train_tokens");
  p.units = u("units");
  p.empty_documents = u("empty_documents");
  p.invalid_utf8_documents = u("invalid_utf8_documents");
  p.skipped_files = u("skipped_files");
  p.skipped_lines = u("skipped_lines");
  p.ignored_files = u("ignored_files");
  return p;
}

template <class Record>
const Record& find_named(const std::vector<Record>& records, const std::string& name,
                         const char* what, const std::filesystem::path& path) {
  for (const auto& r : records)
    if (r.name == name) return r;
  std::string known;
  for (const auto& r : records) known += (known.empty() ? "" : ", ") + r.name;
  fail("{} '{}' is not in '{}' (it has: {})", what, name, path.string(),
       known.empty() ? "none" : known);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Writer

DataFileWriter::DataFileWriter(const std::filesystem::path& path, const DataSettings& settings,
                               const TokenizerInfo& tokenizer, const std::string& created_by)
    : file_(path) {
  MIXSIM_CHECK(tokenizer.vocab_size <= 65536, "vocabulary of {} does not fit uint16 tokens",
               tokenizer.vocab_size);
  const h5::File& root = file_.file();
  root.set_attribute("format", kDataFormat);
  root.set_attribute("format_version", kDataFormatVersion);
  root.set_attribute("created_by", created_by);
  write_settings(root, settings);
  const h5::Group t = root.create_group("tokenizer");
  t.set_attribute("kind", tokenizer.kind);
  t.set_attribute("vocab_size", tokenizer.vocab_size);
  t.set_attribute("eot", tokenizer.eot);
  root.create_group("units");
  root.create_group("eval");
}

void DataFileWriter::write_tokens(const h5::Group& group, const TokenSet& tokens) {
  group.write_dataset("tokens", tokens.tokens, {}, kTokenStorage);
  group.write_strings("documents", tokens.documents);
}

void DataFileWriter::add_partition(const PartitionRecord& p) {
  const h5::File& root = file_.file();
  const std::string path = "units/" + p.name;
  const h5::Group g = root.exists(path) ? root.open_group(path) : root.create_group(path);
  g.set_attribute("source", p.source);
  g.set_attribute("files", p.files);
  g.set_attribute("documents", p.documents);
  g.set_attribute("bytes", p.bytes);
  g.set_attribute("tokens", p.tokens);
  g.set_attribute("train_documents", p.train_documents);
  g.set_attribute("valid_documents", p.valid_documents);
  g.set_attribute("test_documents", p.test_documents);
  g.set_attribute("train_tokens", p.train_tokens);
  g.set_attribute("units", p.units);
  g.set_attribute("empty_documents", p.empty_documents);
  g.set_attribute("invalid_utf8_documents", p.invalid_utf8_documents);
  g.set_attribute("skipped_files", p.skipped_files);
  g.set_attribute("skipped_lines", p.skipped_lines);
  g.set_attribute("ignored_files", p.ignored_files);
}

UnitRecord DataFileWriter::add_unit(UnitRecord unit, const TokenSet& tokens) {
  unit.documents = tokens.documents.size();
  unit.bytes = tokens.bytes;
  unit.tokens = tokens.tokens.size();
  const h5::Group g = file_.file().create_group("units/" + unit.name);
  g.set_attribute("name", unit.name);
  g.set_attribute("partition", unit.partition);
  g.set_attribute("index", unit.index);
  g.set_attribute("documents", unit.documents);
  g.set_attribute("bytes", unit.bytes);
  g.set_attribute("tokens", unit.tokens);
  g.set_attribute("upsample", unit.upsample);
  write_tokens(g, tokens);
  unit_names_.push_back(unit.name);
  return unit;
}

EvalSetRecord DataFileWriter::add_eval_set(EvalSetRecord e, const TokenSet& tokens) {
  e.documents = tokens.documents.size();
  e.bytes = tokens.bytes;
  e.tokens = tokens.tokens.size();
  e.scored_tokens = e.tokens > 0 ? e.tokens - 1 : 0;
  e.truncated = tokens.truncated;
  const h5::Group g = file_.file().create_group("eval/" + e.name);
  g.set_attribute("name", e.name);
  g.set_attribute("kind", e.kind);
  g.set_attribute("partition", e.partition);
  g.set_attribute("split", e.split);
  g.set_attribute("source", e.source);
  g.set_attribute("available_documents", e.available_documents);
  g.set_attribute("documents", e.documents);
  g.set_attribute("bytes", e.bytes);
  g.set_attribute("tokens", e.tokens);
  g.set_attribute("scored_tokens", e.scored_tokens);
  g.set_attribute("truncated", static_cast<std::uint8_t>(e.truncated));
  write_tokens(g, tokens);
  eval_names_.push_back(e.name);
  return e;
}

SeedRecord DataFileWriter::set_seed(SeedRecord seed, const TokenSet& tokens) {
  seed.documents = tokens.documents.size();
  seed.bytes = tokens.bytes;
  seed.tokens = tokens.tokens.size();
  const h5::Group g = file_.file().create_group("seed");
  g.set_attribute("source", seed.source);
  g.set_attribute("documents", seed.documents);
  g.set_attribute("bytes", seed.bytes);
  g.set_attribute("tokens", seed.tokens);
  write_tokens(g, tokens);
  return seed;
}

void DataFileWriter::commit() {
  const h5::File& root = file_.file();
  root.set_attribute("unit_names", unit_names_);
  root.set_attribute("eval_set_names", eval_names_);
  file_.commit();
}

// ---------------------------------------------------------------------------------------------
// Reader

DataFile::DataFile(std::filesystem::path path, h5::File file)
    : path_(std::move(path)), file_(std::move(file)) {}

DataFile DataFile::open(const std::filesystem::path& path) {
  DataFile d(path, h5::File::open(path));
  const h5::File& root = d.file_;
  check_format(root);
  d.settings_ = read_settings(root);

  const h5::Group t = root.open_group("tokenizer");
  d.tokenizer_ = {t.string_attribute("kind"), t.attribute<std::uint32_t>("vocab_size"),
                  t.attribute<std::uint32_t>("eot")};

  for (const auto& name : root.strings_attribute("unit_names")) {
    const h5::Group g = root.open_group("units/" + name);
    UnitRecord u;
    u.name = name;
    u.partition = g.string_attribute("partition");
    u.index = g.attribute<std::uint64_t>("index");
    u.documents = g.attribute<std::uint64_t>("documents");
    u.bytes = g.attribute<std::uint64_t>("bytes");
    u.tokens = g.attribute<std::uint64_t>("tokens");
    u.upsample = g.attribute<double>("upsample");
    d.units_.push_back(u);
  }
  // Partitions in the order of their first unit.
  for (const auto& u : d.units_)
    if (std::none_of(d.partitions_.begin(), d.partitions_.end(),
                     [&](const PartitionRecord& p) { return p.name == u.partition; }))
      d.partitions_.push_back(read_partition(root.open_group("units/" + u.partition), u.partition));

  for (const auto& name : root.strings_attribute("eval_set_names")) {
    const h5::Group g = root.open_group("eval/" + name);
    EvalSetRecord e;
    e.name = name;
    e.kind = g.string_attribute("kind");
    e.partition = g.string_attribute("partition");
    e.split = g.string_attribute("split");
    e.source = g.string_attribute("source");
    e.available_documents = g.attribute<std::uint64_t>("available_documents");
    e.documents = g.attribute<std::uint64_t>("documents");
    e.bytes = g.attribute<std::uint64_t>("bytes");
    e.tokens = g.attribute<std::uint64_t>("tokens");
    e.scored_tokens = g.attribute<std::uint64_t>("scored_tokens");
    e.truncated = g.attribute<std::uint8_t>("truncated") != 0;
    d.eval_sets_.push_back(e);
  }
  if (root.exists("seed")) {
    const h5::Group g = root.open_group("seed");
    d.seed_ = SeedRecord{g.string_attribute("source"), g.attribute<std::uint64_t>("documents"),
                         g.attribute<std::uint64_t>("bytes"), g.attribute<std::uint64_t>("tokens")};
  }
  return d;
}

const UnitRecord& DataFile::unit(const std::string& name) const {
  return find_named(units_, name, "unit", path_);
}

const EvalSetRecord& DataFile::eval_set(const std::string& name) const {
  return find_named(eval_sets_, name, "eval set", path_);
}

std::vector<Token> DataFile::read_tokens(const std::string& group) const {
  return file_.open_dataset(group + "/tokens").read<Token>();
}

std::vector<Token> DataFile::unit_tokens(const std::string& name) const {
  return read_tokens("units/" + unit(name).name);
}

std::vector<Token> DataFile::eval_tokens(const std::string& name) const {
  return read_tokens("eval/" + eval_set(name).name);
}

std::vector<Token> DataFile::seed_tokens() const {
  if (!seed_)
    fail("'{}' has no seed corpus: set data.seed_corpus and rerun mixsim prepare", path_.string());
  return read_tokens("seed");
}

std::vector<std::string> DataFile::unit_documents(const std::string& name) const {
  return file_.open_dataset("units/" + unit(name).name + "/documents").read_strings();
}

std::vector<std::string> DataFile::eval_documents(const std::string& name) const {
  return file_.open_dataset("eval/" + eval_set(name).name + "/documents").read_strings();
}

std::vector<std::string> DataFile::seed_documents() const {
  if (!seed_)
    fail("'{}' has no seed corpus: set data.seed_corpus and rerun mixsim prepare", path_.string());
  return file_.open_dataset("seed/documents").read_strings();
}

DataSettings read_data_settings(const std::filesystem::path& path) {
  const h5::File file = h5::File::open(path);
  check_format(file);
  return read_settings(file);
}

}  // namespace mixsim
