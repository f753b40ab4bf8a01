// The CUDA backend (kernels/): every Backend op on one GPU, on one stream, deterministic.
// Compiled whenever the CUDA toolkit is found; in builds without CUDA the factory throws.
#pragma once

#include <memory>

#include "mixsim/backend/ops.hpp"

namespace mixsim {

// How the matrix products compute. Everything else (weights, activations, gradients, optimizer
// state, every other op) is fp32 in both.
//   fp32: cuBLAS in full fp32 (no TF32): the CPU backend's results to ~1e-6.
//   bf16: the products' inputs are rounded to bf16 and multiplied on tensor cores with fp32
//         accumulation (CUBLAS_COMPUTE_32F_FAST_16BF); fp32 master weights and optimizer state.
enum class MatmulPrecision { fp32, bf16 };

// A backend on CUDA device `device` (0-based). Throws Error when the device is not usable.
std::unique_ptr<Backend> make_cuda_backend(int device,
                                           MatmulPrecision precision = MatmulPrecision::fp32);

// The GPU of this process: the node-local rank (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID,
// MPI_LOCALRANKID) modulo the number of devices, so that the ranks of a node spread over its
// GPUs; 0 outside a launcher.
int local_cuda_device(int device_count);

}  // namespace mixsim
