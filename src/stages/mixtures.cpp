#include "mixsim/stages/mixtures.hpp"

#include <algorithm>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "mixsim/core/error.hpp"
#include "mixsim/core/log.hpp"
#include "mixsim/core/rng.hpp"

namespace mixsim {
namespace {

constexpr std::uint64_t kMergeSampleStream = 0x3e7a;  // run.seed -> merge.sample

int parse_positive(const std::string& text) {
  std::size_t used = 0;
  int v = 0;
  try {
    v = std::stoi(text, &used);
  } catch (const std::exception&) {
    return 0;
  }
  return used == text.size() ? v : 0;
}

// Calls `visit` with every k-subset of `pool` (in lexicographic order of positions).
template <class Visit>
void for_each_combination(const std::vector<std::size_t>& pool, std::size_t k, Visit&& visit) {
  const std::size_t n = pool.size();
  if (k == 0 || k > n) return;
  std::vector<std::size_t> pos(k);
  std::iota(pos.begin(), pos.end(), 0);
  Mixture m(k);
  while (true) {
    for (std::size_t i = 0; i < k; ++i) m[i] = pool[pos[i]];
    visit(m);
    std::size_t i = k;
    while (i > 0 && pos[i - 1] == n - k + i - 1) --i;
    if (i == 0) return;
    ++pos[i - 1];
    for (std::size_t j = i; j < k; ++j) pos[j] = pos[j - 1] + 1;
  }
}

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) {
  return a > std::numeric_limits<std::uint64_t>::max() - b
             ? std::numeric_limits<std::uint64_t>::max()
             : a + b;
}

}  // namespace

std::vector<int> parse_sizes(const std::vector<std::string>& items, const char* option) {
  std::set<int> sizes;
  for (const auto& item : items) {
    const auto dash = item.find('-');
    const int lo = parse_positive(item.substr(0, dash));
    const int hi = dash == std::string::npos ? lo : parse_positive(item.substr(dash + 1));
    if (lo < 1 || hi < lo)
      usage_fail("option --{} must list sizes k or ranges a-b with 1 <= a <= b (got '{}')", option,
                 item);
    for (int k = lo; k <= hi; ++k) sizes.insert(k);
  }
  return {sizes.begin(), sizes.end()};
}

Mixture parse_mixture(const std::string& text, const std::vector<std::string>& units,
                      const std::string& where) {
  Mixture m;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto plus = text.find('+', start);
    if (plus == std::string::npos) plus = text.size();
    const auto name = text.substr(start, plus - start);
    start = plus + 1;
    if (name.empty()) continue;
    const auto it = std::find(units.begin(), units.end(), name);
    if (it == units.end())
      usage_fail("{} names unit '{}', which is not in the data file; its units are: {}", where,
                 name, fmt::join(units, ", "));
    m.push_back(static_cast<std::size_t>(it - units.begin()));
  }
  if (m.empty()) usage_fail("{} has an empty mixture ('{}')", where, text);
  std::sort(m.begin(), m.end());
  if (std::adjacent_find(m.begin(), m.end()) != m.end())
    usage_fail("{} names a unit twice in '{}'", where, text);
  return m;
}

std::string mixture_name(const Mixture& mixture, const std::vector<std::string>& units) {
  std::string s;
  for (auto u : mixture) s += (s.empty() ? "" : "+") + units[u];
  return s;
}

std::uint64_t binomial(std::uint64_t n, std::uint64_t k) {
  if (k > n) return 0;
  k = std::min(k, n - k);
  // c = C(n - k + i, i) after step i. c * (n - k + i) / i is an integer, so with g = gcd(c, i),
  // (i / g) divides (n - k + i): the product is formed without a division remainder or overflow.
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t c = 1;
  for (std::uint64_t i = 1; i <= k; ++i) {
    const std::uint64_t g = std::gcd(c, i);
    const std::uint64_t factor = (n - k + i) / (i / g);
    if (c / g > kMax / factor) return kMax;
    c = (c / g) * factor;
  }
  return c;
}

std::vector<Mixture> mixture_space(const MergeConfig& merge, const std::vector<std::string>& units,
                                   const std::vector<bool>& usable, std::uint64_t run_seed) {
  std::vector<std::size_t> pool;
  for (std::size_t u = 0; u < units.size(); ++u)
    if (usable[u]) pool.push_back(u);
  const std::uint64_t n = pool.size();
  const auto sizes = parse_sizes(merge.sizes, "merge.sizes");
  const auto sample_sizes = parse_sizes(merge.sample_sizes, "merge.sample_sizes");

  // The size of the space is checked before anything is enumerated.
  auto too_many = [&](std::uint64_t count, const std::string& what) {
    if (count > merge.max_mixtures)
      usage_fail(
          "{} gives {} mixtures over {} units, more than --merge.max_mixtures ({}): raise "
          "the limit, or ask for fewer (e.g. --merge.sample)",
          what, count, n, merge.max_mixtures);
  };
  std::uint64_t total = merge.mixtures.size() + static_cast<std::uint64_t>(merge.sample);
  for (int k : sizes) {
    if (static_cast<std::uint64_t>(k) > n)
      usage_fail("option --merge.sizes asks for mixtures of {} units, but {} units are usable", k,
                 n);
    total = saturating_add(total, binomial(n, static_cast<std::uint64_t>(k)));
  }
  too_many(total, "option --merge.sizes");
  if (merge.all_subsets) {
    const std::uint64_t subsets =
        n >= 64 ? std::numeric_limits<std::uint64_t>::max() : (1ull << n) - 1;
    too_many(saturating_add(total, subsets), "option --merge.all_subsets");
  }

  std::vector<Mixture> space;
  std::set<Mixture> seen;
  auto add = [&](const Mixture& m) {
    if (seen.insert(m).second) space.push_back(m);
  };
  for (const auto& text : merge.mixtures) {
    const auto m = parse_mixture(text, units, "option --merge.mixtures");
    const bool ok = std::all_of(m.begin(), m.end(), [&](std::size_t u) { return usable[u]; });
    if (ok)
      add(m);
    else
      log::warn("merge-eval: mixture '{}' is left out: some of its units have no pool model", text);
  }
  for (int k : sizes) for_each_combination(pool, static_cast<std::size_t>(k), add);
  if (merge.sample > 0) {
    for (int k : sample_sizes)
      if (static_cast<std::uint64_t>(k) > n)
        usage_fail(
            "option --merge.sample_sizes asks for mixtures of {} units, but {} units are usable", k,
            n);
    std::uint64_t possible = 0;
    for (int k : sample_sizes)
      possible = saturating_add(possible, binomial(n, static_cast<std::uint64_t>(k)));
    if (possible < static_cast<std::uint64_t>(merge.sample))
      usage_fail(
          "option --merge.sample ({}) asks for more distinct mixtures of sizes {} than the "
          "{} that exist",
          merge.sample, fmt::join(sample_sizes, ","), possible);
    Rng rng =
        merge.sample_seed != 0 ? Rng(merge.sample_seed) : Rng(run_seed).split(kMergeSampleStream);
    std::set<Mixture> drawn;
    // Sizes alternate so that the sample holds every requested size; repeats are redrawn.
    for (std::uint64_t attempt = 0; drawn.size() < static_cast<std::size_t>(merge.sample);
         ++attempt) {
      const auto k = static_cast<std::size_t>(sample_sizes[attempt % sample_sizes.size()]);
      auto idx = pool;
      rng.shuffle(std::span<std::size_t>(idx));
      idx.resize(k);
      std::sort(idx.begin(), idx.end());
      if (drawn.insert(idx).second) add(idx);
      MIXSIM_CHECK(attempt < 1000ull * static_cast<std::uint64_t>(merge.sample) + 1000000,
                   "merge.sample did not find {} distinct mixtures", merge.sample);
    }
  }
  if (merge.all_subsets)
    for (std::size_t k = 1; k <= pool.size(); ++k) for_each_combination(pool, k, add);
  return space;
}

std::vector<double> proxy_weights(const std::string& proxy, const Mixture& mixture,
                                  std::span<const UnitRecord> units) {
  const std::size_t k = mixture.size();
  MIXSIM_CHECK(k > 0, "proxy weights of an empty mixture");
  std::vector<double> w(k, 1.0 / static_cast<double>(k));
  if (proxy == "merged" || proxy == "components") return w;
  if (proxy == "weighted") {
    double total = 0;
    for (auto u : mixture) total += static_cast<double>(units[u].tokens);
    if (total <= 0) return w;  // units without tokens: nothing to weight by
    for (std::size_t i = 0; i < k; ++i)
      w[i] = static_cast<double>(units[mixture[i]].tokens) / total;
    return w;
  }
  if (proxy == "macro") {
    std::map<std::string, std::size_t> per_partition;
    for (auto u : mixture) ++per_partition[units[u].partition];
    const double P = static_cast<double>(per_partition.size());
    for (std::size_t i = 0; i < k; ++i)
      w[i] = 1.0 / (P * static_cast<double>(per_partition[units[mixture[i]].partition]));
    return w;
  }
  usage_fail("unknown proxy '{}' (merged | weighted | macro | components)", proxy);
}

}  // namespace mixsim
