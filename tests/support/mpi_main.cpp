// main() for MPI tests: initialise MPI, print results on rank 0 only, and fail on every rank
// when any rank failed, so mpirun's exit code tells the truth.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "mixsim/core/log.hpp"
#include "mixsim/dist/communicator.hpp"

namespace {

// On ranks other than 0 only failed assertions are printed, tagged with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                   r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  mixsim::MpiSession mpi(&argc, &argv);
  const auto world = mixsim::Communicator::world();
  mixsim::log::init({.rank = world.rank(), .size = world.size()});
  if (const char* expected = std::getenv("MIXSIM_EXPECTED_RANKS")) {
    if (std::stoi(expected) != world.size()) {
      std::fprintf(stderr, "expected %s ranks, running with %d\n", expected, world.size());
      return 1;
    }
  }
  if (world.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(world.rank()));  // gtest owns its listeners
  }
  const int local = RUN_ALL_TESTS();
  const double worst = world.allreduce_max(static_cast<double>(local));
  return worst != 0 ? 1 : 0;
}
