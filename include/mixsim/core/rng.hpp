// Seeded random numbers with splittable streams. A stream is named by the seed and a path of
// stream ids: split(i) depends only on that name, never on how many numbers were drawn, so every
// consumer (init, data order, sampling) gets the same numbers whatever else ran before it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>

namespace mixsim {

std::uint64_t splitmix64(std::uint64_t& state);
std::uint64_t hash64(std::uint64_t a, std::uint64_t b);  // order-sensitive mix of two words
std::uint64_t hash_string(std::string_view text);         // FNV-1a, then mixed: a stream id for a name

class Rng {
 public:
  explicit Rng(std::uint64_t seed);

  Rng split(std::uint64_t stream) const;  // an independent stream, named by (this name, stream)
  std::uint64_t key() const { return key_; }

  std::uint64_t next_u64();                // xoshiro256**
  double uniform();                        // [0, 1), 53 random bits
  std::uint64_t below(std::uint64_t n);    // uniform in [0, n), unbiased; n > 0
  double normal();                         // standard normal (Box-Muller, portable)

  template <class T>
  void shuffle(std::span<T> items) {       // Fisher-Yates; same result on every platform
    for (std::size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[below(i)]);
  }

 private:
  std::uint64_t key_;
  std::uint64_t s_[4];
  bool has_spare_ = false;
  double spare_ = 0.0;
};

}  // namespace mixsim
