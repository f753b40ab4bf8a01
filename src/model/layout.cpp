#include "mixsim/model/layout.hpp"

#include "mixsim/core/error.hpp"

namespace mixsim {

ModelDims model_dims(const ModelConfig& c) {
  if (c.n_layer < 1 || c.n_head < 1 || c.n_embd < 1 || c.context < 1 || c.vocab_size < 2)
    usage_fail(
        "invalid model: n_layer={} n_head={} n_embd={} context={} vocab_size={} (all must "
        "be positive, vocab_size at least 2)",
        c.n_layer, c.n_head, c.n_embd, c.context, c.vocab_size);
  if (c.n_embd % c.n_head != 0)
    usage_fail("invalid model: n_embd ({}) must be a multiple of n_head ({})", c.n_embd, c.n_head);
  const int Vp = (c.vocab_size + kVocabPadding - 1) / kVocabPadding * kVocabPadding;
  return {c.n_layer, c.n_head, c.n_embd, c.n_embd / c.n_head, c.context, c.vocab_size, Vp};
}

ParamLayout::ParamLayout(const ModelConfig& config) : dims_(model_dims(config)) {
  const std::size_t L = dims_.L, C = dims_.C, T = dims_.maxT, Vp = dims_.Vp;
  auto add = [&](const char* name, std::vector<std::size_t> shape, bool decay) {
    std::size_t numel = 1;
    for (auto s : shape) numel *= s;
    tensors_.push_back({name, std::move(shape), total_, numel, decay});
    total_ += numel;
  };
  // The order of the Param enum, which is the canonical (file) order.
  add("wte", {Vp, C}, true);
  add("wpe", {T, C}, true);
  add("ln1w", {L, C}, false);
  add("ln1b", {L, C}, false);
  add("qkvw", {L, 3 * C, C}, true);
  add("qkvb", {L, 3 * C}, false);
  add("attprojw", {L, C, C}, true);
  add("attprojb", {L, C}, false);
  add("ln2w", {L, C}, false);
  add("ln2b", {L, C}, false);
  add("fcw", {L, 4 * C, C}, true);
  add("fcb", {L, 4 * C}, false);
  add("fcprojw", {L, C, 4 * C}, true);
  add("fcprojb", {L, C}, false);
  add("lnfw", {C}, false);
  add("lnfb", {C}, false);
  MIXSIM_CHECK(tensors_.size() == kNumParams, "layout has {} tensors", tensors_.size());
}

const TensorInfo& ParamLayout::find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return t;
  fail("the model has no parameter tensor named '{}' (a checkpoint of another model version?)",
       name);
}

}  // namespace mixsim
