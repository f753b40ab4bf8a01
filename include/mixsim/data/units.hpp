// Base units: the paper's equally sized pieces of the candidate corpus. A partition of N tokens
// and a budget of B tokens per unit gives k = floor(N / B) units when N >= 2B (cut at document
// boundaries, as equal as the documents allow), and one unit otherwise. Training gives every unit
// the same budget, so a unit of n < B tokens is repeated: its upsampling factor max(1, B / n) is
// recorded. docs/file-formats.md states the rule exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace mixsim {

struct UnitCut {
  std::size_t first_doc = 0;  // [first_doc, end_doc) of the partition's ordered documents
  std::size_t end_doc = 0;
  std::uint64_t tokens = 0;
  double upsample = 1.0;  // max(1, unit_tokens / tokens)
};

// Cuts documents of the given token counts (in order) into units of about `unit_tokens` tokens.
// Cut j (1 <= j < k) goes to the document boundary whose running token count is nearest to
// j*N/k (the earlier one on a tie), keeping at least one document in every unit.
std::vector<UnitCut> cut_units(std::span<const std::uint64_t> doc_tokens,
                               std::uint64_t unit_tokens);

// "news/0": the name of unit `index` of a partition (also its path under /units in data.h5).
std::string unit_name(const std::string& partition, std::size_t index);

}  // namespace mixsim
