#include "mixsim/cli/command.hpp"

#include "mixsim/stages/inspect.hpp"
#include "mixsim/stages/merge_eval.hpp"
#include "mixsim/stages/prepare.hpp"
#include "mixsim/stages/report.hpp"
#include "mixsim/stages/train_stages.hpp"

namespace mixsim {

const std::vector<Command>& commands() {
  static const std::vector<Command> list = {
      {"prepare", "turn text corpora into data.h5 (base units, eval sets, seed corpus)",
       "Reads the partitions, the seed corpus and the extra eval sets named in [data], tokenizes\n"
       "them, cuts base units of data.unit_tokens tokens and writes data.h5.",
       kSectionRun | kSectionData, {}, {},
       [](const CommandContext& c) { return run_prepare(c.config, c.world); }, ""},
      {"train", "train one model: the seed, or any mixture of units",
       "Trains one model data parallel over all MPI ranks: without --init the seed model from\n"
       "random initialisation on the seed corpus ([seed] schedule); with --init continued\n"
       "pre-training from a checkpoint ([cpt] schedule) on the units given by --units.\n"
       "Resumable: rerun after a kill and it continues from the last checkpoint; SIGTERM or\n"
       "SIGUSR1 writes a checkpoint and exits with code 3.",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData | kSectionTrain | kSectionSeed |
           kSectionCpt,
       {}, add_train_options,
       [](const CommandContext& c) { return run_train(c.config, c.vm, c.world); }, ""},
      {"pool", "train one model per base unit from the seed (the pool)",
       "Continues pre-training from the seed model on every base unit, each with the same token\n"
       "budget ([cpt]); ranks are split into groups of pool.group_size that take units from the\n"
       "list. Units whose complete model exists are skipped.",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData | kSectionTrain | kSectionCpt |
           kSectionPool,
       {}, add_shard_option,
       [](const CommandContext& c) { return run_pool(c.config, c.vm, c.world); }, ""},
      {"truth", "train one model per listed mixture on the union of its units",
       "Trains the ground-truth models the proxies are judged against: a k-unit mixture gets k\n"
       "times the unit budget, every unit contributing equally. Mixtures come from [truth].",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData | kSectionTrain | kSectionCpt |
           kSectionTruth,
       {}, add_shard_option,
       [](const CommandContext& c) { return run_truth(c.config, c.vm, c.world); }, ""},
      {"merge-eval", "score every mixture by the perplexity of its averaged pool models",
       "Scores every mixture of the [merge] space on every eval set by its proxies: the loss of\n"
       "the uniform (merged), token-weighted (weighted) and per-partition (macro) parameter\n"
       "average of its units' pool models, and the mean of their own losses (components); also\n"
       "the pool models alone, the seed and the truth models. Ranks form groups of\n"
       "merge.group_size that share the pool; each average is one allreduce over the group.\n"
       "Writes merge.output (results.h5) at intervals; a rerun evaluates only what is missing.\n"
       "SIGTERM or SIGUSR1 writes the results and exits with code 3.",
       kSectionRun | kSectionData | kSectionSeed | kSectionPool | kSectionTruth | kSectionMerge,
       {}, {}, [](const CommandContext& c) { return run_merge_eval(c.config, c.world); }, ""},
      {"report", "tables, CSV and SVG plots from results.h5",
       "Prints, per eval set, the best mixtures by each proxy and, where truth models exist, how\n"
       "well each proxy predicts them: Pearson, Spearman and Kendall correlations with 95%\n"
       "bootstrap intervals and pairwise decision accuracy, by the eval set's relation to the\n"
       "mixture (own partition, other partition, out of domain). Reads --results (default: the\n"
       "job's merge.output); --csv writes every number, --plots SVG scatter plots.",
       kSectionRun | kSectionMerge, {}, add_report_options,
       [](const CommandContext& c) { return run_report(c.config, c.vm, c.world); }, "results"},
      {"inspect", "describe a mixsim HDF5 file (data, checkpoint or results)",
       "Prints what a data.h5, checkpoint or results.h5 file holds (kind, config, provenance,\n"
       "sizes): mixsim inspect --file FILE.h5",
       0u, {}, add_inspect_options,
       [](const CommandContext& c) { return run_inspect(c.vm, c.world); }, "file"},
  };
  return list;
}

const Command* find_command(const std::string& name) {
  for (const auto& c : commands())
    if (c.name == name) return &c;
  return nullptr;
}

}  // namespace mixsim
