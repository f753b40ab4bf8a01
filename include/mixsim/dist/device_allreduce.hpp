// The gradient allreduce of a training group on the backend's own memory: NCCL for the CUDA
// backend (the unique id made on the group's rank 0 and broadcast over MPI), nothing to set up
// for the CPU backend (its buffers are host memory, summed by Communicator::allreduce_sum).
#pragma once

#include <memory>

#include "mixsim/backend/cuda.hpp"
#include "mixsim/backend/ops.hpp"
#include "mixsim/dist/communicator.hpp"

namespace mixsim {

// Collective over `group`. nullptr for the CPU backend, for a group of one rank, and when the
// environment sets MIXSIM_NCCL=0 (then device gradients are staged through host memory and
// summed over MPI: slower, but independent of NCCL). Every rank must pass the same backend kind.
std::unique_ptr<DeviceAllreduce> make_device_allreduce(const Communicator& group,
                                                       Backend& backend);

}  // namespace mixsim
