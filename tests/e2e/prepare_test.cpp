// `mixsim prepare` as users run it: a job file in, data.h5 out (readable by h5dump), one log line
// per event, reruns that do nothing, bad input reported by file, and the same under mpirun.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>

#include "test_support.hpp"

using namespace mixsim::testing;
namespace fs = std::filesystem;

namespace {

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  write_file(path, text);
}

void write_gzip(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
}

// A tiny corpus in every reader format: news as .txt, religion as .jsonl.gz, an out-of-domain set
// and a seed corpus as .jsonl.
void make_corpus(const fs::path& dir) {
  for (int i = 0; i < 40; ++i)
    write(dir / "corpus" / "news" / fmt::format("n{}.txt", i),
          fmt::format("News story {}: the council met on day {} and voted.\n", i, i * 7));
  std::string religion, ood, seed;
  for (int i = 0; i < 40; ++i)
    religion += fmt::format("{{\"text\": \"Sermon {} on patience and verse {}.\"}}\n", i, i * 3);
  write_gzip(dir / "corpus" / "religion" / "sermons.jsonl.gz", religion);
  for (int i = 0; i < 30; ++i)
    ood += fmt::format("{{\"text\": \"Fortune {}: you will test.\"}}\n", i);
  for (int i = 0; i < 30; ++i)
    seed += fmt::format("{{\"text\": \"Chapter {} of the seed.\"}}\n", i);
  write(dir / "ood" / "fortunes" / "f.jsonl", ood);
  write(dir / "seed" / "s.jsonl", seed);
}

std::string job_file(const fs::path& dir) {
  const auto path = dir / "job.ini";
  write(path, fmt::format("[run]\nout_dir = {}\n\n[data]\nroot = {}\neval_dirs = {}\n"
                          "seed_corpus = {}\nunit_tokens = 600\nvalid_fraction = 0.2\n"
                          "test_fraction = 0.1\n",
                          (dir / "run").string(), (dir / "corpus").string(),
                          (dir / "ood" / "fortunes").string(), (dir / "seed").string()));
  return path.string();
}

}  // namespace

TEST(Prepare, WritesDataFileThatH5dumpReads) {
  TempDir dir;
  make_corpus(dir.path());
  auto r = run_command({mixsim_binary(), "prepare", "--config", job_file(dir.path())});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("partition news: 40 documents"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("partition religion: 40 documents"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("eval set fortunes (out of domain)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("wrote "), std::string::npos) << r.out;
  const auto data = dir / "run" / "data.h5";
  ASSERT_TRUE(fs::exists(data));

  auto dump = run_command({"h5dump", "-H", data.string()});
  ASSERT_EQ(dump.exit_code, 0) << dump.err;
  for (const char* expected :
       {"GROUP \"tokenizer\"", "GROUP \"units\"", "GROUP \"news\"", "GROUP \"religion\"",
        "GROUP \"0\"", "DATASET \"tokens\"", "H5T_STD_U16LE", "GROUP \"eval\"",
        "GROUP \"fortunes\"", "GROUP \"seed\"", "ATTRIBUTE \"format_version\"",
        "ATTRIBUTE \"upsample\""})
    EXPECT_NE(dump.out.find(expected), std::string::npos) << expected;
  auto vocab = run_command({"h5dump", "-a", "/tokenizer/vocab_size", data.string()});
  EXPECT_NE(vocab.out.find("(0): 257"), std::string::npos) << vocab.out;
  auto props = run_command({"h5dump", "-p", "-H", "-d", "/units/news/0/tokens", data.string()});
  EXPECT_NE(props.out.find("DEFLATE"), std::string::npos) << props.out;
  EXPECT_NE(props.out.find("CHUNKED"), std::string::npos) << props.out;
}

TEST(Prepare, H5pyReadsTheFileWithoutMixsim) {
  // Debian's python3-h5py lives under /usr/bin/python3; skip where it is not installed.
  if (run_command({"/usr/bin/python3", "-c", "import h5py"}).exit_code != 0)
    GTEST_SKIP() << "python3-h5py is not installed";
  TempDir dir;
  make_corpus(dir.path());
  ASSERT_EQ(run_command({mixsim_binary(), "prepare", "--config", job_file(dir.path())}).exit_code,
            0);
  const std::string script =
      "import h5py, sys\n"
      "f = h5py.File(sys.argv[1], 'r')\n"
      "t = f['units/news/0/tokens'][:]\n"
      "assert t.dtype.name == 'uint16' and t[0] == f['tokenizer'].attrs['eot']\n"
      "text = bytes(int(x) for x in t[1:12]).decode()\n"
      "print(f.attrs['format'], len(f.attrs['unit_names']), text)\n";
  auto r = run_command({"/usr/bin/python3", "-c", script, (dir / "run" / "data.h5").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("mixsim-data"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("News story"), std::string::npos) << r.out;
}

TEST(Prepare, RerunDoesNothing) {
  TempDir dir;
  make_corpus(dir.path());
  const auto job = job_file(dir.path());
  ASSERT_EQ(run_command({mixsim_binary(), "prepare", "--config", job}).exit_code, 0);
  auto r = run_command({mixsim_binary(), "prepare", "--config", job});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("up to date"), std::string::npos) << r.out;
  // A changed setting on the command line is refused by name, the file kept.
  r = run_command({mixsim_binary(), "prepare", "--config", job, "--data.unit_tokens", "700"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unit_tokens 600 vs 700"), std::string::npos) << r.err;
}

TEST(Prepare, BadInputIsOneLineNamingTheFileAndLine) {
  TempDir dir;
  make_corpus(dir.path());
  write(dir / "corpus" / "news" / "broken.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n");
  auto r = run_command({mixsim_binary(), "prepare", "--config", job_file(dir.path())});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("mixsim: error: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("broken.jsonl:2"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "run" / "data.h5"));
  // The same input with skip_bad_files: the line is skipped and counted.
  r = run_command({mixsim_binary(), "prepare", "--config", job_file(dir.path()),
                   "--data.skip_bad_files", "true"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("0 files and 1 lines skipped"), std::string::npos) << r.out;
}

TEST(Prepare, MissingRootAndMissingSettingAreReported) {
  TempDir dir;
  auto r = run_command({mixsim_binary(), "prepare", "--run.out_dir", (dir / "run").string(),
                        "--data.root", (dir / "nowhere").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find((dir / "nowhere").string()), std::string::npos) << r.err;
  r = run_command({mixsim_binary(), "prepare", "--run.out_dir", (dir / "run").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("data.root"), std::string::npos) << r.err;
}

TEST(Prepare, UnderMpirunRankZeroWritesAndAllRanksSucceed) {
  TempDir dir;
  make_corpus(dir.path());
  auto r = run_command(
      {"mpirun", "-np", "2", mixsim_binary(), "prepare", "--config", job_file(dir.path())});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(fs::exists(dir / "run" / "data.h5"));
  // Log lines come from rank 0 only: each partition is reported once.
  std::size_t count = 0;
  for (auto pos = r.out.find("partition news:"); pos != std::string::npos;
       pos = r.out.find("partition news:", pos + 1))
    ++count;
  EXPECT_EQ(count, 1u) << r.out;
  for (const auto& entry : fs::directory_iterator(dir / "run"))
    EXPECT_EQ(entry.path().filename(), "data.h5") << "left behind: " << entry.path();
}
