// The GPT parameters as one contiguous buffer of named tensors in a fixed canonical order; the
// HDF5 checkpoint writes the same names, shapes and order. Gradients and AdamW moments share it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "mixsim/core/config.hpp"

namespace mixsim {

// The dimensions of a model, derived from its ModelConfig.
struct ModelDims {
  int L;     // layers
  int NH;    // heads
  int C;     // channels
  int HS;    // head size, C / NH
  int maxT;  // context length (rows of wpe)
  int V;     // vocabulary
  int Vp;    // vocabulary padded to a multiple of 64: the rows of wte
};

inline constexpr int kVocabPadding = 64;
ModelDims model_dims(const ModelConfig& config);  // throws UsageError on an invalid config

// The tensors in canonical order; the per-layer ones are stacked over L (leading dimension).
// clang-format off
enum class Param : int {
  wte, wpe, ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb,
  lnfw, lnfb
};
// clang-format on
inline constexpr int kNumParams = 16;

struct TensorInfo {
  std::string name;
  std::vector<std::size_t> shape;
  std::size_t offset;  // in floats from the start of the buffer
  std::size_t numel;
  bool decay;  // AdamW weight decay applies (matrices and embeddings; not biases or LN)
};

// Pointers to each tensor of one buffer in the layout (parameters, gradients or moments).
template <class F>
struct ParamTensors {
  F* wte;       // (Vp, C)
  F* wpe;       // (maxT, C)
  F* ln1w;      // (L, C)
  F* ln1b;      // (L, C)
  F* qkvw;      // (L, 3*C, C)
  F* qkvb;      // (L, 3*C)
  F* attprojw;  // (L, C, C)
  F* attprojb;  // (L, C)
  F* ln2w;      // (L, C)
  F* ln2b;      // (L, C)
  F* fcw;       // (L, 4*C, C)
  F* fcb;       // (L, 4*C)
  F* fcprojw;   // (L, C, 4*C)
  F* fcprojb;   // (L, C)
  F* lnfw;      // (C)
  F* lnfb;      // (C)
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& config);

  const ModelDims& dims() const { return dims_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo& operator[](Param p) const { return tensors_[static_cast<int>(p)]; }
  const TensorInfo& find(std::string_view name) const;  // throws Error for an unknown name
  std::size_t total() const { return total_; }          // floats in the whole buffer

  template <class F>
  ParamTensors<F> carve(F* base) const {
    auto at = [&](Param p) { return base + (*this)[p].offset; };
    return {at(Param::wte),     at(Param::wpe),     at(Param::ln1w),     at(Param::ln1b),
            at(Param::qkvw),    at(Param::qkvb),    at(Param::attprojw), at(Param::attprojb),
            at(Param::ln2w),    at(Param::ln2b),    at(Param::fcw),      at(Param::fcb),
            at(Param::fcprojw), at(Param::fcprojb), at(Param::lnfw),     at(Param::lnfb)};
  }

 private:
  ModelDims dims_;
  std::vector<TensorInfo> tensors_;
  std::size_t total_ = 0;
};

}  // namespace mixsim
