// `mixsim inspect`: what a mixsim HDF5 file holds (data.h5, a checkpoint, results.h5), told by its
// `format` attribute, in a few readable lines: kind, config, provenance, sizes.
#pragma once

#include <filesystem>
#include <string>

#include "mixsim/core/config.hpp"
#include "mixsim/core/options.hpp"
#include "mixsim/dist/communicator.hpp"

namespace mixsim {

// The description; an Error for a missing file, a file that is not HDF5, or an HDF5 file that is
// not a mixsim file.
std::string describe_file(const std::filesystem::path& path);

void add_inspect_options(po::options_description& d);
int run_inspect(const po::variables_map& vm, const Communicator& world);

}  // namespace mixsim
