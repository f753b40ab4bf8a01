// Corpus readers: .txt, .jsonl and their .gz forms; invalid UTF-8 kept and counted; empty
// documents skipped and counted; bad input an Error naming the file (and line), or skipped and
// counted with skip_bad_files.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <functional>

#include "mixsim/core/error.hpp"
#include "mixsim/data/corpus.hpp"
#include "test_support.hpp"

using namespace mixsim;
using mixsim::testing::TempDir;
using mixsim::testing::write_file;
namespace fs = std::filesystem;

namespace {

void write_gzip(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, content.data(), static_cast<unsigned>(content.size())),
            static_cast<int>(content.size()));
  gzclose(f);
}

void write(const fs::path& path, const std::string& content) {
  fs::create_directories(path.parent_path());
  write_file(path, content);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::vector<std::string> texts(const Corpus& c) {
  std::vector<std::string> out;
  for (const auto& d : c.documents) out.push_back(d.text);
  return out;
}

}  // namespace

TEST(Corpus, ReadsTxtJsonlAndGzipInPathOrder) {
  TempDir dir;
  const auto p = dir / "news";
  write(p / "b.txt", "second file");
  write(p / "a.txt", "first file\n");
  write(p / "c.jsonl", "{\"text\": \"line one\", \"id\": 1}\n\n{\"text\": \"line three\"}\r\n");
  write_gzip(p / "d.txt.gz", "gzipped text");
  write_gzip(p / "e.jsonl.gz", "{\"text\": \"gz json 1\"}\n{\"text\": \"gz json 2\"}\n");
  write(p / "sub" / "f.txt", "nested");
  write(p / "README", "not a document");
  write(p / ".hidden.txt", "hidden");
  write(p / ".git" / "x.txt", "hidden dir");

  const Corpus c = read_corpus(p, {});
  EXPECT_EQ(c.name, "news");
  EXPECT_EQ(texts(c),
            (std::vector<std::string>{"first file\n", "second file", "line one", "line three",
                                      "gzipped text", "gz json 1", "gz json 2", "nested"}));
  EXPECT_EQ(c.documents[2].source, "c.jsonl:1");
  EXPECT_EQ(c.documents[3].source, "c.jsonl:3");  // line numbers count blank lines
  EXPECT_EQ(c.documents[7].source, "sub/f.txt");
  EXPECT_EQ(c.stats.files, 6u);
  EXPECT_EQ(c.stats.documents, 8u);
  EXPECT_EQ(c.stats.ignored_files, 1u);
  EXPECT_EQ(c.stats.bytes, 11u + 11 + 8 + 10 + 12 + 9 + 9 + 6);
}

TEST(Corpus, JsonlFieldIsConfigurable) {
  TempDir dir;
  write(dir / "p" / "x.jsonl", "{\"content\": \"abc\", \"text\": 5}\n");
  const Corpus c = read_corpus(dir / "p", {.jsonl_field = "content"});
  EXPECT_EQ(texts(c), std::vector<std::string>{"abc"});
  const auto msg = error_of([&] { read_corpus(dir / "p", {}); });
  EXPECT_NE(msg.find("x.jsonl:1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("no string field 'text'"), std::string::npos) << msg;
}

TEST(Corpus, InvalidUtf8IsKeptAsBytesAndCounted) {
  TempDir dir;
  const std::string bad = "caf\xe9 \xff\xfe ok";
  write(dir / "p" / "a.txt", bad);
  // The same bytes inside a JSON string (JSON requires UTF-8; we keep them anyway).
  write(dir / "p" / "b.jsonl", "{\"text\": \"" + bad + "\"}\n{\"text\": \"fine ünïcode\"}\n");
  const Corpus c = read_corpus(dir / "p", {});
  EXPECT_EQ(texts(c), (std::vector<std::string>{bad, bad, "fine ünïcode"}));
  EXPECT_EQ(c.stats.invalid_utf8, 2u);
}

TEST(Corpus, EmptyDocumentsAreSkippedAndCounted) {
  TempDir dir;
  write(dir / "p" / "a.txt", "");
  write(dir / "p" / "b.txt", " \n\t\n");
  write(dir / "p" / "c.jsonl", "{\"text\": \"\"}\n{\"text\": \"kept\"}\n");
  const Corpus c = read_corpus(dir / "p", {});
  EXPECT_EQ(texts(c), std::vector<std::string>{"kept"});
  EXPECT_EQ(c.stats.empty, 3u);
}

TEST(Corpus, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // a surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe2\x9c"));          // cut short
}

TEST(CorpusErrors, MissingDirectoryNamesIt) {
  TempDir dir;
  const auto msg = error_of([&] { read_corpus(dir / "nope", {}); });
  EXPECT_NE(msg.find((dir / "nope").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  const auto root = error_of([&] { list_partitions(dir / "nope"); });
  EXPECT_NE(root.find((dir / "nope").string()), std::string::npos) << root;
}

TEST(CorpusErrors, MalformedJsonLineNamesFileAndLine) {
  TempDir dir;
  write(dir / "p" / "bad.jsonl",
        "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n{\"text\": \"ok\"}\n");
  const auto msg = error_of([&] { read_corpus(dir / "p", {}); });
  EXPECT_NE(msg.find((dir / "p" / "bad.jsonl").string() + ":2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed JSON"), std::string::npos) << msg;
  EXPECT_NE(msg.find("skip_bad_files"), std::string::npos) << msg;  // says what to do
}

TEST(CorpusErrors, TruncatedGzipNamesTheFile) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "line " + std::to_string(i * 7919 % 10007) + "\n";
  const auto path = dir / "p" / "big.txt.gz";
  write_gzip(path, text);
  fs::resize_file(path, fs::file_size(path) / 2);
  const auto msg = error_of([&] { read_corpus(dir / "p", {}); });
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated or corrupt"), std::string::npos) << msg;
}

TEST(CorpusErrors, GzipNameWithoutGzipContentIsAnError) {
  TempDir dir;
  write(dir / "p" / "plain.txt.gz", "not compressed at all");
  const auto msg = error_of([&] { read_corpus(dir / "p", {}); });
  EXPECT_NE(msg.find("not gzip-compressed"), std::string::npos) << msg;
}

TEST(CorpusErrors, UnreadableFileNamesIt) {
  TempDir dir;
  fs::create_directories(dir / "p");
  // A dangling link: unreadable even for root (permissions do not stop root).
  fs::create_symlink(dir / "gone.txt", dir / "p" / "link.txt");
  const auto msg = error_of([&] { read_corpus(dir / "p", {}); });
  EXPECT_NE(msg.find((dir / "p" / "link.txt").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("cannot read"), std::string::npos) << msg;
}

TEST(CorpusErrors, SkipBadFilesSkipsAndCounts) {
  TempDir dir;
  write(dir / "p" / "a.txt", "good");
  write(dir / "p" / "b.jsonl",
        "{\"text\": \"x\"}\nnot json\n{\"no_text\": 1}\n{\"text\": \"y\"}\n");
  write(dir / "p" / "c.txt.gz", "not gzip");
  fs::create_symlink(dir / "gone.txt", dir / "p" / "d.txt");
  const Corpus c = read_corpus(dir / "p", {.skip_bad_files = true});
  EXPECT_EQ(texts(c), (std::vector<std::string>{"good", "x", "y"}));
  EXPECT_EQ(c.stats.skipped_lines, 2u);
  EXPECT_EQ(c.stats.skipped_files, 2u);
  EXPECT_EQ(c.stats.problems.size(), 4u);
  EXPECT_NE(c.stats.problems[0].find("b.jsonl:2"), std::string::npos) << c.stats.problems[0];
}

TEST(CorpusErrors, EmptyDirectoryReadsAsNoDocuments) {
  // Emptiness is the caller's decision (the prepare stage makes it an error naming the partition).
  TempDir dir;
  write(dir / "p" / "notes.md", "no documents here");
  const Corpus c = read_corpus(dir / "p", {});
  EXPECT_TRUE(c.documents.empty());
  EXPECT_EQ(c.stats.ignored_files, 1u);
}

TEST(Corpus, ListPartitionsSortsSubdirectoriesAndSkipsHidden) {
  TempDir dir;
  for (const char* name : {"religion", "news", ".cache", "adventure"})
    fs::create_directories(dir / name);
  write(dir / "file.txt", "not a partition");
  const auto parts = list_partitions(dir.path());
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].filename(), "adventure");
  EXPECT_EQ(parts[2].filename(), "religion");
}
