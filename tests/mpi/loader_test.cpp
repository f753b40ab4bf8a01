// The batch loader and eval windows across real MPI ranks: the ranks' shares of a global batch
// put together are the one-rank batch, with no window on two ranks; eval shards score every token
// exactly once.
#include "mixsim/data/loader.hpp"

#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "mixsim/dist/communicator.hpp"

using namespace mixsim;

namespace {

std::vector<std::vector<Token>> make_units() {
  std::vector<std::vector<Token>> units;
  for (std::size_t u = 0; u < 3; ++u) {
    std::vector<Token> t(700 + 900 * u);
    for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<Token>((i * 13 + u * 101) % 257);
    units.push_back(std::move(t));
  }
  return units;
}

}  // namespace

TEST(LoaderMpi, UnionOfRankSharesIsTheOneRankBatchWithNoWindowTwice) {
  const auto world = Communicator::world();
  const int p = world.size(), r = world.rank();
  const std::size_t T = 16, B = 12;  // 12 windows: a multiple of 2 and 4 ranks
  BatchLoader mine(make_units(), {T, B, 2024, r, p});
  BatchLoader whole(make_units(), {T, B, 2024, 0, 1});
  const std::size_t local = mine.local_batch();
  ASSERT_EQ(local * static_cast<std::size_t>(p), B);

  for (std::uint64_t step : {0u, 1u, 9u, 1000u}) {
    // Each rank writes its rows into a zeroed global buffer; a sum over ranks assembles the batch
    // (the shares are disjoint, so no entry receives two contributions).
    std::vector<std::int64_t> x_all(B * T, 0), y_all(B * T, 0), windows(2 * B, 0);
    std::vector<std::int32_t> x(local * T), y(local * T);
    mine.fill(step, x, y);
    for (std::size_t i = 0; i < local * T; ++i) {
      x_all[mine.first_index() * T + i] = x[i] + 1;  // +1: a zero would hide a missing share
      y_all[mine.first_index() * T + i] = y[i] + 1;
    }
    for (std::size_t i = 0; i < local; ++i) {
      const Window w = mine.window(step, mine.first_index() + i);
      windows[2 * (mine.first_index() + i)] = static_cast<std::int64_t>(w.unit) + 1;
      windows[2 * (mine.first_index() + i) + 1] = static_cast<std::int64_t>(w.start) + 1;
    }
    world.allreduce_sum(std::span<std::int64_t>(x_all));
    world.allreduce_sum(std::span<std::int64_t>(y_all));
    world.allreduce_sum(std::span<std::int64_t>(windows));

    std::vector<std::int32_t> x1(B * T), y1(B * T);
    whole.fill(step, x1, y1);
    for (std::size_t i = 0; i < B * T; ++i) {
      ASSERT_EQ(x_all[i], x1[i] + 1) << "step " << step << " entry " << i;
      ASSERT_EQ(y_all[i], y1[i] + 1) << "step " << step << " entry " << i;
    }
    std::set<std::pair<std::int64_t, std::int64_t>> seen;
    for (std::size_t i = 0; i < B; ++i)
      EXPECT_TRUE(seen.insert({windows[2 * i], windows[2 * i + 1]}).second)
          << "window " << i << " of step " << step << " appears twice";
  }
}

TEST(LoaderMpi, EvalShardsScoreEveryTokenOnce) {
  const auto world = Communicator::world();
  const int p = world.size(), r = world.rank();
  std::vector<Token> tokens(1234);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<Token>(i % 250);
  const std::size_t T = 32;
  EvalWindows windows(tokens, T);
  std::vector<std::int64_t> scored(tokens.size(), 0);
  const auto [first, end] = windows.shard(r, p);
  std::vector<std::int32_t> x(T), y(T);
  for (std::size_t w = first; w < end; ++w) {
    windows.fill(w, x, y);
    for (std::size_t t = 0; t < T; ++t)
      if (y[t] >= 0) ++scored[w * T + t + 1];
  }
  world.allreduce_sum(std::span<std::int64_t>(scored));
  EXPECT_EQ(scored[0], 0);
  for (std::size_t i = 1; i < tokens.size(); ++i) ASSERT_EQ(scored[i], 1) << "token " << i;
}
