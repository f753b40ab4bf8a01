#include "mixsim/stages/inspect.hpp"

#include <cmath>
#include <iostream>
#include <set>

#include "mixsim/core/error.hpp"
#include "mixsim/io/checkpoint.hpp"
#include "mixsim/io/data_file.hpp"
#include "mixsim/io/hdf5.hpp"
#include "mixsim/io/results.hpp"
#include "mixsim/model/layout.hpp"

namespace mixsim {
namespace fs = std::filesystem;

namespace {

std::string bytes_text(std::uintmax_t bytes) {
  if (bytes < 1024) return fmt::format("{} B", bytes);
  if (bytes < (1u << 20)) return fmt::format("{:.1f} KiB", double(bytes) / 1024);
  if (bytes < (1u << 30)) return fmt::format("{:.1f} MiB", double(bytes) / (1 << 20));
  return fmt::format("{:.2f} GiB", double(bytes) / (1 << 30));
}

std::string count_text(std::uint64_t n) {
  if (n < 10000) return std::to_string(n);
  if (n < 10000000) return fmt::format("{:.1f}k", double(n) / 1e3);
  return fmt::format("{:.2f}M", double(n) / 1e6);
}

std::string first_line(const fs::path& path, const std::string& kind, const std::string& format,
                       std::int64_t version) {
  return fmt::format("{}: mixsim {} (format {} v{}), {}\n", path.string(), kind, format, version,
                     bytes_text(fs::file_size(path)));
}

std::string describe_data(const fs::path& path, std::int64_t version) {
  const auto d = DataFile::open(path);
  const auto& s = d.settings();
  std::uint64_t unit_tokens = 0, eval_tokens = 0;
  std::size_t ood = 0;
  for (const auto& u : d.units()) unit_tokens += u.tokens;
  for (const auto& e : d.eval_sets()) {
    eval_tokens += e.tokens;
    ood += e.kind == "ood";
  }
  std::vector<std::string> units, sets;
  for (const auto& u : d.units()) units.push_back(u.name);
  for (const auto& e : d.eval_sets()) sets.push_back(e.name);
  std::string out = first_line(path, "data file", kDataFormat, version);
  out += fmt::format("  tokenizer: {}, vocabulary {}, end-of-text {}\n", d.tokenizer().kind,
                     d.tokenizer().vocab_size, d.tokenizer().eot);
  out += fmt::format("  units: {} from {} partitions, {} tokens (budget {} per unit): {}\n",
                     d.units().size(), d.partitions().size(), count_text(unit_tokens),
                     s.unit_tokens, fmt::join(units, ", "));
  out += fmt::format("  eval sets: {} ({} from partitions, {} out of domain), {} tokens: {}\n",
                     d.eval_sets().size(), d.eval_sets().size() - ood, ood, count_text(eval_tokens),
                     fmt::join(sets, ", "));
  if (d.seed())
    out += fmt::format("  seed corpus: {} tokens, {} documents from '{}'\n",
                       count_text(d.seed()->tokens), d.seed()->documents, d.seed()->source);
  else
    out += "  seed corpus: none\n";
  out += fmt::format(
      "  settings: split_salt {}, valid {}, test {}, eval split {}, at most {} documents "
      "and {} tokens per eval set (cut: {}), eval seed {}\n",
      s.split_salt, s.valid_fraction, s.test_fraction, s.eval_split, s.eval_max_docs,
      s.eval_max_tokens, s.eval_cut, s.eval_seed);
  return out;
}

std::string describe_checkpoint(const fs::path& path, std::int64_t version) {
  const auto info = read_checkpoint_info(path);
  const auto& m = info.model;
  const auto& p = info.provenance;
  std::string out = first_line(path, "checkpoint", kCheckpointFormat, version);
  out += fmt::format(
      "  model: {} layers, {} heads, {} channels, context {}, vocabulary {}: {} "
      "parameters (params_crc32 {})\n",
      m.n_layer, m.n_head, m.n_embd, m.context, m.vocab_size, ParamLayout(m).total(),
      info.params_checksum);
  out += fmt::format(
      "  provenance: {} model '{}', {}, step {}/{}, {} tokens seen, batch {} x {}, {} "
      "rank(s), written by {}\n",
      p.kind, p.name, p.complete ? "complete" : "partial", p.steps_done, p.total_steps,
      count_text(p.tokens_seen), p.global_batch, p.context, p.ranks, p.version);
  if (!p.units.empty()) out += fmt::format("  units: {}\n", fmt::join(p.units, "+"));
  out += p.parent.empty()
             ? std::string("  parent: none (random initialisation)\n")
             : fmt::format("  parent: '{}' (params_crc32 {})\n", p.parent, p.parent_checksum);
  out += fmt::format(
      "  training: data '{}' (order seed {}), lr {} ({}, min {}, warmup {}), AdamW {}/{}, "
      "weight decay {}, clip {}; optimizer state {}\n",
      p.data_file, p.data_seed, p.optim.lr, p.optim.schedule, p.optim.lr_min, p.optim.warmup_steps,
      p.optim.beta1, p.optim.beta2, p.optim.weight_decay, p.optim.grad_clip,
      info.has_optimizer ? "stored" : "not stored");
  const auto f = h5::File::open(path);
  if (f.exists("curve/train_loss")) {
    const auto train = f.open_dataset("curve/train_loss").read<float>();
    const auto valid = f.exists("curve/valid_loss")
                           ? f.open_dataset("curve/valid_loss").read<float>()
                           : std::vector<float>{};
    out +=
        fmt::format("  curve: {} train losses{}, {} validation losses{}\n", train.size(),
                    train.empty() ? "" : fmt::format(" (last {:.4f})", train.back()), valid.size(),
                    valid.empty() ? "" : fmt::format(" (last {:.4f})", valid.back()));
  }
  return out;
}

std::string describe_results(const fs::path& path, std::int64_t version) {
  const auto r = read_results(path);
  std::size_t in_space = 0, truth = 0, pool = 0;
  std::set<std::size_t> sizes;
  for (const auto& m : r.mixtures) {
    in_space += m.in_space;
    truth += !m.truth_checksum.empty();
    sizes.insert(m.members.size());
  }
  for (const auto& u : r.units) pool += !u.checksum.empty();
  std::size_t ood = 0;
  for (const auto& e : r.eval_sets) ood += e.kind == "ood";
  std::string out = first_line(path, "results file", kResultsFormat, version);
  out += fmt::format("  written by {} from data '{}' and seed '{}' (params_crc32 {}), context {}\n",
                     r.created_by, r.data_file, r.seed_file, r.seed_checksum, r.context);
  out += fmt::format(
      "  {} units ({} with a pool model), {} eval sets ({} out of domain), {} mixtures "
      "({} in the space of the last run) of sizes {}\n",
      r.units.size(), pool, r.eval_sets.size(), ood, r.mixtures.size(), in_space,
      fmt::join(sizes, ", "));
  std::vector<std::string> filled;
  auto count = [](const std::vector<double>& v) {
    std::size_t n = 0;
    for (double x : v) n += std::isfinite(x);
    return n;
  };
  for (const auto& p : r.proxies)
    filled.push_back(fmt::format("{} {}/{}", p.name, count(p.loss.values), p.loss.values.size()));
  out += fmt::format("  proxy entries evaluated (mixtures x eval sets): {}\n",
                     fmt::join(filled, ", "));
  out += fmt::format("  scores: pool {}/{}, seed {}/{}, truth {} of {} truth models' entries\n",
                     count(r.pool_loss.values), pool * r.eval_sets.size(), count(r.seed_loss),
                     r.seed_loss.size(), count(r.truth_loss.values), truth * r.eval_sets.size());
  out += fmt::format("  complete: {}\n",
                     r.complete ? "yes" : fmt::format("no, {} entries missing", r.missing()));
  return out;
}

}  // namespace

std::string describe_file(const fs::path& path) {
  if (!fs::exists(path)) fail("'{}' does not exist", path.string());
  if (!h5::File::is_hdf5(path))
    fail("'{}' is not an HDF5 file; mixsim files are data.h5, checkpoints and results.h5",
         path.string());
  std::string format;
  std::int64_t version = 0;
  {
    const auto f = h5::File::open(path);
    if (!f.has_attribute("format"))
      fail(
          "'{}' is an HDF5 file but not a mixsim file (its root has no 'format' attribute); mixsim "
          "files are data.h5, checkpoints and results.h5",
          path.string());
    format = f.string_attribute("format");
    version = f.has_attribute("format_version") ? f.attribute<std::int64_t>("format_version") : 0;
  }
  if (format == kDataFormat) return describe_data(path, version);
  if (format == kCheckpointFormat) return describe_checkpoint(path, version);
  if (format == kResultsFormat) return describe_results(path, version);
  fail("'{}' has format '{}', which is not a mixsim format ({}, {}, {})", path.string(), format,
       kDataFormat, kCheckpointFormat, kResultsFormat);
}

void add_inspect_options(po::options_description& d) {
  d.add_options()("file", po::value<std::string>(), "the HDF5 file to describe (required)");
}

int run_inspect(const po::variables_map& vm, const Communicator& world) {
  if (!vm.count("file")) usage_fail("missing required option --file (the HDF5 file to describe)");
  if (world.rank() != 0) return 0;
  std::cout << describe_file(vm["file"].as<std::string>()) << std::flush;
  return 0;
}

}  // namespace mixsim
