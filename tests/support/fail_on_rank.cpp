// Test helper: `fail_on_rank R` throws on rank R inside run_guarded while every other rank waits
// in a barrier. The job must end (no hang) with exit code 1 and a message naming rank R.
#include <cstdlib>

#include "mixsim/cli/command.hpp"
#include "mixsim/core/error.hpp"

int main(int argc, char** argv) {
  mixsim::MpiSession mpi(&argc, &argv);
  const auto world = mixsim::Communicator::world();
  const int failing = argc > 1 ? std::atoi(argv[1]) : 0;
  return mixsim::run_guarded(world, [&] {
    if (world.rank() == failing) mixsim::fail("simulated failure in the stage");
    world.barrier();  // the other ranks would wait here forever without the abort
    return 0;
  });
}
