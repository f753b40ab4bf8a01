#include "mixsim/stages/training.hpp"

#include <cmath>
#include <limits>
#include <set>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/error.hpp"
#include "mixsim/core/log.hpp"
#include "mixsim/core/progress.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/core/signals.hpp"
#include "mixsim/core/timer.hpp"
#include "mixsim/data/loader.hpp"
#include "mixsim/dist/group_allreduce.hpp"
#include "mixsim/io/checkpoint.hpp"
#include "mixsim/model/gpt.hpp"
#include "mixsim/model/optimizer.hpp"
#include "mixsim/version.hpp"

namespace mixsim {
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kInitStream = 0x1417;  // run.seed -> parameter initialisation

// The shape of a training run: batch arithmetic checked once, with errors naming the options.
struct BatchPlan {
  int T, B, ranks, local, micro, accum;
};

BatchPlan plan_batches(const JobConfig& config, int ranks) {
  BatchPlan p{};
  p.T = config.model.context;
  p.B = config.train.global_batch;
  p.ranks = ranks;
  if (p.B % ranks != 0)
    usage_fail(
        "option --train.global_batch ({}) must be a multiple of the ranks training one "
        "model ({}): change the batch or the rank/group count",
        p.B, ranks);
  p.local = p.B / ranks;
  p.micro = config.train.micro_batch > 0 ? config.train.micro_batch : p.local;
  if (p.local % p.micro != 0)
    usage_fail(
        "option --train.micro_batch ({}) must divide each rank's share of the global batch "
        "({} = {} / {} ranks)",
        p.micro, p.local, p.B, ranks);
  p.accum = p.local / p.micro;
  return p;
}

OptimConfig optim_for(const JobConfig& config, const ScheduleConfig& s) {
  OptimConfig o = config.optim;
  o.lr = s.lr;
  o.lr_min = s.lr_min;
  o.schedule = s.schedule;
  o.warmup_steps = s.warmup_steps;
  return o;
}

// Validation tokens: the held-out sets of the mixture's own partitions (all partition sets for
// the seed), the first val_tokens tokens spread evenly over them.
struct ValidationWindows {
  std::vector<std::int32_t> inputs, targets;  // (windows, T) of this rank's share
  int windows = 0;
  std::vector<std::string> sets;
};

ValidationWindows validation_windows(const JobConfig& config, const DataFile& data,
                                     const std::vector<std::string>& units, int rank, int ranks) {
  std::set<std::string> partitions;
  for (const auto& u : units) partitions.insert(data.unit(u).partition);
  ValidationWindows v;
  if (config.train.val_tokens == 0) return v;  // no validation
  for (const auto& e : data.eval_sets())
    if (e.kind == "partition" && (partitions.empty() || partitions.count(e.partition)))
      v.sets.push_back(e.name);
  if (v.sets.empty() || config.train.val_tokens == 0) return v;
  const std::size_t T = static_cast<std::size_t>(config.model.context);
  const std::uint64_t per_set = std::max<std::uint64_t>(config.train.val_tokens / v.sets.size(), T);
  std::vector<std::int32_t> all_in, all_tg;
  int total = 0;
  for (const auto& name : v.sets) {
    auto tokens = data.eval_tokens(name);
    if (tokens.size() > per_set + 1) tokens.resize(per_set + 1);
    EvalWindows w(tokens, T);
    std::vector<std::int32_t> in(T), tg(T);
    for (std::size_t i = 0; i < w.count(); ++i) {
      w.fill(i, in, tg);
      all_in.insert(all_in.end(), in.begin(), in.end());
      all_tg.insert(all_tg.end(), tg.begin(), tg.end());
      ++total;
    }
  }
  // Contiguous shares, sizes differing by at most one window.
  const int first = static_cast<int>(static_cast<std::int64_t>(total) * rank / ranks);
  const int last = static_cast<int>(static_cast<std::int64_t>(total) * (rank + 1) / ranks);
  v.windows = last - first;
  v.inputs.assign(all_in.begin() + first * T, all_in.begin() + last * T);
  v.targets.assign(all_tg.begin() + first * T, all_tg.begin() + last * T);
  return v;
}

double validation_loss(Gpt& model, const ValidationWindows& v, int micro, int T,
                       const Communicator& group) {
  EvalSums local;
  for (int w = 0; w < v.windows; w += micro) {
    const int n = std::min(micro, v.windows - w);
    const auto s = model.evaluate(v.inputs.data() + static_cast<std::size_t>(w) * T,
                                  v.targets.data() + static_cast<std::size_t>(w) * T, n, T);
    local.loss_sum += s.loss_sum;
    local.tokens += s.tokens;
  }
  std::vector<double> sums{local.loss_sum, static_cast<double>(local.tokens)};
  group.allreduce_sum(std::span<double>(sums));
  return sums[1] > 0 ? sums[0] / sums[1] : std::numeric_limits<double>::quiet_NaN();
}

std::vector<float> download(Backend& backend, const float* src, std::size_t n) {
  std::vector<float> host(n);
  backend.download(host.data(), src, n * sizeof(float));
  return host;
}

// A partial or final checkpoint must belong to this job; anything else is an error naming it.
void require_same_job(const fs::path& path, const Provenance& p, const TrainJob& job,
                      const BatchPlan& plan) {
  auto mismatch = [&](const std::string& what) {
    fail("'{}' belongs to another training run ({}); delete it, or choose another output",
         path.string(), what);
  };
  if (p.name != job.name) mismatch(fmt::format("it trains '{}', this run '{}'", p.name, job.name));
  if (p.units != job.units) mismatch("its units differ");
  if (p.total_steps != job.steps)
    mismatch(fmt::format("{} steps, this run {}", p.total_steps, job.steps));
  if (p.global_batch != plan.B)
    mismatch(fmt::format("global batch {}, this run {}", p.global_batch, plan.B));
  if (p.context != plan.T) mismatch(fmt::format("context {}, this run {}", p.context, plan.T));
}

}  // namespace

fs::path partial_path(const fs::path& output) {
  return output.parent_path() / (output.stem().string() + ".partial" + output.extension().string());
}

std::string file_stem(const std::string& name) {
  std::string s = name;
  for (auto& c : s)
    if (c == '/') c = '_';
  // File names have a 255-byte limit; a large mixture keeps a readable prefix and a hash.
  constexpr std::size_t kMaxStem = 120;
  if (s.size() > kMaxStem) s = fmt::format("{}-{:016x}", s.substr(0, 96), hash_string(name));
  return s;
}

std::string mixture_name(const std::vector<std::string>& units) {
  std::string s;
  for (const auto& u : units) s += (s.empty() ? "" : "+") + u;
  return s;
}

std::int64_t cpt_steps(const JobConfig& config, std::size_t k) {
  std::int64_t per_unit = config.cpt.steps_per_unit;
  if (per_unit == 0) {
    const auto window_tokens =
        static_cast<std::uint64_t>(config.train.global_batch) * config.model.context;
    per_unit =
        static_cast<std::int64_t>((config.data.unit_tokens + window_tokens - 1) / window_tokens);
  }
  return per_unit * static_cast<std::int64_t>(k);
}

TrainOutcome train_model(const TrainJob& job, const JobConfig& config, const DataFile& data,
                         const Communicator& group) {
  Stopwatch watch;
  TrainOutcome outcome;
  const BatchPlan plan = plan_batches(config, group.size());
  const bool writer = group.rank() == 0;
  if (job.steps < 1)
    usage_fail("training '{}' needs at least one step (got {})", job.name, job.steps);

  if (fs::exists(job.output)) {
    const auto info = read_checkpoint_info(job.output);
    require_same_job(job.output, info.provenance, job, plan);
    if (info.provenance.complete) {
      outcome.skipped = true;
      return outcome;
    }
  }
  if (static_cast<int>(data.tokenizer().vocab_size) != config.model.vocab_size)
    usage_fail("option --model.vocab_size ({}) does not match the tokenizer of '{}' ({} tokens)",
               config.model.vocab_size, data.path().string(), data.tokenizer().vocab_size);

  // Data: the mixture's units (each contributing equally), or the seed corpus.
  std::vector<std::vector<Token>> tokens;
  std::vector<std::string> names;
  if (job.units.empty()) {
    tokens.push_back(data.seed_tokens());
    names.push_back("seed corpus");
  } else {
    for (const auto& u : job.units) {
      tokens.push_back(data.unit_tokens(u));
      names.push_back(u);
    }
  }
  LoaderConfig lc;
  lc.context = static_cast<std::size_t>(plan.T);
  lc.global_batch = static_cast<std::size_t>(plan.B);
  lc.seed = job.data_seed;
  lc.rank = group.rank();
  lc.ranks = group.size();
  const BatchLoader loader(std::move(tokens), lc, names);
  const auto valid = validation_windows(config, data, job.units, group.rank(), group.size());

  auto backend = make_backend(config.train.backend);
  Gpt model(config.model, *backend, plan.micro);
  AdamW adamw(model.layout(), *backend);
  // Declared after the model: if an exception unwinds, started sums are waited for (in the
  // destructors) while the gradient buffer they write still exists.
  const auto group_sum = make_group_allreduce(group, *backend);
  // Bucketed sums overlap the backward pass of the last micro-batch; 0 MB: one sum after it.
  // Staged sums cannot overlap (they wait for finish()), so they take one sum of the buffer.
  const bool overlap = config.train.grad_bucket_mb > 0 && group_sum->kind() != "local" &&
                       group_sum->kind() != "mpi-staged";
  const bool bf16_sums = config.train.grad_reduce == "bf16" ||
                         (config.train.grad_reduce == "auto" && backend->name().ends_with("-bf16"));
  const SumFormat sum_format = bf16_sums ? SumFormat::bf16 : SumFormat::fp32;
  GradientBuckets buckets(
      *group_sum, static_cast<std::size_t>(config.train.grad_bucket_mb * (1 << 20)), sum_format);
  outcome.grad_sum = std::string(group_sum->kind());
  outcome.grad_format = bf16_sums ? "bf16" : "fp32";
  const Gpt::GradsReady grads_ready = [&](std::span<float> part) { buckets.ready(part); };
  const std::size_t n = model.layout().total();
  const OptimConfig optim = optim_for(config, job.schedule);

  Provenance prov;
  prov.kind = job.kind;
  prov.name = job.name;
  prov.units = job.units;
  prov.unit_weights.assign(job.units.size(), job.units.empty() ? 0.0 : 1.0 / job.units.size());
  prov.data_file = data.path().string();
  prov.data_seed = job.data_seed;
  prov.total_steps = job.steps;
  prov.global_batch = plan.B;
  prov.context = plan.T;
  prov.optim = optim;
  prov.version = fmt::format("{} (git {})", kVersion, kGitRevision);
  prov.ranks = group.size();
  LossCurve curve;

  const fs::path partial = partial_path(job.output);
  std::int64_t step0 = 0;
  if (fs::exists(partial)) {
    auto ck = read_checkpoint(partial, /*with_optimizer=*/true);
    require_same_job(partial, ck.provenance, job, plan);
    require_same_model(ck.model, config.model, fmt::format("'{}'", partial.string()),
                       "the job's [model]");
    model.set_params(ck.params);
    backend->upload(adamw.m(), ck.optimizer->m.data(), n * sizeof(float));
    backend->upload(adamw.v(), ck.optimizer->v.data(), n * sizeof(float));
    adamw.set_steps_done(ck.optimizer->steps);
    step0 = ck.provenance.steps_done;
    prov.parent = ck.provenance.parent;
    prov.parent_checksum = ck.provenance.parent_checksum;
    prov.tokens_seen = ck.provenance.tokens_seen;
    curve = std::move(ck.curve);
    if (writer)
      log::write_any_rank(fmt::format("{}: resuming from '{}' at step {}/{}", job.name,
                                      partial.string(), step0, job.steps));
  } else if (!job.init.empty()) {
    auto ck = read_checkpoint(job.init, job.inherit_optimizer);
    require_same_model(ck.model, config.model, fmt::format("'{}'", job.init.string()),
                       "the job's [model]");
    model.set_params(ck.params);
    if (job.inherit_optimizer) {
      backend->upload(adamw.m(), ck.optimizer->m.data(), n * sizeof(float));
      backend->upload(adamw.v(), ck.optimizer->v.data(), n * sizeof(float));
      adamw.set_steps_done(ck.optimizer->steps);
    }
    prov.parent = job.init.string();
    prov.parent_checksum = checksum_hex(ck.params);
  } else {
    model.init(Rng(config.run.seed).split(kInitStream).key());
  }

  const std::size_t rows = static_cast<std::size_t>(plan.local) * plan.T;
  std::vector<std::int32_t> inputs(rows), targets(rows);
  const float micro_scale = static_cast<float>(plan.micro) / static_cast<float>(plan.B);
  Stopwatch run_clock;
  double last_train = 0, last_valid = std::numeric_limits<double>::quiet_NaN();

  auto save = [&](const fs::path& path, std::int64_t steps_done, bool complete, bool optimizer) {
    // Every rank downloads (collective-free); only the writer touches the file system.
    if (!writer) return;
    Checkpoint ck;
    ck.model = config.model;
    ck.params = download(*backend, model.params(), n);
    if (optimizer)
      ck.optimizer = OptimizerState{adamw.steps_done(), download(*backend, adamw.m(), n),
                                    download(*backend, adamw.v(), n)};
    ck.provenance = prov;
    ck.provenance.steps_done = steps_done;
    ck.provenance.complete = complete;
    ck.curve = curve;
    write_checkpoint(path, ck);
  };

  for (std::int64_t step = step0; step < job.steps; ++step) {
    const double lr = lr_at(step, job.steps, optim);
    model.zero_grad();
    loader.fill(static_cast<std::uint64_t>(step), inputs, targets);
    double local_loss = 0;
    Stopwatch phase;
    for (int a = 0; a < plan.accum; ++a) {
      const std::size_t off = static_cast<std::size_t>(a) * plan.micro * plan.T;
      // grad_scale = micro/B: the summed gradients over all micro-batches of all ranks are the
      // gradient of the global batch's mean loss.
      const float loss =
          model.forward(inputs.data() + off, targets.data() + off, plan.micro, plan.T, micro_scale);
      model.backward(overlap && a + 1 == plan.accum ? grads_ready : Gpt::GradsReady{});
      local_loss += static_cast<double>(loss) * micro_scale;
    }
    outcome.compute_seconds += phase.lap();
    // What the overlap could not hide: the wait for the sums still running.
    if (overlap) {
      buckets.finish();
      outcome.grad_buckets = buckets.buckets();
      outcome.grad_parts = buckets.parts();
    } else
      group_sum->sum(model.grads(), n, sum_format);
    const double train_loss = group.allreduce_sum(local_loss);
    outcome.allreduce_seconds += phase.lap();
    const auto stats = model.update(adamw, lr, optim);
    outcome.optimizer_seconds += phase.lap();
    prov.tokens_seen += static_cast<std::uint64_t>(plan.B) * plan.T;
    curve.train_step.push_back(step + 1);
    curve.train_loss.push_back(static_cast<float>(train_loss));
    last_train = train_loss;

    const bool last = step + 1 == job.steps;
    const bool validate_now =
        !valid.sets.empty() &&
        (last || (config.train.val_every > 0 && (step + 1) % config.train.val_every == 0));
    std::string valid_text;
    if (validate_now) {
      last_valid = validation_loss(model, valid, plan.micro, plan.T, group);
      curve.valid_step.push_back(step + 1);
      curve.valid_loss.push_back(static_cast<float>(last_valid));
      valid_text = fmt::format(", valid {:.4f}", last_valid);
    }
    ++outcome.steps_run;
    if ((step + 1) % config.train.log_every == 0 || last || validate_now) {
      const double elapsed = run_clock.seconds();
      const double rate = outcome.steps_run * static_cast<double>(plan.B) * plan.T / elapsed;
      const double eta = elapsed / outcome.steps_run * static_cast<double>(job.steps - step - 1);
      if (writer)
        log::write_any_rank(fmt::format(
            "{}: step {}/{}, loss {:.4f}{}, lr {:.3g}, grad norm {:.3g}, {:.0f} tokens/s, ETA {}",
            job.name, step + 1, job.steps, train_loss, valid_text, lr, stats.grad_norm, rate,
            Progress::format_duration(eta)));
    }
    if (last) break;
    const bool stop = group.any(StopSignals::requested());
    const bool periodic =
        config.train.checkpoint_every > 0 && (step + 1) % config.train.checkpoint_every == 0;
    if (stop || periodic) {
      save(partial, step + 1, false, true);
      group.barrier();
    }
    if (stop) {
      if (writer)
        log::write_any_rank(
            fmt::format("{}: stop signal received; checkpoint written at step "
                        "{}/{} to '{}'; run the same command again to resume",
                        job.name, step + 1, job.steps, partial.string()));
      outcome.interrupted = true;
      outcome.step_seconds = run_clock.seconds();
      outcome.seconds = watch.seconds();
      return outcome;
    }
  }
  outcome.step_seconds = run_clock.seconds();
  save(job.output, job.steps, true, config.train.save_optimizer);
  if (writer && fs::exists(partial)) fs::remove(partial);
  group.barrier();
  outcome.seconds = watch.seconds();
  outcome.final_train_loss = last_train;
  outcome.final_valid_loss = last_valid;
  return outcome;
}

}  // namespace mixsim
