#include "mixsim/core/options.hpp"

#include <cmath>
#include <fstream>
#include <sstream>

#include "mixsim/core/error.hpp"

namespace mixsim {
namespace {

// Lists are written as one value, items separated by commas: `partitions = a, b, c`.
std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::string item;
  std::istringstream in(text);
  while (std::getline(in, item, ',')) {
    auto first = item.find_first_not_of(" \t");
    auto last = item.find_last_not_of(" \t");
    if (first != std::string::npos) items.push_back(item.substr(first, last - first + 1));
  }
  return items;
}

po::typed_value<std::string>* list_value(std::vector<std::string>* target) {
  return po::value<std::string>()->notifier(
      [target](const std::string& text) { *target = split_list(text); });
}

template <class T>
po::typed_value<T>* with_default(T* target) {
  return po::value<T>(target)->default_value(*target);
}

po::options_description run_section(RunConfig& c) {
  po::options_description d("[run] where outputs go, seeds, threads");
  d.add_options()
    ("run.name", with_default(&c.name), "job name (logs, default paths)")
    ("run.out_dir", with_default(&c.out_dir), "directory for every stage's outputs")
    ("run.seed", with_default(&c.seed), "master seed; all random streams are split from it")
    ("run.threads", with_default(&c.threads), "OpenMP threads per rank (0: OMP_NUM_THREADS or all cores)");
  return d;
}

po::options_description model_section(ModelConfig& c) {
  po::options_description d("[model] GPT-2 style decoder");
  d.add_options()
    ("model.n_layer", with_default(&c.n_layer), "transformer blocks")
    ("model.n_head", with_default(&c.n_head), "attention heads (must divide n_embd)")
    ("model.n_embd", with_default(&c.n_embd), "channels")
    ("model.context", with_default(&c.context), "context length T")
    ("model.vocab_size", with_default(&c.vocab_size), "vocabulary size (padded to a multiple of 64)");
  return d;
}

po::options_description optim_section(OptimConfig& c) {
  // The learning-rate schedules are per kind of run: [seed] and [cpt].
  po::options_description d("[optim] AdamW (schedules: see [seed] and [cpt])");
  d.add_options()
    ("optim.beta1", with_default(&c.beta1), "AdamW beta1")
    ("optim.beta2", with_default(&c.beta2), "AdamW beta2")
    ("optim.eps", with_default(&c.eps), "AdamW epsilon")
    ("optim.weight_decay", with_default(&c.weight_decay), "decoupled weight decay (not on biases/LayerNorm)")
    ("optim.grad_clip", with_default(&c.grad_clip), "clip by global gradient norm (0: off)");
  return d;
}

po::options_description data_section(DataConfig& c) {
  po::options_description d("[data] corpora, base units, eval sets");
  d.add_options()
    ("data.root", po::value<std::string>(&c.root), "directory whose subdirectories are the partitions")
    ("data.partitions", list_value(&c.partitions), "explicit partition directories, comma-separated")
    ("data.seed_corpus", po::value<std::string>(&c.seed_corpus), "directory of the seed model's corpus")
    ("data.eval_dirs", list_value(&c.eval_dirs), "out-of-domain eval set directories, comma-separated")
    ("data.output", with_default(&c.output), "data file (relative: under run.out_dir)")
    ("data.jsonl_field", with_default(&c.jsonl_field), "JSON field holding the text in .jsonl files")
    ("data.tokenizer", with_default(&c.tokenizer), "tokenizer: byte (256 bytes + end-of-text)")
    ("data.unit_tokens", with_default(&c.unit_tokens), "token budget of one base unit")
    ("data.split_salt", with_default(&c.split_salt), "salt of the train/valid/test hash split")
    ("data.valid_fraction", with_default(&c.valid_fraction), "fraction of documents in the validation split")
    ("data.test_fraction", with_default(&c.test_fraction), "fraction of documents in the test split")
    ("data.eval_split", with_default(&c.eval_split), "valid | test: the split eval sets are built from")
    ("data.eval_max_docs", with_default(&c.eval_max_docs), "at most this many documents per eval set")
    ("data.eval_max_tokens", with_default(&c.eval_max_tokens), "at most this many tokens per eval set")
    ("data.eval_cut", with_default(&c.eval_cut),
     "spread | prefix: over eval_max_tokens, an equal share of every document (spread) or "
     "whole documents in order, the last one cut (prefix)")
    ("data.skip_bad_files", with_default(&c.skip_bad_files), "skip and count bad input files instead of failing");
  return d;
}

po::options_description train_section(TrainConfig& c) {
  po::options_description d("[train] batches, validation, checkpoints (train, pool, truth)");
  d.add_options()
    ("train.global_batch", with_default(&c.global_batch), "sequences per step over all ranks of a group")
    ("train.micro_batch", with_default(&c.micro_batch), "sequences per forward/backward on a rank (0: the rank's share)")
    ("train.val_every", with_default(&c.val_every), "steps between validation losses (0: at the end only)")
    ("train.val_tokens", with_default(&c.val_tokens), "validation tokens scored each time")
    ("train.checkpoint_every", with_default(&c.checkpoint_every), "steps between resumable checkpoints (0: at the end only)")
    ("train.log_every", with_default(&c.log_every), "steps between progress lines")
    ("train.save_optimizer", with_default(&c.save_optimizer), "keep AdamW state in final checkpoints")
    ("train.backend", with_default(&c.backend),
     "cpu | cpu-bf16 | cuda | cuda-bf16 (-bf16: bf16 matrix products; fp32 weights and state; "
     "cpu-bf16 is cuda-bf16's reference on the CPU)")
    ("train.grad_bucket_mb", with_default(&c.grad_bucket_mb),
     "MB of gradients per sum started during the backward pass, overlapping it (0: one sum after it)")
    ("train.grad_reduce", with_default(&c.grad_reduce),
     "fp32 | bf16 | auto: the gradient sums over ranks in fp32, or in bf16 (half the bytes); auto "
     "= bf16 with the -bf16 backends, else fp32");
  return d;
}

void add_schedule(po::options_description& d, const std::string& section, ScheduleConfig& c) {
  d.add_options()
    ((section + ".lr").c_str(), with_default(&c.lr), "peak learning rate")
    ((section + ".lr_min").c_str(), with_default(&c.lr_min), "learning-rate floor (cosine, linear)")
    ((section + ".schedule").c_str(), with_default(&c.schedule), "cosine | constant | linear")
    ((section + ".warmup_steps").c_str(), with_default(&c.warmup_steps), "linear warmup steps");
}

po::options_description seed_section(SeedConfig& c) {
  po::options_description d("[seed] the seed model (random init, seed corpus)");
  d.add_options()
    ("seed.steps", with_default(&c.steps), "optimizer steps")
    ("seed.output", with_default(&c.output), "checkpoint (relative: under run.out_dir)");
  add_schedule(d, "seed", c.schedule);
  return d;
}

po::options_description cpt_section(CptConfig& c) {
  po::options_description d("[cpt] continued pre-training from the seed (pool, truth, train --init)");
  d.add_options()
    ("cpt.steps_per_unit", with_default(&c.steps_per_unit), "steps per unit of a mixture (0: one pass over data.unit_tokens)")
    ("cpt.optimizer", with_default(&c.optimizer), "fresh (AdamW state from zero, the paper) | inherit (the parent's)");
  add_schedule(d, "cpt", c.schedule);
  return d;
}

po::options_description pool_section(PoolConfig& c) {
  po::options_description d("[pool] one model per base unit");
  d.add_options()
    ("pool.dir", with_default(&c.dir), "directory of the pool models (relative: under run.out_dir)")
    ("pool.group_size", with_default(&c.group_size), "ranks per training group (0: all ranks)");
  return d;
}

po::options_description truth_section(TruthConfig& c) {
  po::options_description d("[truth] models trained on the union of a mixture's units");
  d.add_options()
    ("truth.mixtures", list_value(&c.mixtures), "mixtures, comma-separated; units joined by '+'")
    ("truth.sample", with_default(&c.sample), "also a seeded random sample of this many mixtures")
    ("truth.sample_sizes", list_value(&c.sample_sizes), "mixture sizes k of the sample, e.g. '2, 3'")
    ("truth.all_units", with_default(&c.all_units), "also the mixture of all units")
    ("truth.dir", with_default(&c.dir), "directory of the truth models (relative: under run.out_dir)")
    ("truth.group_size", with_default(&c.group_size), "ranks per training group (0: all ranks)");
  return d;
}

po::options_description merge_section(MergeConfig& c) {
  po::options_description d("[merge] merge-eval: mixture space, proxies, distribution");
  d.add_options()
    ("merge.mixtures", list_value(&c.mixtures), "mixtures, comma-separated; units joined by '+'")
    ("merge.sizes", list_value(&c.sizes), "also all mixtures of k units for these k: '2', '2-3', '1, 4'")
    ("merge.sample", with_default(&c.sample), "also a seeded random sample of this many mixtures")
    ("merge.sample_sizes", list_value(&c.sample_sizes), "mixture sizes k of the sample, e.g. '2, 3'")
    ("merge.sample_seed", with_default(&c.sample_seed), "seed of the sample (0: split from run.seed)")
    ("merge.all_subsets", with_default(&c.all_subsets), "also every non-empty subset of the units")
    ("merge.max_mixtures", with_default(&c.max_mixtures), "safety limit on the number of mixtures")
    ("merge.truth_mixtures", with_default(&c.truth_mixtures), "also the mixtures of the existing truth models")
    ("merge.available_units_only", with_default(&c.available_units_only),
     "use only the units that have a pool model (default: a missing one is an error)")
    ("merge.proxies", po::value<std::string>()->default_value("merged, weighted, macro, components")
                          ->notifier([&c](const std::string& t) { c.proxies = split_list(t); }),
     "proxies: merged (uniform average), weighted (by unit tokens), macro (average of partition "
     "averages), components (mean of the units' own losses)")
    ("merge.eval_sets", list_value(&c.eval_sets), "eval sets to score on (default: all of data.h5)")
    ("merge.group_size", with_default(&c.group_size), "ranks per group sharing the pool (0: all ranks)")
    ("merge.eval_batch", with_default(&c.eval_batch), "eval windows per forward pass on one rank")
    ("merge.save_every", with_default(&c.save_every), "seconds between writes of the results file (0: after every round)")
    ("merge.output", with_default(&c.output), "results file (relative: under run.out_dir)")
    ("merge.backend", with_default(&c.backend), "cpu | cpu-bf16 | cuda | cuda-bf16");
  return d;
}

template <class T>
void check_range(const char* key, T value, T lo, T hi) {
  if (!(value >= lo && value <= hi))
    usage_fail("option --{} must be in [{}, {}] (got {})", key, lo, hi, value);
}

void check_choice(const char* key, const std::string& value,
                  std::initializer_list<const char*> choices) {
  std::string allowed;
  for (const char* c : choices) {
    if (value == c) return;
    allowed += allowed.empty() ? c : std::string(" | ") + c;
  }
  usage_fail("option --{} must be one of {} (got '{}')", key, allowed, value);
}

// Boost's messages name the option; we add where it came from and what to do.
[[noreturn]] void rethrow_with_context(const po::error& e, const std::string& source) {
  usage_fail("{}{} (see --help for the valid options)", e.what(),
             source.empty() ? "" : " in " + source);
}

}  // namespace

JobSchema::JobSchema(JobConfig& config) {
  sections.emplace_back(kSectionRun, run_section(config.run));
  sections.emplace_back(kSectionModel, model_section(config.model));
  sections.emplace_back(kSectionOptim, optim_section(config.optim));
  sections.emplace_back(kSectionData, data_section(config.data));
  sections.emplace_back(kSectionTrain, train_section(config.train));
  sections.emplace_back(kSectionSeed, seed_section(config.seed));
  sections.emplace_back(kSectionCpt, cpt_section(config.cpt));
  sections.emplace_back(kSectionPool, pool_section(config.pool));
  sections.emplace_back(kSectionTruth, truth_section(config.truth));
  sections.emplace_back(kSectionMerge, merge_section(config.merge));
  for (auto& [id, desc] : sections) all.add(desc);
}

po::options_description JobSchema::for_sections(unsigned mask) const {
  po::options_description out("Job options (job file section.key, or --section.key on the command line)");
  for (const auto& [id, desc] : sections)
    if (mask & id) out.add(desc);
  return out;
}

po::variables_map parse_options(const std::vector<std::string>& args,
                                const po::options_description& cli_only,
                                const po::options_description& job,
                                const std::string& positional) {
  po::options_description cmdline;
  cmdline.add(cli_only).add(job);
  po::variables_map vm;
  try {
    // At most one positional argument, and only where the command names it (`mixsim inspect
    // FILE`); elsewhere every value is named, so a stray word is an error, not a guess.
    po::positional_options_description words;
    if (!positional.empty()) words.add(positional.c_str(), 1);
    po::store(po::command_line_parser(args).options(cmdline).positional(words).run(), vm);
  } catch (const po::error& e) {
    rethrow_with_context(e, "the command line");
  }
  // Values stored first win, so the command line overrides the job file.
  if (vm.count("config")) {
    const auto path = vm["config"].as<std::string>();
    std::ifstream in(path);
    if (!in) usage_fail("cannot open job file '{}' given by --config: check the path", path);
    try {
      po::store(po::parse_config_file(in, job, /*allow_unregistered=*/false), vm);
    } catch (const po::error& e) {
      rethrow_with_context(e, "job file '" + path + "'");
    }
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    rethrow_with_context(e, "");
  }
  return vm;
}

namespace {

void validate_schedule(const std::string& section, const ScheduleConfig& s) {
  check_range((section + ".lr").c_str(), s.lr, 0.0, 10.0);
  check_range((section + ".lr_min").c_str(), s.lr_min, 0.0, 10.0);
  check_choice((section + ".schedule").c_str(), s.schedule, {"cosine", "constant", "linear"});
  check_range((section + ".warmup_steps").c_str(), s.warmup_steps, 0, 1 << 30);
}

void validate_training(const JobConfig& c) {
  check_range("train.global_batch", c.train.global_batch, 1, 1 << 20);
  check_range("train.micro_batch", c.train.micro_batch, 0, 1 << 20);
  check_range("train.val_every", c.train.val_every, 0, 1 << 30);
  check_range("train.val_tokens", c.train.val_tokens, std::uint64_t{0}, std::uint64_t{1} << 40);
  check_range("train.checkpoint_every", c.train.checkpoint_every, 0, 1 << 30);
  check_range("train.log_every", c.train.log_every, 1, 1 << 30);
  check_choice("train.backend", c.train.backend, {"cpu", "cpu-bf16", "cuda", "cuda-bf16"});
  check_range("train.grad_bucket_mb", c.train.grad_bucket_mb, 0.0, 1e6);
  check_choice("train.grad_reduce", c.train.grad_reduce, {"auto", "fp32", "bf16"});
  check_range("seed.steps", c.seed.steps, 1, 1 << 30);
  validate_schedule("seed", c.seed.schedule);
  check_range("cpt.steps_per_unit", c.cpt.steps_per_unit, 0, 1 << 30);
  check_choice("cpt.optimizer", c.cpt.optimizer, {"fresh", "inherit"});
  validate_schedule("cpt", c.cpt.schedule);
  check_range("pool.group_size", c.pool.group_size, 0, 1 << 20);
  check_range("truth.sample", c.truth.sample, 0, 1 << 20);
  check_range("truth.group_size", c.truth.group_size, 0, 1 << 20);
  for (const auto& k : c.truth.sample_sizes) {
    int v = 0;
    try {
      v = std::stoi(k);
    } catch (const std::exception&) {
    }
    if (v < 1) usage_fail("option --truth.sample_sizes must list positive integers (got '{}')", k);
  }
  if (c.truth.sample > 0 && c.truth.sample_sizes.empty())
    usage_fail("option --truth.sample ({}) needs --truth.sample_sizes (e.g. '2, 3')", c.truth.sample);
}

// "k" or "a-b" with 1 <= a <= b: a size range of merge.sizes.
bool parse_size_range(const std::string& text, int& lo, int& hi) {
  const auto dash = text.find('-');
  try {
    std::size_t used = 0;
    lo = std::stoi(text.substr(0, dash), &used);
    if (used != (dash == std::string::npos ? text.size() : dash)) return false;
    hi = lo;
    if (dash != std::string::npos) {
      hi = std::stoi(text.substr(dash + 1), &used);
      if (used != text.size() - dash - 1) return false;
    }
  } catch (const std::exception&) {
    return false;
  }
  return lo >= 1 && hi >= lo;
}

void validate_merge(const MergeConfig& m) {
  for (const auto& r : m.sizes) {
    int lo = 0, hi = 0;
    if (!parse_size_range(r, lo, hi))
      usage_fail("option --merge.sizes must list sizes k or ranges a-b with 1 <= a <= b (got '{}')", r);
  }
  check_range("merge.sample", m.sample, 0, 1 << 24);
  for (const auto& k : m.sample_sizes) {
    int lo = 0, hi = 0;
    if (!parse_size_range(k, lo, hi) || lo != hi)
      usage_fail("option --merge.sample_sizes must list positive integers (got '{}')", k);
  }
  if (m.sample > 0 && m.sample_sizes.empty())
    usage_fail("option --merge.sample ({}) needs --merge.sample_sizes (e.g. '2, 3')", m.sample);
  check_range("merge.max_mixtures", m.max_mixtures, std::uint64_t{1}, std::uint64_t{1} << 32);
  if (m.proxies.empty()) usage_fail("option --merge.proxies must name at least one proxy");
  for (std::size_t i = 0; i < m.proxies.size(); ++i) {
    check_choice("merge.proxies", m.proxies[i], {"merged", "weighted", "macro", "components"});
    for (std::size_t j = 0; j < i; ++j)
      if (m.proxies[j] == m.proxies[i])
        usage_fail("option --merge.proxies names '{}' twice", m.proxies[i]);
  }
  check_range("merge.group_size", m.group_size, 0, 1 << 20);
  check_range("merge.eval_batch", m.eval_batch, 1, 1 << 16);
  check_range("merge.save_every", m.save_every, 0.0, 1e9);
  if (m.output.empty()) usage_fail("option --merge.output must name a file");
  check_choice("merge.backend", m.backend, {"cpu", "cpu-bf16", "cuda", "cuda-bf16"});
}

}  // namespace

void validate(const JobConfig& c) {
  validate_training(c);
  validate_merge(c.merge);
  check_range("run.threads", c.run.threads, 0, 1024);
  check_range("model.n_layer", c.model.n_layer, 1, 256);
  check_range("model.n_head", c.model.n_head, 1, 256);
  check_range("model.n_embd", c.model.n_embd, 1, 65536);
  check_range("model.context", c.model.context, 1, 1 << 20);
  check_range("model.vocab_size", c.model.vocab_size, 2, 1 << 20);
  if (c.model.n_embd % c.model.n_head != 0)
    usage_fail("option --model.n_embd ({}) must be a multiple of --model.n_head ({})",
               c.model.n_embd, c.model.n_head);
  check_range("optim.beta1", c.optim.beta1, 0.0, 0.999999);
  check_range("optim.beta2", c.optim.beta2, 0.0, 0.999999);
  check_range("optim.eps", c.optim.eps, 0.0, 1.0);
  check_range("optim.weight_decay", c.optim.weight_decay, 0.0, 10.0);
  check_range("optim.grad_clip", c.optim.grad_clip, 0.0, 1e6);
  check_range("data.unit_tokens", c.data.unit_tokens, std::uint64_t{1}, std::uint64_t{1} << 40);
  check_range("data.valid_fraction", c.data.valid_fraction, 0.0, 0.5);
  check_range("data.test_fraction", c.data.test_fraction, 0.0, 0.5);
  check_choice("data.eval_split", c.data.eval_split, {"valid", "test"});
  check_choice("data.eval_cut", c.data.eval_cut, {"spread", "prefix"});
  check_choice("data.tokenizer", c.data.tokenizer, {"byte"});
  if (c.data.valid_fraction + c.data.test_fraction > 0.9)
    usage_fail("options --data.valid_fraction ({}) and --data.test_fraction ({}) leave less than "
               "10% of the documents for training",
               c.data.valid_fraction, c.data.test_fraction);
  if (c.data.output.empty()) usage_fail("option --data.output must name a file");
  check_range("data.eval_max_docs", c.data.eval_max_docs, std::uint64_t{1}, std::uint64_t{1} << 40);
  check_range("data.eval_max_tokens", c.data.eval_max_tokens, std::uint64_t{1}, std::uint64_t{1} << 40);
}

void require_option(const po::variables_map& vm, const std::string& key) {
  if (vm.count(key) && !vm[key].defaulted()) return;
  const auto dot = key.find('.');
  if (dot == std::string::npos)
    usage_fail("missing required option --{} (set it on the command line or in the job file)", key);
  usage_fail("missing required option --{} (set it in the job file as '{}' under [{}], or on "
               "the command line)",
               key, key.substr(dot + 1), key.substr(0, dot));
}

JobConfig load_job_file(const std::string& path) {
  JobConfig config;
  JobSchema schema(config);
  po::options_description cli;
  cli.add_options()("config", po::value<std::string>(), "job file");
  parse_options({"--config", path}, cli, schema.all);
  validate(config);
  return config;
}

}  // namespace mixsim
