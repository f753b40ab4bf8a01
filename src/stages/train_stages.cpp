#include "mixsim/stages/train_stages.hpp"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <set>

#include "mixsim/core/error.hpp"
#include "mixsim/core/log.hpp"
#include "mixsim/core/progress.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/core/signals.hpp"
#include "mixsim/core/timer.hpp"
#include "mixsim/io/checkpoint.hpp"
#include "mixsim/io/data_file.hpp"
#include "mixsim/stages/prepare.hpp"
#include "mixsim/stages/training.hpp"

namespace mixsim {
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kDataOrderStream = 0xda7a;  // run.seed -> data order of each model
constexpr std::uint64_t kTruthSampleStream = 0x7247;

fs::path under_out_dir(const JobConfig& config, const fs::path& p) {
  return p.is_absolute() ? p : fs::path(config.run.out_dir) / p;
}

std::uint64_t data_seed_for(const JobConfig& config, const std::string& name) {
  return Rng(config.run.seed).split(kDataOrderStream).split(hash_string(name)).key();
}

DataFile open_data(const JobConfig& config) {
  const auto path = data_file_path(config);
  if (!fs::exists(path))
    fail("data file '{}' does not exist: run `mixsim prepare` with this job file first",
         path.string());
  return DataFile::open(path);
}

void require_seed(const fs::path& seed) {
  if (!fs::exists(seed))
    fail("seed model '{}' does not exist: train it first with `mixsim train` and this job file",
         seed.string());
  const auto info = read_checkpoint_info(seed);
  if (!info.provenance.complete)
    fail("seed model '{}' is incomplete (step {}/{}): finish it with `mixsim train`", seed.string(),
         info.provenance.steps_done, info.provenance.total_steps);
}

std::vector<std::string> unit_names(const DataFile& data) {
  std::vector<std::string> names;
  for (const auto& u : data.units()) names.push_back(u.name);
  return names;
}

void check_units(const std::vector<std::string>& units, const std::vector<std::string>& known,
                 const std::string& where) {
  const std::set<std::string> set(known.begin(), known.end());
  for (const auto& u : units)
    if (!set.count(u))
      usage_fail("{} names unit '{}', which is not in the data file; its units are: {}", where, u,
                 fmt::join(known, ", "));
  if (std::set<std::string>(units.begin(), units.end()).size() != units.size())
    usage_fail("{} names a unit twice: {}", where, fmt::join(units, "+"));
}

std::vector<std::string> split_mixture(const std::string& text) {
  std::vector<std::string> units;
  std::size_t start = 0;
  while (true) {
    const auto plus = text.find('+', start);
    auto item = text.substr(start, plus == std::string::npos ? std::string::npos : plus - start);
    if (!item.empty()) units.push_back(item);
    if (plus == std::string::npos) break;
    start = plus + 1;
  }
  return units;
}

// --shard I/N: this job array task trains only the models whose index i has i % N == I.
std::pair<int, int> parse_shard(const po::variables_map& vm) {
  if (!vm.count("shard")) return {0, 1};
  const auto text = vm["shard"].as<std::string>();
  int index = -1, count = 0;
  char extra = 0;
  if (std::sscanf(text.c_str(), "%d/%d%c", &index, &count, &extra) != 2 || count < 1 ||
      index < 0 || index >= count)
    usage_fail("option --shard must be I/N with 0 <= I < N, e.g. 3/8 (got '{}')", text);
  return {index, count};
}

int group_count(int world_size, int group_size, const char* option) {
  const int g = group_size == 0 ? world_size : group_size;
  if (world_size % g != 0)
    usage_fail("option --{} ({}) must divide the number of ranks ({})", option, g, world_size);
  return world_size / g;
}

// A model is done when its final checkpoint exists and says so.
bool model_complete(const fs::path& output) {
  return fs::exists(output) && read_checkpoint_info(output).provenance.complete;
}

// Trains `jobs` spread over groups; returns kExitInterrupted when a stop signal ended it.
int train_in_groups(const std::vector<TrainJob>& all_jobs, const JobConfig& config,
                    const DataFile& data, const Communicator& world, int group_size,
                    const char* option, const char* what, std::pair<int, int> shard) {
  std::vector<TrainJob> jobs;
  for (std::size_t i = 0; i < all_jobs.size(); ++i)
    if (static_cast<int>(i % static_cast<std::size_t>(shard.second)) == shard.first)
      jobs.push_back(all_jobs[i]);
  if (shard.second > 1)
    log::info("{}: shard {}/{}: {} of {} models", what, shard.first, shard.second, jobs.size(),
              all_jobs.size());
  StopSignals signals;  // for the whole stage: a signal between two models still stops it
  const int groups = group_count(world.size(), group_size, option);
  const int per_group = world.size() / groups;
  const int my_group = world.rank() / per_group;
  const auto group = world.split(my_group, world.rank());

  // Only the missing models are planned, so a rerun spreads the remaining work evenly.
  std::vector<std::size_t> todo;
  std::vector<double> costs;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (!model_complete(jobs[i].output)) {
      todo.push_back(i);
      costs.push_back(static_cast<double>(jobs[i].steps));
    }
  }
  log::info("{}: {} of {} models to train ({} complete), {} group(s) of {} rank(s)", what,
            todo.size(), jobs.size(), jobs.size() - todo.size(), groups, per_group);
  const auto owner = assign_to_groups(costs, groups);
  // Each group takes its models longest first, the order the assignment was made in.
  std::vector<std::size_t> order(todo.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  Stopwatch watch;
  int trained = 0;
  bool interrupted = false;
  for (std::size_t t : order) {
    if (interrupted) break;
    if (owner[t] != my_group) continue;
    const auto& job = jobs[todo[t]];
    if (group.rank() == 0)
      log::write_any_rank(fmt::format("{}: group {} trains '{}' ({} steps)", what, my_group, job.name,
                                  job.steps));
    const auto outcome = train_model(job, config, data, group);
    interrupted = outcome.interrupted;
    if (!outcome.skipped && !interrupted) {
      ++trained;
      if (group.rank() == 0)
        log::write_any_rank(fmt::format("{}: '{}' done in {}, loss {:.4f}, valid {:.4f}", what,
                                    job.name, Progress::format_duration(outcome.seconds),
                                    outcome.final_train_loss, outcome.final_valid_loss));
    }
  }
  const bool any_interrupted = world.any(interrupted);
  const double total = world.allreduce_sum(group.rank() == 0 ? trained : 0);
  log::info("{}: trained {} model(s) in {}{}", what, static_cast<int>(total),
            Progress::format_duration(watch.seconds()),
            any_interrupted ? "; interrupted: run again to resume" : "");
  return any_interrupted ? kExitInterrupted : 0;
}

}  // namespace

fs::path seed_path(const JobConfig& config) { return under_out_dir(config, config.seed.output); }

fs::path pool_model_path(const JobConfig& config, const std::string& unit) {
  return under_out_dir(config, config.pool.dir) / (file_stem(unit) + ".h5");
}

fs::path truth_model_path(const JobConfig& config, const std::string& mixture) {
  return under_out_dir(config, config.truth.dir) / (file_stem(mixture) + ".h5");
}

std::vector<int> assign_to_groups(const std::vector<double>& costs, int groups) {
  std::vector<std::size_t> order(costs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(static_cast<std::size_t>(groups), 0.0);
  std::vector<int> owner(costs.size(), 0);
  for (auto i : order) {
    const auto g = std::min_element(load.begin(), load.end()) - load.begin();
    owner[i] = static_cast<int>(g);
    load[static_cast<std::size_t>(g)] += costs[i];
  }
  return owner;
}

std::vector<std::vector<std::string>> truth_mixtures(const JobConfig& config,
                                                     const std::vector<std::string>& all_units) {
  std::vector<std::vector<std::string>> out;
  std::set<std::vector<std::string>> seen;  // as sorted unit lists
  auto add = [&](std::vector<std::string> units) {
    auto key = units;
    std::sort(key.begin(), key.end());
    if (seen.insert(key).second) out.push_back(std::move(units));
  };
  for (const auto& m : config.truth.mixtures) {
    auto units = split_mixture(m);
    if (units.empty()) usage_fail("option --truth.mixtures has an empty mixture");
    check_units(units, all_units, "option --truth.mixtures");
    add(units);
  }
  if (config.truth.sample > 0) {
    std::vector<int> sizes;
    for (const auto& k : config.truth.sample_sizes) {
      const int v = std::stoi(k);
      if (v > static_cast<int>(all_units.size()))
        usage_fail("option --truth.sample_sizes asks for mixtures of {} units, but the data has {}",
                   v, all_units.size());
      sizes.push_back(v);
    }
    Rng rng = Rng(config.run.seed).split(kTruthSampleStream);
    int added = 0;
    // Sizes alternate so the sample holds every requested size; duplicates are redrawn (bounded).
    for (int attempt = 0; added < config.truth.sample && attempt < 1000 * config.truth.sample;
         ++attempt) {
      const int k = sizes[static_cast<std::size_t>(attempt) % sizes.size()];
      std::vector<std::size_t> idx(all_units.size());
      std::iota(idx.begin(), idx.end(), 0);
      rng.shuffle(std::span<std::size_t>(idx));
      idx.resize(static_cast<std::size_t>(k));
      std::sort(idx.begin(), idx.end());
      std::vector<std::string> units;
      for (auto i : idx) units.push_back(all_units[i]);
      const auto before = out.size();
      add(units);
      added += out.size() > before;
    }
    if (added < config.truth.sample)
      usage_fail("option --truth.sample ({}) asks for more distinct mixtures of sizes {} than exist",
                 config.truth.sample, fmt::join(config.truth.sample_sizes, ","));
  }
  if (config.truth.all_units) add(all_units);
  return out;
}

void add_shard_option(po::options_description& d) {
  d.add_options()
    ("shard", po::value<std::string>(),
     "I/N: train only models i with i % N == I (one task of a SLURM job array)")
    ("pending", po::bool_switch(),
     "print how many of the stage's models are not complete yet (0: nothing to do) and exit; "
     "slurm/submit.sh --skip-existing asks this");
}

void add_train_options(po::options_description& d) {
  d.add_options()
    ("init", po::value<std::string>(), "continue from this checkpoint (continued pre-training, "
                                       "[cpt] schedule); without it: random init, [seed] schedule")
    ("units", po::value<std::string>(), "train on these units, joined by '+' (default: the seed corpus)")
    ("output", po::value<std::string>(), "checkpoint to write (default: seed.output, or "
                                         "train/<mixture>.h5 under run.out_dir)")
    ("name", po::value<std::string>(), "the model's name in logs and provenance");
}

int run_train(const JobConfig& config, const po::variables_map& vm, const Communicator& world) {
  const auto data = open_data(config);
  TrainJob job;
  if (vm.count("units")) {
    job.units = split_mixture(vm["units"].as<std::string>());
    check_units(job.units, unit_names(data), "option --units");
  }
  const bool continued = vm.count("init") > 0;
  if (continued) {
    job.init = vm["init"].as<std::string>();
    job.kind = "train";
    job.schedule = config.cpt.schedule;
    job.steps = cpt_steps(config, std::max<std::size_t>(job.units.size(), 1));
    job.inherit_optimizer = config.cpt.optimizer == "inherit";
  } else {
    job.kind = job.units.empty() ? "seed" : "train";
    job.schedule = config.seed.schedule;
    job.steps = config.seed.steps;
  }
  job.name = vm.count("name") ? vm["name"].as<std::string>()
             : job.units.empty() ? std::string("seed") : mixture_name(job.units);
  if (vm.count("output"))
    job.output = vm["output"].as<std::string>();
  else if (job.kind == "seed")
    job.output = seed_path(config);
  else
    job.output = under_out_dir(config, "train") / (file_stem(job.name) + ".h5");
  job.data_seed = data_seed_for(config, job.name);
  log::info("train: '{}' from {}, {} steps of {} x {} tokens, {} rank(s) -> '{}'", job.name,
            continued ? job.init.string() : std::string("random init"), job.steps,
            config.train.global_batch, config.model.context, world.size(), job.output.string());
  StopSignals signals;
  const auto outcome = train_model(job, config, data, world);
  if (outcome.skipped) {
    log::info("train: '{}' is already complete; nothing to do", job.output.string());
    return 0;
  }
  if (outcome.interrupted) return kExitInterrupted;
  log::info("train: '{}' done in {}: loss {:.4f}, valid {:.4f}", job.name,
            Progress::format_duration(outcome.seconds), outcome.final_train_loss,
            outcome.final_valid_loss);
  return 0;
}

namespace {

// --pending: the number of models without a complete checkpoint, on stdout, from rank 0.
int print_pending(const std::vector<TrainJob>& jobs, const char* what, const Communicator& world) {
  std::size_t pending = 0;
  for (const auto& job : jobs)
    if (!model_complete(job.output)) ++pending;
  log::info("{}: {} of {} models not complete", what, pending, jobs.size());
  if (world.rank() == 0) std::printf("%zu\n", pending);
  return 0;
}

}  // namespace

int run_pool(const JobConfig& config, const po::variables_map& vm, const Communicator& world) {
  const auto shard = parse_shard(vm);
  const auto data = open_data(config);
  const auto seed = seed_path(config);
  const bool pending = vm.count("pending") && vm["pending"].as<bool>();
  if (!pending) require_seed(seed);
  std::vector<TrainJob> jobs;
  for (const auto& unit : unit_names(data)) {
    TrainJob job;
    job.kind = "pool";
    job.name = unit;
    job.units = {unit};
    job.output = pool_model_path(config, unit);
    job.init = seed;
    job.inherit_optimizer = config.cpt.optimizer == "inherit";
    job.schedule = config.cpt.schedule;
    job.steps = cpt_steps(config, 1);
    job.data_seed = data_seed_for(config, unit);
    jobs.push_back(std::move(job));
  }
  if (pending) return print_pending(jobs, "pool", world);
  return train_in_groups(jobs, config, data, world, config.pool.group_size, "pool.group_size",
                         "pool", shard);
}

int run_truth(const JobConfig& config, const po::variables_map& vm, const Communicator& world) {
  const auto shard = parse_shard(vm);
  const auto data = open_data(config);
  const auto seed = seed_path(config);
  const bool pending = vm.count("pending") && vm["pending"].as<bool>();
  if (!pending) require_seed(seed);
  const auto mixtures = truth_mixtures(config, unit_names(data));
  if (mixtures.empty())
    usage_fail("no truth mixtures: set --truth.mixtures, --truth.sample with "
               "--truth.sample_sizes, or --truth.all_units");
  std::vector<TrainJob> jobs;
  for (const auto& units : mixtures) {
    TrainJob job;
    job.kind = "truth";
    job.name = mixture_name(units);
    job.units = units;
    job.output = truth_model_path(config, job.name);
    job.init = seed;
    job.inherit_optimizer = config.cpt.optimizer == "inherit";
    job.schedule = config.cpt.schedule;
    job.steps = cpt_steps(config, units.size());
    job.data_seed = data_seed_for(config, job.name);
    jobs.push_back(std::move(job));
  }
  if (pending) return print_pending(jobs, "truth", world);
  return train_in_groups(jobs, config, data, world, config.truth.group_size, "truth.group_size",
                         "truth", shard);
}

}  // namespace mixsim
