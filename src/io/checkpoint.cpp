#include "mixsim/io/checkpoint.hpp"

#include <zlib.h>

#include <cmath>

#include "mixsim/core/error.hpp"
#include "mixsim/io/hdf5.hpp"
#include "mixsim/model/layout.hpp"

namespace mixsim {
namespace {

namespace fs = std::filesystem;

// No compression: float weights barely compress, and plain contiguous datasets read fastest.
const h5::DatasetOptions kTensorStorage{.chunk_elements = 0, .deflate_level = 0, .shuffle = false};

void write_model_config(const h5::Object& o, const ModelConfig& m) {
  o.set_attribute("n_layer", static_cast<std::int64_t>(m.n_layer));
  o.set_attribute("n_head", static_cast<std::int64_t>(m.n_head));
  o.set_attribute("n_embd", static_cast<std::int64_t>(m.n_embd));
  o.set_attribute("context", static_cast<std::int64_t>(m.context));
  o.set_attribute("vocab_size", static_cast<std::int64_t>(m.vocab_size));
}

ModelConfig read_model_config(const h5::Object& o) {
  ModelConfig m;
  m.n_layer = static_cast<int>(o.attribute<std::int64_t>("n_layer"));
  m.n_head = static_cast<int>(o.attribute<std::int64_t>("n_head"));
  m.n_embd = static_cast<int>(o.attribute<std::int64_t>("n_embd"));
  m.context = static_cast<int>(o.attribute<std::int64_t>("context"));
  m.vocab_size = static_cast<int>(o.attribute<std::int64_t>("vocab_size"));
  return m;
}

void write_optim_config(const h5::Object& o, const OptimConfig& c) {
  o.set_attribute("lr", c.lr);
  o.set_attribute("lr_min", c.lr_min);
  o.set_attribute("schedule", c.schedule);
  o.set_attribute("warmup_steps", static_cast<std::int64_t>(c.warmup_steps));
  o.set_attribute("beta1", c.beta1);
  o.set_attribute("beta2", c.beta2);
  o.set_attribute("eps", c.eps);
  o.set_attribute("weight_decay", c.weight_decay);
  o.set_attribute("grad_clip", c.grad_clip);
}

OptimConfig read_optim_config(const h5::Object& o) {
  OptimConfig c;
  c.lr = o.attribute<double>("lr");
  c.lr_min = o.attribute<double>("lr_min");
  c.schedule = o.string_attribute("schedule");
  c.warmup_steps = static_cast<int>(o.attribute<std::int64_t>("warmup_steps"));
  c.beta1 = o.attribute<double>("beta1");
  c.beta2 = o.attribute<double>("beta2");
  c.eps = o.attribute<double>("eps");
  c.weight_decay = o.attribute<double>("weight_decay");
  c.grad_clip = o.attribute<double>("grad_clip");
  return c;
}

void write_provenance(const h5::Group& g, const Provenance& p) {
  g.set_attribute("kind", p.kind);
  g.set_attribute("name", p.name);
  g.set_attribute("data_file", p.data_file);
  g.set_attribute("data_seed", p.data_seed);
  g.set_attribute("steps_done", p.steps_done);
  g.set_attribute("total_steps", p.total_steps);
  g.set_attribute("tokens_seen", p.tokens_seen);
  g.set_attribute("global_batch", p.global_batch);
  g.set_attribute("context", p.context);
  g.set_attribute("parent", p.parent);
  g.set_attribute("parent_checksum", p.parent_checksum);
  g.set_attribute("version", p.version);
  g.set_attribute("ranks", static_cast<std::int64_t>(p.ranks));
  g.set_attribute("complete", static_cast<std::uint8_t>(p.complete ? 1 : 0));
  g.write_strings("units", p.units);
  g.write_dataset<double>("unit_weights", p.unit_weights);
  write_optim_config(g.create_group("optim"), p.optim);
}

Provenance read_provenance(const h5::Group& g) {
  Provenance p;
  p.kind = g.string_attribute("kind");
  p.name = g.string_attribute("name");
  p.data_file = g.string_attribute("data_file");
  p.data_seed = g.attribute<std::uint64_t>("data_seed");
  p.steps_done = g.attribute<std::int64_t>("steps_done");
  p.total_steps = g.attribute<std::int64_t>("total_steps");
  p.tokens_seen = g.attribute<std::uint64_t>("tokens_seen");
  p.global_batch = g.attribute<std::int64_t>("global_batch");
  p.context = g.attribute<std::int64_t>("context");
  p.parent = g.string_attribute("parent");
  p.parent_checksum = g.string_attribute("parent_checksum");
  p.version = g.string_attribute("version");
  p.ranks = static_cast<int>(g.attribute<std::int64_t>("ranks"));
  p.complete = g.attribute<std::uint8_t>("complete") != 0;
  p.units = g.open_dataset("units").read_strings();
  p.unit_weights = g.open_dataset("unit_weights").read<double>();
  p.optim = read_optim_config(g.open_group("optim"));
  return p;
}

// Writes the buffer as one dataset per tensor of the layout, in canonical order.
void write_tensors(const h5::Group& g, const ParamLayout& layout, const std::vector<float>& buf) {
  std::int64_t index = 0;
  for (const auto& t : layout.tensors()) {
    auto ds = g.write_dataset<float>(t.name, std::span<const float>(buf.data() + t.offset, t.numel),
                                     t.shape, kTensorStorage);
    ds.set_attribute("index", index++);  // canonical order, since HDF5 lists names sorted
  }
}

[[noreturn]] void bad(const fs::path& path, const std::string& what) {
  fail("checkpoint '{}': {}", path.string(), what);
}

std::vector<float> read_tensors(const fs::path& path, const h5::Group& g,
                                const ParamLayout& layout, const char* what) {
  std::vector<float> buf(layout.total());
  for (const auto& t : layout.tensors()) {
    if (g.kind(t.name) != h5::Kind::dataset)
      bad(path, fmt::format("{} tensor '{}' is missing (written by another model version?)", what,
                            t.name));
    auto ds = g.open_dataset(t.name);
    if (ds.shape() != t.shape)
      bad(path, fmt::format("{} tensor '{}' has shape [{}], the model config needs [{}]", what,
                            t.name, fmt::join(ds.shape(), ","), fmt::join(t.shape, ",")));
    ds.read(std::span<float>(buf.data() + t.offset, t.numel));
    for (std::size_t i = 0; i < t.numel; ++i)
      if (!std::isfinite(buf[t.offset + i]))
        bad(path, fmt::format("{} tensor '{}' holds a non-finite value at element {}", what,
                              t.name, i));
  }
  return buf;
}

h5::File open_checkpoint(const fs::path& path) {
  if (!fs::exists(path)) fail("checkpoint '{}' does not exist", path.string());
  if (!h5::File::is_hdf5(path))
    bad(path, "not an HDF5 file (truncated or corrupt?); delete it and rerun the stage that "
              "writes it");
  try {
    auto file = h5::File::open(path);
    if (!file.has_attribute("format") || file.string_attribute("format") != kCheckpointFormat)
      bad(path, "not a mixsim checkpoint (no format = mixsim-checkpoint attribute)");
    auto version = file.attribute<std::int64_t>("format_version");
    if (version != kCheckpointFormatVersion)
      bad(path, fmt::format("format version {} is not supported (this mixsim reads {})", version,
                            kCheckpointFormatVersion));
    return file;
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("checkpoint '") == 0) throw;
    bad(path, fmt::format("unreadable ({}); the file may be truncated or corrupt", what));
  }
}

}  // namespace

std::string checksum_hex(const std::vector<float>& values) {
  uLong crc = crc32_z(0L, Z_NULL, 0);
  crc = crc32_z(crc, reinterpret_cast<const Bytef*>(values.data()), values.size() * sizeof(float));
  return fmt::format("{:08x}", static_cast<std::uint32_t>(crc));
}

void require_same_model(const ModelConfig& a, const ModelConfig& b, const std::string& what_a,
                        const std::string& what_b) {
  auto show = [](const ModelConfig& m) {
    return fmt::format("n_layer={} n_head={} n_embd={} context={} vocab_size={}", m.n_layer,
                       m.n_head, m.n_embd, m.context, m.vocab_size);
  };
  if (a.n_layer != b.n_layer || a.n_head != b.n_head || a.n_embd != b.n_embd ||
      a.context != b.context || a.vocab_size != b.vocab_size)
    fail("model mismatch: {} has {}, but {} has {}", what_a, show(a), what_b, show(b));
}

void write_checkpoint(const fs::path& path, const Checkpoint& c) {
  const ParamLayout layout(c.model);
  MIXSIM_CHECK(c.params.size() == layout.total(), "checkpoint buffer of {} floats, layout needs {}",
               c.params.size(), layout.total());
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  h5::AtomicFile out(path);
  auto& f = out.file();
  f.set_attribute("format", kCheckpointFormat);
  f.set_attribute("format_version", kCheckpointFormatVersion);
  write_model_config(f.create_group("config"), c.model);
  f.set_attribute("params_crc32", checksum_hex(c.params));
  f.set_attribute("num_params", static_cast<std::int64_t>(layout.total()));
  write_tensors(f.create_group("params"), layout, c.params);
  if (c.optimizer) {
    MIXSIM_CHECK(c.optimizer->m.size() == layout.total() && c.optimizer->v.size() == layout.total(),
                 "optimizer state does not match the layout");
    auto g = f.create_group("optimizer");
    g.set_attribute("steps", c.optimizer->steps);
    g.set_attribute("m_crc32", checksum_hex(c.optimizer->m));
    g.set_attribute("v_crc32", checksum_hex(c.optimizer->v));
    write_tensors(g.create_group("m"), layout, c.optimizer->m);
    write_tensors(g.create_group("v"), layout, c.optimizer->v);
  }
  write_provenance(f.create_group("provenance"), c.provenance);
  {
    auto curve = f.create_group("curve");  // closed before commit: the file must have no open ids
    curve.write_dataset<std::int64_t>("train_step", c.curve.train_step);
    curve.write_dataset<float>("train_loss", c.curve.train_loss);
    curve.write_dataset<std::int64_t>("valid_step", c.curve.valid_step);
    curve.write_dataset<float>("valid_loss", c.curve.valid_loss);
  }
  out.commit();
}

CheckpointInfo read_checkpoint_info(const fs::path& path) {
  auto file = open_checkpoint(path);
  try {
    CheckpointInfo info;
    info.model = read_model_config(file.open_group("config"));
    info.provenance = read_provenance(file.open_group("provenance"));
    info.params_checksum = file.string_attribute("params_crc32");
    info.has_optimizer = file.kind("optimizer") == h5::Kind::group;
    return info;
  } catch (const Error& e) {
    bad(path, fmt::format("incomplete metadata: {}", e.what()));
  }
}

Checkpoint read_checkpoint(const fs::path& path, bool with_optimizer) {
  auto file = open_checkpoint(path);
  Checkpoint c;
  std::string stored_crc;
  try {
    c.model = read_model_config(file.open_group("config"));
    c.provenance = read_provenance(file.open_group("provenance"));
    stored_crc = file.string_attribute("params_crc32");
  } catch (const Error& e) {
    bad(path, fmt::format("incomplete metadata: {}", e.what()));
  }
  std::optional<ParamLayout> layout;
  try {
    layout.emplace(c.model);
  } catch (const Error& e) {
    bad(path, fmt::format("invalid model config: {}", e.what()));
  }
  try {
    c.params = read_tensors(path, file.open_group("params"), *layout, "parameter");
    if (checksum_hex(c.params) != stored_crc)
      bad(path, fmt::format("parameter checksum mismatch (stored {}, computed {}): the file is "
                            "corrupt",
                            stored_crc, checksum_hex(c.params)));
    if (with_optimizer) {
      if (file.kind("optimizer") != h5::Kind::group)
        bad(path, "has no optimizer state (it was written without it); train with a fresh "
                  "optimizer instead");
      auto g = file.open_group("optimizer");
      OptimizerState s;
      s.steps = g.attribute<std::int64_t>("steps");
      s.m = read_tensors(path, g.open_group("m"), *layout, "optimizer m");
      s.v = read_tensors(path, g.open_group("v"), *layout, "optimizer v");
      if (checksum_hex(s.m) != g.string_attribute("m_crc32") ||
          checksum_hex(s.v) != g.string_attribute("v_crc32"))
        bad(path, "optimizer state checksum mismatch: the file is corrupt");
      c.optimizer = std::move(s);
    }
    auto curve = file.open_group("curve");
    c.curve.train_step = curve.open_dataset("train_step").read<std::int64_t>();
    c.curve.train_loss = curve.open_dataset("train_loss").read<float>();
    c.curve.valid_step = curve.open_dataset("valid_step").read<std::int64_t>();
    c.curve.valid_loss = curve.open_dataset("valid_loss").read<float>();
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("checkpoint '") == 0) throw;
    bad(path, fmt::format("unreadable data ({}); the file may be truncated or corrupt", what));
  }
  return c;
}

}  // namespace mixsim
