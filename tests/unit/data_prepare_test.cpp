// The prepare stage in-process: corpora to data.h5, with units, eval sets and the seed corpus
// disjoint; split stability when documents are added; errors that name what is wrong; reruns.
#include <gtest/gtest.h>
#include <zlib.h>

#include <set>

#include "mixsim/core/error.hpp"
#include "mixsim/io/data_file.hpp"
#include "mixsim/stages/prepare.hpp"
#include "test_support.hpp"

using namespace mixsim;
using mixsim::testing::TempDir;
using mixsim::testing::write_file;
namespace fs = std::filesystem;

namespace {

std::string text_of(const std::string& partition, int i) {
  std::string t = partition + " document " + std::to_string(i) + ":";
  for (int k = 0; k < 20 + (i * 13) % 60; ++k) t += " word" + std::to_string((i * k) % 97);
  return t + "\n";
}

// Partition `name` with documents [first, end) as one .txt file each.
void add_docs(const fs::path& dir, const std::string& name, int first, int end) {
  fs::create_directories(dir / name);
  for (int i = first; i < end; ++i)
    write_file(dir / name / ("d" + std::to_string(i) + ".txt"), text_of(name, i));
}

JobConfig job(const TempDir& dir) {
  JobConfig c;
  c.run.out_dir = (dir / "run").string();
  c.run.seed = 5;
  c.data.root = (dir / "corpus").string();
  c.data.unit_tokens = 3000;
  c.data.valid_fraction = 0.2;
  c.data.test_fraction = 0.1;
  c.data.eval_max_docs = 1000;
  c.data.eval_max_tokens = 1000000;
  return c;
}

std::set<std::string> unit_docs(const DataFile& d, const std::string& partition) {
  std::set<std::string> out;
  for (const auto& u : d.units())
    if (u.partition == partition)
      for (const auto& doc : d.unit_documents(u.name)) out.insert(doc);
  return out;
}

std::set<std::string> as_set(const std::vector<std::string>& v) {
  return {v.begin(), v.end()};
}

std::string error_of(const JobConfig& c) {
  try {
    prepare_data(c);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Prepare, WritesUnitsEvalSetsAndSeedDisjointly) {
  TempDir dir;
  add_docs(dir / "corpus", "news", 0, 120);
  add_docs(dir / "corpus", "humor", 0, 10);  // smaller than one unit
  add_docs(dir / "ood", "fortunes", 0, 40);
  add_docs(dir.path(), "seed", 0, 20);
  write_file(dir / "seed" / "copy.txt", text_of("news", 3));  // also in a partition: left out
  JobConfig c = job(dir);
  c.data.eval_dirs = {(dir / "ood" / "fortunes").string()};
  c.data.seed_corpus = (dir / "seed").string();

  const PrepareSummary s = prepare_data(c);
  EXPECT_FALSE(s.up_to_date);
  EXPECT_EQ(s.output, fs::path(c.run.out_dir) / "data.h5");
  const DataFile d = DataFile::open(s.output);
  EXPECT_EQ(d.partitions().size(), 2u);
  EXPECT_EQ(d.partitions()[0].name, "humor");  // root subdirectories in name order
  // news: about 85 train documents of ~360 tokens = ~31k tokens -> k = floor(N / 3000) units,
  // each within one document (< 500 tokens) of N / k >= 3000.
  std::size_t news_units = 0;
  std::uint64_t news_tokens = 0;
  for (const auto& u : d.units()) {
    EXPECT_EQ(u.name, u.partition + "/" + std::to_string(u.index));
    EXPECT_DOUBLE_EQ(u.upsample, std::max(1.0, 3000.0 / static_cast<double>(u.tokens)));
    if (u.partition == "news") {
      ++news_units;
      news_tokens += u.tokens;
      EXPECT_GE(u.tokens, 2500u);
    }
  }
  EXPECT_EQ(news_units, news_tokens / 3000);
  EXPECT_EQ(d.partitions()[1].train_tokens, news_tokens);
  EXPECT_GE(news_units, 5u);
  const auto& humor = d.unit("humor/0");
  EXPECT_EQ(d.partitions()[0].units, 1u);
  EXPECT_GT(humor.upsample, 1.0);

  ASSERT_EQ(d.eval_sets().size(), 3u);
  EXPECT_EQ(d.eval_set("news").kind, "partition");
  EXPECT_EQ(d.eval_set("news").partition, "news");
  EXPECT_EQ(d.eval_set("fortunes").kind, "ood");
  EXPECT_EQ(d.eval_set("fortunes").documents, 40u);
  for (const char* p : {"news", "humor"}) {
    const auto train = unit_docs(d, p);
    for (const auto& doc : d.eval_documents(p)) EXPECT_EQ(train.count(doc), 0u) << doc;
    const auto& rec = d.partitions()[std::string(p) == "humor" ? 0 : 1];
    EXPECT_EQ(rec.train_documents, train.size());
    EXPECT_EQ(rec.valid_documents, d.eval_set(p).documents);
    EXPECT_EQ(rec.train_documents + rec.valid_documents + rec.test_documents, rec.documents);
  }
  ASSERT_TRUE(d.seed().has_value());
  EXPECT_EQ(d.seed()->documents, 20u);  // the copy of a news document was left out
  EXPECT_EQ(as_set(d.seed_documents()).count("copy.txt"), 0u);

  // Every token of every unit decodes to documents of its partition, each after an EOT.
  ByteTokenizer tok;
  const std::string text = tok.decode(d.unit_tokens("news/0"), "\x01");
  EXPECT_EQ(text.front(), '\x01');
  EXPECT_EQ(std::count(text.begin(), text.end(), '\x01'),
            static_cast<long>(d.unit("news/0").documents));
}

TEST(Prepare, AddingDocumentsNeverMovesOthersBetweenSplits) {
  TempDir dir;
  add_docs(dir / "corpus", "news", 0, 100);
  JobConfig c = job(dir);
  c.data.output = "before.h5";
  prepare_data(c);
  add_docs(dir / "corpus", "news", 100, 250);
  c.data.output = "after.h5";
  prepare_data(c);
  const DataFile before = DataFile::open(dir / "run" / "before.h5");
  const DataFile after = DataFile::open(dir / "run" / "after.h5");
  const auto train_before = unit_docs(before, "news"), train_after = unit_docs(after, "news");
  const auto eval_before = as_set(before.eval_documents("news"));
  const auto eval_after = as_set(after.eval_documents("news"));
  for (const auto& doc : train_before)
    EXPECT_EQ(train_after.count(doc), 1u) << doc << " left train";
  for (const auto& doc : eval_before) EXPECT_EQ(eval_after.count(doc), 1u) << doc << " left valid";
  EXPECT_GT(train_after.size(), train_before.size());
  EXPECT_GT(eval_after.size(), eval_before.size());
}

TEST(Prepare, RerunIsUpToDateAndChangedSettingsAreNamed) {
  TempDir dir;
  add_docs(dir / "corpus", "news", 0, 60);
  JobConfig c = job(dir);
  prepare_data(c);
  const auto written = fs::last_write_time(dir / "run" / "data.h5");
  EXPECT_TRUE(prepare_data(c).up_to_date);
  EXPECT_EQ(fs::last_write_time(dir / "run" / "data.h5"), written);
  c.data.unit_tokens = 4000;
  const auto msg = error_of(c);
  EXPECT_NE(msg.find("unit_tokens 3000 vs 4000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("delete it"), std::string::npos) << msg;
}

TEST(PrepareErrors, MissingPartitionDirectoryIsNamed) {
  TempDir dir;
  add_docs(dir / "corpus", "news", 0, 30);
  JobConfig c = job(dir);
  c.data.root.clear();
  c.data.partitions = {(dir / "corpus" / "news").string(), (dir / "corpus" / "sports").string()};
  const auto msg = error_of(c);
  EXPECT_NE(msg.find((dir / "corpus" / "sports").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir / "run" / "data.h5"));  // nothing half-written left behind
}

TEST(PrepareErrors, EmptyPartitionIsNamedOrSkippedOnRequest) {
  TempDir dir;
  add_docs(dir / "corpus", "news", 0, 30);
  fs::create_directories(dir / "corpus" / "empty");
  write_file(dir / "corpus" / "empty" / "blank.txt", "\n");
  JobConfig c = job(dir);
  const auto msg = error_of(c);
  EXPECT_NE(msg.find("partition 'empty'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has no text"), std::string::npos) << msg;
  c.data.skip_bad_files = true;
  const auto s = prepare_data(c);
  EXPECT_EQ(s.partitions, 1u);
  EXPECT_EQ(s.skipped_partitions, 1u);
}

TEST(PrepareErrors, MalformedJsonLineFailsTheStageWithFileAndLine) {
  TempDir dir;
  add_docs(dir / "corpus", "news", 0, 30);
  write_file(dir / "corpus" / "news" / "extra.jsonl", "{\"text\": \"fine\"}\n{oops\n");
  const auto msg = error_of(job(dir));
  EXPECT_NE(msg.find("extra.jsonl:2"), std::string::npos) << msg;
}

TEST(PrepareErrors, ContradictingOrMissingSettingsAreUsageErrors) {
  TempDir dir;
  add_docs(dir / "corpus", "news", 0, 30);
  add_docs(dir / "ood", "news", 0, 5);
  JobConfig c = job(dir);
  c.data.partitions = {(dir / "corpus" / "news").string()};
  EXPECT_THROW(prepare_data(c), UsageError);  // root and partitions both set
  c.data.partitions.clear();
  c.data.root.clear();
  EXPECT_THROW(prepare_data(c), UsageError);  // neither
  c = job(dir);
  c.data.eval_dirs = {(dir / "ood" / "news").string()};
  EXPECT_THROW(prepare_data(c), UsageError);  // an eval set named like a partition
}

TEST(PrepareErrors, PartitionWithoutEvalDocumentsSaysWhatToChange) {
  TempDir dir;
  add_docs(dir / "corpus", "news", 0, 3);
  JobConfig c = job(dir);
  c.data.valid_fraction = 0.0;
  const auto msg = error_of(c);
  EXPECT_NE(msg.find("valid split"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.valid_fraction"), std::string::npos) << msg;
}
