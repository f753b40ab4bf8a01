#include "mixsim/io/results.hpp"

#include <algorithm>
#include <map>

#include "mixsim/core/error.hpp"
#include "mixsim/io/hdf5.hpp"

namespace mixsim {
namespace fs = std::filesystem;

namespace {

// Tables are small (mixtures x eval sets): contiguous, uncompressed, read in one piece by h5py.
constexpr h5::DatasetOptions kPlain{.chunk_elements = 0, .deflate_level = 0, .shuffle = false};

template <class T, class F>
std::vector<T> column(const std::vector<F>& rows, T F::*field) {
  std::vector<T> out;
  out.reserve(rows.size());
  for (const auto& r : rows) out.push_back(r.*field);
  return out;
}

void write_matrix(const h5::Group& g, const std::string& name, const Matrix& m) {
  g.write_dataset<double>(name, m.values, {m.rows, m.cols}, kPlain);
}

Matrix read_matrix(const h5::Group& g, const std::string& name, std::size_t rows, std::size_t cols,
                   const std::string& file) {
  const auto ds = g.open_dataset(name);
  const auto shape = ds.shape();
  if (shape.size() != 2 || shape[0] != rows || shape[1] != cols)
    fail(
        "results file '{}': '{}' has shape ({}), expected ({}, {}); the file is damaged: delete it "
        "and run merge-eval again",
        file, ds.path(), fmt::join(shape, ", "), rows, cols);
  return {rows, cols, ds.read<double>()};
}

template <class T>
std::vector<T> read_vector(const h5::Group& g, const std::string& name, std::size_t n,
                           const std::string& file) {
  const auto ds = g.open_dataset(name);
  if (ds.size() != n)
    fail(
        "results file '{}': '{}' holds {} values, expected {}; the file is damaged: delete it and "
        "run merge-eval again",
        file, ds.path(), ds.size(), n);
  return ds.read<T>();
}

std::vector<std::string> read_names(const h5::Group& g, const std::string& name, std::size_t n,
                                    const std::string& file) {
  auto v = g.open_dataset(name).read_strings();
  if (v.size() != n)
    fail("results file '{}': '{}/{}' holds {} names, expected {}", file, g.path(), name, v.size(),
         n);
  return v;
}

template <class T>
std::optional<std::size_t> find_name(const std::vector<T>& items, const std::string& name) {
  for (std::size_t i = 0; i < items.size(); ++i)
    if (items[i].name == name) return i;
  return std::nullopt;
}

// The name of a mixture as a key independent of unit order: its sorted member names.
std::string member_key(const Results& r, const ResultsMixture& m) {
  std::vector<std::string> names;
  for (auto u : m.members) names.push_back(r.units[u].name);
  std::sort(names.begin(), names.end());
  std::string key;
  for (const auto& n : names) key += n + '\n';
  return key;
}

}  // namespace

bool same_values(const Matrix& a, const Matrix& b) {
  if (a.rows != b.rows || a.cols != b.cols) return false;
  for (std::size_t i = 0; i < a.values.size(); ++i) {
    const double x = a.values[i], y = b.values[i];
    if (!(x == y || (std::isnan(x) && std::isnan(y)))) return false;
  }
  return true;
}

std::optional<std::size_t> Results::unit_index(const std::string& name) const {
  return find_name(units, name);
}
std::optional<std::size_t> Results::eval_set_index(const std::string& name) const {
  return find_name(eval_sets, name);
}
std::optional<std::size_t> Results::mixture_index(const std::string& name) const {
  return find_name(mixtures, name);
}
std::optional<std::size_t> Results::proxy_index(const std::string& name) const {
  return find_name(proxies, name);
}

std::size_t Results::missing() const {
  std::size_t n = 0;
  const std::size_t E = eval_sets.size();
  for (const auto& p : proxies) {
    if (p.name == "components") continue;  // derived from the pool scores
    for (std::size_t m = 0; m < mixtures.size(); ++m)
      if (mixtures[m].in_space)
        for (std::size_t e = 0; e < E; ++e) n += std::isnan(p.loss.at(m, e));
  }
  for (std::size_t u = 0; u < units.size(); ++u)
    if (!units[u].checksum.empty())
      for (std::size_t e = 0; e < E; ++e) n += std::isnan(pool_loss.at(u, e));
  if (!seed_checksum.empty())
    for (double v : seed_loss) n += std::isnan(v);
  for (std::size_t m = 0; m < mixtures.size(); ++m)
    if (mixtures[m].in_space && !mixtures[m].truth_checksum.empty())
      for (std::size_t e = 0; e < E; ++e) n += std::isnan(truth_loss.at(m, e));
  return n;
}

void write_results(const fs::path& path, const Results& r) {
  const std::size_t U = r.units.size(), E = r.eval_sets.size(), M = r.mixtures.size();
  MIXSIM_CHECK(r.pool_loss.rows == U && r.pool_loss.cols == E && r.seed_loss.size() == E &&
                   r.truth_loss.rows == M && r.truth_loss.cols == E,
               "results tables do not match {} units, {} eval sets, {} mixtures", U, E, M);
  h5::AtomicFile out(path);
  const h5::File& f = out.file();
  f.set_attribute("format", kResultsFormat);
  f.set_attribute("format_version", kResultsFormatVersion);
  f.set_attribute("created_by", r.created_by);
  f.set_attribute("data_file", r.data_file);
  f.set_attribute("seed_file", r.seed_file);
  f.set_attribute("seed_checksum", r.seed_checksum);
  f.set_attribute("context", r.context);
  f.set_attribute("complete", static_cast<std::uint8_t>(r.complete));
  f.set_attribute("proxies", column(r.proxies, &ProxyResults::name));

  {
    const auto g = f.create_group("units");
    g.write_strings("names", column(r.units, &ResultsUnit::name));
    g.write_strings("partitions", column(r.units, &ResultsUnit::partition));
    g.write_dataset<std::uint64_t>("tokens", column(r.units, &ResultsUnit::tokens), {}, kPlain);
    g.write_strings("checksums", column(r.units, &ResultsUnit::checksum));
  }
  {
    const auto g = f.create_group("eval_sets");
    g.write_strings("names", column(r.eval_sets, &ResultsEvalSet::name));
    g.write_strings("kinds", column(r.eval_sets, &ResultsEvalSet::kind));
    g.write_strings("partitions", column(r.eval_sets, &ResultsEvalSet::partition));
    g.write_dataset<std::uint64_t>("tokens", column(r.eval_sets, &ResultsEvalSet::tokens), {},
                                   kPlain);
    g.write_dataset<std::uint64_t>("scored_tokens",
                                   column(r.eval_sets, &ResultsEvalSet::scored_tokens), {}, kPlain);
    g.write_dataset<std::uint64_t>("bytes", column(r.eval_sets, &ResultsEvalSet::bytes), {},
                                   kPlain);
    g.write_strings("checksums", column(r.eval_sets, &ResultsEvalSet::checksum));
  }
  {
    // Members as compressed rows: mixture i holds members[offsets[i] : offsets[i+1]].
    std::vector<std::int64_t> offsets{0}, members, sizes;
    std::vector<std::uint8_t> in_space;
    for (const auto& m : r.mixtures) {
      for (auto u : m.members) members.push_back(static_cast<std::int64_t>(u));
      offsets.push_back(static_cast<std::int64_t>(members.size()));
      sizes.push_back(static_cast<std::int64_t>(m.members.size()));
      in_space.push_back(m.in_space);
    }
    const auto g = f.create_group("mixtures");
    g.write_strings("names", column(r.mixtures, &ResultsMixture::name));
    g.write_dataset<std::int64_t>("sizes", sizes, {}, kPlain);
    g.write_dataset<std::int64_t>("offsets", offsets, {}, kPlain);
    g.write_dataset<std::int64_t>("members", members, {}, kPlain);
    g.write_dataset<std::uint8_t>("in_space", in_space, {}, kPlain);

    for (std::size_t p = 0; p < r.proxies.size(); ++p) {
      const auto& proxy = r.proxies[p];
      MIXSIM_CHECK(proxy.weights.size() == M && proxy.loss.rows == M && proxy.loss.cols == E,
                   "proxy '{}' tables do not match", proxy.name);
      std::vector<double> weights;
      for (std::size_t m = 0; m < M; ++m) {
        MIXSIM_CHECK(proxy.weights[m].size() == r.mixtures[m].members.size(),
                     "proxy '{}' weights of mixture {}", proxy.name, m);
        weights.insert(weights.end(), proxy.weights[m].begin(), proxy.weights[m].end());
      }
      const auto pg = f.create_group("proxies/" + proxy.name);
      pg.set_attribute("index", static_cast<std::int64_t>(p));
      pg.write_dataset<double>("weights", weights, {}, kPlain);
      write_matrix(pg, "loss", proxy.loss);
    }
  }
  write_matrix(f.create_group("pool"), "loss", r.pool_loss);
  f.create_group("seed").write_dataset<double>("loss", r.seed_loss, {}, kPlain);
  {
    const auto g = f.create_group("truth");
    write_matrix(g, "loss", r.truth_loss);
    g.write_strings("checksums", column(r.mixtures, &ResultsMixture::truth_checksum));
  }
  out.commit();
}

Results read_results(const fs::path& path) {
  if (!fs::exists(path))
    fail("results file '{}' does not exist: run `mixsim merge-eval` first", path.string());
  if (!h5::File::is_hdf5(path))
    fail("'{}' is not an HDF5 file (expected a mixsim results file)", path.string());
  const auto f = h5::File::open(path);
  const auto file = path.string();
  if (!f.has_attribute("format") || f.string_attribute("format") != kResultsFormat)
    fail("'{}' is not a mixsim results file (format '{}', expected '{}')", file,
         f.has_attribute("format") ? f.string_attribute("format") : std::string("none"),
         kResultsFormat);
  const auto version = f.attribute<std::int64_t>("format_version");
  if (version != kResultsFormatVersion)
    fail(
        "results file '{}' has format version {}, this mixsim reads version {}: run merge-eval "
        "again with this version",
        file, version, kResultsFormatVersion);
  Results r;
  r.created_by = f.string_attribute("created_by");
  r.data_file = f.string_attribute("data_file");
  r.seed_file = f.string_attribute("seed_file");
  r.seed_checksum = f.string_attribute("seed_checksum");
  r.context = f.attribute<std::int64_t>("context");
  r.complete = f.attribute<std::uint8_t>("complete") != 0;

  const auto ug = f.open_group("units");
  const auto unit_names = ug.open_dataset("names").read_strings();
  const std::size_t U = unit_names.size();
  const auto partitions = read_names(ug, "partitions", U, file);
  const auto unit_tokens = read_vector<std::uint64_t>(ug, "tokens", U, file);
  const auto unit_checksums = read_names(ug, "checksums", U, file);
  for (std::size_t u = 0; u < U; ++u)
    r.units.push_back({unit_names[u], partitions[u], unit_tokens[u], unit_checksums[u]});

  const auto eg = f.open_group("eval_sets");
  const auto eval_names = eg.open_dataset("names").read_strings();
  const std::size_t E = eval_names.size();
  const auto kinds = read_names(eg, "kinds", E, file);
  const auto eval_partitions = read_names(eg, "partitions", E, file);
  const auto tokens = read_vector<std::uint64_t>(eg, "tokens", E, file);
  const auto scored = read_vector<std::uint64_t>(eg, "scored_tokens", E, file);
  const auto bytes = read_vector<std::uint64_t>(eg, "bytes", E, file);
  const auto eval_checksums = read_names(eg, "checksums", E, file);
  for (std::size_t e = 0; e < E; ++e)
    r.eval_sets.push_back({eval_names[e], kinds[e], eval_partitions[e], tokens[e], scored[e],
                           bytes[e], eval_checksums[e]});

  const auto mg = f.open_group("mixtures");
  const auto mixture_names = mg.open_dataset("names").read_strings();
  const std::size_t M = mixture_names.size();
  const auto offsets = read_vector<std::int64_t>(mg, "offsets", M + 1, file);
  const auto in_space = read_vector<std::uint8_t>(mg, "in_space", M, file);
  const auto members = mg.open_dataset("members").read<std::int64_t>();
  if (offsets.front() != 0 || static_cast<std::size_t>(offsets.back()) != members.size() ||
      !std::is_sorted(offsets.begin(), offsets.end()))
    fail("results file '{}': /mixtures/offsets do not index /mixtures/members; the file is damaged",
         file);
  for (std::size_t m = 0; m < M; ++m) {
    ResultsMixture mix{mixture_names[m], {}, in_space[m] != 0, ""};
    for (auto i = offsets[m]; i < offsets[m + 1]; ++i) {
      const auto u = members[static_cast<std::size_t>(i)];
      if (u < 0 || static_cast<std::size_t>(u) >= U)
        fail("results file '{}': mixture '{}' names unit index {} of {}", file, mix.name, u, U);
      mix.members.push_back(static_cast<std::size_t>(u));
    }
    r.mixtures.push_back(std::move(mix));
  }

  const auto proxy_names = f.strings_attribute("proxies");
  for (const auto& name : proxy_names) {
    const auto pg = f.open_group("proxies/" + name);
    ProxyResults p;
    p.name = name;
    const auto weights = read_vector<double>(pg, "weights", members.size(), file);
    for (std::size_t m = 0; m < M; ++m)
      p.weights.emplace_back(weights.begin() + offsets[m], weights.begin() + offsets[m + 1]);
    p.loss = read_matrix(pg, "loss", M, E, file);
    r.proxies.push_back(std::move(p));
  }
  r.pool_loss = read_matrix(f.open_group("pool"), "loss", U, E, file);
  r.seed_loss = read_vector<double>(f.open_group("seed"), "loss", E, file);
  const auto tg = f.open_group("truth");
  r.truth_loss = read_matrix(tg, "loss", M, E, file);
  const auto truth_checksums = read_names(tg, "checksums", M, file);
  for (std::size_t m = 0; m < M; ++m) r.mixtures[m].truth_checksum = truth_checksums[m];
  return r;
}

void fill_components(Results& r) {
  const auto p = r.proxy_index("components");
  if (!p) return;
  auto& proxy = r.proxies[*p];
  for (std::size_t m = 0; m < r.mixtures.size(); ++m) {
    const auto& members = r.mixtures[m].members;
    const double k = static_cast<double>(members.size());
    proxy.weights[m].assign(members.size(), 1.0 / k);
    for (std::size_t e = 0; e < r.eval_sets.size(); ++e) {
      double sum = 0;
      for (auto u : members) sum += r.pool_loss.at(u, e);  // NaN propagates
      proxy.loss.at(m, e) = sum / k;
    }
  }
}

std::size_t carry_over(Results& fresh, const Results& old) {
  if (old.seed_checksum != fresh.seed_checksum || old.context != fresh.context) return 0;
  std::size_t copied = 0;
  // Columns: the same eval set, unchanged.
  std::vector<std::optional<std::size_t>> col(fresh.eval_sets.size());
  for (std::size_t e = 0; e < fresh.eval_sets.size(); ++e) {
    const auto o = old.eval_set_index(fresh.eval_sets[e].name);
    if (o && old.eval_sets[*o].checksum == fresh.eval_sets[e].checksum &&
        old.eval_sets[*o].scored_tokens == fresh.eval_sets[e].scored_tokens)
      col[e] = o;
  }
  auto copy_row = [&](auto&& get_old, auto&& set_fresh) {
    for (std::size_t e = 0; e < col.size(); ++e) {
      if (!col[e]) continue;
      const double v = get_old(*col[e]);
      if (std::isnan(v)) continue;
      set_fresh(e, v);
      ++copied;
    }
  };
  for (std::size_t e = 0; e < col.size(); ++e)
    if (col[e] && !std::isnan(old.seed_loss[*col[e]])) {
      fresh.seed_loss[e] = old.seed_loss[*col[e]];
      ++copied;
    }
  // Units: the same pool model (by checksum). Old unit index -> fresh index, when still valid.
  std::vector<std::optional<std::size_t>> unit_map(old.units.size());
  for (std::size_t u = 0; u < old.units.size(); ++u) {
    const auto f = fresh.unit_index(old.units[u].name);
    if (f && !old.units[u].checksum.empty() && old.units[u].checksum == fresh.units[*f].checksum)
      unit_map[u] = f;
  }
  for (std::size_t u = 0; u < old.units.size(); ++u)
    if (unit_map[u])
      copy_row([&](std::size_t e) { return old.pool_loss.at(u, e); },
               [&](std::size_t e, double v) { fresh.pool_loss.at(*unit_map[u], e) = v; });

  std::map<std::string, std::size_t> fresh_rows;
  for (std::size_t m = 0; m < fresh.mixtures.size(); ++m)
    fresh_rows[member_key(fresh, fresh.mixtures[m])] = m;
  for (std::size_t om = 0; om < old.mixtures.size(); ++om) {
    const auto& omix = old.mixtures[om];
    const bool units_valid = std::all_of(omix.members.begin(), omix.members.end(),
                                         [&](std::size_t u) { return unit_map[u].has_value(); });
    if (!units_valid) continue;
    // Fresh members in fresh unit order, with the old member position of each.
    std::vector<std::pair<std::size_t, std::size_t>> members;  // (fresh unit, old position)
    for (std::size_t i = 0; i < omix.members.size(); ++i)
      members.emplace_back(*unit_map[omix.members[i]], i);
    std::sort(members.begin(), members.end());
    std::size_t fm;
    if (const auto it = fresh_rows.find(member_key(old, omix)); it != fresh_rows.end()) {
      fm = it->second;
    } else {
      // A mixture the fresh run did not ask for: kept, with its weights, never evaluated again.
      ResultsMixture mix;
      for (const auto& [u, i] : members) mix.members.push_back(u);
      mix.name = omix.name;
      mix.in_space = false;
      fresh.mixtures.push_back(mix);
      fm = fresh.mixtures.size() - 1;
      fresh_rows[member_key(fresh, mix)] = fm;
      for (auto& p : fresh.proxies) {
        const auto op = old.proxy_index(p.name);
        std::vector<double> w(members.size(), std::numeric_limits<double>::quiet_NaN());
        if (op)
          for (std::size_t j = 0; j < members.size(); ++j)
            w[j] = old.proxies[*op].weights[om][members[j].second];
        p.weights.push_back(std::move(w));
        p.loss.values.resize(p.loss.values.size() + fresh.eval_sets.size(),
                             std::numeric_limits<double>::quiet_NaN());
        ++p.loss.rows;
      }
      fresh.truth_loss.values.resize(fresh.truth_loss.values.size() + fresh.eval_sets.size(),
                                     std::numeric_limits<double>::quiet_NaN());
      ++fresh.truth_loss.rows;
    }
    for (auto& p : fresh.proxies) {
      const auto op = old.proxy_index(p.name);
      if (!op) continue;
      bool same_weights = true;
      for (std::size_t j = 0; j < members.size(); ++j)
        same_weights =
            same_weights && p.weights[fm][j] == old.proxies[*op].weights[om][members[j].second];
      if (!same_weights) continue;
      copy_row([&](std::size_t e) { return old.proxies[*op].loss.at(om, e); },
               [&](std::size_t e, double v) { p.loss.at(fm, e) = v; });
    }
    auto& fmix = fresh.mixtures[fm];
    if (!fmix.in_space && fmix.truth_checksum.empty()) fmix.truth_checksum = omix.truth_checksum;
    if (!omix.truth_checksum.empty() && omix.truth_checksum == fmix.truth_checksum)
      copy_row([&](std::size_t e) { return old.truth_loss.at(om, e); },
               [&](std::size_t e, double v) { fresh.truth_loss.at(fm, e) = v; });
  }
  return copied;
}

}  // namespace mixsim
