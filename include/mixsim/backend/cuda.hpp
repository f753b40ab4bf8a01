// The CUDA backend (kernels/): every Backend op on one GPU, on one stream, deterministic.
// Compiled whenever the CUDA toolkit is found; in builds without CUDA the factory throws.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "mixsim/backend/group_allreduce.hpp"
#include "mixsim/backend/ops.hpp"

namespace mixsim {

// MatmulPrecision (backend/ops.hpp): fp32, or bf16 operands on tensor cores.

// A backend on CUDA device `device` (0-based). Throws Error when the device is not usable.
std::unique_ptr<Backend> make_cuda_backend(int device,
                                           MatmulPrecision precision = MatmulPrecision::fp32);

// What MIXSIM_CUBLASLT (read when the backend is made: on by default for cuda-bf16, off for cuda)
// did: the matrix products that ran in cuBLASLt with their bias or GELU fused into the epilogue,
// and those that fell back to cuBLAS and separate kernels because cuBLASLt had no algorithm for
// them (the last reason kept). With MIXSIM_CUBLASLT_TUNE=1 (an opt-in; `tune`), each problem's
// algorithm is the fastest of cuBLASLt's first candidates, timed on its first call (`tuned`
// problems so far), instead of the heuristic's first answer. Without it, the problems that ran
// the choices table's algorithm (MIXSIM_CUBLASLT_CHOICES, on: `chosen`), and the table's choices
// that no longer fit the heuristic's answers, which ran its first answer instead (`mismatched`,
// the last reason kept).
struct CublasLtUse {
  bool enabled = false;
  std::size_t fused = 0;
  std::size_t fallbacks = 0;
  std::string last_fallback;
  bool tune = false;
  std::size_t tuned = 0;
  std::size_t chosen = 0;
  std::size_t mismatched = 0;
  std::string last_mismatch;
};
// For a backend from make_cuda_backend (Error for any other backend).
CublasLtUse cublaslt_use(Backend& cuda_backend);

// The kernels a backend from make_cuda_backend chose from the environment when it was made
// (kernels/cuda_backend.cu; Error for any other backend), as it runs them: so that a benchmark's
// label says what ran without restating the switches' defaults.
struct CudaKernelChoices {
  bool tc_attention = false;     // MIXSIM_TC_ATTENTION: attention on tensor cores (cuda-bf16)
  bool wide_forward = false;     // MIXSIM_TC_WIDE_FORWARD=1, with tensor-core attention
  bool gelu_exp2 = false;        // MIXSIM_GELU_EXP2: the GELU kernel on ex2 (cuda-bf16's default)
  bool classifier_exp2 = false;  // MIXSIM_CLASSIFIER_EXP2: the cached classifier through exp2
  bool layernorm_vec4 = false;   // MIXSIM_LAYERNORM_VEC4=1: LayerNorm, 16-byte accesses
  bool heavy_first = false;      // MIXSIM_ATTENTION_HEAVY_FIRST=1: longest attention blocks first
  bool fused_dq = false;         // MIXSIM_ATTENTION_FUSED_DQ=1: attention backward in one kernel
  bool bf16_gelu_epilogue = false;  // MIXSIM_BF16_GELU_EPILOGUE=1: the bf16 GELU in cuBLASLt
  bool layernorm_feeds = false;     // MIXSIM_LAYERNORM_FEEDS_PRODUCT=1: LayerNorm feeds projections
  bool classifier_two_rows = false;  // MIXSIM_CLASSIFIER_TWO_ROWS=1: two cached rows an SM
  bool wgmma_forward = false;        // MIXSIM_ATTENTION_WGMMA=1, where the device runs it (sm_90a)
  bool wgmma_backward = false;  // MIXSIM_ATTENTION_WGMMA_BACKWARD=1, so (not with the fused dq)
};
CudaKernelChoices cuda_kernel_choices(Backend& cuda_backend);

// The GPU of this process: the node-local rank (OMPI_COMM_WORLD_LOCAL_RANK, SLURM_LOCALID,
// MPI_LOCALRANKID) modulo the number of devices, so that the ranks of a node spread over its
// GPUs; 0 outside a launcher.
int local_cuda_device(int device_count);

// The PCI bus id of the GPU of `cuda_backend` (Error for other backends): NCCL cannot join two
// ranks on one GPU, so dist/ compares these (with the host name) before it chooses NCCL.
std::string cuda_pci_bus_id(Backend& cuda_backend);

// A new NCCL unique id (its bytes), made on one rank and sent to the others (dist/ does this).
std::string nccl_unique_id();

// Joins the NCCL communicator of `id` as `rank` of `nranks`, on the device of `cuda_backend`
// (from make_cuda_backend; anything else is an Error): sum() runs on the backend's stream, start()
// on a stream of its own that waits for the backend's work so far. Collective: every rank of the
// group must call it.
std::unique_ptr<GroupAllreduce> make_nccl_allreduce(Backend& cuda_backend, const std::string& id,
                                                    int nranks, int rank);

}  // namespace mixsim
