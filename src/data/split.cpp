#include "mixsim/data/split.hpp"

#include "mixsim/core/rng.hpp"

namespace mixsim {
namespace {

std::uint64_t fnv1a(std::string_view bytes) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace

const char* split_name(Split split) {
  switch (split) {
    case Split::train:
      return "train";
    case Split::valid:
      return "valid";
    case Split::test:
      return "test";
  }
  return "?";
}

std::uint64_t content_hash(std::string_view salt, std::string_view text) {
  // The lengths go in too, so that moving bytes between salt and text changes the hash.
  return hash64(hash64(fnv1a(salt), salt.size()), hash64(fnv1a(text), text.size()));
}

double hash_fraction(std::uint64_t hash) {
  return static_cast<double>(hash >> 11) * 0x1.0p-53;
}

Split assign_split(std::uint64_t hash, const SplitFractions& fractions) {
  const double u = hash_fraction(hash);
  if (u < fractions.valid) return Split::valid;
  if (u < fractions.valid + fractions.test) return Split::test;
  return Split::train;
}

std::uint64_t order_key(std::uint64_t hash) {
  constexpr std::uint64_t kOrderStream = 0x6f72646572ULL;  // "order"
  return hash64(hash, kOrderStream);
}

}  // namespace mixsim
