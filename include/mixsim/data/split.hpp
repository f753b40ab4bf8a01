// Train / validation / test assignment of documents by a salted hash of their content: a
// document's split depends on nothing else, so adding documents never moves others, and
// identical documents always land in the same split (no copy of an eval text is trained on).
#pragma once

#include <cstdint>
#include <string_view>

namespace mixsim {

enum class Split : std::uint8_t { train, valid, test };

const char* split_name(Split split);  // "train" | "valid" | "test"

struct SplitFractions {
  double valid = 0.05;
  double test = 0.05;
};

// A stable 64-bit hash of (salt, text): FNV-1a over each, combined by hash64. Part of the data
// format: changing it moves documents between splits.
std::uint64_t content_hash(std::string_view salt, std::string_view text);

// The hash as a number in [0, 1) (its top 53 bits).
double hash_fraction(std::uint64_t hash);

// valid when u < valid, test when u < valid + test, train otherwise (u = hash_fraction).
Split assign_split(std::uint64_t hash, const SplitFractions& fractions);
inline Split assign_split(std::string_view salt, std::string_view text,
                          const SplitFractions& fractions) {
  return assign_split(content_hash(salt, text), fractions);
}

// The key documents are ordered by inside a unit or an eval set: pseudo-random (so units cut from
// a partition are random subsets) and, like the split, a function of the content alone.
std::uint64_t order_key(std::uint64_t hash);

}  // namespace mixsim
