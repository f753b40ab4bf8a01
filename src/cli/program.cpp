#include <omp.h>

#include <cstdio>
#include <exception>
#include <iostream>

#include "mixsim/cli/command.hpp"
#include "mixsim/core/error.hpp"
#include "mixsim/core/log.hpp"
#include "mixsim/version.hpp"

namespace mixsim {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

void print_top_help(std::ostream& out) {
  out << "mixsim " << kVersion << ": data-mixture ablations by modular training and merging\n"
      << "(Na et al., EMNLP 2024)\n\n"
      << "usage: mixsim COMMAND [--config jobs/X.ini] [--section.key value ...]\n"
      << "       mixsim COMMAND --help\n"
      << "       mixsim --version\n\n"
      << "commands:\n";
  for (const auto& c : commands()) {
    std::string name = c.name;
    name.resize(12, ' ');
    out << "  " << name << c.summary << (c.run ? "" : "  (not built yet)") << "\n";
  }
  out << "\nOptions come from the job file (--config) and the command line; the command line wins.\n"
      << "Run under mpirun or srun for several ranks; every stage also runs as one process.\n";
}

po::options_description cli_only_options(const Command& command) {
  po::options_description d("Command-line options");
  d.add_options()
    ("config", po::value<std::string>(), "job file (INI): [section] key = value")
    ("help,h", "show this help")
    ("verbose,v", "print debug lines")
    ("log-all-ranks", "print log lines on every rank, not only rank 0");
  if (command.add_options) command.add_options(d);
  return d;
}

void print_command_help(const Command& command, const po::options_description& cli,
                        const JobSchema& schema, std::ostream& out) {
  out << "usage: mixsim " << command.name
      << (command.positional.empty() ? "" : " [" + command.positional + "]")
      << " [--config jobs/X.ini] [options]\n\n"
      << command.description << "\n"
      << (command.run ? "" : "\n(This subcommand is not built yet.)\n") << "\n"
      << cli << "\n"
      << schema.for_sections(command.sections) << "\n";
  if (!command.required.empty()) {
    out << "Required:";
    for (const auto& key : command.required) out << " --" << key;
    out << "\n";
  }
}

// A failure during parsing is agreed on by all ranks (no rank is left waiting in a collective);
// returns the exit code every rank should use, 0 when all parsed fine.
int agree_on_exit(const Communicator& world, int local_code) {
  return static_cast<int>(world.allreduce_max(static_cast<double>(local_code)));
}

void print_error(const Communicator& world, const std::string& what, bool with_rank) {
  std::string line = with_rank && world.size() > 1
                         ? fmt::format("mixsim: error: rank {} of {}: {}\n", world.rank(),
                                       world.size(), what)
                         : fmt::format("mixsim: error: {}\n", what);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace

int run_main(int argc, char** argv) {
  MpiSession mpi(&argc, &argv);
  const Communicator world = Communicator::world();
  log::init({.rank = world.rank(), .size = world.size()});
  const bool root = world.rank() == 0;

  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    if (root) print_top_help(std::cout);
    return args.empty() ? kExitUsage : 0;
  }
  if (args[0] == "--version") {
    if (root) std::cout << "mixsim " << kVersion << " (git " << kGitRevision << ")\n";
    return 0;
  }
  const Command* command = find_command(args[0]);
  if (!command) {
    if (root)
      print_error(world,
                  args[0].starts_with("-")
                      ? fmt::format("expected a command before '{}'; see mixsim --help", args[0])
                      : fmt::format("unknown command '{}'; see mixsim --help", args[0]),
                  false);
    return kExitUsage;
  }
  args.erase(args.begin());

  // Phase 1: options. Every rank parses; all ranks agree on the outcome before going on.
  JobConfig config;
  JobSchema schema(config);
  const auto cli = cli_only_options(*command);
  po::variables_map vm;
  int code = 0;
  std::string message;
  try {
    vm = parse_options(args, cli, schema.all, command->positional);
    if (!vm.count("help")) {
      validate(config);
      for (const auto& key : command->required) require_option(vm, key);
    }
  } catch (const UsageError& e) {
    code = kExitUsage;
    message = e.what();
  } catch (const std::exception& e) {
    code = kExitFailure;
    message = e.what();
  }
  const int agreed = agree_on_exit(world, code);
  if (agreed != 0) {
    // The lowest failing rank speaks (rank 0 unless the ranks disagree, e.g. a job file that
    // exists on one node only).
    const double first = world.allreduce_min(code != 0 ? world.rank() : world.size());
    if (world.rank() == static_cast<int>(first)) print_error(world, message, world.rank() != 0);
    return agreed;
  }
  if (vm.count("help")) {
    if (root) print_command_help(*command, cli, schema, std::cout);
    return 0;
  }
  log::init({.rank = world.rank(),
             .size = world.size(),
             .verbose = vm.count("verbose") > 0,
             .all_ranks = vm.count("log-all-ranks") > 0});
  if (!command->run) {
    if (root)
      print_error(world,
                  fmt::format("'mixsim {}' is not built yet in this version ({}); see the "
                              "project's open issues",
                              command->name, kVersion),
                  false);
    return kExitFailure;
  }
  if (config.run.threads > 0) omp_set_num_threads(config.run.threads);

  return run_guarded(world, [&] { return command->run({config, vm, world}); });
}

int run_guarded(const Communicator& world, const std::function<int()>& stage) {
  // A failure on one rank must not leave the others blocked in a collective: it names the
  // rank and aborts the whole job.
  int code = 0;
  std::string message;
  try {
    return stage();
  } catch (const UsageError& e) {
    code = kExitUsage;
    message = e.what();
  } catch (const std::exception& e) {
    code = kExitFailure;
    message = e.what();
  }
  print_error(world, message, true);
  if (world.size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
  return code;
}

}  // namespace mixsim
