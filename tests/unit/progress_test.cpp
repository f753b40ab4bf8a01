#include "mixsim/core/progress.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "test_support.hpp"

using mixsim::Progress;

TEST(Progress, LineHasCountsRateAndEta) {
  auto line = Progress::format_line("train", 250, 1000, "tokens", 10.0, "loss 3.5");
  EXPECT_EQ(line, "train: 250/1000 tokens (25.0%), 25 tokens/s, ETA 30s, loss 3.5");
}

TEST(Progress, FinishedLineShowsTotalTime) {
  auto line = Progress::format_line("pool", 15, 15, "units", 125.0, "");
  EXPECT_EQ(line, "pool: 15/15 units (100.0%), 0.12 units/s, took 2m05s");
}

TEST(Progress, DurationFormats) {
  EXPECT_EQ(Progress::format_duration(59.4), "59s");
  EXPECT_EQ(Progress::format_duration(3599), "59m59s");
  EXPECT_EQ(Progress::format_duration(7260), "2h01m");
  EXPECT_EQ(Progress::format_duration(-1), "?");
}

TEST(Progress, PlainOutputHasNoCarriageReturns) {
  mixsim::testing::TempDir dir;
  auto path = dir / "log.txt";
  std::FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  {
    Progress p("eval", 10, "windows", f, /*terminal=*/false, /*interval_s=*/0.0);
    for (int i = 1; i <= 10; ++i) p.update(i);
    p.finish();
  }
  std::fclose(f);
  auto text = mixsim::testing::read_file(path);
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_NE(text.find("eval: 10/10 windows"), std::string::npos);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 11);  // 10 updates + the final line
}

TEST(Progress, TerminalOutputRedrawsOneLine) {
  mixsim::testing::TempDir dir;
  auto path = dir / "tty.txt";
  std::FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  {
    Progress p("eval", 3, "windows", f, /*terminal=*/true, /*interval_s=*/0.0);
    for (int i = 1; i <= 3; ++i) p.update(i);
    p.finish();
  }
  std::fclose(f);
  auto text = mixsim::testing::read_file(path);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\r'), 4);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);
}

TEST(Progress, IntervalLimitsLines) {
  mixsim::testing::TempDir dir;
  auto path = dir / "log.txt";
  std::FILE* f = std::fopen(path.c_str(), "w");
  {
    Progress p("x", 1000, "steps", f, false, /*interval_s=*/3600.0);
    for (int i = 1; i <= 1000; ++i) p.update(i);
    p.finish();
  }
  std::fclose(f);
  auto text = mixsim::testing::read_file(path);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1);  // only the final line
}
