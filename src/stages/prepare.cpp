#include "mixsim/stages/prepare.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>
#include <unordered_set>

#include "mixsim/core/error.hpp"
#include "mixsim/core/log.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/core/timer.hpp"
#include "mixsim/data/corpus.hpp"
#include "mixsim/data/eval_sets.hpp"
#include "mixsim/data/split.hpp"
#include "mixsim/data/token_set.hpp"
#include "mixsim/data/units.hpp"
#include "mixsim/io/data_file.hpp"
#include "mixsim/version.hpp"

namespace mixsim {
namespace fs = std::filesystem;
namespace {

constexpr std::uint64_t kEvalSampleStream = 0x6576616c;  // "eval": run.seed -> eval set samples

struct NamedDir {
  std::string name;
  fs::path dir;
};

std::string dir_name(const fs::path& dir) {
  fs::path normal = dir.lexically_normal();
  if (normal.filename().empty()) normal = normal.parent_path();
  return normal.filename().string();
}

std::vector<NamedDir> named_dirs(const std::vector<fs::path>& dirs, const char* what) {
  std::vector<NamedDir> out;
  for (const auto& d : dirs) {
    NamedDir nd{dir_name(d), d};
    if (nd.name.empty() || nd.name == "." || nd.name == "..")
      usage_fail("cannot name the {} directory '{}' (name it by its last path component)", what,
                 d.string());
    for (const auto& other : out)
      if (other.name == nd.name)
        usage_fail(
            "two {} directories have the same name '{}' ('{}' and '{}'): the names "
            "must differ",
            what, nd.name, other.dir.string(), d.string());
    out.push_back(std::move(nd));
  }
  return out;
}

std::vector<NamedDir> partition_dirs(const DataConfig& data) {
  if (!data.root.empty() && !data.partitions.empty())
    usage_fail(
        "set either data.root (a directory of partitions) or data.partitions (a list), "
        "not both");
  if (data.root.empty() && data.partitions.empty())
    usage_fail(
        "mixsim prepare needs partitions: set data.root (a directory whose "
        "subdirectories are the partitions) or data.partitions (a comma-separated list)");
  std::vector<fs::path> dirs;
  if (!data.root.empty()) {
    dirs = list_partitions(data.root);
    if (dirs.empty())
      fail(
          "corpus root '{}' has no subdirectories: each partition is a subdirectory of "
          "data.root",
          data.root);
  } else {
    dirs.assign(data.partitions.begin(), data.partitions.end());
  }
  return named_dirs(dirs, "partition");
}

std::vector<std::string> settings_lines(const std::vector<NamedDir>& dirs) {
  std::vector<std::string> lines;
  for (const auto& d : dirs) lines.push_back(d.name + "=" + d.dir.string());
  return lines;
}

// The first setting in which two data files differ, for the "made with other settings" error.
std::string first_difference(const DataSettings& a, const DataSettings& b) {
  auto show = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
    return "[" + s + "]";
  };
  if (a.unit_tokens != b.unit_tokens)
    return fmt::format("unit_tokens {} vs {}", a.unit_tokens, b.unit_tokens);
  if (a.split_salt != b.split_salt)
    return fmt::format("split_salt '{}' vs '{}'", a.split_salt, b.split_salt);
  if (a.valid_fraction != b.valid_fraction)
    return fmt::format("valid_fraction {} vs {}", a.valid_fraction, b.valid_fraction);
  if (a.test_fraction != b.test_fraction)
    return fmt::format("test_fraction {} vs {}", a.test_fraction, b.test_fraction);
  if (a.eval_split != b.eval_split)
    return fmt::format("eval_split {} vs {}", a.eval_split, b.eval_split);
  if (a.eval_max_docs != b.eval_max_docs)
    return fmt::format("eval_max_docs {} vs {}", a.eval_max_docs, b.eval_max_docs);
  if (a.eval_max_tokens != b.eval_max_tokens)
    return fmt::format("eval_max_tokens {} vs {}", a.eval_max_tokens, b.eval_max_tokens);
  if (a.eval_seed != b.eval_seed) return fmt::format("run.seed {} vs {}", a.eval_seed, b.eval_seed);
  if (a.eval_cut != b.eval_cut) return fmt::format("eval_cut {} vs {}", a.eval_cut, b.eval_cut);
  if (a.jsonl_field != b.jsonl_field)
    return fmt::format("jsonl_field '{}' vs '{}'", a.jsonl_field, b.jsonl_field);
  if (a.partitions != b.partitions)
    return fmt::format("partitions {} vs {}", show(a.partitions), show(b.partitions));
  if (a.eval_dirs != b.eval_dirs)
    return fmt::format("eval_dirs {} vs {}", show(a.eval_dirs), show(b.eval_dirs));
  return fmt::format("seed_corpus '{}' vs '{}'", a.seed_corpus, b.seed_corpus);
}

// A document with its content hash, so that splits, orders and overlap checks hash once.
struct Hashed {
  const Document* doc;
  std::uint64_t hash;
};

// Every stored token array lists its documents by order key (ties, i.e. identical texts, by
// source), so a unit cut from a partition is a random subset of it, the same on every run.
void sort_by_order_key(std::vector<Hashed>& docs) {
  std::sort(docs.begin(), docs.end(), [](const Hashed& a, const Hashed& b) {
    const auto ka = order_key(a.hash), kb = order_key(b.hash);
    return ka != kb ? ka < kb : a.doc->source < b.doc->source;
  });
}

std::vector<const Document*> pointers(const std::vector<Hashed>& docs) {
  std::vector<const Document*> out;
  for (const auto& h : docs) out.push_back(h.doc);
  return out;
}

class Preparer {
 public:
  Preparer(const JobConfig& config, DataFileWriter& writer, const Tokenizer& tokenizer)
      : config_(config), data_(config.data), writer_(writer), tokenizer_(tokenizer) {}

  // Returns false when the corpus had no text and skip_bad_files let it be skipped.
  bool add_partition(const NamedDir& p);
  bool add_ood_set(const NamedDir& e);
  void set_seed(const fs::path& dir);

  PrepareSummary summary;

 private:
  std::optional<Corpus> read(const NamedDir& d, const char* what);
  void add_eval_set(EvalSetRecord record, const std::vector<Hashed>& docs);
  std::vector<Hashed> hash_all(const Corpus& corpus);

  const JobConfig& config_;
  const DataConfig& data_;
  DataFileWriter& writer_;
  const Tokenizer& tokenizer_;
  std::unordered_set<std::uint64_t> used_;  // every partition and eval-set document
};

std::optional<Corpus> Preparer::read(const NamedDir& d, const char* what) {
  Corpus corpus = read_corpus(d.dir, {data_.jsonl_field, data_.skip_bad_files});
  for (const auto& problem : corpus.stats.problems)
    log::warn("{} {}: skipped: {}", what, d.name, problem);
  if (!corpus.documents.empty()) return corpus;
  const auto& s = corpus.stats;
  const std::string message = fmt::format(
      "{} '{}' ('{}') has no text: {} document files read, {} empty documents, {} files skipped, "
      "{} files of other types ignored (documents are .txt or .jsonl files, optionally .gz)",
      what, d.name, d.dir.string(), s.files, s.empty, s.skipped_files, s.ignored_files);
  if (!data_.skip_bad_files) fail("{}", message);
  log::warn("{}; skipped (data.skip_bad_files)", message);
  return std::nullopt;
}

std::vector<Hashed> Preparer::hash_all(const Corpus& corpus) {
  std::vector<Hashed> out;
  out.reserve(corpus.documents.size());
  for (const auto& doc : corpus.documents)
    out.push_back({&doc, content_hash(data_.split_salt, doc.text)});
  return out;
}

void Preparer::add_eval_set(EvalSetRecord record, const std::vector<Hashed>& docs) {
  const Rng rng =
      Rng(config_.run.seed).split(kEvalSampleStream).split(content_hash("", record.name));
  const auto ptrs = pointers(docs);
  const TokenSet set =
      build_eval_set(ptrs, {data_.eval_max_docs, data_.eval_max_tokens, data_.eval_cut == "spread"},
                     tokenizer_, rng);
  record.available_documents = docs.size();
  const EvalSetRecord r = writer_.add_eval_set(std::move(record), set);
  for (const auto& h : docs) used_.insert(h.hash);  // also documents left out of the sample
  log::info("eval set {} ({}): {} of {} documents{}, {} tokens{}", r.name,
            r.kind == "ood" ? "out of domain" : r.split + " split", r.documents,
            r.available_documents,
            r.available_documents > data_.eval_max_docs
                ? fmt::format(" (from a sample of {})", data_.eval_max_docs)
                : "",
            r.tokens,
            r.truncated ? fmt::format(" (cut at data.eval_max_tokens, {})", data_.eval_cut) : "");
  ++summary.eval_sets;
  summary.eval_tokens += r.tokens;
}

bool Preparer::add_partition(const NamedDir& p) {
  auto corpus = read(p, "partition");
  if (!corpus) {
    ++summary.skipped_partitions;
    return false;
  }
  const Split eval_split = data_.eval_split == "test" ? Split::test : Split::valid;
  const SplitFractions fractions{data_.valid_fraction, data_.test_fraction};
  std::vector<Hashed> train, eval;
  PartitionRecord record;
  std::uint64_t held_out_tokens = 0;
  for (const auto& h : hash_all(*corpus)) {
    used_.insert(h.hash);  // every split: the seed corpus must share no text with a partition
    const Split split = assign_split(h.hash, fractions);
    ++(split == Split::train   ? record.train_documents
       : split == Split::valid ? record.valid_documents
                               : record.test_documents);
    if (split == Split::train) {
      train.push_back(h);
      continue;
    }
    held_out_tokens += tokenizer_.encode(h.doc->text).size() + 1;
    if (split == eval_split) eval.push_back(h);
  }
  const std::uint64_t n_docs = corpus->documents.size();
  if (train.empty())
    fail(
        "partition '{}' ('{}'): none of its {} documents fell into the train split: lower "
        "data.valid_fraction / data.test_fraction",
        p.name, p.dir.string(), n_docs);
  if (eval.empty())
    fail(
        "partition '{}' ('{}'): none of its {} documents fell into the {} split, so it would "
        "have no eval set: raise data.{}_fraction (now {}) or change data.split_salt",
        p.name, p.dir.string(), n_docs, data_.eval_split, data_.eval_split,
        eval_split == Split::valid ? data_.valid_fraction : data_.test_fraction);
  sort_by_order_key(train);
  sort_by_order_key(eval);

  // Tokenize the train documents once; units are slices of the result.
  TokenSet all;
  std::vector<std::size_t> starts;
  for (const auto& h : train) {
    starts.push_back(all.tokens.size());
    all.append(tokenizer_, *h.doc);
  }
  starts.push_back(all.tokens.size());
  std::vector<std::uint64_t> doc_tokens;
  for (std::size_t i = 0; i + 1 < starts.size(); ++i)
    doc_tokens.push_back(starts[i + 1] - starts[i]);

  const auto cuts = cut_units(doc_tokens, data_.unit_tokens);
  std::uint64_t smallest = ~std::uint64_t{0}, largest = 0;
  for (std::size_t j = 0; j < cuts.size(); ++j) {
    const auto& cut = cuts[j];
    TokenSet unit;
    unit.tokens.assign(all.tokens.begin() + static_cast<std::ptrdiff_t>(starts[cut.first_doc]),
                       all.tokens.begin() + static_cast<std::ptrdiff_t>(starts[cut.end_doc]));
    unit.documents.assign(all.documents.begin() + static_cast<std::ptrdiff_t>(cut.first_doc),
                          all.documents.begin() + static_cast<std::ptrdiff_t>(cut.end_doc));
    unit.bytes = tokenizer_.count_bytes(unit.tokens);
    const UnitRecord u =
        writer_.add_unit({unit_name(p.name, j), p.name, j, 0, 0, 0, cut.upsample}, unit);
    log::debug("unit {}: {} documents, {} bytes, {} tokens, upsample {:.3f}", u.name, u.documents,
               u.bytes, u.tokens, u.upsample);
    smallest = std::min(smallest, u.tokens);
    largest = std::max(largest, u.tokens);
  }

  const auto& s = corpus->stats;
  record.name = p.name;
  record.source = p.dir.string();
  record.files = s.files;
  record.documents = n_docs;
  record.bytes = s.bytes;
  record.train_tokens = all.tokens.size();
  record.tokens = all.tokens.size() + held_out_tokens;
  record.units = cuts.size();
  record.empty_documents = s.empty;
  record.invalid_utf8_documents = s.invalid_utf8;
  record.skipped_files = s.skipped_files;
  record.skipped_lines = s.skipped_lines;
  record.ignored_files = s.ignored_files;
  writer_.add_partition(record);

  const std::string units =
      cuts.size() == 1 && cuts[0].upsample > 1.0
          ? fmt::format("1 unit of {} tokens (upsampled x{:.2f} to the {}-token budget)", largest,
                        cuts[0].upsample, data_.unit_tokens)
          : fmt::format("{} unit{} of {}{} tokens", cuts.size(), cuts.size() == 1 ? "" : "s",
                        smallest == largest ? "" : fmt::format("{}..", smallest), largest);
  log::info(
      "partition {}: {} documents (train {}, valid {}, test {}) from {} files, {} bytes, {} "
      "tokens; {}; {} empty, {} invalid UTF-8, {} files and {} lines skipped",
      p.name, n_docs, record.train_documents, record.valid_documents, record.test_documents,
      s.files, s.bytes, record.tokens, units, s.empty, s.invalid_utf8, s.skipped_files,
      s.skipped_lines);

  add_eval_set({p.name, "partition", p.name, data_.eval_split, p.dir.string()}, eval);
  ++summary.partitions;
  summary.units += cuts.size();
  summary.unit_tokens += all.tokens.size();
  return true;
}

bool Preparer::add_ood_set(const NamedDir& e) {
  auto corpus = read(e, "eval set");
  if (!corpus) return false;
  auto docs = hash_all(*corpus);
  sort_by_order_key(docs);
  add_eval_set({e.name, "ood", "", "all", e.dir.string()}, docs);
  return true;
}

void Preparer::set_seed(const fs::path& dir) {
  const NamedDir d{dir_name(dir), dir};
  Corpus corpus = read_corpus(dir, {data_.jsonl_field, data_.skip_bad_files});
  for (const auto& problem : corpus.stats.problems) log::warn("seed corpus: skipped: {}", problem);
  // The seed model must not have seen any text it is later compared on or continued from.
  std::vector<Hashed> docs;
  std::uint64_t dropped = 0;
  for (const auto& h : hash_all(corpus)) {
    if (used_.count(h.hash))
      ++dropped;
    else
      docs.push_back(h);
  }
  if (docs.empty())
    fail("seed corpus '{}' has no text{}: {} document files read, {} empty documents", dir.string(),
         dropped ? " that is not also in a unit or eval set" : "", corpus.stats.files,
         corpus.stats.empty);
  if (dropped)
    log::warn("seed corpus: left out {} documents whose text is also in a unit or eval set",
              dropped);
  sort_by_order_key(docs);
  TokenSet set;
  for (const auto& h : docs) set.append(tokenizer_, *h.doc);
  const SeedRecord r = writer_.set_seed({dir.string()}, set);
  log::info("seed corpus {}: {} documents from {} files, {} bytes, {} tokens", d.name, r.documents,
            corpus.stats.files, r.bytes, r.tokens);
  summary.seed_tokens = r.tokens;
}

// A prepare that was killed leaves its temporary (data.h5.tmp.PID) behind; only one prepare
// writes a job's data file, so any such file is stale.
void remove_stale_temporaries(const fs::path& output) {
  const fs::path dir = output.has_parent_path() ? output.parent_path() : fs::path(".");
  const std::string prefix = output.filename().string() + ".tmp.";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!entry.path().filename().string().starts_with(prefix)) continue;
    fs::remove(entry.path(), ec);
    log::info("removed {}, left by an interrupted prepare", entry.path().string());
  }
}

void wait_for_rank0(const Communicator& world) {
  // A plain barrier spins at full speed on the waiting ranks, taking cores from rank 0 on an
  // oversubscribed node; poll a non-blocking barrier and sleep in between instead.
  MPI_Request request;
  check_mpi(MPI_Ibarrier(world.handle(), &request), "MPI_Ibarrier");
  for (int done = 0;;) {
    check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (done) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

fs::path data_file_path(const JobConfig& config) {
  const fs::path output(config.data.output);
  return output.is_absolute() ? output : fs::path(config.run.out_dir) / output;
}

PrepareSummary prepare_data(const JobConfig& config) {
  const Stopwatch watch;
  const DataConfig& data = config.data;
  const auto partitions = partition_dirs(data);
  std::vector<fs::path> eval_paths(data.eval_dirs.begin(), data.eval_dirs.end());
  const auto ood = named_dirs(eval_paths, "eval set");
  for (const auto& e : ood)
    for (const auto& p : partitions)
      if (e.name == p.name)
        usage_fail(
            "eval set directory '{}' has the name of partition '{}' ('{}'): the eval set "
            "of a partition is made from its own held-out split; rename one directory",
            e.dir.string(), p.name, p.dir.string());

  DataSettings settings{data.unit_tokens,           data.split_salt,     data.valid_fraction,
                        data.test_fraction,         data.eval_split,     data.eval_max_docs,
                        data.eval_max_tokens,       config.run.seed,     data.jsonl_field,
                        settings_lines(partitions), settings_lines(ood), data.seed_corpus,
                        data.eval_cut};
  const auto tokenizer = make_tokenizer(data.tokenizer);
  const fs::path output = data_file_path(config);
  PrepareSummary summary;
  summary.output = output;

  std::error_code ec;
  if (fs::exists(output, ec)) {
    // Restartable: an existing file made with the same settings is the result already.
    const DataFile existing = DataFile::open(output);
    if (existing.settings() == settings && existing.tokenizer() == tokenizer->info()) {
      log::info("{} is up to date (same data settings): nothing to do", output.string());
      summary.up_to_date = true;
      summary.units = existing.units().size();
      summary.eval_sets = existing.eval_sets().size();
      return summary;
    }
    fail(
        "{} exists and was made with other settings ({}): delete it to rebuild, or set "
        "data.output to another file",
        output.string(),
        existing.tokenizer() == tokenizer->info()
            ? first_difference(existing.settings(), settings)
            : fmt::format("tokenizer '{}' vs '{}'", existing.tokenizer().kind, data.tokenizer));
  }
  if (output.has_parent_path()) {
    fs::create_directories(output.parent_path(), ec);
    if (ec)
      fail("cannot create the directory '{}': {}", output.parent_path().string(), ec.message());
  }
  remove_stale_temporaries(output);

  log::info("prepare: {} partitions, {} out-of-domain eval sets, {} into {}", partitions.size(),
            ood.size(), data.seed_corpus.empty() ? "no seed corpus" : "a seed corpus",
            output.string());
  DataFileWriter writer(output, settings, tokenizer->info(),
                        fmt::format("mixsim {} (git {})", kVersion, kGitRevision));
  Preparer preparer(config, writer, *tokenizer);
  for (const auto& p : partitions) preparer.add_partition(p);
  if (preparer.summary.partitions == 0)
    fail("no partition has text (all {} were skipped): nothing to prepare", partitions.size());
  for (const auto& e : ood) preparer.add_ood_set(e);
  if (!data.seed_corpus.empty())
    preparer.set_seed(data.seed_corpus);
  else
    log::info("no seed corpus (data.seed_corpus is not set): the file has no /seed group");
  writer.commit();

  summary = preparer.summary;
  summary.output = output;
  std::error_code size_ec;
  const auto bytes = fs::file_size(output, size_ec);
  log::info(
      "wrote {}: {} partitions ({} skipped), {} units ({} tokens), {} eval sets ({} tokens), "
      "seed {} tokens; {:.1f} MB in {:.1f} s",
      output.string(), summary.partitions, summary.skipped_partitions, summary.units,
      summary.unit_tokens, summary.eval_sets, summary.eval_tokens, summary.seed_tokens,
      size_ec ? 0.0 : static_cast<double>(bytes) / 1e6, watch.seconds());
  return summary;
}

int run_prepare(const JobConfig& config, const Communicator& world) {
  if (world.rank() == 0) prepare_data(config);  // a failure aborts every rank (run_guarded)
  if (world.size() > 1) wait_for_rank0(world);
  return 0;
}

}  // namespace mixsim
