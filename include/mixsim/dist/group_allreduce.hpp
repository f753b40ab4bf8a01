// The group sum for a backend (backend/group_allreduce.hpp), and the gradient buckets that start
// the sums of a backward pass's gradients while the pass goes on.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "mixsim/backend/group_allreduce.hpp"
#include "mixsim/backend/ops.hpp"
#include "mixsim/dist/communicator.hpp"

namespace mixsim {

// The sum over `group` for memory of `backend`: local for a group of one rank, mpi for the CPU
// backend, nccl for the CUDA backends (the NCCL unique id made on the group's rank 0 and
// broadcast over MPI), mpi-staged for them when rank 0's environment sets MIXSIM_NCCL=0 or when
// two ranks of the group share a GPU (same host and PCI bus id; NCCL cannot join them; a warning
// says so). Collective: every rank of the group calls it with the same kind of backend. `group`
// must outlive the result.
std::unique_ptr<GroupAllreduce> make_group_allreduce(const Communicator& group, Backend& backend);

// Gradient buckets (the scheme of PyTorch DDP): the backward pass reports each gradient part as
// soon as it is final (ready()); parts gather, adjacent ones merged into one, and whenever
// `bucket_bytes` have gathered their sum is started, so that it overlaps the rest of the pass.
// finish() starts what is left and makes the backend's next op see every sum. Every rank must
// report the same parts in the same order (the model's backward pass does).
class GradientBuckets {
 public:
  GradientBuckets(GroupAllreduce& reduce, std::size_t bucket_bytes, SumFormat format);
  void ready(std::span<float> part);
  void finish();
  // Of the last finish(): how many starts, and how many parts (after merging) they summed.
  int buckets() const { return buckets_; }
  int parts() const { return parts_; }

 private:
  void start_pending();

  GroupAllreduce& reduce_;
  std::size_t bucket_bytes_;
  SumFormat format_;
  std::vector<std::span<float>> pending_;
  std::size_t pending_bytes_ = 0;
  int started_buckets_ = 0, started_parts_ = 0;
  int buckets_ = 0, parts_ = 0;
};

}  // namespace mixsim
