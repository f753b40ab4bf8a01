#include "mixsim/stages/report.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "mixsim/core/error.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/stages/merge_eval.hpp"

namespace mixsim {
namespace fs = std::filesystem;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
const char* const kRelations[] = {"own", "other", "ood", "all"};

// Columns padded to their widest cell; numbers right-aligned ('r'), text left-aligned ('l').
class TextTable {
 public:
  TextTable(std::vector<std::string> header, std::string align) : align_(std::move(align)) {
    rows_.push_back(std::move(header));
  }
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string str(const std::string& indent) const {
    std::vector<std::size_t> width(align_.size(), 0);
    for (const auto& row : rows_)
      for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
    std::string out;
    for (const auto& row : rows_) {
      std::string line = indent;
      for (std::size_t c = 0; c < row.size(); ++c) {
        const std::string pad(width[c] - row[c].size(), ' ');
        line += align_[c] == 'r' ? pad + row[c] : row[c] + (c + 1 < row.size() ? pad : "");
        if (c + 1 < row.size()) line += "  ";
      }
      out += line + "\n";
    }
    return out;
  }

 private:
  std::string align_;
  std::vector<std::vector<std::string>> rows_;
};

std::string num(double v, int digits = 3) {
  return std::isfinite(v) ? fmt::format("{:.{}f}", v, digits) : std::string("-");
}

std::string with_ci(double v, const stats::Interval& ci) {
  if (!std::isfinite(v)) return "-";
  if (!std::isfinite(ci.lo)) return num(v);
  return fmt::format("{:.3f} [{:.3f}, {:.3f}]", v, ci.lo, ci.hi);
}

std::string decisions_text(const stats::Decisions& d) {
  if (d.pairs == 0) return "-";
  return fmt::format("{:.1f}% of {}", 100.0 * d.accuracy, d.pairs);
}

std::string set_kind(const ResultsEvalSet& e) {
  return e.kind == "ood" ? std::string("out of domain") : "partition " + e.partition;
}

// The (proxy, truth) loss pairs of eval set e over the mixtures matching `rel`.
void pairs_of(const Results& r, const Matrix& proxy, std::size_t e, const std::string& rel,
              std::vector<double>& x, std::vector<double>& y,
              std::vector<std::size_t>* rows = nullptr) {
  for (std::size_t m = 0; m < r.mixtures.size(); ++m) {
    const double px = proxy.at(m, e), ty = r.truth_loss.at(m, e);
    if (!std::isfinite(px) || !std::isfinite(ty)) continue;
    if (rel != "all" && relation(r, m, e) != rel) continue;
    x.push_back(px);
    y.push_back(ty);
    if (rows) rows->push_back(m);
  }
}

Correlation correlate(const std::vector<double>& x, const std::vector<double>& y, std::string set,
                      std::string rel, std::string proxy, int resamples, std::uint64_t seed) {
  Correlation c;
  c.eval_set = std::move(set);
  c.relation = std::move(rel);
  c.proxy = std::move(proxy);
  c.n = x.size();
  c.pearson = stats::pearson(x, y);
  c.spearman = stats::spearman(x, y);
  c.kendall = stats::kendall_tau_b(x, y);
  c.decisions = stats::decision_accuracy(x, y);
  c.mean_set_pearson = kNaN;
  const Rng base = Rng(seed).split(hash_string(c.eval_set + '\n' + c.relation + '\n' + c.proxy));
  if (c.n >= 3) {
    c.pearson_ci = stats::bootstrap(x, y, stats::pearson, resamples, base.split(1).key());
    c.spearman_ci = stats::bootstrap(x, y, stats::spearman, resamples, base.split(2).key());
    c.kendall_ci = stats::bootstrap(x, y, stats::kendall_tau_b, resamples, base.split(3).key());
  } else {
    c.pearson_ci = c.spearman_ci = c.kendall_ci = {kNaN, kNaN};
  }
  return c;
}

// ---- text sections ---------------------------------------------------------------------------

void print_header(const Results& r, const fs::path& path, std::ostream& out) {
  std::size_t in_space = 0, truth = 0;
  for (const auto& m : r.mixtures) {
    in_space += m.in_space;
    truth += !m.truth_checksum.empty();
  }
  std::size_t pool = 0;
  for (const auto& u : r.units) pool += !u.checksum.empty();
  std::vector<std::string> proxies;
  for (const auto& p : r.proxies) proxies.push_back(p.name);
  out << fmt::format("results '{}' ({})\n", path.string(), r.created_by);
  out << fmt::format(
      "  {} units ({} with a pool model), {} eval sets, {} mixtures ({} in the last "
      "run's space), {} truth models; proxies: {}; {}\n\n",
      r.units.size(), pool, r.eval_sets.size(), r.mixtures.size(), in_space, truth,
      fmt::join(proxies, ", "),
      r.complete ? "complete" : fmt::format("{} entries not evaluated yet", r.missing()));
}

void print_eval_sets(const Results& r, std::ostream& out) {
  TextTable t(
      {"eval set", "kind", "tokens", "seed ppl", "seed bpb", "pool ppl (mean)", "best pool model"},
      "llrrrrl");
  for (std::size_t e = 0; e < r.eval_sets.size(); ++e) {
    const auto& set = r.eval_sets[e];
    double sum = 0, best = kNaN;
    std::size_t n = 0, best_u = 0;
    for (std::size_t u = 0; u < r.units.size(); ++u) {
      const double v = r.pool_loss.at(u, e);
      if (!std::isfinite(v)) continue;
      sum += std::exp(v);
      ++n;
      if (!(v >= best)) best = v, best_u = u;
    }
    t.add({set.name, set_kind(set), std::to_string(set.scored_tokens),
           num(std::exp(r.seed_loss[e]), 2), num(bits_per_byte(r.seed_loss[e], set)),
           n ? num(sum / double(n), 2) : "-",
           n ? fmt::format("{} {:.2f}", r.units[best_u].name, std::exp(best)) : "-"});
  }
  out << "Eval sets: the seed and the pool models alone (perplexity; bits per byte)\n"
      << t.str("  ") << "\n";
}

// What continued pre-training did: each pool model's loss against the seed's, on its own
// partition's held-out set, as a mean over the other partitions' sets, and over the
// out-of-domain sets (gain = seed loss - pool loss: positive when the pool model is better).
// A pool unit's relation to an eval set: its own partition's, another partition's, or ood.
std::string unit_relation(const Results& r, std::size_t u, std::size_t e) {
  const auto& set = r.eval_sets[e];
  return set.kind == "ood" ? "ood" : set.partition == r.units[u].partition ? "own" : "other";
}

void print_pool_vs_seed(const Results& r, std::ostream& out) {
  TextTable t({"unit", "own set", "seed", "unit", "gain", "other sets: seed", "unit", "gain",
               "ood: seed", "unit", "gain"},
              "llrrrrrrrrr");
  std::size_t scored = 0, beat_own = 0, with_own = 0;
  double gain_own = 0, gain_other = 0, gain_ood = 0;
  std::size_t n_other = 0, n_ood = 0;
  for (std::size_t u = 0; u < r.units.size(); ++u) {
    std::string own_name = "-";
    double own_seed = kNaN, own_unit = kNaN;
    double other_seed = 0, other_unit = 0, ood_seed = 0, ood_unit = 0;
    std::size_t others = 0, oods = 0;
    for (std::size_t e = 0; e < r.eval_sets.size(); ++e) {
      const double v = r.pool_loss.at(u, e), s0 = r.seed_loss[e];
      if (!std::isfinite(v) || !std::isfinite(s0)) continue;
      const auto rel = unit_relation(r, u, e);
      if (rel == "ood") {
        ood_seed += s0, ood_unit += v, ++oods;
      } else if (rel == "own") {
        own_name = r.eval_sets[e].name, own_seed = s0, own_unit = v;
      } else {
        other_seed += s0, other_unit += v, ++others;
      }
    }
    if (others + oods == 0 && !std::isfinite(own_unit)) continue;  // no pool model scored
    ++scored;
    if (std::isfinite(own_unit)) {
      ++with_own;
      beat_own += own_unit < own_seed;
      gain_own += own_seed - own_unit;
    }
    auto mean = [](double sum, std::size_t n) { return n ? sum / double(n) : kNaN; };
    if (others) gain_other += (other_seed - other_unit) / double(others), ++n_other;
    if (oods) gain_ood += (ood_seed - ood_unit) / double(oods), ++n_ood;
    t.add({r.units[u].name, own_name, num(own_seed), num(own_unit), num(own_seed - own_unit),
           num(mean(other_seed, others)), num(mean(other_unit, others)),
           num(mean(other_seed - other_unit, others)), num(mean(ood_seed, oods)),
           num(mean(ood_unit, oods)), num(mean(ood_seed - ood_unit, oods))});
  }
  if (scored == 0) return;
  out << "Continued pre-training: each pool model against the seed (loss in nats; gain = seed - "
         "unit,\n  positive when the pool model is better; other and ood: means over those sets)\n"
      << t.str("  ")
      << fmt::format("  {} of {} pool models beat the seed on their own partition's held-out set; "
                     "mean gain: own {}, other {}, ood {}\n\n",
                     beat_own, with_own, num(with_own ? gain_own / double(with_own) : kNaN),
                     num(n_other ? gain_other / double(n_other) : kNaN),
                     num(n_ood ? gain_ood / double(n_ood) : kNaN));
}

std::string best_of(const Results& r, const Matrix& loss, std::size_t e, int top) {
  std::vector<std::size_t> rows;
  for (std::size_t m = 0; m < r.mixtures.size(); ++m)
    if (std::isfinite(loss.at(m, e))) rows.push_back(m);
  std::stable_sort(rows.begin(), rows.end(),
                   [&](std::size_t a, std::size_t b) { return loss.at(a, e) < loss.at(b, e); });
  if (rows.size() > static_cast<std::size_t>(top)) rows.resize(static_cast<std::size_t>(top));
  std::vector<std::string> items;
  for (auto m : rows)
    items.push_back(fmt::format("{:.2f} {}", std::exp(loss.at(m, e)), r.mixtures[m].name));
  return items.empty() ? std::string("-") : fmt::format("{}", fmt::join(items, "  |  "));
}

void print_best(const Results& r, int top, std::ostream& out) {
  out << fmt::format("Best mixtures per eval set (perplexity, best {} first)\n", top);
  bool any_truth = false;
  for (const auto& m : r.mixtures) any_truth = any_truth || !m.truth_checksum.empty();
  for (std::size_t e = 0; e < r.eval_sets.size(); ++e) {
    out << fmt::format("  {} ({})\n", r.eval_sets[e].name, set_kind(r.eval_sets[e]));
    TextTable t({"", ""}, "ll");
    for (const auto& p : r.proxies) t.add({p.name, best_of(r, p.loss, e, top)});
    if (any_truth) t.add({"truth", best_of(r, r.truth_loss, e, top)});
    const auto text = t.str("    ");
    out << text.substr(text.find('\n') + 1);  // no header line
  }
  out << "\n";
}

void print_correlations(const Results& r, const std::vector<Correlation>& cs, int resamples,
                        std::ostream& out) {
  std::size_t truth = 0;
  for (const auto& m : r.mixtures) truth += !m.truth_checksum.empty();
  out << fmt::format(
      "Proxy vs truth loss over {} truth models (95% bootstrap intervals, {} resamples)\n", truth,
      resamples);
  out << "  By relation of eval set to mixture (own: held out of one of the mixture's partitions;\n"
         "  other: of another partition; ood: out of domain), pooled over (mixture, eval set) "
         "pairs;\n"
         "  decisions: pairs of mixtures on the same eval set ordered as the truth orders them\n";
  TextTable s({"relation", "proxy", "pairs", "Pearson r", "Spearman rho", "Kendall tau-b",
               "decisions", "mean r per set"},
              "llrlllrr");
  for (const auto& c : cs)
    if (c.eval_set.empty() && c.n > 0)
      s.add({c.relation, c.proxy, std::to_string(c.n), with_ci(c.pearson, c.pearson_ci),
             with_ci(c.spearman, c.spearman_ci), with_ci(c.kendall, c.kendall_ci),
             decisions_text(c.decisions), num(c.mean_set_pearson)});
  out << s.str("  ") << "\n";
  out << "  Per eval set, all mixtures with a truth model\n";
  TextTable t({"eval set", "proxy", "n", "Pearson r", "Spearman rho", "Kendall tau-b", "decisions"},
              "llrlllr");
  for (const auto& c : cs)
    if (!c.eval_set.empty() && c.relation == "all" && c.n > 0)
      t.add({c.eval_set, c.proxy, std::to_string(c.n), with_ci(c.pearson, c.pearson_ci),
             with_ci(c.spearman, c.spearman_ci), with_ci(c.kendall, c.kendall_ci),
             decisions_text(c.decisions)});
  out << t.str("  ") << "\n";
}

// A k-unit truth model trains k unit budgets, so truth losses fall with k where an average of k
// models need not: pooling mixture sizes mixes that effect into the proxy's agreement. Per size
// k (with at least 3 truth models) and proxy: Pearson r per eval set over the k-unit truth
// mixtures, and the pairwise decisions summed over the sets. Printed for a single size too: its
// one line per proxy sums up the per-set table (how many sets reach r >= 0.9).
struct SizeRow {
  std::size_t k = 0;
  std::string proxy;
  std::size_t n = 0;                  // truth mixtures of size k
  std::vector<double> set_pearson;    // per eval set (NaN where undefined)
  stats::Decisions decisions;         // pooled over the eval sets
};

std::vector<SizeRow> by_size(const Results& r) {
  std::map<std::size_t, std::vector<std::size_t>> rows_of;
  for (std::size_t m = 0; m < r.mixtures.size(); ++m)
    if (!r.mixtures[m].truth_checksum.empty()) rows_of[r.mixtures[m].members.size()].push_back(m);
  std::vector<SizeRow> out;
  for (const auto& p : r.proxies)
    for (const auto& [k, rows] : rows_of) {
      if (rows.size() < 3) continue;
      SizeRow row{k, p.name, rows.size(), {}, {}};
      for (std::size_t e = 0; e < r.eval_sets.size(); ++e) {
        std::vector<double> x, y;
        for (auto m : rows)
          if (std::isfinite(p.loss.at(m, e)) && std::isfinite(r.truth_loss.at(m, e))) {
            x.push_back(p.loss.at(m, e));
            y.push_back(r.truth_loss.at(m, e));
          }
        row.set_pearson.push_back(x.size() >= 3 ? stats::pearson(x, y) : kNaN);
        const auto d = stats::decision_accuracy(x, y);
        row.decisions.pairs += d.pairs;
        row.decisions.agreeing += d.agreeing;
      }
      row.decisions.accuracy =
          row.decisions.pairs ? row.decisions.agreeing / double(row.decisions.pairs) : kNaN;
      out.push_back(std::move(row));
    }
  return out;
}

void print_by_size(const std::vector<SizeRow>& rows, std::ostream& out) {
  if (rows.empty()) return;
  out << "  By mixture size k: only the truth models of k units (their budgets are equal), per eval set\n";
  TextTable t({"k", "proxy", "n", "Pearson r per set: min", "median", "max", "sets with r >= 0.9",
               "decisions"},
              "rlrrrrrr");
  for (const auto& row : rows) {
    std::vector<double> r;
    for (double v : row.set_pearson)
      if (std::isfinite(v)) r.push_back(v);
    std::sort(r.begin(), r.end());
    const std::size_t good = static_cast<std::size_t>(
        std::count_if(r.begin(), r.end(), [](double v) { return v >= 0.9; }));
    const double median =
        r.empty() ? kNaN : (r.size() % 2 ? r[r.size() / 2] : (r[r.size() / 2 - 1] + r[r.size() / 2]) / 2);
    t.add({std::to_string(row.k), row.proxy, std::to_string(row.n), r.empty() ? "-" : num(r.front()),
           num(median), r.empty() ? "-" : num(r.back()),
           fmt::format("{} of {}", good, row.set_pearson.size()), decisions_text(row.decisions)});
  }
  out << t.str("  ") << "\n";
}

// ---- CSV -------------------------------------------------------------------------------------

void write_csv(const fs::path& path, const Results& r, const std::vector<Correlation>& cs,
               const std::vector<SizeRow>& sizes) {
  std::ofstream out(path);
  if (!out) fail("cannot write the CSV file '{}': check the directory", path.string());
  out << "kind,eval_set,relation,proxy,mixture,n,statistic,value,ci_low,ci_high\n";
  auto row = [&](const std::string& kind, const std::string& set, const std::string& rel,
                 const std::string& proxy, const std::string& mixture, const std::string& n,
                 const std::string& stat, double v, double lo = kNaN, double hi = kNaN) {
    auto f = [](double x) { return std::isfinite(x) ? fmt::format("{:.17g}", x) : std::string(); };
    out << kind << ',' << csv_field(set) << ',' << rel << ',' << csv_field(proxy) << ','
        << csv_field(mixture) << ',' << n << ',' << stat << ',' << f(v) << ',' << f(lo) << ','
        << f(hi) << '\n';
  };
  auto scores = [&](const std::string& proxy, const std::string& name, const std::string& rel,
                    const ResultsEvalSet& e, double loss) {
    if (!std::isfinite(loss)) return;
    row("score", e.name, rel, proxy, name, "", "loss", loss);
    row("score", e.name, rel, proxy, name, "", "perplexity", std::exp(loss));
    row("score", e.name, rel, proxy, name, "", "bits_per_byte", bits_per_byte(loss, e));
  };
  for (std::size_t e = 0; e < r.eval_sets.size(); ++e) {
    const auto& set = r.eval_sets[e];
    scores("seed", "", "", set, r.seed_loss[e]);
    for (std::size_t u = 0; u < r.units.size(); ++u) {
      scores("pool", r.units[u].name, unit_relation(r, u, e), set, r.pool_loss.at(u, e));
    }
    for (std::size_t m = 0; m < r.mixtures.size(); ++m) {
      const auto rel = relation(r, m, e);
      for (const auto& p : r.proxies) scores(p.name, r.mixtures[m].name, rel, set, p.loss.at(m, e));
      scores("truth", r.mixtures[m].name, rel, set, r.truth_loss.at(m, e));
    }
  }
  for (const auto& c : cs) {
    const auto kind = c.eval_set.empty() ? "summary" : "correlation";
    const auto n = std::to_string(c.n);
    row(kind, c.eval_set, c.relation, c.proxy, "", n, "pearson", c.pearson, c.pearson_ci.lo,
        c.pearson_ci.hi);
    row(kind, c.eval_set, c.relation, c.proxy, "", n, "spearman", c.spearman, c.spearman_ci.lo,
        c.spearman_ci.hi);
    row(kind, c.eval_set, c.relation, c.proxy, "", n, "kendall_tau_b", c.kendall, c.kendall_ci.lo,
        c.kendall_ci.hi);
    row(kind, c.eval_set, c.relation, c.proxy, "", std::to_string(c.decisions.pairs),
        "decision_accuracy", c.decisions.accuracy);
    if (c.eval_set.empty())
      row(kind, "", c.relation, c.proxy, "", n, "mean_set_pearson", c.mean_set_pearson);
  }
  for (const auto& z : sizes) {
    const auto rel = fmt::format("k={}", z.k);
    for (std::size_t e = 0; e < r.eval_sets.size(); ++e)
      row("by_size", r.eval_sets[e].name, rel, z.proxy, "", std::to_string(z.n), "pearson",
          z.set_pearson[e]);
    row("by_size", "", rel, z.proxy, "", std::to_string(z.decisions.pairs), "decision_accuracy",
        z.decisions.accuracy);
  }
  if (!out.flush()) fail("cannot write the CSV file '{}'", path.string());
}

// ---- plots -----------------------------------------------------------------------------------

std::size_t write_plots(const fs::path& dir, const Results& r) {
  fs::create_directories(dir);
  std::size_t written = 0;
  for (std::size_t e = 0; e < r.eval_sets.size(); ++e)
    for (const auto& p : r.proxies) {
      std::vector<double> x, y;
      std::vector<std::size_t> rows;
      pairs_of(r, p.loss, e, "all", x, y, &rows);
      if (x.size() < 2) continue;
      std::vector<std::string> labels;
      for (auto m : rows)
        labels.push_back(fmt::format("{} ({})", r.mixtures[m].name, relation(r, m, e)));
      const auto title = fmt::format("{}: {} vs truth (r = {}, n = {})", r.eval_sets[e].name,
                                     p.name, num(stats::pearson(x, y)), x.size());
      const auto path = dir / (file_safe(r.eval_sets[e].name) + "__" + file_safe(p.name) + ".svg");
      std::ofstream out(path);
      out << svg_scatter(title, x, y, labels, p.name + " proxy loss (nats/token)",
                         "truth loss (nats/token)");
      if (!out.flush()) fail("cannot write the plot '{}'", path.string());
      ++written;
    }
  return written;
}

}  // namespace

std::string relation(const Results& r, std::size_t mixture, std::size_t eval_set) {
  const auto& e = r.eval_sets[eval_set];
  if (e.kind == "ood") return "ood";
  for (auto u : r.mixtures[mixture].members)
    if (r.units[u].partition == e.partition) return "own";
  return "other";
}

std::vector<Correlation> correlations(const Results& r, int resamples, std::uint64_t seed) {
  std::vector<Correlation> out;
  for (const auto& p : r.proxies) {
    struct Pool {
      std::vector<double> x, y;
      stats::Decisions decisions;
      double sum_r = 0;
      int sets = 0;
    };
    std::map<std::string, Pool> pooled;
    for (std::size_t e = 0; e < r.eval_sets.size(); ++e) {
      const bool ood = r.eval_sets[e].kind == "ood";
      for (const std::string rel : {"all", "own", "other", "ood"}) {
        if ((rel == "ood") != ood && rel != "all") continue;
        std::vector<double> x, y;
        pairs_of(r, p.loss, e, rel, x, y);
        if (x.empty()) continue;
        auto c = correlate(x, y, r.eval_sets[e].name, rel, p.name, resamples, seed);
        // The per-set rows feed the summary of their relation ("all" feeds the overall one).
        auto& pool = pooled[rel];
        pool.x.insert(pool.x.end(), x.begin(), x.end());
        pool.y.insert(pool.y.end(), y.begin(), y.end());
        pool.decisions.pairs += c.decisions.pairs;
        pool.decisions.agreeing += c.decisions.agreeing;
        if (std::isfinite(c.pearson)) pool.sum_r += c.pearson, ++pool.sets;
        if (rel != "ood") out.push_back(std::move(c));  // an ood set's own row is its "all" row
      }
    }
    for (const std::string rel : kRelations) {
      const auto it = pooled.find(rel);
      if (it == pooled.end()) continue;
      auto c = correlate(it->second.x, it->second.y, "", rel, p.name, resamples, seed);
      c.decisions = it->second.decisions;
      c.decisions.accuracy =
          c.decisions.pairs ? c.decisions.agreeing / double(c.decisions.pairs) : kNaN;
      c.mean_set_pearson = it->second.sets ? it->second.sum_r / it->second.sets : kNaN;
      out.push_back(std::move(c));
    }
  }
  return out;
}

std::string file_safe(const std::string& name) {
  std::string s = name;
  for (auto& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  return s;
}

std::string csv_field(const std::string& text) {
  if (text.find_first_of(",\"\n\r") == std::string::npos) return text;
  std::string q = "\"";
  for (char c : text) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

void add_report_options(po::options_description& d) {
  d.add_options()("results", po::value<std::string>(),
                  "results file (default: merge.output under run.out_dir)")(
      "csv", po::value<std::string>(), "also write every number to this CSV file")(
      "plots", po::value<std::string>(),
      "also write SVG scatter plots (proxy vs truth) into this directory")(
      "top", po::value<int>()->default_value(3), "best mixtures shown per eval set and proxy")(
      "bootstrap", po::value<int>()->default_value(1000),
      "bootstrap resamples of the intervals (seeded by run.seed)");
}

int run_report(const JobConfig& config, const po::variables_map& vm, const Communicator& world) {
  const fs::path path =
      vm.count("results") ? fs::path(vm["results"].as<std::string>()) : results_path(config);
  const int top = vm["top"].as<int>(), resamples = vm["bootstrap"].as<int>();
  if (top < 1) usage_fail("option --top must be at least 1 (got {})", top);
  if (resamples < 0) usage_fail("option --bootstrap must be at least 0 (got {})", resamples);
  if (world.rank() != 0) return 0;  // a report is one process's work
  const auto r = read_results(path);
  std::ostringstream out;
  print_header(r, path, out);
  print_eval_sets(r, out);
  print_pool_vs_seed(r, out);
  print_best(r, top, out);
  const auto cs = correlations(r, resamples, config.run.seed);
  if (cs.empty() ||
      std::none_of(cs.begin(), cs.end(), [](const Correlation& c) { return c.n > 0; }))
    out << "No truth scores in the results: train truth models (`mixsim truth`), then run "
           "merge-eval\n"
           "again to compare the proxies with them.\n";
  else
    print_correlations(r, cs, resamples, out);
  const auto sizes = by_size(r);
  print_by_size(sizes, out);
  if (vm.count("csv")) {
    write_csv(vm["csv"].as<std::string>(), r, cs, sizes);
    out << fmt::format("CSV: '{}'\n", vm["csv"].as<std::string>());
  }
  if (vm.count("plots")) {
    const auto n = write_plots(vm["plots"].as<std::string>(), r);
    out << fmt::format("Plots: {} SVG file(s) in '{}'\n", n, vm["plots"].as<std::string>());
  }
  std::cout << out.str() << std::flush;
  return 0;
}

}  // namespace mixsim
