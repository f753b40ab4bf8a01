// data.h5 writer and reader: what is written is read back, the file is complete only on commit,
// and files that are not mixsim data files (or of another version) are refused by name.
#include <gtest/gtest.h>

#include "mixsim/core/error.hpp"
#include "mixsim/io/data_file.hpp"
#include "test_support.hpp"

using namespace mixsim;
using mixsim::testing::TempDir;
namespace fs = std::filesystem;

namespace {

DataSettings settings() {
  return {1000,
          "salt",
          0.1,
          0.05,
          "valid",
          50,
          5000,
          1234,
          "text",
          {"news=data/news", "humor=data/humor"},
          {"fortunes=data/fortunes"},
          "data/seed"};
}

TokenSet token_set(const std::vector<std::string>& docs) {
  ByteTokenizer tok;
  TokenSet set;
  for (std::size_t i = 0; i < docs.size(); ++i)
    set.append(tok, {docs[i], "doc" + std::to_string(i) + ".txt"});
  return set;
}

void write_example(const fs::path& path) {
  DataFileWriter w(path, settings(), ByteTokenizer().info(), "mixsim test");
  w.add_unit({"news/0", "news", 0, 0, 0, 0, 1.0}, token_set({"alpha", "beta"}));
  w.add_unit({"news/1", "news", 1, 0, 0, 0, 1.0}, token_set({"gamma"}));
  const UnitRecord u = w.add_unit({"humor/0", "humor", 0, 0, 0, 0, 2.5}, token_set({"joke"}));
  EXPECT_EQ(u.tokens, 5u);  // counts come from the token set
  PartitionRecord news{};
  news.name = "news";
  news.source = "data/news";
  news.documents = 4;
  news.units = 2;
  w.add_partition(news);
  PartitionRecord humor{};
  humor.name = "humor";
  humor.source = "data/humor";
  humor.units = 1;
  w.add_partition(humor);
  w.add_eval_set({"news", "partition", "news", "valid", "data/news"}, token_set({"delta"}));
  w.add_eval_set({"fortunes", "ood", "", "all", "data/fortunes", 9}, token_set({"luck", "fate"}));
  w.set_seed({"data/seed"}, token_set({"in the beginning"}));
  w.commit();
}

}  // namespace

TEST(DataFile, WhatIsWrittenIsReadBack) {
  TempDir dir;
  const auto path = dir / "data.h5";
  write_example(path);
  const DataFile d = DataFile::open(path);
  EXPECT_EQ(d.settings(), settings());
  EXPECT_EQ(d.tokenizer(), ByteTokenizer().info());

  ASSERT_EQ(d.units().size(), 3u);
  EXPECT_EQ(d.units()[0].name, "news/0");  // prepare's order, not HDF5's name order
  EXPECT_EQ(d.units()[2].name, "humor/0");
  const UnitRecord& news0 = d.unit("news/0");
  EXPECT_EQ(news0.partition, "news");
  EXPECT_EQ(news0.documents, 2u);
  EXPECT_EQ(news0.bytes, 9u);
  EXPECT_EQ(news0.tokens, 11u);
  EXPECT_DOUBLE_EQ(d.unit("humor/0").upsample, 2.5);
  EXPECT_EQ(d.unit_tokens("news/1"), (std::vector<Token>{256, 'g', 'a', 'm', 'm', 'a'}));
  EXPECT_EQ(d.unit_documents("news/0"), (std::vector<std::string>{"doc0.txt", "doc1.txt"}));

  ASSERT_EQ(d.partitions().size(), 2u);
  EXPECT_EQ(d.partitions()[0].name, "news");
  EXPECT_EQ(d.partitions()[0].units, 2u);
  EXPECT_EQ(d.partitions()[0].documents, 4u);

  ASSERT_EQ(d.eval_sets().size(), 2u);
  const EvalSetRecord& f = d.eval_set("fortunes");
  EXPECT_EQ(f.kind, "ood");
  EXPECT_EQ(f.available_documents, 9u);
  EXPECT_EQ(f.documents, 2u);
  EXPECT_EQ(f.tokens, 10u);
  EXPECT_EQ(f.scored_tokens, 9u);
  EXPECT_EQ(f.bytes, 8u);
  EXPECT_EQ(d.eval_set("news").partition, "news");
  EXPECT_EQ(ByteTokenizer().decode(d.eval_tokens("fortunes"), "|"), "|luck|fate");

  ASSERT_TRUE(d.seed().has_value());
  EXPECT_EQ(d.seed()->tokens, 17u);
  EXPECT_EQ(ByteTokenizer().decode(d.seed_tokens()), "in the beginning");
  EXPECT_EQ(read_data_settings(path), settings());
}

TEST(DataFile, UnknownNamesListWhatExists) {
  TempDir dir;
  write_example(dir / "data.h5");
  const DataFile d = DataFile::open(dir / "data.h5");
  try {
    d.unit("news/7");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("news/0, news/1, humor/0"), std::string::npos) << e.what();
  }
}

TEST(DataFile, NothingUnderTheFinalNameUntilCommit) {
  TempDir dir;
  const auto path = dir / "data.h5";
  {
    DataFileWriter w(path, settings(), ByteTokenizer().info(), "test");
    w.add_unit({"news/0", "news", 0, 0, 0, 0, 1.0}, token_set({"x"}));
    EXPECT_FALSE(fs::exists(path));
  }  // abandoned (as after an exception): no file, no temporary
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(DataFile, RefusesOtherFilesByName) {
  TempDir dir;
  {
    auto f = h5::File::create(dir / "other.h5");
    f.set_attribute("format", "mixsim-checkpoint");
    f.close();
    auto g = h5::File::create(dir / "future.h5");
    g.set_attribute("format", kDataFormat);
    g.set_attribute("format_version", std::int64_t{99});
    g.close();
  }
  try {
    DataFile::open(dir / "other.h5");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a mixsim data file"), std::string::npos) << e.what();
  }
  try {
    DataFile::open(dir / "future.h5");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("format version 99"), std::string::npos) << e.what();
  }
}
