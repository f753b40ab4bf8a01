#include "mixsim/cli/command.hpp"

#include "mixsim/stages/prepare.hpp"
#include "mixsim/stages/train_stages.hpp"

namespace mixsim {

const std::vector<Command>& commands() {
  static const std::vector<Command> list = {
      {"prepare", "turn text corpora into data.h5 (base units, eval sets, seed corpus)",
       "Reads the partitions, the seed corpus and the extra eval sets named in [data], tokenizes\n"
       "them, cuts base units of data.unit_tokens tokens and writes data.h5.",
       kSectionRun | kSectionData, {}, {},
       [](const CommandContext& c) { return run_prepare(c.config, c.world); }},
      {"train", "train one model: the seed, or any mixture of units",
       "Trains one model data parallel over all MPI ranks: without --init the seed model from\n"
       "random initialisation on the seed corpus ([seed] schedule); with --init continued\n"
       "pre-training from a checkpoint ([cpt] schedule) on the units given by --units.\n"
       "Resumable: rerun after a kill and it continues from the last checkpoint; SIGTERM or\n"
       "SIGUSR1 writes a checkpoint and exits with code 3.",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData | kSectionTrain | kSectionSeed |
           kSectionCpt,
       {}, add_train_options,
       [](const CommandContext& c) { return run_train(c.config, c.vm, c.world); }},
      {"pool", "train one model per base unit from the seed (the pool)",
       "Continues pre-training from the seed model on every base unit, each with the same token\n"
       "budget ([cpt]); ranks are split into groups of pool.group_size that take units from the\n"
       "list. Units whose complete model exists are skipped.",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData | kSectionTrain | kSectionCpt |
           kSectionPool,
       {}, {}, [](const CommandContext& c) { return run_pool(c.config, c.world); }},
      {"truth", "train one model per listed mixture on the union of its units",
       "Trains the ground-truth models the proxies are judged against: a k-unit mixture gets k\n"
       "times the unit budget, every unit contributing equally. Mixtures come from [truth].",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData | kSectionTrain | kSectionCpt |
           kSectionTruth,
       {}, {}, [](const CommandContext& c) { return run_truth(c.config, c.world); }},
      {"merge-eval", "score every mixture by the perplexity of its averaged pool models",
       "Forms each mixture's parameter average by collective reduction and evaluates it on every\n"
       "eval set; writes results.h5.",
       kSectionRun | kSectionData, {}, {}, {}},
      {"report", "tables, CSV and SVG plots from results.h5",
       "Prints how well each proxy predicts the truth models, per eval set.", kSectionRun, {}, {},
       {}},
      {"inspect", "describe a mixsim HDF5 file (data, checkpoint or results)",
       "Prints the contents of a data.h5, checkpoint or results.h5 file.", kSectionRun, {}, {}, {}},
  };
  return list;
}

const Command* find_command(const std::string& name) {
  for (const auto& c : commands())
    if (c.name == name) return &c;
  return nullptr;
}

}  // namespace mixsim
