// The fp32 CUDA backend (kernels/): every Backend op on one GPU, on one stream, deterministic.
// Compiled whenever the CUDA toolkit is found; in builds without CUDA the factory throws.
#pragma once

#include <memory>

#include "mixsim/backend/ops.hpp"

namespace mixsim {

// A backend on CUDA device `device` (0-based). Throws Error when the device is not usable.
std::unique_ptr<Backend> make_cuda_backend(int device);

}  // namespace mixsim
