// Options from job files and command lines (Boost.Program_options). The whole job schema is
// known to every subcommand, so one job file serves every stage; the command line wins over the
// job file. Errors name the option (and the file) and are UsageErrors (exit code 2).
#pragma once

#include <boost/program_options.hpp>

#include <string>
#include <vector>

#include "mixsim/core/config.hpp"

namespace mixsim {

namespace po = boost::program_options;

// The sections of the job schema; a subcommand's --help shows the ones it uses.
enum Section : unsigned {
  kSectionRun = 1u << 0,
  kSectionModel = 1u << 1,
  kSectionOptim = 1u << 2,
  kSectionData = 1u << 3,
  kSectionTrain = 1u << 4,
  kSectionSeed = 1u << 5,
  kSectionCpt = 1u << 6,
  kSectionPool = 1u << 7,
  kSectionTruth = 1u << 8,
  kSectionMerge = 1u << 9,
  kSectionAll = ~0u,
};

// Option descriptions bound to the fields of `config`, one description per section.
struct JobSchema {
  explicit JobSchema(JobConfig& config);
  po::options_description all{"Job options"};
  std::vector<std::pair<Section, po::options_description>> sections;
  po::options_description for_sections(unsigned mask) const;
};

// Parses `args` (without the program and subcommand names) and the job file named by --config.
// `cli_only` holds options that exist only on the command line (--config, --help, ...).
// Throws UsageError naming the offending option, key, value or file.
// `positional`, when not empty, names the option that one bare word on the command line sets.
po::variables_map parse_options(const std::vector<std::string>& args,
                                const po::options_description& cli_only,
                                const po::options_description& job,
                                const std::string& positional = "");

// Range checks over the whole config (throws UsageError naming the key and the allowed range).
void validate(const JobConfig& config);

// The validated config of a job file alone (no command line): for tests and benchmarks.
JobConfig load_job_file(const std::string& path);

// A required key: error unless set in the job file or on the command line.
void require_option(const po::variables_map& vm, const std::string& key);

}  // namespace mixsim
