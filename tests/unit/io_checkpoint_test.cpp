#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>
#include <fstream>

#include "mixsim/core/error.hpp"
#include "mixsim/core/rng.hpp"
#include "mixsim/io/checkpoint.hpp"
#include "mixsim/io/hdf5.hpp"
#include "mixsim/model/layout.hpp"
#include "test_support.hpp"

using namespace mixsim;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny() {
  ModelConfig m;
  m.n_layer = 2;
  m.n_head = 2;
  m.n_embd = 16;
  m.context = 8;
  m.vocab_size = 257;
  return m;
}

std::vector<float> random_buffer(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

Checkpoint sample(bool with_optimizer) {
  Checkpoint c;
  c.model = tiny();
  const ParamLayout layout(c.model);
  c.params = random_buffer(layout.total(), 1);
  if (with_optimizer)
    c.optimizer =
        OptimizerState{17, random_buffer(layout.total(), 2), random_buffer(layout.total(), 3)};
  c.provenance.kind = "pool";
  c.provenance.name = "news/0";
  c.provenance.units = {"news/0"};
  c.provenance.unit_weights = {1.0};
  c.provenance.steps_done = 17;
  c.provenance.total_steps = 40;
  c.provenance.tokens_seen = 12345;
  c.provenance.parent = "seed.h5";
  c.provenance.parent_checksum = "deadbeef";
  c.provenance.optim.schedule = "constant";
  c.provenance.optim.lr = 6e-5;
  c.curve.train_step = {1, 2, 3};
  c.curve.train_loss = {5.5f, 5.0f, 4.5f};
  c.curve.valid_step = {3};
  c.curve.valid_loss = {4.75f};
  return c;
}

std::string error_of(const fs::path& path, bool with_optimizer = false) {
  try {
    read_checkpoint(path, with_optimizer);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Checkpoint, RoundTripIsExact) {
  mixsim::testing::TempDir dir;
  const auto path = dir / "ckpt.h5";
  const auto c = sample(true);
  write_checkpoint(path, c);
  const auto r = read_checkpoint(path, true);
  EXPECT_EQ(r.params, c.params);  // bitwise: float == on finite values
  ASSERT_TRUE(r.optimizer.has_value());
  EXPECT_EQ(r.optimizer->m, c.optimizer->m);
  EXPECT_EQ(r.optimizer->v, c.optimizer->v);
  EXPECT_EQ(r.optimizer->steps, 17);
  EXPECT_EQ(r.model.n_embd, 16);
  EXPECT_EQ(r.provenance.name, "news/0");
  EXPECT_EQ(r.provenance.units, c.provenance.units);
  EXPECT_EQ(r.provenance.tokens_seen, 12345u);
  EXPECT_EQ(r.provenance.optim.schedule, "constant");
  EXPECT_DOUBLE_EQ(r.provenance.optim.lr, 6e-5);
  EXPECT_EQ(r.curve.train_loss, c.curve.train_loss);
  EXPECT_EQ(r.curve.valid_step, c.curve.valid_step);
  const auto info = read_checkpoint_info(path);
  EXPECT_EQ(info.params_checksum, checksum_hex(c.params));
  EXPECT_TRUE(info.has_optimizer);
}

TEST(Checkpoint, TensorsAreNamedInCanonicalOrder) {
  mixsim::testing::TempDir dir;
  const auto path = dir / "ckpt.h5";
  write_checkpoint(path, sample(false));
  auto file = h5::File::open(path);
  const ParamLayout layout(tiny());
  auto params = file.open_group("params");
  for (std::size_t i = 0; i < layout.tensors().size(); ++i) {
    const auto& t = layout.tensors()[i];
    auto ds = params.open_dataset(t.name);
    EXPECT_EQ(ds.shape(), t.shape) << t.name;
    EXPECT_EQ(ds.attribute<std::int64_t>("index"), static_cast<std::int64_t>(i)) << t.name;
  }
}

TEST(Checkpoint, NoTemporaryLeftBehind) {
  mixsim::testing::TempDir dir;
  write_checkpoint(dir / "a.h5", sample(false));
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST(Checkpoint, MissingOptimizerStateIsAnError) {
  mixsim::testing::TempDir dir;
  write_checkpoint(dir / "a.h5", sample(false));
  EXPECT_NE(error_of(dir / "a.h5", true).find("no optimizer state"), std::string::npos);
}

TEST(Checkpoint, TruncatedFileIsAClearError) {
  mixsim::testing::TempDir dir;
  const auto path = dir / "ckpt.h5";
  write_checkpoint(path, sample(true));
  fs::resize_file(path, fs::file_size(path) / 2);
  const auto msg = error_of(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("corrupt"), std::string::npos) << msg;
}

TEST(Checkpoint, FlippedByteInWeightsIsDetected) {
  mixsim::testing::TempDir dir;
  const auto path = dir / "ckpt.h5";
  write_checkpoint(path, sample(false));
  haddr_t offset;
  {
    auto file = h5::File::open(path);
    auto ds = file.open_group("params").open_dataset("qkvw");
    offset = H5Dget_offset(ds.id());
    ASSERT_NE(offset, HADDR_UNDEF);
  }
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset + 40));
    char byte = 0;
    f.read(&byte, 1);
    byte = static_cast<char>(byte ^ 0x01);  // low mantissa bit: the value stays finite
    f.seekp(static_cast<std::streamoff>(offset + 40));
    f.write(&byte, 1);
  }
  const auto msg = error_of(path);
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
}

TEST(Checkpoint, OtherModelShapeIsNamed) {
  mixsim::testing::TempDir dir;
  const auto path = dir / "ckpt.h5";
  write_checkpoint(path, sample(false));
  {
    // Claim a wider model in the config: every tensor then has the wrong shape.
    auto file = h5::File::open(path, h5::File::Mode::read_write);
    file.open_group("config").set_attribute("n_embd", std::int64_t{32});
  }
  const auto msg = error_of(path);
  EXPECT_NE(msg.find("has shape"), std::string::npos) << msg;
  EXPECT_NE(msg.find("wte"), std::string::npos) << msg;
}

TEST(Checkpoint, NotAnHdf5File) {
  mixsim::testing::TempDir dir;
  mixsim::testing::write_file(dir / "x.h5", "hello");
  EXPECT_NE(error_of(dir / "x.h5").find("not an HDF5 file"), std::string::npos);
  EXPECT_NE(error_of(dir / "missing.h5").find("does not exist"), std::string::npos);
}

TEST(Checkpoint, RequireSameModelNamesBoth) {
  ModelConfig a = tiny(), b = tiny();
  b.n_layer = 3;
  try {
    require_same_model(a, b, "pool/a.h5", "pool/b.h5");
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("pool/a.h5"), std::string::npos);
    EXPECT_NE(m.find("n_layer=3"), std::string::npos);
  }
}
