#include "mixsim/dist/communicator.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

using mixsim::Communicator;

TEST(Communicator, WorldHasTheLaunchedRanks) {
  auto world = Communicator::world();
  const char* expected = std::getenv("MIXSIM_EXPECTED_RANKS");
  ASSERT_NE(expected, nullptr);
  EXPECT_EQ(world.size(), std::atoi(expected));
  EXPECT_GE(world.rank(), 0);
  EXPECT_LT(world.rank(), world.size());
}

TEST(Communicator, AllreduceSumOfFloatVector) {
  auto world = Communicator::world();
  const int p = world.size();
  const int r = world.rank();
  std::vector<float> v(1003);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(r + 1) * static_cast<float>(i % 7);
  world.allreduce_sum(std::span<float>(v));
  // Sum over ranks of (r+1) = p(p+1)/2; all values are small integers, so the float sum is exact.
  const float factor = static_cast<float>(p * (p + 1) / 2);
  for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(v[i], factor * static_cast<float>(i % 7));
}

TEST(Communicator, ScalarReductions) {
  auto world = Communicator::world();
  const double r = world.rank();
  EXPECT_EQ(world.allreduce_sum(r), world.size() * (world.size() - 1) / 2.0);
  EXPECT_EQ(world.allreduce_max(r), world.size() - 1);
  EXPECT_EQ(world.allreduce_min(r), 0.0);
  EXPECT_TRUE(world.any(world.rank() == world.size() - 1));
  EXPECT_FALSE(world.any(false));
}

TEST(Communicator, SplitIntoGroupsReducesWithinGroup) {
  auto world = Communicator::world();
  const int color = world.rank() % 2;
  auto group = world.split(color, world.rank());
  std::vector<std::int64_t> v{world.rank(), 1};
  group.allreduce_sum(std::span<std::int64_t>(v));
  std::int64_t expected_sum = 0, expected_count = 0;
  for (int q = 0; q < world.size(); ++q)
    if (q % 2 == color) expected_sum += q, ++expected_count;
  EXPECT_EQ(v[0], expected_sum);
  EXPECT_EQ(v[1], expected_count);
  EXPECT_EQ(group.size(), expected_count);
}

TEST(Communicator, BroadcastString) {
  auto world = Communicator::world();
  std::string text = world.rank() == 0 ? "from rank zero" : "";
  world.broadcast(text, 0);
  EXPECT_EQ(text, "from rank zero");
}
