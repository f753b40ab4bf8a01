#include "mixsim/cli/command.hpp"

namespace mixsim {

const std::vector<Command>& commands() {
  static const std::vector<Command> list = {
      {"prepare", "turn text corpora into data.h5 (base units, eval sets, seed corpus)",
       "Reads the partitions, the seed corpus and the extra eval sets named in [data], tokenizes\n"
       "them, cuts base units of data.unit_tokens tokens and writes data.h5.",
       kSectionRun | kSectionData, {}, {}, {}},
      {"train", "train one model: the seed, or any mixture of units",
       "Trains one model from random initialisation (the seed model) or continues from a\n"
       "checkpoint, data parallel over all MPI ranks.",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData, {}, {}, {}},
      {"pool", "train one model per base unit from the seed (the pool)",
       "Continues pre-training from the seed model on every base unit, each with the same token\n"
       "budget; ranks are split into groups that take units from the list.",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData, {}, {}, {}},
      {"truth", "train one model per listed mixture on the union of its units",
       "Trains the ground-truth models that the proxies are judged against.",
       kSectionRun | kSectionModel | kSectionOptim | kSectionData, {}, {}, {}},
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
