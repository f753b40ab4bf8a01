// The batch loader and the eval windows: deterministic and resumable order, equal unit
// contributions, disjoint rank shares, every eval token scored exactly once.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <set>

#include "mixsim/core/error.hpp"
#include "mixsim/data/loader.hpp"

using namespace mixsim;

namespace {

// A unit whose token at position i encodes (unit, i), so a window shows where it came from.
std::vector<Token> make_unit(std::size_t length, std::size_t salt) {
  std::vector<Token> t(length);
  for (std::size_t i = 0; i < length; ++i) t[i] = static_cast<Token>((i * 31 + salt * 7) % 257);
  return t;
}

BatchLoader make_loader(std::vector<std::size_t> lengths, std::size_t T, std::size_t B,
                        std::uint64_t seed, int rank = 0, int ranks = 1) {
  std::vector<std::vector<Token>> units;
  for (std::size_t u = 0; u < lengths.size(); ++u) units.push_back(make_unit(lengths[u], u));
  return BatchLoader(std::move(units), {T, B, seed, rank, ranks});
}

}  // namespace

TEST(Permute, IsABijectionForManySizes) {
  for (std::uint64_t n : {1u, 2u, 3u, 5u, 16u, 17u, 100u, 1000u, 4097u}) {
    std::set<std::uint64_t> seen;
    for (std::uint64_t i = 0; i < n; ++i) {
      const auto j = permute(i, n, 12345);
      ASSERT_LT(j, n);
      seen.insert(j);
    }
    EXPECT_EQ(seen.size(), n) << "n = " << n;
  }
  // Different keys give different orders (for n = 1000 a repeat would be a broken key mix).
  int same = 0;
  for (std::uint64_t i = 0; i < 1000; ++i) same += permute(i, 1000, 1) == permute(i, 1000, 2);
  EXPECT_LT(same, 20);  // about 1 expected by chance
}

TEST(BatchLoader, SameSeedSameBatchesOtherSeedOtherBatches) {
  auto a = make_loader({5000, 3000}, 16, 8, 42);
  auto b = make_loader({5000, 3000}, 16, 8, 42);
  auto c = make_loader({5000, 3000}, 16, 8, 43);
  int differ = 0;
  for (std::uint64_t step = 0; step < 20; ++step)
    for (std::size_t i = 0; i < 8; ++i) {
      ASSERT_EQ(a.window(step, i), b.window(step, i));
      differ += !(a.window(step, i) == c.window(step, i));
    }
  EXPECT_GT(differ, 100);  // of 160
}

TEST(BatchLoader, ResumesFromAStepWithoutState) {
  auto loader = make_loader({4000, 2500, 900}, 32, 6, 7);
  std::vector<std::int32_t> x(6 * 32), y(6 * 32), x2(6 * 32), y2(6 * 32);
  for (std::uint64_t step = 0; step < 50; ++step) loader.fill(step, x, y);  // a "long run"
  auto fresh = make_loader({4000, 2500, 900}, 32, 6, 7);                    // a restart at step 50
  fresh.fill(50, x2, y2);
  loader.fill(50, x, y);
  EXPECT_EQ(x, x2);
  EXPECT_EQ(y, y2);
}

TEST(BatchLoader, WindowsAreInputsAndNextTokenTargetsFromTheUnit) {
  auto loader = make_loader({1000, 777}, 10, 4, 3);
  std::vector<std::int32_t> x(40), y(40);
  for (std::uint64_t step = 0; step < 30; ++step) {
    loader.fill(step, x, y);
    for (std::size_t i = 0; i < 4; ++i) {
      const Window w = loader.window(step, i);
      const auto& tokens = loader.unit_tokens(w.unit);
      ASSERT_LE(w.start + 11, tokens.size());
      for (std::size_t t = 0; t < 10; ++t) {
        ASSERT_EQ(x[i * 10 + t], tokens[w.start + t]);
        ASSERT_EQ(y[i * 10 + t], tokens[w.start + t + 1]);
      }
    }
  }
}

TEST(BatchLoader, EveryUnitContributesEqually) {
  // Units of very different sizes: 3 windows, 100 windows and 1000 windows per pass.
  auto loader = make_loader({3 * 16 + 1, 100 * 16 + 5, 1000 * 16 + 9}, 16, 6, 11);
  for (std::uint64_t step = 0; step < 40; ++step) {
    std::map<std::size_t, int> per_unit;
    for (std::size_t i = 0; i < 6; ++i) ++per_unit[loader.window(step, i).unit];
    for (std::size_t u = 0; u < 3; ++u) ASSERT_EQ(per_unit[u], 2) << "step " << step;
  }
  // A batch that is not a multiple of the unit count: equal over every K batches.
  auto odd = make_loader({500, 5000, 50000}, 8, 4, 11);
  std::map<std::size_t, int> counts;
  for (std::uint64_t step = 0; step < 30; ++step)
    for (std::size_t i = 0; i < 4; ++i) ++counts[odd.window(step, i).unit];
  EXPECT_EQ(counts[0], 40);
  EXPECT_EQ(counts[1], 40);
  EXPECT_EQ(counts[2], 40);
}

TEST(BatchLoader, SmallUnitIsRepeatedPassByPassWithDisjointWindowsInEachPass) {
  const std::size_t T = 16;
  auto loader = make_loader({5 * T + 7, 400 * T}, T, 2, 5);
  ASSERT_EQ(loader.windows_per_pass(0), 5u);
  // The small unit's n-th window is in round n; collect 6 passes of it.
  std::vector<Window> small;
  for (std::uint64_t step = 0; small.size() < 30; ++step)
    for (std::size_t i = 0; i < 2; ++i)
      if (loader.window(step, i).unit == 0) small.push_back(loader.window(step, i));
  std::set<std::uint64_t> shifts;
  for (std::size_t pass = 0; pass < 6; ++pass) {
    std::set<std::uint64_t> starts;
    const std::uint64_t shift = small[pass * 5].start % T;
    shifts.insert(shift);
    for (std::size_t j = 0; j < 5; ++j) {
      const auto start = small[pass * 5 + j].start;
      EXPECT_EQ(start % T, shift) << "one offset per pass";
      starts.insert(start);
    }
    EXPECT_EQ(starts.size(), 5u) << "pass " << pass << " repeats a window";
  }
  EXPECT_GT(shifts.size(), 1u) << "passes should use different offsets (7 possible)";
}

TEST(BatchLoader, RankSharesAreDisjointAndMakeUpTheGlobalBatch) {
  const std::size_t T = 8, B = 12;
  auto single = make_loader({3000, 2000, 1500}, T, B, 99);
  for (int ranks : {1, 2, 3, 4, 6}) {
    for (std::uint64_t step : {0u, 1u, 17u}) {
      std::vector<std::int32_t> all_x, all_y;
      for (int r = 0; r < ranks; ++r) {
        auto loader = make_loader({3000, 2000, 1500}, T, B, 99, r, ranks);
        ASSERT_EQ(loader.local_batch() * static_cast<std::size_t>(ranks), B);
        std::vector<std::int32_t> x(loader.local_batch() * T), y(x.size());
        loader.fill(step, x, y);
        all_x.insert(all_x.end(), x.begin(), x.end());
        all_y.insert(all_y.end(), y.begin(), y.end());
      }
      std::vector<std::int32_t> x(B * T), y(B * T);
      single.fill(step, x, y);
      EXPECT_EQ(all_x, x) << ranks << " ranks, step " << step;
      EXPECT_EQ(all_y, y) << ranks << " ranks, step " << step;
    }
  }
  std::set<std::pair<std::size_t, std::uint64_t>> seen;
  for (std::size_t i = 0; i < B; ++i) {
    const Window w = single.window(3, i);
    EXPECT_TRUE(seen.insert({w.unit, w.start}).second) << "window twice in one batch";
  }
}

TEST(BatchLoader, RejectsBadShapesWithActionableErrors) {
  EXPECT_THROW(make_loader({1000}, 8, 6, 1, 0, 4), UsageError);  // 6 windows over 4 ranks
  try {
    BatchLoader({make_unit(5, 0)}, {8, 2, 1, 0, 1}, {"humor/0"});
    FAIL() << "a unit shorter than one window must be rejected";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("humor/0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(BatchLoader({}, {8, 2, 1, 0, 1}), UsageError);
}

TEST(EvalWindows, EveryTokenButTheFirstIsScoredExactlyOnce) {
  for (std::size_t n : {2u, 3u, 10u, 64u, 65u, 66u, 1000u}) {
    const auto tokens = make_unit(n, 1);
    const std::size_t T = 16;
    EvalWindows windows(tokens, T, 0);
    std::vector<int> scored(n, 0);
    std::uint64_t total = 0;
    for (std::size_t w = 0; w < windows.count(); ++w) {
      std::vector<std::int32_t> x(T), y(T);
      windows.fill(w, x, y);
      std::size_t valid = 0;
      for (std::size_t t = 0; t < T; ++t) {
        const std::size_t pos = w * T + t;
        if (y[t] < 0) {
          EXPECT_GE(pos + 1, n) << "a -1 target before the end";
          continue;
        }
        ++valid;
        ASSERT_LT(pos + 1, n);
        EXPECT_EQ(x[t], tokens[pos]);
        EXPECT_EQ(y[t], tokens[pos + 1]);
        ++scored[pos + 1];
      }
      EXPECT_EQ(valid, windows.scored_in(w));
      total += valid;
    }
    EXPECT_EQ(scored[0], 0);
    for (std::size_t i = 1; i < n; ++i) ASSERT_EQ(scored[i], 1) << "n " << n << " token " << i;
    EXPECT_EQ(total, windows.scored_tokens());
    EXPECT_EQ(windows.count(), (n - 1 + T - 1) / T);
  }
  EXPECT_EQ(EvalWindows(std::vector<Token>{5}, 4).count(), 0u);
}

TEST(EvalWindows, LastShortWindowIsPaddedAndMarked) {
  const std::vector<Token> tokens{256, 'a', 'b', 'c', 'd', 'e'};  // 5 targets, T = 4
  EvalWindows windows(tokens, 4, 0);
  ASSERT_EQ(windows.count(), 2u);
  std::vector<std::int32_t> x(4), y(4);
  windows.fill(1, x, y);
  EXPECT_EQ(x, (std::vector<std::int32_t>{'d', 'e', 0, 0}));
  EXPECT_EQ(y, (std::vector<std::int32_t>{'e', -1, -1, -1}));
}

TEST(EvalWindows, ShardsCoverAllWindowsOnceInBalancedBlocks) {
  const auto tokens = make_unit(1001, 0);  // 1000 targets, T = 7: 143 windows
  EvalWindows windows(tokens, 7);
  for (int p = 1; p <= 6; ++p) {
    std::size_t next = 0;
    for (int r = 0; r < p; ++r) {
      const auto [first, end] = windows.shard(r, p);
      EXPECT_EQ(first, next);
      EXPECT_LE(end - first, windows.count() / static_cast<std::size_t>(p) + 1);
      next = end;
    }
    EXPECT_EQ(next, windows.count());
  }
}
