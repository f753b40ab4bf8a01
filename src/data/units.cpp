#include "mixsim/data/units.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "mixsim/core/error.hpp"

namespace mixsim {

std::vector<UnitCut> cut_units(std::span<const std::uint64_t> doc_tokens,
                               std::uint64_t unit_tokens) {
  MIXSIM_CHECK(unit_tokens > 0, "cut_units: unit_tokens must be positive");
  const std::size_t docs = doc_tokens.size();
  if (docs == 0) return {};
  // prefix[b]: tokens in the first b documents (b = a boundary, 0..docs).
  std::vector<std::uint64_t> prefix(docs + 1, 0);
  for (std::size_t i = 0; i < docs; ++i) prefix[i + 1] = prefix[i] + doc_tokens[i];
  const std::uint64_t total = prefix[docs];
  const std::size_t k =
      static_cast<std::size_t>(std::clamp<std::uint64_t>(total / unit_tokens, 1, docs));

  std::vector<std::size_t> bounds{0};
  for (std::size_t j = 1; j < k; ++j) {
    // Target j*N/k, compared exactly as j*N against prefix*k (no rounding).
    const auto target = static_cast<long double>(j) * static_cast<long double>(total);
    const std::size_t lo = bounds.back() + 1;  // at least one document in the unit before
    const std::size_t hi = docs - (k - j);     // and at least one in each unit after
    auto distance = [&](std::size_t b) {
      return std::abs(static_cast<long double>(prefix[b]) * static_cast<long double>(k) - target);
    };
    std::size_t best = lo;
    // Running counts only grow, so once a boundary is past the target the later ones are worse.
    for (std::size_t b = lo + 1; b <= hi && static_cast<long double>(prefix[b - 1]) * k <= target;
         ++b)
      if (distance(b) < distance(best)) best = b;
    bounds.push_back(best);
  }
  bounds.push_back(docs);

  std::vector<UnitCut> units;
  for (std::size_t j = 0; j + 1 < bounds.size(); ++j) {
    UnitCut cut{bounds[j], bounds[j + 1], prefix[bounds[j + 1]] - prefix[bounds[j]], 1.0};
    if (cut.tokens < unit_tokens && cut.tokens > 0)
      cut.upsample = static_cast<double>(unit_tokens) / static_cast<double>(cut.tokens);
    units.push_back(cut);
  }
  return units;
}

std::string unit_name(const std::string& partition, std::size_t index) {
  return fmt::format("{}/{}", partition, index);
}

}  // namespace mixsim
