#include "mixsim/stages/merge_eval.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <optional>
#include <set>

#include "mixsim/core/error.hpp"
#include "mixsim/core/log.hpp"
#include "mixsim/core/progress.hpp"
#include "mixsim/core/signals.hpp"
#include "mixsim/core/timer.hpp"
#include "mixsim/io/checkpoint.hpp"
#include "mixsim/io/data_file.hpp"
#include "mixsim/io/results.hpp"
#include "mixsim/stages/mixtures.hpp"
#include "mixsim/stages/prepare.hpp"
#include "mixsim/stages/train_stages.hpp"
#include "mixsim/stages/training.hpp"
#include "mixsim/version.hpp"

namespace mixsim {
namespace fs = std::filesystem;

namespace {

// Relative costs for the plan, in eval-token equivalents (one token = one forward pass position
// of the model): averaging one pool model streams its parameters once, about as long as
// evaluating 10 tokens (2 flops per parameter per token at ~50 GFLOP/s vs 4-8 bytes per parameter
// at ~10 GB/s); reading a checkpoint is slower still. Only their ratio to the eval tokens matters.
constexpr double kAverageCost = 10;
constexpr double kLoadCost = 100;

fs::path under_out_dir(const JobConfig& config, const fs::path& p) {
  return p.is_absolute() ? p : fs::path(config.run.out_dir) / p;
}

std::string crc32_hex(const void* data, std::size_t bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = static_cast<const Bytef*>(data);
  while (bytes > 0) {  // zlib takes uInt lengths
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(bytes, 1u << 30));
    crc = crc32(crc, p, chunk);
    p += chunk;
    bytes -= chunk;
  }
  return fmt::format("{:08x}", static_cast<std::uint32_t>(crc));
}

// ---- inputs: the seed, the pool, the truth models, all checked before any work ----------------

struct ModelFile {
  fs::path path;
  std::string checksum;  // params_crc32; "" when the file does not exist
};

struct Inputs {
  fs::path seed_file;
  CheckpointInfo seed;
  std::vector<ModelFile> pool;         // per data unit
  std::map<Mixture, ModelFile> truth;  // complete truth models by mixture
};

CheckpointInfo require_seed(const fs::path& seed) {
  if (!fs::exists(seed))
    fail(
        "seed model '{}' does not exist: merge-eval checks the pool against it; train it with "
        "`mixsim train` (or point --seed.output at the pool's seed)",
        seed.string());
  auto info = read_checkpoint_info(seed);
  if (!info.provenance.complete)
    fail("seed model '{}' is incomplete (step {}/{}): finish it with `mixsim train`", seed.string(),
         info.provenance.steps_done, info.provenance.total_steps);
  return info;
}

// A checkpoint's metadata; an unreadable file is an error that says how to replace it.
CheckpointInfo read_info(const fs::path& path, const char* rerun) {
  try {
    return read_checkpoint_info(path);
  } catch (const Error& e) {
    fail("{}; delete it and run {} to train it again", e.what(), rerun);
  }
}

// A model continued from the seed: the seed's architecture, and the seed (by checksum) as parent.
void require_child_of_seed(const fs::path& path, const CheckpointInfo& info, const Inputs& in,
                           const std::string& what, const std::string& rerun) {
  require_same_model(in.seed.model, info.model, "the seed model '" + in.seed_file.string() + "'",
                     what + " '" + path.string() + "'");
  if (info.provenance.parent_checksum != in.seed.params_checksum)
    fail(
        "{} '{}' was not continued from the seed model '{}' (its parent is '{}' with checksum {}, "
        "the seed's checksum is {}{}): retrain it with {} after deleting it, or set --seed.output "
        "to the seed it came from",
        what, path.string(), in.seed_file.string(), info.provenance.parent,
        info.provenance.parent_checksum.empty() ? "none" : info.provenance.parent_checksum,
        in.seed.params_checksum,
        fs::path(info.provenance.parent) == in.seed_file ? "; the seed was retrained since" : "",
        rerun);
}

void check_pool(const JobConfig& config, const DataFile& data, Inputs& in) {
  std::vector<std::string> missing;
  for (const auto& unit : data.units()) {
    ModelFile m{pool_model_path(config, unit.name), ""};
    if (!fs::exists(m.path)) {
      missing.push_back(unit.name);
      in.pool.push_back(m);
      continue;
    }
    const auto info = read_info(m.path, "`mixsim pool`");
    if (!info.provenance.complete)
      fail(
          "pool model '{}' of unit '{}' is incomplete (step {}/{}): finish the pool with `mixsim "
          "pool`",
          m.path.string(), unit.name, info.provenance.steps_done, info.provenance.total_steps);
    if (info.provenance.units != std::vector<std::string>{unit.name})
      fail(
          "'{}' is not the pool model of unit '{}': it was trained on '{}'; delete it and run "
          "`mixsim pool`",
          m.path.string(), unit.name, fmt::join(info.provenance.units, "+"));
    require_child_of_seed(m.path, info, in, "pool model", "`mixsim pool`");
    m.checksum = info.params_checksum;
    in.pool.push_back(m);
  }
  if (missing.empty()) return;
  const auto first = pool_model_path(config, missing.front());
  const bool partial = fs::exists(partial_path(first));
  if (!config.merge.available_units_only)
    fail(
        "{} of {} units have no pool model, e.g. unit '{}': '{}' does not exist{}. Run `mixsim "
        "pool` with this job file, or set --merge.available_units_only true to score only "
        "mixtures of the units that have one",
        missing.size(), data.units().size(), missing.front(), first.string(),
        partial ? " (a partial checkpoint is there: the pool is training or was interrupted)" : "");
  if (missing.size() == data.units().size())
    fail("no unit has a pool model (e.g. '{}' does not exist): run `mixsim pool` first",
         first.string());
  log::warn("merge-eval: {} of {} units have no pool model and are left out: {}", missing.size(),
            data.units().size(), fmt::join(missing, ", "));
}

void find_truth(const JobConfig& config, const std::vector<std::string>& units, Inputs& in) {
  const auto dir = under_out_dir(config, config.truth.dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (e.path().extension() == ".h5" && name.find(".partial.") == std::string::npos &&
        name.find(".tmp.") == std::string::npos)
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& path : files) {
    const auto info = read_info(path, "`mixsim truth`");
    if (info.provenance.kind != "truth") continue;
    if (!info.provenance.complete) {
      log::info(
          "merge-eval: truth model '{}' is incomplete and left out (finish it with `mixsim "
          "truth`)",
          path.string());
      continue;
    }
    Mixture m;
    for (const auto& u : info.provenance.units) {
      const auto it = std::find(units.begin(), units.end(), u);
      if (it == units.end()) {
        m.clear();
        break;
      }
      m.push_back(static_cast<std::size_t>(it - units.begin()));
    }
    if (m.empty()) {
      log::warn(
          "merge-eval: truth model '{}' was trained on units that are not in the data file; "
          "left out",
          path.string());
      continue;
    }
    std::sort(m.begin(), m.end());
    require_child_of_seed(path, info, in, "truth model", "`mixsim truth`");
    in.truth[m] = {path, info.params_checksum};
  }
}

// ---- the plan: what to evaluate, by which group --------------------------------------------

enum class Table { proxy, pool, seed, truth };

struct Target {
  Table table;
  std::size_t index = 0;  // proxy index (Table::proxy)
  std::size_t row = 0;    // mixture (proxy, truth) or unit (pool)
};

// One model to evaluate on some eval sets: an average of pool models, or a checkpoint.
struct WorkItem {
  Mixture members;             // averaged from the pool; empty: read `file`
  std::vector<float> weights;  // aligned with members
  fs::path file;
  std::vector<Target> targets;  // where its scores go (several proxies may share one average)
  std::vector<std::size_t> sets;
  double cost = 0;
};

// Missing entries, as one flag per entry, in a fixed order every rank can walk: proxies over the
// mixtures in the space, then pool, seed and truth. Computed by rank 0 from the old results.
std::string missing_mask(const Results& r, std::size_t rows) {
  const std::size_t E = r.eval_sets.size();
  std::string mask;
  // '1': missing, '0': done, '-': nothing to evaluate (no pool or truth model).
  auto flag = [&](double v, bool applicable = true) {
    mask.push_back(!applicable ? '-' : std::isnan(v) ? '1' : '0');
  };
  for (const auto& p : r.proxies)
    if (p.name != "components")  // derived from the pool scores
      for (std::size_t m = 0; m < rows; ++m)
        for (std::size_t e = 0; e < E; ++e) flag(p.loss.at(m, e));
  for (std::size_t u = 0; u < r.units.size(); ++u)
    for (std::size_t e = 0; e < E; ++e) flag(r.pool_loss.at(u, e), !r.units[u].checksum.empty());
  for (std::size_t e = 0; e < E; ++e) flag(r.seed_loss[e]);
  for (std::size_t m = 0; m < rows; ++m)
    for (std::size_t e = 0; e < E; ++e)
      flag(r.truth_loss.at(m, e), !r.mixtures[m].truth_checksum.empty());
  return mask;
}

std::vector<WorkItem> plan_items(const Results& r, std::size_t rows, const std::string& mask,
                                 const Inputs& in, const std::vector<double>& set_tokens) {
  const std::size_t E = r.eval_sets.size();
  std::size_t pos = 0;
  auto missing_sets = [&] {
    std::vector<std::size_t> sets;
    for (std::size_t e = 0; e < E; ++e)
      if (mask[pos++] == '1') sets.push_back(e);
    return sets;
  };
  std::vector<WorkItem> items;
  std::map<std::pair<Mixture, std::vector<float>>, std::size_t>
      averages;  // dedupe identical averages
  auto add = [&](WorkItem item, const std::vector<std::size_t>& sets) {
    if (sets.empty()) return;
    std::optional<std::size_t> at;
    if (!item.members.empty()) {
      const auto key = std::make_pair(item.members, item.weights);
      if (const auto it = averages.find(key); it != averages.end())
        at = it->second;
      else
        averages[key] = items.size();
    }
    if (!at) {
      items.push_back(std::move(item));
      at = items.size() - 1;
    } else {
      items[*at].targets.push_back(item.targets.front());
    }
    auto& s = items[*at].sets;
    std::vector<std::size_t> merged;
    std::set_union(s.begin(), s.end(), sets.begin(), sets.end(), std::back_inserter(merged));
    s = std::move(merged);
  };
  // Pool models first: the components proxy and k = 1 mixtures reuse their scores.
  std::vector<std::vector<std::size_t>> proxy_sets(r.proxies.size() * rows);
  for (std::size_t p = 0; p < r.proxies.size(); ++p)
    if (r.proxies[p].name != "components")
      for (std::size_t m = 0; m < rows; ++m) proxy_sets[p * rows + m] = missing_sets();
  for (std::size_t u = 0; u < r.units.size(); ++u) {
    auto sets = missing_sets();
    if (in.pool[u].checksum.empty()) continue;
    add({{u}, {1.0f}, {}, {{Table::pool, 0, u}}, {}, 0}, sets);
  }
  add({{}, {}, in.seed_file, {{Table::seed, 0, 0}}, {}, 0}, missing_sets());
  for (std::size_t p = 0; p < r.proxies.size(); ++p) {
    if (r.proxies[p].name == "components") continue;  // from the pool scores
    for (std::size_t m = 0; m < rows; ++m) {
      const auto& w = r.proxies[p].weights[m];
      add({r.mixtures[m].members,
           std::vector<float>(w.begin(), w.end()),
           {},
           {{Table::proxy, p, m}},
           {},
           0},
          proxy_sets[p * rows + m]);
    }
  }
  for (std::size_t m = 0; m < rows; ++m) {
    auto sets = missing_sets();
    const auto it = in.truth.find(r.mixtures[m].members);
    if (it != in.truth.end()) add({{}, {}, it->second.path, {{Table::truth, 0, m}}, {}, 0}, sets);
  }
  MIXSIM_CHECK(pos == mask.size(), "missing-entry mask: read {} of {}", pos, mask.size());
  for (auto& item : items) {
    for (auto s : item.sets) item.cost += set_tokens[s];
    item.cost +=
        item.members.empty() ? kLoadCost : kAverageCost * static_cast<double>(item.members.size());
  }
  return items;
}

// ---- evaluation on a group ------------------------------------------------------------------

struct EvalSet {
  std::vector<Token> tokens;
  EvalWindows windows;
};

class Evaluator {
 public:
  Evaluator(const ModelConfig& model_config, Backend& backend, const Communicator& group, int batch)
      : backend_(backend),
        group_(group),
        group_sum_(make_group_allreduce(group, backend)),
        model_(model_config, backend, batch),
        batch_(batch) {}

  // Loads this rank's share of the pool: unit u when u % group size == group rank, if needed.
  void load_pool(const Inputs& in, const std::set<std::size_t>& needed) {
    for (auto u : needed) {
      if (static_cast<int>(u % static_cast<std::size_t>(group_.size())) != group_.rank()) continue;
      const auto& file = in.pool[u];
      Checkpoint ck;
      try {
        ck = read_checkpoint(file.path);
      } catch (const Error& e) {
        fail("{}; delete it and run `mixsim pool` to retrain it", e.what());
      }
      if (checksum_hex(ck.params) != file.checksum)
        fail("pool model '{}' changed while merge-eval ran: run merge-eval again",
             file.path.string());
      DeviceBuffer<float> buffer(backend_, ck.params.size());
      backend_.upload(buffer.get(), ck.params.data(), buffer.bytes());
      held_.emplace(u, std::move(buffer));
    }
  }
  std::size_t held() const { return held_.size(); }

  // Loss sums per eval set of the item's model ((loss, tokens) pairs, summed over the group).
  std::vector<double> evaluate(const WorkItem& item, const std::vector<EvalSet>& sets) {
    prepare_model(item);
    std::vector<double> sums(2 * sets.size(), 0.0);
    for (auto s : item.sets) {
      const auto [first, last] = sets[s].windows.shard(group_.rank(), group_.size());
      const auto part = evaluate_windows(model_, sets[s].windows, first, last, batch_);
      sums[2 * s] = part.loss_sum;
      sums[2 * s + 1] = static_cast<double>(part.tokens);
    }
    if (group_.size() > 1) group_.allreduce_sum(std::span<double>(sums));
    return sums;
  }

 private:
  void prepare_model(const WorkItem& item) {
    const std::size_t n = model_.layout().total();
    if (item.members.empty()) {
      // A checkpoint: read by the group's rank 0 and broadcast, so the file is read once.
      std::vector<float> params(n);
      if (group_.rank() == 0) {
        auto ck = read_checkpoint(item.file);
        MIXSIM_CHECK(ck.params.size() == n, "'{}' has {} parameters, expected {}",
                     item.file.string(), ck.params.size(), n);
        params = std::move(ck.params);
      }
      group_.broadcast(params.data(), n * sizeof(float), 0);
      model_.set_params(params);
      return;
    }
    std::vector<const float*> models;
    std::vector<float> weights;
    for (std::size_t i = 0; i < item.members.size(); ++i) {
      const auto it = held_.find(item.members[i]);
      if (it == held_.end()) continue;  // held by another rank of the group
      models.push_back(it->second.get());
      weights.push_back(item.weights[i]);
    }
    collective_average(backend_, model_.params(), models, weights, n, *group_sum_);
  }

  Backend& backend_;
  const Communicator& group_;
  std::unique_ptr<GroupAllreduce> group_sum_;  // the averages' sums, on the backend's memory
  Gpt model_;
  int batch_;
  std::map<std::size_t, DeviceBuffer<float>> held_;
};

// ---- results bookkeeping on rank 0 -----------------------------------------------------------

void store(Results& r, const WorkItem& item, std::span<const double> sums) {
  for (auto s : item.sets) {
    const double tokens = sums[2 * s + 1];
    // Every token but the first of the set is scored exactly once, whatever the sharding.
    MIXSIM_CHECK(tokens == static_cast<double>(r.eval_sets[s].scored_tokens),
                 "eval set '{}': {} tokens scored, expected {}", r.eval_sets[s].name, tokens,
                 r.eval_sets[s].scored_tokens);
    const double loss = sums[2 * s] / tokens;
    for (const auto& t : item.targets) {
      switch (t.table) {
        case Table::proxy:
          r.proxies[t.index].loss.at(t.row, s) = loss;
          break;
        case Table::pool:
          r.pool_loss.at(t.row, s) = loss;
          break;
        case Table::seed:
          r.seed_loss[s] = loss;
          break;
        case Table::truth:
          r.truth_loss.at(t.row, s) = loss;
          break;
      }
    }
  }
}

void save(const fs::path& path, Results& r) {
  fill_components(r);
  r.complete = r.missing() == 0;
  write_results(path, r);
}

// ---- setup -----------------------------------------------------------------------------------

std::vector<std::size_t> select_eval_sets(const JobConfig& config, const DataFile& data) {
  std::vector<std::size_t> out;
  const auto& sets = data.eval_sets();
  if (config.merge.eval_sets.empty()) {
    out.resize(sets.size());
    std::iota(out.begin(), out.end(), 0);
  }
  for (const auto& name : config.merge.eval_sets) {
    const auto it =
        std::find_if(sets.begin(), sets.end(), [&](const auto& e) { return e.name == name; });
    if (it == sets.end()) {
      std::vector<std::string> names;
      for (const auto& e : sets) names.push_back(e.name);
      usage_fail(
          "option --merge.eval_sets names '{}', which is not an eval set of the data file; "
          "its eval sets are: {}",
          name, fmt::join(names, ", "));
    }
    out.push_back(static_cast<std::size_t>(it - sets.begin()));
  }
  if (out.empty()) fail("the data file '{}' has no eval sets", data.path().string());
  return out;
}

std::vector<Mixture> full_space(const JobConfig& config, const std::vector<std::string>& units,
                                const Inputs& in) {
  std::vector<bool> usable(units.size());
  for (std::size_t u = 0; u < units.size(); ++u) usable[u] = !in.pool[u].checksum.empty();
  auto space = mixture_space(config.merge, units, usable, config.run.seed);
  if (config.merge.truth_mixtures) {
    std::set<Mixture> seen(space.begin(), space.end());
    for (const auto& [m, file] : in.truth)
      if (std::all_of(m.begin(), m.end(), [&](std::size_t u) { return usable[u]; }) &&
          seen.insert(m).second)
        space.push_back(m);
  }
  if (space.size() > config.merge.max_mixtures)
    usage_fail("{} mixtures (with the truth mixtures) are more than --merge.max_mixtures ({})",
               space.size(), config.merge.max_mixtures);
  if (space.empty())
    usage_fail(
        "no mixtures to score: set --merge.mixtures, --merge.sizes, --merge.sample with "
        "--merge.sample_sizes, or --merge.all_subsets (or train truth models first)");
  // Truth models configured but not trained are worth a line: the report will lack them.
  if (!config.truth.mixtures.empty() || config.truth.sample > 0 || config.truth.all_units) {
    std::size_t absent = 0;
    for (const auto& names : truth_mixtures(config, units)) {
      Mixture m;
      for (const auto& n : names)
        m.push_back(
            static_cast<std::size_t>(std::find(units.begin(), units.end(), n) - units.begin()));
      std::sort(m.begin(), m.end());
      absent += !in.truth.count(m);
    }
    if (absent > 0)
      log::info("merge-eval: {} truth model(s) of the job are not trained yet (run `mixsim truth`)",
                absent);
  }
  return space;
}

Results fresh_results(const JobConfig& config, const DataFile& data, const Inputs& in,
                      const std::vector<std::size_t>& selected, const std::vector<EvalSet>& sets,
                      const std::vector<Mixture>& space) {
  Results r;
  r.created_by = fmt::format("mixsim {} (git {})", kVersion, kGitRevision);
  r.data_file = data.path().string();
  r.seed_file = in.seed_file.string();
  r.seed_checksum = in.seed.params_checksum;
  r.context = in.seed.model.context;
  std::vector<std::string> names;
  for (std::size_t u = 0; u < data.units().size(); ++u) {
    const auto& unit = data.units()[u];
    names.push_back(unit.name);
    r.units.push_back({unit.name, unit.partition, unit.tokens, in.pool[u].checksum});
  }
  for (std::size_t i = 0; i < selected.size(); ++i) {
    const auto& e = data.eval_sets()[selected[i]];
    r.eval_sets.push_back(
        {e.name, e.kind, e.partition, sets[i].tokens.size(), sets[i].windows.scored_tokens(),
         e.bytes, crc32_hex(sets[i].tokens.data(), sets[i].tokens.size() * sizeof(Token))});
  }
  for (const auto& m : space) {
    const auto t = in.truth.find(m);
    r.mixtures.push_back(
        {mixture_name(m, names), m, true, t == in.truth.end() ? "" : t->second.checksum});
  }
  const std::size_t M = space.size(), E = selected.size();
  for (const auto& p : config.merge.proxies) {
    ProxyResults proxy{p, {}, Matrix::nan(M, E)};
    for (const auto& m : space) proxy.weights.push_back(proxy_weights(p, m, data.units()));
    r.proxies.push_back(std::move(proxy));
  }
  r.pool_loss = Matrix::nan(r.units.size(), E);
  r.seed_loss.assign(E, std::numeric_limits<double>::quiet_NaN());
  r.truth_loss = Matrix::nan(M, E);
  return r;
}

int group_count(int world_size, int group_size) {
  const int g = group_size == 0 ? world_size : group_size;
  if (world_size % g != 0)
    usage_fail("option --merge.group_size ({}) must divide the number of ranks ({})", g,
               world_size);
  return world_size / g;
}

// Everything the stage reads before it plans: checked data, seed, pool, truth, space, eval sets.
struct Setup {
  DataFile data;
  std::vector<std::string> unit_names;
  Inputs in;
  std::vector<Mixture> space;
  std::vector<std::size_t> selected;  // eval sets, indices into data.eval_sets()
  std::vector<EvalSet> sets;          // their tokens and windows, in that order
  std::vector<double> set_tokens;     // scored tokens of each
  int groups = 1;
};

Setup make_setup(const JobConfig& config, const Communicator& world) {
  const int groups = group_count(world.size(), config.merge.group_size);
  const auto data_path = data_file_path(config);
  if (!fs::exists(data_path))
    fail("data file '{}' does not exist: run `mixsim prepare` with this job file first",
         data_path.string());
  Setup s{DataFile::open(data_path), {}, {}, {}, {}, {}, {}, groups};
  for (const auto& u : s.data.units()) s.unit_names.push_back(u.name);
  s.in.seed_file = seed_path(config);
  s.in.seed = require_seed(s.in.seed_file);
  check_pool(config, s.data, s.in);
  find_truth(config, s.unit_names, s.in);
  s.space = full_space(config, s.unit_names, s.in);
  s.selected = select_eval_sets(config, s.data);
  const std::size_t T = static_cast<std::size_t>(s.in.seed.model.context);
  s.sets.reserve(s.selected.size());  // the windows view the tokens: no reallocation
  for (auto e : s.selected) {
    s.sets.push_back({s.data.eval_tokens(s.data.eval_sets()[e].name), EvalWindows({}, T)});
    s.sets.back().windows = EvalWindows(s.sets.back().tokens, T);
    s.set_tokens.push_back(static_cast<double>(s.sets.back().windows.scored_tokens()));
    if (s.set_tokens.back() == 0)
      fail(
          "eval set '{}' of '{}' has fewer than 2 tokens: nothing to score; leave it out with "
          "--merge.eval_sets",
          s.data.eval_sets()[e].name, data_path.string());
  }
  return s;
}

// Which group evaluates which items, in which order: items are assigned costliest first to the
// least loaded group (LPT), and each group takes its items in that order. Every rank computes the
// same plan; round r is the r-th item of every group.
struct Plan {
  std::vector<std::vector<std::size_t>> queues;  // per group, item indices
  std::size_t rounds = 0;
};

Plan make_plan(const std::vector<WorkItem>& items, int groups) {
  std::vector<double> costs;
  for (const auto& i : items) costs.push_back(i.cost);
  const auto owner = assign_to_groups(costs, groups);
  std::vector<std::size_t> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  Plan plan;
  plan.queues.resize(static_cast<std::size_t>(groups));
  for (auto i : order) plan.queues[static_cast<std::size_t>(owner[i])].push_back(i);
  for (const auto& q : plan.queues) plan.rounds = std::max(plan.rounds, q.size());
  return plan;
}

void log_plan(const JobConfig& config, const Setup& s, const std::string& mask, std::size_t items,
              int per_group) {
  const auto todo = std::count(mask.begin(), mask.end(), '1');
  const auto evaluable =
      mask.size() - static_cast<std::size_t>(std::count(mask.begin(), mask.end(), '-'));
  double tokens = 0;
  for (double t : s.set_tokens) tokens += t;
  const auto with_model = std::count_if(s.in.pool.begin(), s.in.pool.end(),
                                        [](const auto& m) { return !m.checksum.empty(); });
  log::info(
      "merge-eval: {} units ({} with a pool model), {} eval set(s) of {} tokens, {} mixture(s) "
      "x {} prox{}, {} truth model(s)",
      s.unit_names.size(), with_model, s.sets.size(), static_cast<std::uint64_t>(tokens),
      s.space.size(), config.merge.proxies.size(), config.merge.proxies.size() == 1 ? "y" : "ies",
      s.in.truth.size());
  log::info(
      "merge-eval: {} of {} entries to evaluate in {} evaluation(s), {} group(s) of {} rank(s)",
      todo, evaluable, items, s.groups, per_group);
}

struct Outcome {
  bool stopped = false;
  std::size_t done = 0;      // evaluations
  std::size_t mixtures = 0;  // evaluations that scored a mixture's proxy
  double seconds = 0;        // in the rounds
};

// The rounds: each group evaluates its next item; ONE world allreduce per round brings the
// groups' loss sums to rank 0 and tells every rank whether a stop signal arrived anywhere.
// Rank 0 stores the scores and writes the results every merge.save_every seconds.
Outcome run_rounds(const JobConfig& config, const std::vector<WorkItem>& items, const Plan& plan,
                   int my_group, const Communicator& group, const Communicator& world,
                   Evaluator& evaluator, const std::vector<EvalSet>& sets, Results& results,
                   const fs::path& output) {
  const bool root = world.rank() == 0;
  const std::size_t slot = 2 * sets.size();
  const auto& mine = plan.queues[static_cast<std::size_t>(my_group)];
  Progress progress("merge-eval", items.size(), "evaluations");
  Stopwatch watch, since_save;
  Outcome out;
  for (std::size_t round = 0; round < plan.rounds && !out.stopped; ++round) {
    std::vector<double> gathered(plan.queues.size() * slot + 1, 0.0);
    if (round < mine.size()) {
      const auto sums = evaluator.evaluate(items[mine[round]], sets);
      if (group.rank() == 0)
        std::copy(sums.begin(), sums.end(),
                  gathered.begin() +
                      static_cast<std::ptrdiff_t>(static_cast<std::size_t>(my_group) * slot));
    }
    gathered.back() = StopSignals::requested() ? 1.0 : 0.0;
    world.allreduce_sum(std::span<double>(gathered));
    out.stopped = gathered.back() > 0;
    for (std::size_t g = 0; g < plan.queues.size(); ++g) {
      if (round >= plan.queues[g].size()) continue;
      const auto& item = items[plan.queues[g][round]];
      if (root) store(results, item, std::span<const double>(gathered).subspan(g * slot, slot));
      ++out.done;
      out.mixtures += std::any_of(item.targets.begin(), item.targets.end(),
                                  [](const Target& t) { return t.table == Table::proxy; });
    }
    progress.update(out.done);
    if (root && !out.stopped && round + 1 < plan.rounds &&
        since_save.seconds() >= config.merge.save_every) {
      save(output, results);
      since_save.restart();
    }
  }
  out.seconds = watch.seconds();
  progress.finish();
  return out;
}

}  // namespace

fs::path results_path(const JobConfig& config) {
  return under_out_dir(config, config.merge.output);
}

void collective_average(Backend& backend, float* out, std::span<const float* const> models,
                        std::span<const float> weights, std::size_t n, GroupAllreduce& group_sum) {
  MIXSIM_CHECK(models.size() == weights.size(), "{} models, {} weights", models.size(),
               weights.size());
  if (models.empty())
    backend.zero(out, n * sizeof(float));
  else
    backend.weighted_sum(out, models.data(), weights.data(), static_cast<int>(models.size()), n);
  group_sum.sum(out, n, SumFormat::fp32);  // an average is a model: never rounded to bf16
}

EvalSums evaluate_windows(Gpt& model, const EvalWindows& windows, std::size_t first,
                          std::size_t last, int batch) {
  const std::size_t T = static_cast<std::size_t>(model.dims().maxT);
  std::vector<std::int32_t> inputs(static_cast<std::size_t>(batch) * T), targets(inputs.size());
  EvalSums total;
  for (std::size_t w = first; w < last; w += static_cast<std::size_t>(batch)) {
    const std::size_t b = std::min<std::size_t>(static_cast<std::size_t>(batch), last - w);
    for (std::size_t i = 0; i < b; ++i)
      windows.fill(w + i, std::span(inputs).subspan(i * T, T),
                   std::span(targets).subspan(i * T, T));
    const auto s =
        model.evaluate(inputs.data(), targets.data(), static_cast<int>(b), static_cast<int>(T));
    total.loss_sum += s.loss_sum;
    total.tokens += s.tokens;
  }
  return total;
}

int run_merge_eval(const JobConfig& config, const Communicator& world) {
  Stopwatch total_watch;
  StopSignals signals;  // for the whole stage: a signal during setup still stops it cleanly
  const bool root = world.rank() == 0;
  // Rank 0 checks the inputs first: a bad pool is one error line from rank 0 (which then stops
  // every rank), not one per rank. The others read the same metadata once it passed.
  std::optional<Setup> setup;
  if (root) setup.emplace(make_setup(config, world));
  world.barrier();
  if (!root) setup.emplace(make_setup(config, world));
  const Setup& s = *setup;

  // Rank 0 keeps what an earlier run measured and tells the others what is missing.
  const auto output = results_path(config);
  Results results = fresh_results(config, s.data, s.in, s.selected, s.sets, s.space);
  const std::size_t rows = results.mixtures.size();
  std::string mask;
  if (root) {
    if (fs::exists(output)) {
      const auto copied = carry_over(results, read_results(output));
      log::info("merge-eval: kept {} value(s) from '{}'", copied, output.string());
    }
    mask = missing_mask(results, rows);
  }
  world.broadcast(mask, 0);
  const auto items = plan_items(results, rows, mask, s.in, s.set_tokens);
  const auto plan = make_plan(items, s.groups);
  log_plan(config, s, mask, items.size(), world.size() / s.groups);

  const int per_group = world.size() / s.groups;
  const int my_group = world.rank() / per_group;
  const auto group = world.split(my_group, world.rank());
  auto backend = make_backend(config.merge.backend);
  Evaluator evaluator(s.in.seed.model, *backend, group, config.merge.eval_batch);
  std::set<std::size_t> needed;
  for (auto i : plan.queues[static_cast<std::size_t>(my_group)])
    needed.insert(items[i].members.begin(), items[i].members.end());
  evaluator.load_pool(s.in, needed);
  const double model_mib =
      static_cast<double>(ParamLayout(s.in.seed.model).total()) * 4.0 / (1 << 20);
  const double most_held = world.allreduce_max(static_cast<double>(evaluator.held()));
  log::info(
      "merge-eval: pool sharded over each group: at most {} model(s) per rank ({:.1f} MiB) + "
      "one average",
      static_cast<int>(most_held), most_held * model_mib);

  if (root && output.has_parent_path()) fs::create_directories(output.parent_path());
  const auto outcome =
      run_rounds(config, items, plan, my_group, group, world, evaluator, s.sets, results, output);
  if (root) save(output, results);
  if (outcome.stopped) {
    log::info(
        "merge-eval: stop signal received; {} of {} evaluations written to '{}': run again to "
        "finish",
        outcome.done, items.size(), output.string());
    return kExitInterrupted;
  }
  const double rate = outcome.seconds > 0 ? double(outcome.done) / outcome.seconds : 0.0;
  const double mixture_rate =
      outcome.seconds > 0 ? double(outcome.mixtures) / outcome.seconds : 0.0;
  log::info(
      "merge-eval: {} evaluations ({} of mixtures) in {:.2f} s: {:.3f} evaluations/s, {:.3f} "
      "mixtures/s; total {:.2f} s",
      outcome.done, outcome.mixtures, outcome.seconds, rate, mixture_rate, total_watch.seconds());
  log::info("merge-eval: results in '{}'{}", output.string(),
            !root || results.complete ? "" : " (some entries could not be evaluated)");
  return 0;
}

}  // namespace mixsim
