#include "mixsim/core/options.hpp"

#include <gtest/gtest.h>

#include "mixsim/core/error.hpp"
#include "test_support.hpp"

using namespace mixsim;

namespace {

po::options_description cli() {
  po::options_description d;
  d.add_options()("config", po::value<std::string>(), "")("help", "");
  return d;
}

std::string usage_message(const std::vector<std::string>& args, JobConfig& config) {
  JobSchema schema(config);
  try {
    parse_options(args, cli(), schema.all);
    validate(config);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Options, DefaultsWithoutArguments) {
  JobConfig c;
  JobSchema schema(c);
  parse_options({}, cli(), schema.all);
  EXPECT_EQ(c.model.n_layer, 4);
  EXPECT_EQ(c.run.seed, 1234u);
}

TEST(Options, JobFileSetsValuesAndCommandLineWins) {
  mixsim::testing::TempDir dir;
  mixsim::testing::write_file(dir / "job.ini",
                      "[model]\nn_layer = 6\nn_embd = 192\n[run]\nseed = 7\n"
                      "[data]\npartitions = a, b ,c\n");
  JobConfig c;
  JobSchema schema(c);
  parse_options({"--config", (dir / "job.ini").string(), "--model.n_layer", "2"}, cli(),
                schema.all);
  EXPECT_EQ(c.model.n_layer, 2);    // command line wins
  EXPECT_EQ(c.model.n_embd, 192);   // from the job file
  EXPECT_EQ(c.run.seed, 7u);
  EXPECT_EQ(c.data.partitions, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(Options, UnknownCommandLineOptionIsNamed) {
  JobConfig c;
  auto msg = usage_message({"--bogus", "1"}, c);
  EXPECT_NE(msg.find("--bogus"), std::string::npos) << msg;
}

TEST(Options, UnknownJobFileKeyNamesKeyAndFile) {
  mixsim::testing::TempDir dir;
  mixsim::testing::write_file(dir / "job.ini", "[model]\nn_layers = 6\n");
  JobConfig c;
  auto msg = usage_message({"--config", (dir / "job.ini").string()}, c);
  EXPECT_NE(msg.find("model.n_layers"), std::string::npos) << msg;
  EXPECT_NE(msg.find("job.ini"), std::string::npos) << msg;
}

TEST(Options, WrongTypeIsNamed) {
  JobConfig c;
  auto msg = usage_message({"--model.n_layer", "four"}, c);
  EXPECT_NE(msg.find("model.n_layer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("four"), std::string::npos) << msg;
}

TEST(Options, OutOfRangeIsNamedWithRange) {
  JobConfig c;
  auto msg = usage_message({"--model.n_layer", "0"}, c);
  EXPECT_NE(msg.find("--model.n_layer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("got 0"), std::string::npos) << msg;
}

TEST(Options, HeadsMustDivideChannels) {
  JobConfig c;
  auto msg = usage_message({"--model.n_embd", "130", "--model.n_head", "4"}, c);
  EXPECT_NE(msg.find("n_head"), std::string::npos) << msg;
}

TEST(Options, BadChoiceListsChoices) {
  JobConfig c;
  auto msg = usage_message({"--seed.schedule", "exponential"}, c);
  EXPECT_NE(msg.find("cosine | constant | linear"), std::string::npos) << msg;
}

TEST(Options, MissingJobFileIsNamed) {
  JobConfig c;
  auto msg = usage_message({"--config", "/nonexistent/job.ini"}, c);
  EXPECT_NE(msg.find("/nonexistent/job.ini"), std::string::npos) << msg;
}

TEST(Options, RequiredKeyMissing) {
  JobConfig c;
  JobSchema schema(c);
  auto vm = parse_options({}, cli(), schema.all);
  try {
    require_option(vm, "data.root");
    FAIL() << "expected a UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--data.root"), std::string::npos);
  }
  auto vm2 = parse_options({"--data.root", "/x"}, cli(), schema.all);
  EXPECT_NO_THROW(require_option(vm2, "data.root"));
}

TEST(Options, StrayPositionalWordIsAnError) {
  JobConfig c;
  auto msg = usage_message({"model.n_layer=3"}, c);
  EXPECT_FALSE(msg.empty());
}
