// The mixture space of merge-eval and the weights of each proxy. A mixture is a set of base
// units, held as sorted indices into the unit list of data.h5; its name is its units' names in
// that order joined by '+' ("news/0+fiction/0").
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "mixsim/core/config.hpp"
#include "mixsim/io/data_file.hpp"

namespace mixsim {

using Mixture = std::vector<std::size_t>;  // sorted unit indices

// The proxies merge-eval knows, in the order results.h5 lists them.
inline constexpr const char* kProxyNames[] = {"merged", "weighted", "macro", "components"};

// Sizes from "k" and "a-b" items ({"2-3", "5"} -> 2, 3, 5; sorted, no duplicates).
// Throws UsageError naming `option`.
std::vector<int> parse_sizes(const std::vector<std::string>& items, const char* option);

// "a/0+b/1" -> sorted indices into `units`; an unknown or repeated unit is a UsageError naming
// `where` and listing the units.
Mixture parse_mixture(const std::string& text, const std::vector<std::string>& units,
                      const std::string& where);

std::string mixture_name(const Mixture& mixture, const std::vector<std::string>& units);

// n choose k, saturating at UINT64_MAX.
std::uint64_t binomial(std::uint64_t n, std::uint64_t k);

// The mixtures [merge] asks for: the explicit list, then all mixtures of each size, then the
// seeded sample, then every subset, duplicates dropped (first occurrence kept). Only units with
// usable[u] take part: an explicit mixture with another unit is dropped with a warning (the caller
// has already refused missing pool models unless merge.available_units_only is set). A space
// larger than merge.max_mixtures is a UsageError naming the option that made it so.
std::vector<Mixture> mixture_space(const MergeConfig& merge, const std::vector<std::string>& units,
                                   const std::vector<bool>& usable, std::uint64_t run_seed);

// The weights of `proxy` over the mixture's units, in the mixture's order, summing to 1:
//   merged      1/k                                    (the paper's uniform average)
//   weighted    tokens_u / sum of the members' tokens  (each unit's real size in data.h5)
//   macro       1 / (P * k_p): P partitions among the members, k_p members from u's partition
//               (the average of the per-partition averages)
//   components  1/k: the weights of the mean of the members' own losses (nothing is averaged)
std::vector<double> proxy_weights(const std::string& proxy, const Mixture& mixture,
                                  std::span<const UnitRecord> units);

}  // namespace mixsim
