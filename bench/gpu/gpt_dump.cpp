// gpt_dump: one training micro-step of the GPT (zero_grad, forward, backward) on random weights
// and tokens, with everything needed to repeat it elsewhere written to a directory; the reference
// check is scripts/gpu/torch_check.py, which rebuilds the same model in PyTorch from these files.
//
//   gpt_dump --backend cpu|cuda|cuda-bf16 --out DIR [--layers 2 --heads 3 --channels 72 --context 37
//            --vocab 257 --batch 3 --seq T --seed 7 --init rich|model]
//
// --init model keeps Gpt::init(seed): biases 0, LayerNorm weights 1, matrices N(0, 0.02). There
// the attention is almost uniform, GELU sees inputs near 0 and the logits are nearly equal, so a
// wrong bias indexing, LayerNorm weight, attention scale or GELU variant barely shows. --init
// rich (the default) therefore draws every tensor afresh after init(): matrices and embeddings
// N(0, 1/sqrt(fan_in)) (pre-activations, attention scores and logits of order 1), biases
// N(0, 0.1), LayerNorm weights N(1, 0.2) and biases N(0, 0.1), and the padded rows of wte
// N(0, 1) too: they must still get no gradient and never enter the softmax.
//
// DIR receives params.f32 and grads.f32 (raw little-endian float32, layout().total() floats in
// the canonical layout order), tokens.i32 and targets.i32 (raw int32, B*T, row-major (B,T);
// target -1 = position skipped by the loss) and meta.json (dims, loss, backend, tensor list).
// The default sizes are awkward on purpose: C not a multiple of 16, HS = 24, T = 37 not a
// multiple of any tile, V = 257 padded to Vp = 320. Depends only on mixsim's core, model and
// backend layers (no MPI, HDF5 or Boost), so that a bare GPU machine can build it.
//
// Exit codes: 0 done, 1 error, 2 bad usage or the backend is not usable here (e.g. no GPU).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mixsim/backend/ops.hpp"
#include "mixsim/core/config.hpp"
#include "mixsim/core/error.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/model/gpt.hpp"
#include "mixsim/model/layout.hpp"

static_assert(std::endian::native == std::endian::little,
              "the dump files are raw little-endian: add byte swapping for this host");

namespace {

struct Options {
  std::string backend = "cpu";
  std::string out;
  int layers = 2, heads = 3, channels = 72, context = 37, vocab = 257, batch = 3;
  int seq = 0;  // T; 0 = the context length
  std::uint64_t seed = 7;
  bool rich = true;  // --init rich | model
};

constexpr const char* kUsage =
    "usage: gpt_dump --backend cpu|cuda|cuda-bf16 --out DIR [--layers 2] [--heads 3] [--channels 72]\n"
    "                [--context 37] [--vocab 257] [--batch 3] [--seq T (default: context)]\n"
    "                [--seed 7] [--init rich|model (default rich)]\n";

Options parse(int argc, char** argv) {
  Options o;
  auto integer = [](std::string_view flag, const std::string& text) {
    try {
      std::size_t used = 0;
      const long long v = std::stoll(text, &used);
      if (used == text.size() && v >= 0) return v;
    } catch (const std::exception&) {
    }
    mixsim::usage_fail("{} needs a non-negative integer, got '{}'", flag, text);
  };
  const std::pair<std::string_view, int*> int_options[] = {
      {"--layers", &o.layers},   {"--heads", &o.heads}, {"--channels", &o.channels},
      {"--context", &o.context}, {"--vocab", &o.vocab}, {"--batch", &o.batch},
      {"--seq", &o.seq}};
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) mixsim::usage_fail("{} needs a value", flag);
    const std::string value = argv[++i];
    bool known = true;
    if (flag == "--backend") {
      o.backend = value;
    } else if (flag == "--out") {
      o.out = value;
    } else if (flag == "--seed") {
      o.seed = std::uint64_t(integer(flag, value));
    } else if (flag == "--init") {
      if (value != "rich" && value != "model")
        mixsim::usage_fail("--init rich|model, got '{}'", value);
      o.rich = value == "rich";
    } else {
      known = false;
      for (const auto& [name, field] : int_options)
        if (flag == name) *field = int(integer(flag, value)), known = true;
    }
    if (!known) mixsim::usage_fail("unknown option '{}'\n{}", flag, kUsage);
  }
  if (o.out.empty()) mixsim::usage_fail("--out DIR is required\n{}", kUsage);
  if (o.seq == 0) o.seq = o.context;
  if (o.seq > o.context) mixsim::usage_fail("--seq {} exceeds --context {}", o.seq, o.context);
  return o;
}

template <class T>
void write_raw(const std::filesystem::path& path, const std::vector<T>& values) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(values.data()), std::streamsize(values.size() * sizeof(T)));
  if (!f) mixsim::fail("cannot write {}", path.string());
}

// Random tokens in [0,V) and targets in [0,V), about one target in 8 set to -1 (skipped by the
// loss), plus fixed edge cases: the last vocabulary id as a token and as a target, and the last
// position skipped (as for a short final window). At least one target stays valid.
void make_batch(const mixsim::ModelDims& d, int B, int T, std::uint64_t seed,
                std::vector<int>& tokens, std::vector<int>& targets) {
  const std::size_t N = std::size_t(B) * T;
  mixsim::Rng rng = mixsim::Rng(seed).split(mixsim::hash_string("gpt_dump batch"));
  tokens.resize(N);
  targets.resize(N);
  for (std::size_t i = 0; i < N; ++i) tokens[i] = int(rng.below(std::uint64_t(d.V)));
  for (std::size_t i = 0; i < N; ++i) {
    targets[i] = int(rng.below(std::uint64_t(d.V)));
    if (rng.below(8) == 0) targets[i] = -1;
  }
  tokens[0] = d.V - 1;
  targets[0] = d.V - 1;
  if (N > 2) targets[N - 1] = -1;
  if (N > 1) targets[1] = 0;
}

// --init rich: every tensor redrawn (see the header); tensor i uses stream i of its own root.
void rich_params(const mixsim::ParamLayout& layout, std::uint64_t seed, std::vector<float>& host) {
  const mixsim::Rng root = mixsim::Rng(seed).split(mixsim::hash_string("gpt_dump params"));
  for (std::size_t i = 0; i < layout.tensors().size(); ++i) {
    const mixsim::TensorInfo& t = layout.tensors()[i];
    const std::string& n = t.name;
    const bool ln_weight = n == "ln1w" || n == "ln2w" || n == "lnfw";
    const double mean = ln_weight ? 1.0 : 0.0;
    double stddev = ln_weight ? 0.2 : 0.1;  // LayerNorm weights; biases of all kinds
    if (n == "wte") {
      stddev = 1.0;  // rows [0, V) are rescaled below, the padded rows stay N(0, 1)
    } else if (t.decay) {
      stddev = 1.0 / std::sqrt(double(t.shape.back()));  // shape (..., OC, fan_in)
    }
    mixsim::Rng rng = root.split(i);
    for (std::size_t k = 0; k < t.numel; ++k)
      host[t.offset + k] = float(mean + stddev * rng.normal());
  }
  // wte is (Vp, C): rows [0, V) are the embeddings and the tied head, N(0, 1/sqrt(C)).
  const mixsim::ModelDims& d = layout.dims();
  const float head_scale = float(1.0 / std::sqrt(double(d.C)));
  const std::size_t wte = layout.find("wte").offset;
  for (std::size_t k = 0; k < std::size_t(d.V) * d.C; ++k) host[wte + k] *= head_scale;
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

void write_meta(const std::filesystem::path& path, const mixsim::ParamLayout& layout, int B, int T,
                float loss, std::size_t valid_targets, std::string_view backend, std::uint64_t seed,
                bool rich) {
  const mixsim::ModelDims& d = layout.dims();
  std::string j = "{\n";
  j += fmt::format(
      "  \"L\": {}, \"NH\": {}, \"C\": {}, \"HS\": {}, \"maxT\": {}, \"V\": {}, \"Vp\": {},\n", d.L,
      d.NH, d.C, d.HS, d.maxT, d.V, d.Vp);
  j += fmt::format("  \"B\": {}, \"T\": {}, \"valid_targets\": {}, \"seed\": {}, \"init\": {},\n",
                   B, T, valid_targets, seed, json_string(rich ? "rich" : "model"));
  // 9 significant digits round-trip a float exactly; a non-finite loss is written as Python's
  // json reads it (NaN, Infinity), so that the check reports it instead of failing to parse.
  const std::string loss_text = std::isnan(loss)   ? "NaN"
                                : std::isinf(loss) ? (loss > 0 ? "Infinity" : "-Infinity")
                                                   : fmt::format("{:.9g}", loss);
  j += fmt::format("  \"loss\": {},\n  \"backend\": {},\n  \"total\": {},\n", loss_text,
                   json_string(backend), layout.total());
  j += "  \"tensors\": [\n";
  const auto& tensors = layout.tensors();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const mixsim::TensorInfo& t = tensors[i];
    j += fmt::format("    {{\"name\": {}, \"shape\": [{}], \"offset\": {}, \"numel\": {}}}{}\n",
                     json_string(t.name), fmt::join(t.shape, ", "), t.offset, t.numel,
                     i + 1 < tensors.size() ? "," : "");
  }
  j += "  ]\n}\n";
  std::ofstream f(path);
  f << j;
  if (!f) mixsim::fail("cannot write {}", path.string());
}

int run(const Options& o) {
  std::unique_ptr<mixsim::Backend> backend;
  try {
    backend = mixsim::make_backend(o.backend);
  } catch (const mixsim::Error& e) {
    fmt::print(stderr, "gpt_dump: backend '{}' is not usable here: {}\n", o.backend, e.what());
    return 2;
  }
  mixsim::ModelConfig config;
  config.n_layer = o.layers;
  config.n_head = o.heads;
  config.n_embd = o.channels;
  config.context = o.context;
  config.vocab_size = o.vocab;
  const int B = o.batch, T = o.seq;

  mixsim::Gpt model(config, *backend, B);
  model.init(o.seed);
  const mixsim::ModelDims& d = model.dims();
  const std::size_t total = model.layout().total();
  std::vector<float> params(total), grads(total);
  if (o.rich) {
    model.get_params(params);
    rich_params(model.layout(), o.seed, params);
    model.set_params(params);
  }
  std::vector<int> tokens, targets;
  make_batch(d, B, T, o.seed, tokens, targets);
  std::size_t valid = 0;
  for (int t : targets) valid += t >= 0;

  model.zero_grad();
  const float loss = model.forward(tokens.data(), targets.data(), B, T);
  model.backward();
  backend->synchronize();

  model.get_params(params);
  backend->download(grads.data(), model.grads(), total * sizeof(float));
  backend->synchronize();

  const std::filesystem::path dir(o.out);
  std::filesystem::create_directories(dir);
  write_raw(dir / "params.f32", params);
  write_raw(dir / "grads.f32", grads);
  write_raw(dir / "tokens.i32", tokens);
  write_raw(dir / "targets.i32", targets);
  write_meta(dir / "meta.json", model.layout(), B, T, loss, valid, backend->name(), o.seed, o.rich);
  fmt::print(
      "gpt_dump: backend {} L={} NH={} C={} maxT={} V={} (Vp {}) B={} T={}, init {}: loss {:.7f} "
      "over {} targets; wrote {}\n",
      backend->name(), d.L, d.NH, d.C, d.maxT, d.V, d.Vp, B, T, o.rich ? "rich" : "model", loss,
      valid, dir.string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const mixsim::UsageError& e) {
    fmt::print(stderr, "gpt_dump: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "gpt_dump: error: {}\n", e.what());
    return 1;
  }
}
