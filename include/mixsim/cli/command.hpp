// The subcommands of the mixsim binary: what each is called, which job sections it reads, which
// keys it requires, and the stage it runs. A command without a stage is listed but "not built".
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "mixsim/core/config.hpp"
#include "mixsim/core/options.hpp"
#include "mixsim/dist/communicator.hpp"

namespace mixsim {

struct CommandContext {
  JobConfig& config;
  const po::variables_map& vm;
  const Communicator& world;
};

struct Command {
  std::string name;
  std::string summary;                 // one line for `mixsim --help`
  std::string description;             // a paragraph for `mixsim NAME --help`
  unsigned sections = kSectionAll;     // job sections shown in its help
  std::vector<std::string> required;   // keys that must be set
  // Options only this command takes on the command line (e.g. --init); may be empty.
  std::function<void(po::options_description&)> add_options;
  std::function<int(const CommandContext&)> run;  // empty: not built yet
  std::string positional;              // option set by one bare word (e.g. "file"), or none
};

const std::vector<Command>& commands();
const Command* find_command(const std::string& name);

// The whole program behind main(): returns the process exit code (0, 1 failure, 2 usage).
int run_main(int argc, char** argv);

// Runs a stage; an exception on any rank prints one line naming that rank and, with several
// ranks, aborts all of them (MPI_Abort) so none is left waiting. Returns the exit code.
int run_guarded(const Communicator& world, const std::function<int()>& stage);

}  // namespace mixsim
