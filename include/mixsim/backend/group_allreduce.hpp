// In-place sums of backend memory over the ranks of a group: the gradients of data-parallel
// training and merge-eval's collective averages. One implementation per kind of memory and
// transport; dist/group_allreduce.hpp makes the right one for a backend:
//   local       a group of one rank: nothing to do
//   mpi         the CPU backend: MPI on its host memory (nonblocking collectives for start())
//   nccl        the CUDA backend: NCCL on device memory, started sums on a stream of their own
//               (kernels/nccl.cu)
//   mpi-staged  the CUDA backend with MIXSIM_NCCL=0: through host memory over MPI, no overlap
#pragma once

#include <cstddef>
#include <span>
#include <string_view>

namespace mixsim {

// What goes over the wire. fp32: the sum of the fp32 values, rounded as fp32 additions in the
// transport's order. bf16 (half the bytes; the bf16 training recipe's gradient sums): every rank's
// values are rounded to bf16 (to nearest even), the transport adds them rounding each partial sum
// to bf16, and the result is widened back into the fp32 buffer.
enum class SumFormat { fp32, bf16 };

class GroupAllreduce {
 public:
  virtual ~GroupAllreduce() = default;
  virtual std::string_view kind() const = 0;

  // Sums `count` floats at `data` over the group, in place: ordered after the backend's earlier
  // ops and before its later ones, as if it were one more op.
  virtual void sum(float* data, std::size_t count, SumFormat format) = 0;

  // Starts in-place sums of `parts` once the backend's ops issued so far have finished, and
  // returns without waiting, so that the sums overlap the backend's next ops. Until finish(),
  // neither the caller nor any op may read or write the parts. Every rank of the group must start
  // the same parts (by size) in the same order, in the same format.
  virtual void start(std::span<const std::span<float>> parts, SumFormat format) = 0;
  // Lets started sums advance without waiting: MPI moves nonblocking collectives on only inside
  // MPI calls. Nothing to do where the transport progresses by itself.
  virtual void progress() {}
  // The backend's next op sees every started sum.
  virtual void finish() = 0;
};

}  // namespace mixsim
