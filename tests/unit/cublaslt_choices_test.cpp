// The cuBLASLt choices table (include/mixsim/backend/cublaslt_choices.hpp): what
// MIXSIM_CUBLASLT_TUNE_OUT writes reads back the same, lookups name one device, version and
// product, and every malformed line is refused with the file, the line and the field.
#include "mixsim/backend/cublaslt_choices.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "test_support.hpp"

using mixsim::UsageError;
using mixsim::cublaslt::Choice;
using mixsim::cublaslt::Choices;
using mixsim::cublaslt::Key;

namespace {

Choice sample(std::string device, long long m, int pick) {
  Choice c;
  c.device = std::move(device);
  c.cublaslt = 130200;
  c.key = {m, 8192, 3072, 0, 0, 14, 0, 768, 3072, 768, 16, 16, 16, 0, 0, 0, 14};
  c.pick = pick;
  c.config = {66, 18, 30, 1, 0, 1, 0, 5, 2};
  c.us = 51.25;
  c.first_us = 57.5;
  return c;
}

// The message of the UsageError that parsing `text` throws ("" if none).
std::string parse_error(const std::string& text) {
  try {
    Choices::parse(text, "choices.txt");
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

void expect_same(const Choice& a, const Choice& b) {
  EXPECT_EQ(a.device, b.device);
  EXPECT_EQ(a.cublaslt, b.cublaslt);
  EXPECT_EQ(a.key, b.key);
  EXPECT_EQ(a.pick, b.pick);
  EXPECT_EQ(a.config, b.config);
  EXPECT_DOUBLE_EQ(a.us, b.us);  // two decimals written: these are exact in them
  EXPECT_DOUBLE_EQ(a.first_us, b.first_us);
}

}  // namespace

TEST(CublasLtChoices, FormatReadsBackTheSame) {
  Choices table;
  table.put(sample("NVIDIA_H200", 768, 2));
  table.put(sample("NVIDIA_H200", 2304, 0));
  table.put(sample("NVIDIA_H100_80GB_HBM3", 768, 5));
  const std::string text = table.format();
  const Choices again = Choices::parse(text, "t");
  ASSERT_EQ(again.size(), 3u);
  for (const auto& [device, m, pick] :
       {std::tuple{"NVIDIA_H200", 768, 2}, std::tuple{"NVIDIA_H200", 2304, 0},
        std::tuple{"NVIDIA_H100_80GB_HBM3", 768, 5}}) {
    const Choice want = sample(device, m, pick);
    const Choice* got = again.find(device, 130200, want.key);
    ASSERT_NE(got, nullptr) << device << " m=" << m;
    expect_same(*got, want);
  }
  EXPECT_EQ(again.format(), text);
}

TEST(CublasLtChoices, FindNamesOneDeviceVersionAndProduct) {
  Choices table;
  const Choice c = sample("NVIDIA_H200", 768, 3);
  table.put(c);
  EXPECT_NE(table.find("NVIDIA_H200", 130200, c.key), nullptr);
  EXPECT_EQ(table.find("NVIDIA_H100", 130200, c.key), nullptr);
  EXPECT_EQ(table.find("NVIDIA_H200", 130201, c.key), nullptr);
  Key other = c.key;
  other[12] = 8;  // D aligned to 8 bytes only: another problem
  EXPECT_EQ(table.find("NVIDIA_H200", 130200, other), nullptr);
}

TEST(CublasLtChoices, PutAndMergeReplaceTheSameProduct) {
  Choices table, newer;
  table.put(sample("NVIDIA_H200", 768, 3));
  table.put(sample("NVIDIA_H200", 2304, 1));
  newer.put(sample("NVIDIA_H200", 768, 6));
  newer.put(sample("NVIDIA_H200", 3072, 4));
  table.merge(newer);
  ASSERT_EQ(table.size(), 3u);
  EXPECT_EQ(table.find("NVIDIA_H200", 130200, sample("NVIDIA_H200", 768, 0).key)->pick, 6);
  EXPECT_EQ(table.find("NVIDIA_H200", 130200, sample("NVIDIA_H200", 2304, 0).key)->pick, 1);
  EXPECT_EQ(table.find("NVIDIA_H200", 130200, sample("NVIDIA_H200", 3072, 0).key)->pick, 4);
}

TEST(CublasLtChoices, CommentsBlankLinesAndCrlfAreRead) {
  const std::string line = Choices::format_line(sample("NVIDIA_H200", 768, 2));
  const Choices table =
      Choices::parse("# a comment\n\n   \t\n  # indented\r\n" + line + "\r\n", "t");
  ASSERT_EQ(table.size(), 1u);
  expect_same(*table.find("NVIDIA_H200", 130200, sample("", 768, 0).key),
              sample("NVIDIA_H200", 768, 2));
  EXPECT_EQ(Choices::parse("", "t").size(), 0u);
  EXPECT_EQ(Choices::parse(line, "t").size(), 1u);  // no newline at the end
}

TEST(CublasLtChoices, MalformedLinesNameTheFileLineAndField) {
  const std::string good = Choices::format_line(sample("NVIDIA_H200", 768, 2));
  const auto replaced = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const std::size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  struct Case {
    std::string text, says;
  };
  for (const Case& c : {
           Case{"#\n" + good + " colour=blue\n", "line 2: unknown field 'colour'"},
           Case{replaced(" pick=2", ""), "line 1: field 'pick' is missing"},
           Case{replaced("device=NVIDIA_H200 ", ""), "line 1: field 'device' is missing"},
           Case{replaced(" first_us=57.50", ""), "line 1: field 'first_us' is missing"},
           Case{good + " m=1", "field 'm' given twice"},
           Case{replaced("m=768", "m=7x8"), "field 'm': '7x8' is not an integer"},
           Case{replaced("lda=768", "lda=768.0"), "field 'lda': '768.0' is not an integer"},
           Case{replaced("pick=2", "pick=8"), "pick=8 is not a candidate's place (0 to 7)"},
           Case{replaced("pick=2", "pick=-1"), "pick=-1 is not a candidate's place"},
           Case{replaced("us=51.25", "us=fast"), "field 'us': 'fast' is not a time"},
           Case{replaced("us=51.25", "us=-1"), "field 'us': '-1' is not a time"},
           Case{replaced("tile=18", "tile="), "field 'tile=' is not NAME=VALUE"},
           Case{replaced(" tile=18", " tile"), "field 'tile' is not NAME=VALUE"},
           Case{good + "\n\n" + replaced("pick=2", "pick=4"),
                "line 3: a second choice for the same device, cublaslt and product"},
       }) {
    const std::string error = parse_error(c.text);
    EXPECT_NE(error.find("cuBLASLt choices file choices.txt"), std::string::npos) << error;
    EXPECT_NE(error.find(c.says), std::string::npos) << "want: " << c.says << "\ngot: " << error;
  }
}

TEST(CublasLtChoices, WriteAndReadAFile) {
  mixsim::testing::TempDir dir;
  const std::string path = (dir / "choices.txt").string();
  Choices table;
  table.put(sample("NVIDIA_H200", 768, 2));
  table.write(path);
  for (const auto& entry : std::filesystem::directory_iterator(dir.path()))  // no PATH.tmp.PID
    EXPECT_EQ(entry.path().filename(), "choices.txt");
  const Choices again = Choices::read(path);
  ASSERT_EQ(again.size(), 1u);
  expect_same(*again.find("NVIDIA_H200", 130200, sample("", 768, 0).key),
              sample("NVIDIA_H200", 768, 2));
  try {
    Choices::read((dir / "missing.txt").string());
    FAIL() << "a missing file was read";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.txt: cannot be read"), std::string::npos)
        << e.what();
  }
  try {  // a directory opens as a stream and reads as nothing: it must not read as an empty table
    Choices::read(dir.path().string());
    FAIL() << "a directory was read";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path().string() + ": cannot be read"),
              std::string::npos)
        << e.what();
  }
  {  // a table that cannot replace its path (a directory) leaves no PATH.tmp.PID behind
    const std::filesystem::path sub = dir / "sub";
    std::filesystem::create_directory(sub);
    std::ofstream(sub / "keep") << "x";  // (a non-empty directory: rename cannot replace it)
    EXPECT_THROW(table.write(sub.string()), mixsim::Error);
    for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
      EXPECT_TRUE(entry.path().filename() == "choices.txt" || entry.path().filename() == "sub")
          << entry.path();
  }
  std::ofstream(path) << "";
  EXPECT_EQ(Choices::read(path).size(), 0u);  // an empty file: an empty table
  std::ofstream(path) << "device=x\n";
  try {
    Choices::read(path);
    FAIL() << "a malformed file was read";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ", line 1: field 'cublaslt' is missing"),
              std::string::npos)
        << e.what();
  }
}

TEST(CublasLtChoices, DeviceNamesLoseTheirSpaces) {
  EXPECT_EQ(mixsim::cublaslt::device_field("NVIDIA H100 80GB HBM3"), "NVIDIA_H100_80GB_HBM3");
  EXPECT_EQ(mixsim::cublaslt::device_field("NVIDIA\tH200"), "NVIDIA_H200");
}

// The table built into mixsim (kernels/cublaslt_choices.txt, compiled in by kernels/CMakeLists.txt)
// reads: a malformed line there would stop every cuda-bf16 backend from being made.
TEST(CublasLtChoices, TheBuiltInTableReads) {
  const std::string path =
      (mixsim::testing::source_dir() / "kernels/cublaslt_choices.txt").string();
  const Choices table = Choices::read(path);
  for (const Choice& c : table.list()) {
    EXPECT_FALSE(c.device.empty());
    EXPECT_GT(c.cublaslt, 0);
  }
  std::printf("%s: %zu choices\n", path.c_str(), table.size());
}
