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
  std::vector<ModelFile> pool;       // per data unit
  std::map<Mixture, ModelFile> truth;  // complete truth models by mixture
};

CheckpointInfo require_seed(const fs::path& seed) {
  if (!fs::exists(seed))
    fail("seed model '{}' does not exist: merge-eval checks the pool against it; train it with "
         "`mixsim train` (or point --seed.output at the pool's seed)",
         seed.string());
  auto info = read_checkpoint_info(seed);
  if (!info.provenance.complete)
    fail("seed model '{}' is incomplete (step {}/{}): finish it with `mixsim train`", seed.string(),
         info.provenance.steps_done, info.provenance.total_steps);
  return info;
}

// A model continued from the seed: same architecture, the seed as parent, complete.
void require_child_of_seed(const fs::path& path, const CheckpointInfo& info, const Inputs& in,
                           const std::string& what, const std::string& rerun) {
  require_same_model(in.seed.model, info.model, "the seed model '" + in.seed_file.string() + "'",
                     what + " '" + path.string() + "'");
  if (info.provenance.parent_checksum != in.seed.params_checksum)
    fail("{} '{}' was not continued from the seed model '{}' (its parent is '{}' with checksum {}, "
         "the seed's checksum is {}): retrain it with {} after deleting it, or set --seed.output "
         "to the seed it came from",
         what, path.string(), in.seed_file.string(), info.provenance.parent,
         info.provenance.parent_checksum.empty() ? "none" : info.provenance.parent_checksum,
         in.seed.params_checksum, rerun);
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
    const auto info = read_checkpoint_info(m.path);
    if (!info.provenance.complete)
      fail("pool model '{}' of unit '{}' is incomplete (step {}/{}): finish the pool with `mixsim "
           "pool`",
           m.path.string(), unit.name, info.provenance.steps_done, info.provenance.total_steps);
    if (info.provenance.units != std::vector<std::string>{unit.name})
      fail("'{}' is not the pool model of unit '{}': it was trained on '{}'; delete it and run "
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
    fail("{} of {} units have no pool model, e.g. unit '{}': '{}' does not exist{}. Run `mixsim "
         "pool` with this job file, or set --merge.available_units_only true to score only "
         "mixtures of the units that have one",
         missing.size(), data.units().size(), missing.front(), first.string(),
         partial ? " (a partial checkpoint is there: the pool is training or was interrupted)" : "");
  if (missing.size() == data.units().size())
    fail("no unit has a pool model (e.g. '{}' does not exist): run `mixsim pool` first", first.string());
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
    const auto info = read_checkpoint_info(path);
    if (info.provenance.kind != "truth") continue;
    if (!info.provenance.complete) {
      log::info("merge-eval: truth model '{}' is incomplete and left out (finish it with `mixsim "
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
      log::warn("merge-eval: truth model '{}' was trained on units that are not in the data file; "
                "left out", path.string());
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
  std::map<std::pair<Mixture, std::vector<float>>, std::size_t> averages;  // dedupe identical averages
  auto add = [&](WorkItem item, const std::vector<std::size_t>& sets) {
    if (sets.empty()) return;
    std::optional<std::size_t> at;
    if (!item.members.empty()) {
      const auto key = std::make_pair(item.members, item.weights);
      if (const auto it = averages.find(key); it != averages.end()) at = it->second;
      else averages[key] = items.size();
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
      add({r.mixtures[m].members, std::vector<float>(w.begin(), w.end()), {}, {{Table::proxy, p, m}}, {}, 0},
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
    item.cost += item.members.empty() ? kLoadCost : kAverageCost * static_cast<double>(item.members.size());
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
      : backend_(backend), group_(group), model_(model_config, backend, batch), batch_(batch) {}

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
        fail("pool model '{}' changed while merge-eval ran: run merge-eval again", file.path.string());
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
        MIXSIM_CHECK(ck.params.size() == n, "'{}' has {} parameters, expected {}", item.file.string(),
                     ck.params.size(), n);
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
    collective_average(backend_, model_.params(), models, weights, n, group_, staging_);
  }

  Backend& backend_;
  const Communicator& group_;
  Gpt model_;
  int batch_;
  std::map<std::size_t, DeviceBuffer<float>> held_;
  std::vector<float> staging_;
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
        case Table::proxy: r.proxies[t.index].loss.at(t.row, s) = loss; break;
        case Table::pool: r.pool_loss.at(t.row, s) = loss; break;
        case Table::seed: r.seed_loss[s] = loss; break;
        case Table::truth: r.truth_loss.at(t.row, s) = loss; break;
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
    const auto it = std::find_if(sets.begin(), sets.end(), [&](const auto& e) { return e.name == name; });
    if (it == sets.end()) {
      std::vector<std::string> names;
      for (const auto& e : sets) names.push_back(e.name);
      usage_fail("option --merge.eval_sets names '{}', which is not an eval set of the data file; "
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
      if (std::all_of(m.begin(), m.end(), [&](std::size_t u) { return usable[u]; }) && seen.insert(m).second)
        space.push_back(m);
  }
  if (space.size() > config.merge.max_mixtures)
    usage_fail("{} mixtures (with the truth mixtures) are more than --merge.max_mixtures ({})",
               space.size(), config.merge.max_mixtures);
  if (space.empty())
    usage_fail("no mixtures to score: set --merge.mixtures, --merge.sizes, --merge.sample with "
               "--merge.sample_sizes, or --merge.all_subsets (or train truth models first)");
  // Truth models configured but not trained are worth a line: the report will lack them.
  if (!config.truth.mixtures.empty() || config.truth.sample > 0 || config.truth.all_units) {
    std::size_t absent = 0;
    for (const auto& names : truth_mixtures(config, units)) {
      Mixture m;
      for (const auto& n : names)
        m.push_back(static_cast<std::size_t>(std::find(units.begin(), units.end(), n) - units.begin()));
      std::sort(m.begin(), m.end());
      absent += !in.truth.count(m);
    }
    if (absent > 0)
      log::info("merge-eval: {} truth model(s) of the job are not trained yet (run `mixsim truth`)", absent);
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
    r.eval_sets.push_back({e.name, e.kind, e.partition, sets[i].tokens.size(),
                           sets[i].windows.scored_tokens(), e.bytes,
                           crc32_hex(sets[i].tokens.data(), sets[i].tokens.size() * sizeof(Token))});
  }
  for (const auto& m : space) {
    const auto t = in.truth.find(m);
    r.mixtures.push_back({mixture_name(m, names), m, true, t == in.truth.end() ? "" : t->second.checksum});
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
    usage_fail("option --merge.group_size ({}) must divide the number of ranks ({})", g, world_size);
  return world_size / g;
}

}  // namespace

fs::path results_path(const JobConfig& config) { return under_out_dir(config, config.merge.output); }

void collective_average(Backend& backend, float* out, std::span<const float* const> models,
                        std::span<const float> weights, std::size_t n, const Communicator& group,
                        std::vector<float>& staging) {
  MIXSIM_CHECK(models.size() == weights.size(), "{} models, {} weights", models.size(), weights.size());
  if (models.empty())
    backend.zero(out, n * sizeof(float));
  else
    backend.weighted_sum(out, models.data(), weights.data(), static_cast<int>(models.size()), n);
  if (group.size() == 1) return;
  if (backend.name() == "cpu") {
    group.allreduce_sum(std::span<float>(out, n));
    return;
  }
  staging.resize(n);  // device memory: through the host
  backend.download(staging.data(), out, n * sizeof(float));
  group.allreduce_sum(std::span<float>(staging));
  backend.upload(out, staging.data(), n * sizeof(float));
}

EvalSums evaluate_windows(Gpt& model, const EvalWindows& windows, std::size_t first,
                          std::size_t last, int batch) {
  const std::size_t T = static_cast<std::size_t>(model.dims().maxT);
  std::vector<std::int32_t> inputs(static_cast<std::size_t>(batch) * T), targets(inputs.size());
  EvalSums total;
  for (std::size_t w = first; w < last; w += static_cast<std::size_t>(batch)) {
    const std::size_t b = std::min<std::size_t>(static_cast<std::size_t>(batch), last - w);
    for (std::size_t i = 0; i < b; ++i)
      windows.fill(w + i, std::span(inputs).subspan(i * T, T), std::span(targets).subspan(i * T, T));
    const auto s = model.evaluate(inputs.data(), targets.data(), static_cast<int>(b), static_cast<int>(T));
    total.loss_sum += s.loss_sum;
    total.tokens += s.tokens;
  }
  return total;
}

int run_merge_eval(const JobConfig& config, const Communicator& world) {
  Stopwatch total_watch;
  StopSignals signals;
  const bool root = world.rank() == 0;
  const auto data_path = data_file_path(config);
  if (!fs::exists(data_path))
    fail("data file '{}' does not exist: run `mixsim prepare` with this job file first", data_path.string());
  const auto data = DataFile::open(data_path);
  std::vector<std::string> unit_names;
  for (const auto& u : data.units()) unit_names.push_back(u.name);

  // Every rank checks the same files, so a bad pool stops all ranks with the same message.
  Inputs in;
  in.seed_file = seed_path(config);
  in.seed = require_seed(in.seed_file);
  check_pool(config, data, in);
  find_truth(config, unit_names, in);
  const auto space = full_space(config, unit_names, in);

  const auto selected = select_eval_sets(config, data);
  const std::size_t T = static_cast<std::size_t>(in.seed.model.context);
  std::vector<EvalSet> sets;
  sets.reserve(selected.size());
  std::vector<double> set_tokens;
  for (auto s : selected) {
    sets.push_back({data.eval_tokens(data.eval_sets()[s].name), EvalWindows({}, T)});
    sets.back().windows = EvalWindows(sets.back().tokens, T);
    set_tokens.push_back(static_cast<double>(sets.back().windows.scored_tokens()));
  }

  // Rank 0 keeps what an earlier run measured and tells the others what is missing.
  const auto output = results_path(config);
  Results results = fresh_results(config, data, in, selected, sets, space);
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
  const auto items = plan_items(results, rows, mask, in, set_tokens);

  const int groups = group_count(world.size(), config.merge.group_size);
  const int per_group = world.size() / groups;
  const int my_group = world.rank() / per_group;
  const auto group = world.split(my_group, world.rank());
  const auto owner = assign_to_groups([&] {
    std::vector<double> c;
    for (const auto& i : items) c.push_back(i.cost);
    return c;
  }(), groups);
  // Each group takes its items costliest first, the order in which they were assigned.
  std::vector<std::vector<std::size_t>> queue(static_cast<std::size_t>(groups));
  std::vector<std::size_t> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return items[a].cost > items[b].cost; });
  for (auto i : order) queue[static_cast<std::size_t>(owner[i])].push_back(i);
  std::size_t rounds = 0;
  for (const auto& q : queue) rounds = std::max(rounds, q.size());

  const auto entries = std::count(mask.begin(), mask.end(), '1');
  const auto evaluable = mask.size() - static_cast<std::size_t>(std::count(mask.begin(), mask.end(), '-'));
  double eval_tokens = 0;
  for (double t : set_tokens) eval_tokens += t;
  log::info("merge-eval: {} units ({} with a pool model), {} eval set(s) of {} tokens, {} mixture(s) "
            "x {} prox{}, {} truth model(s)",
            unit_names.size(),
            std::count_if(in.pool.begin(), in.pool.end(), [](const auto& m) { return !m.checksum.empty(); }),
            sets.size(), static_cast<std::uint64_t>(eval_tokens), space.size(),
            config.merge.proxies.size(), config.merge.proxies.size() == 1 ? "y" : "ies", in.truth.size());
  log::info("merge-eval: {} of {} entries to evaluate in {} evaluation(s), {} group(s) of {} rank(s)",
            entries, evaluable, items.size(), groups, per_group);

  auto backend = make_backend(config.merge.backend);
  Evaluator evaluator(in.seed.model, *backend, group, config.merge.eval_batch);
  std::set<std::size_t> needed;
  for (auto i : queue[static_cast<std::size_t>(my_group)])
    needed.insert(items[i].members.begin(), items[i].members.end());
  evaluator.load_pool(in, needed);
  const double model_mib = static_cast<double>(ParamLayout(in.seed.model).total()) * 4.0 / (1 << 20);
  const double most_held = world.allreduce_max(static_cast<double>(evaluator.held()));
  log::info("merge-eval: pool sharded over each group: at most {} model(s) per rank ({:.1f} MiB) + "
            "one average",
            static_cast<int>(most_held), most_held * model_mib);

  if (root) fs::create_directories(output.parent_path().empty() ? fs::path(".") : output.parent_path());
  Progress progress("merge-eval", items.size(), "evaluations");
  Stopwatch loop_watch, save_watch;
  std::size_t done = 0, mixtures_done = 0;
  bool stopped = false;
  const std::size_t E = sets.size(), slot = 2 * E;
  for (std::size_t round = 0; round < rounds && !stopped; ++round) {
    const auto& mine = queue[static_cast<std::size_t>(my_group)];
    std::vector<double> gathered(static_cast<std::size_t>(groups) * slot + 1, 0.0);
    if (round < mine.size()) {
      const auto sums = evaluator.evaluate(items[mine[round]], sets);
      if (group.rank() == 0)
        std::copy(sums.begin(), sums.end(), gathered.begin() + static_cast<std::ptrdiff_t>(my_group * slot));
    }
    gathered.back() = StopSignals::requested() ? 1.0 : 0.0;
    // One collective per round: the groups' scores reach rank 0, and every rank learns of a stop.
    world.allreduce_sum(std::span<double>(gathered));
    stopped = gathered.back() > 0;
    for (std::size_t g = 0; g < queue.size(); ++g) {
      if (round >= queue[g].size()) continue;
      const auto& item = items[queue[g][round]];
      if (root) store(results, item, std::span<const double>(gathered).subspan(g * slot, slot));
      ++done;
      mixtures_done += std::count_if(item.targets.begin(), item.targets.end(),
                                     [](const Target& t) { return t.table == Table::proxy; }) > 0;
    }
    progress.update(done);
    if (root && !stopped && save_watch.seconds() >= config.merge.save_every && round + 1 < rounds) {
      save(output, results);
      save_watch.restart();
    }
  }
  const double loop_s = loop_watch.seconds();
  progress.finish();
  if (root) save(output, results);
  if (stopped) {
    log::info("merge-eval: stop signal received; {} of {} evaluations written to '{}': run again to "
              "finish",
              done, items.size(), output.string());
    return kExitInterrupted;
  }
  log::info("merge-eval: {} evaluations ({} of mixtures) in {:.2f} s: {:.3f} evaluations/s, {:.3f} "
            "mixtures/s; total {:.2f} s",
            done, mixtures_done, loop_s, loop_s > 0 ? done / loop_s : 0.0,
            loop_s > 0 ? mixtures_done / loop_s : 0.0, total_watch.seconds());
  log::info("merge-eval: results in '{}'{}", output.string(),
            root && results.complete ? "" : " (some entries could not be evaluated)");
  return 0;
}

}  // namespace mixsim
