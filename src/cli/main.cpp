// mixsim: one binary, one subcommand per pipeline stage (see `mixsim --help`).
#include <cstdio>
#include <exception>

#include "mixsim/cli/command.hpp"

int main(int argc, char** argv) {
  try {
    return mixsim::run_main(argc, argv);
  } catch (const std::exception& e) {
    // Only failures outside any stage reach here (e.g. MPI could not start).
    std::fprintf(stderr, "mixsim: error: %s\n", e.what());
    return 1;
  }
}
